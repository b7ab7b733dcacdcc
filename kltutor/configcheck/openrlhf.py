"""OpenRLHF: the options of a ``train_ppo_ray`` launch (``python -m openrlhf.cli.train_ppo_ray ...``,
``deepspeed --module openrlhf.cli.train_ppo ...``, inside ``ray job submit -- ...``).

Option names, defaults and choices are those of the installed release's parser (``data/fields.json``).
Releases up to 0.10.1 spelled the options without namespaces (``--init_kl_coef``, ``--use_kl_loss``,
``--kl_estimator``, ...; renamed in 0.10.2) and 0.5-0.6 chose k3 with ``--use_kl_estimator_k3``; those
are translated with a note, and the verdict uses the installed release's code. What the installed
release computes (checked against ``openrlhf/trainer/ray/ppo_actor.py`` and ``experience_maker.py``):

- the KL loss is ``aggregate_loss(kl, action_mask, **loss_batch_info)`` with no ``token_level_loss``
  argument, so it is always a global token mean, whatever ``--actor.loss_agg_mode`` says;
- ``group_norm`` always divides by the group's reward standard deviation; ``--algo.advantage.no_std_norm``
  only turns off the batch whitening of ``gae``, ``reinforce`` and ``reinforce_baseline``.
"""

from __future__ import annotations

from kltutor.configcheck.report import ConfigError, KLTerm, Report, Values, as_choice, unknown_fields, verdict
from kltutor.configcheck.shell import show, unresolved

#: options of OpenRLHF <= 0.10.1 whose meaning survives under a new name (0.10.2 namespaced them).
RENAMED = {
    "--init_kl_coef": "--algo.kl.init_coef",
    "--use_kl_loss": "--algo.kl.use_loss",
    "--kl_estimator": "--algo.kl.estimator",
    "--kl_target": "--algo.kl.target",
    "--kl_horizon": "--algo.kl.horizon",
    "--advantage_estimator": "--algo.advantage.estimator",
    "--no_advantage_std_norm": "--algo.advantage.no_std_norm",
    "--gamma": "--algo.advantage.gamma",
    "--lambd": "--algo.advantage.lambd",
    "--max_epochs": "--train.max_epochs",
    "--policy_loss_type": "--actor.policy_loss_type",
}
OLD = "OpenRLHF <= 0.10.1"
NEW_IS = "OpenRLHF 0.10.2-0.11.0"
#: the IS-correction types of OpenRLHF <= 0.11.0 as (level, mode) of 0.11.2 (gating ratio)
IS_TYPES = {"tis": ("token", "clip"), "icepop": ("token", "mask"), "seq-mask-tis": ("seq", "mask")}


def _rel(opt: str) -> str:
    return NEW_IS if opt.startswith("--algo.") else OLD


def parse(args: list[str], name: str, known: dict) -> tuple[dict, list[str], list[str]]:
    """``{dest: value}`` of the options in ``args``; (values, translated old options, unknown options)."""
    opts = known["openrlhf"]["options"]
    out, translated, unknown = {}, [], []
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("--"):
            continue  # a stray word (left by an unresolved variable); its option is reported below
        opt, eq, val = tok.partition("=")
        vals = [val] if eq else []
        if not eq:
            while i < len(args) and not args[i].startswith("--"):
                vals.append(args[i])
                i += 1
        if opt in opts:
            spec = opts[opt]
        elif opt in RENAMED:
            translated.append((f"{opt} -> {RENAMED[opt]}", OLD))
            spec = opts[RENAMED[opt]]
        elif opt == "--use_kl_estimator_k3":
            translated.append(("--use_kl_estimator_k3 -> --algo.kl.estimator k3", OLD))
            out["algo.kl.estimator"] = "k3"
            continue
        elif opt in ("--enable_vllm_is_correction", "--algo.advantage.is_correction_enable"):
            translated.append((f"{opt} -> --algo.advantage.is_correction_level token", _rel(opt)))
            out.setdefault("algo.advantage.is_correction_level", "token")
            out.setdefault("algo.advantage.is_correction_mode", "clip")  # the default type, tis
            continue
        elif opt in ("--algo.advantage.is_correction_type", "--vllm_is_correction_type") and vals:
            lvl, mode = IS_TYPES.get(vals[0], ("token", "clip"))
            translated.append(
                (
                    f"{opt} {vals[0]} -> --algo.advantage.is_correction_level {lvl} --algo.advantage."
                    f"is_correction_mode {mode}",
                    _rel(opt),
                )
            )
            out["algo.advantage.is_correction_level"] = lvl
            out["algo.advantage.is_correction_mode"] = mode
            continue
        elif opt == "--vllm_is_truncated_threshold" and vals:
            translated.append((f"{opt} -> --algo.advantage.is_correction_threshold", OLD))
            out["algo.advantage.is_correction_threshold"] = vals
            continue
        else:
            unknown.append(opt)
            continue
        if spec["flag"]:
            out[spec["dest"]] = True  # words after a switch (an unresolved variable, most likely) are not read
            continue
        if not vals:
            raise ConfigError(f"{name}: field {opt}: missing value")
        vals = [x.strip() for x in vals]
        n = spec["nargs"]
        if isinstance(n, int) and len(vals) > n:
            vals = vals[:n]
        if spec["choices"] and not any(unresolved(v) for v in vals):
            for v in vals:
                as_choice(v, list(map(str, spec["choices"])), name, opt)
        out[spec["dest"]] = vals[0] if len(vals) == 1 and n in (1, "?") else vals
    return out, translated, unknown


def read(launch, name: str, known: dict, launch_notes: list[str] | None = None) -> Report:
    ver = known["openrlhf"]["version"]
    entry = show(launch.entry)
    if not entry.startswith("openrlhf.cli.train_ppo"):
        raise ConfigError(
            f"{name}: unknown library entry point {entry!r} (the inspector reads "
            "openrlhf.cli.train_ppo_ray command lines)"
        )
    args, translated, unknown = parse(launch.args, name, known)
    rep = Report(name, "OpenRLHF", "train_ppo_ray", f"openrlhf {ver}")
    for n in launch_notes or []:
        rep.note(n)
    if entry != "openrlhf.cli.train_ppo_ray":
        rep.note(f"{entry} (OpenRLHF <= 0.5's DeepSpeed trainer) is read with train_ppo_ray's options")
    older = known.get("older", {}).get("openrlhf", {})
    if translated:
        rels = sorted({r for _, r in translated})
        rep.release = f"options of {' and '.join(rels)}; read with OpenRLHF {ver}'s semantics"
        rep.note(f"options of {' and '.join(rels)}, translated: " + "; ".join(t for t, _ in translated))
    else:
        rep.release = f"options of OpenRLHF {ver}"
    unknown_fields(rep, unknown, f"OpenRLHF {ver}'s train_ppo_ray", older)
    opts = {v["dest"]: v for v in known["openrlhf"]["options"].values()}
    defaults = {d: s["default"] for d, s in opts.items()}
    by_dest = {v["dest"]: k for k, v in known["openrlhf"]["options"].items()}
    v = Values(args, defaults, name, rep, label=lambda d: by_dest.get(d, d))
    adv = v.get("algo.advantage.estimator")
    beta = v.num("algo.kl.init_coef")
    use_loss = bool(v.get("algo.kl.use_loss"))
    est = v.choice("algo.kl.estimator", ["k1", "k2", "k3"])
    unbiased = bool(v.get("algo.kl.unbiased_gradient"))
    target = v.num("algo.kl.target", allow_none=True)
    horizon = v.num("algo.kl.horizon")
    epochs = int(v.num("train.max_epochs"))
    ctrl = "fixed" if target is None else f"adaptive (initial beta, target = {target:g}, horizon = {horizon:g})"
    _correction(rep, v)
    if beta <= 0:
        rep.note("--algo.kl.init_coef <= 0: no KL term, and no reference model is started")
        if target is not None:
            rep.warn(
                "adaptive-from-zero",
                "--algo.kl.target with --algo.kl.init_coef <= 0: no KL term and no reference are built, "
                "so the adaptive controller has nothing to adapt",
            )
        for d in ("algo.kl.use_loss", "algo.kl.estimator", "algo.kl.unbiased_gradient"):
            if v.has(d) and args[d] not in (False, None):
                rep.note(f"{by_dest.get(d, d)} is set but unused: --algo.kl.init_coef <= 0")
        return rep
    if use_loss:
        t = KLTerm(
            "loss",
            est,
            "token",
            beta,
            ctrl,
            "straight-through k2 gradient x detached ratio w_t (--algo.kl.unbiased_gradient)" if unbiased else "none",
            f"--algo.kl.use_loss --algo.kl.estimator {est}"
            + (" --algo.kl.unbiased_gradient" if unbiased else "")
            + f" --algo.kl.init_coef {beta:g}",
            setting=f"openrlhf.loss.{est}" + (".unbiased_gradient" if unbiased else ""),
            source=f"compute_approx_kl + aggregate_loss, openrlhf {ver}",
        )
        rep.terms.append(verdict(t, stale=epochs > 1))
        if est == "k1" and not unbiased:
            rep.warn(
                "k1-in-loss",
                "--algo.kl.use_loss with --algo.kl.estimator k1 (the default "
                "estimator) puts k1 in the loss: its expected gradient is zero",
            )
        if unbiased and v.get("actor.policy_loss_type") == "gspo":
            rep.warn(
                "ratio-with-sequence-is",
                "--algo.kl.unbiased_gradient weights each token's KL by the per-token ratio "
                "w_t while --actor.policy_loss_type gspo importance-samples whole sequences:"
                " the two corrections disagree, and neither makes a per-token KL loss exact "
                "on stale batches",
            )
        agg = v.get("actor.loss_agg_mode")
        rep.warn(
            "length-rescaled-beta",
            "the KL loss is aggregate_loss(kl, action_mask) with the default token_level_loss=True: a "
            "global token mean, so the effective beta on a sequence's KL is init_coef / (mean response length)"
            + (
                f"; --actor.loss_agg_mode {agg} reaches the policy loss only, not the KL term"
                if agg != "token-mean"
                else ""
            ),
        )
        if adv == "group_norm" or (
            adv in ("gae", "reinforce", "reinforce_baseline") and not v.get("algo.advantage.no_std_norm")
        ):
            how = (
                "group_norm divides each group's rewards by the group's standard deviation (always: "
                "--algo.advantage.no_std_norm does not reach it)"
                if adv == "group_norm"
                else f"{adv} whitens the advantages by the batch standard deviation"
            )
            rep.warn(
                "std-rescaled-beta",
                f"--algo.advantage.estimator {how} while the KL loss is left as is: against the raw reward the "
                "effective init_coef is init_coef * std",
            )
        if adv == "group_norm" and v.has("algo.advantage.no_std_norm"):
            rep.note(
                "--algo.advantage.no_std_norm is set but unused with group_norm (it acts on gae/reinforce/"
                "reinforce_baseline whitening only)"
            )
        if epochs > 1:
            rep.note(f"--train.max_epochs {epochs}: later epochs reuse the batch off-policy (stale row)")
    else:
        t = KLTerm(
            "reward",
            est,
            "token",
            beta,
            ctrl,
            "none",
            f"--algo.kl.estimator {est} --algo.kl.init_coef {beta:g} (no --algo.kl.use_loss)",
            setting=f"openrlhf.reward.{est}",
            source=f"compute_approx_kl + compute_reward, openrlhf {ver}",
        )
        rep.terms.append(verdict(t, stale=False))
        if adv == "group_norm":
            rep.warn(
                "std-rescaled-beta",
                "--algo.advantage.estimator group_norm divides the task reward by its "
                "group's standard deviation (always; --algo.advantage.no_std_norm does not reach it) before "
                "compute_reward adds the KL penalty: against the raw reward the effective init_coef is "
                "init_coef * std",
            )
        if adv == "gae":
            lam = v.num("algo.advantage.lambd")
            if lam < 1:
                rep.note(f"--algo.advantage.lambd {lam:g} < 1: GAE mixes the penalty with the critic")
        if v.has("algo.kl.unbiased_gradient") and unbiased:
            rep.note("--algo.kl.unbiased_gradient is set but unused: it acts on the KL loss (--algo.kl.use_loss) only")
    return rep


def _correction(rep: Report, v: Values) -> None:
    """``--algo.advantage.is_correction_*`` (openrlhf/models/loss.py PolicyLoss, OpenRLHF 0.11)."""
    P = "algo.advantage.is_correction_"
    level = v.get(P + "level") if v.has(P + "level") else "off"
    if level == "off":
        set_ = [k for k in ("mode", "gating", "threshold") if v.has(P + k)]
        if set_:
            rep.note(
                ", ".join(f"--{P}{k}" for k in set_) + " set but unused: --algo.advantage.is_correction_level is "
                "off (see sec-practice-filters)"
            )
        return
    mode = v.get(P + "mode")
    gating = v.get(P + "gating")
    thr = v.get(P + "threshold")
    thr = thr if isinstance(thr, list) else [thr]
    if v.get("actor.policy_loss_type") != "ppo":
        rep.note(
            f"--{P}level {level} is set but unused: PolicyLoss applies it only with --actor.policy_loss_type ppo "
            "(see sec-practice-filters)"
        )
        return
    stat = {
        "ratio": "the ratio pi_train/pi_rollout"
        + (" (its geometric mean over the sequence)" if level == "seq" else ""),
        "binary_kl": "the sampled token's binary KL between rollout and train probabilities"
        + (" (its mean over the sequence)" if level == "seq" else ""),
        "tv": "the sampled token's |p_rollout - p_train|" + (" (its mean over the sequence)" if level == "seq" else ""),
    }[gating]
    unit = "each token" if level == "token" else "whole sequences"
    act = "clamps" if mode == "clip" else "masks"
    rep.note(
        f"--{P}level {level} --{P}mode {mode} --{P}gating {gating}: {act} {unit} by {stat} against "
        f"{' '.join(map(show, thr))}; survivors keep their per-token IS weight; it multiplies the policy loss only, "
        "the KL loss is not masked or reweighted"
        + (
            "; a mean over tokens does not grow with length in expectation, though against one threshold its "
            "rejection rate still changes with length"
            if level == "seq"
            else ""
        )
        + " (see sec-practice-filters)"
    )
