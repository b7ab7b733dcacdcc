"""verl: a ``ppo_trainer`` YAML (nested or dotted keys) or the Hydra overrides of a ``main_ppo`` launch line.

Keys and defaults are those of the installed release's ``_generated_ppo_trainer.yaml`` (``data/fields.json``);
keys that only older releases have are recognised (``older`` in the same file) and named in a note. In
verl <= 0.3.0 the reward KL was applied whenever ``use_kl_loss`` was off (``algorithm.use_kl_in_reward``
came in 0.4.0); a file from those releases is read with the installed release's semantics and the
difference is said in a note.
"""

from __future__ import annotations

import re

from kltutor.configcheck.report import ConfigError, KLTerm, Report, Values, unknown_fields, verdict
from kltutor.configcheck.shell import MARK, show, unresolved

KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}
CANON = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}
A = "actor_rollout_ref.actor."
RS_OPTIONS = [f"{lvl}_k{n}" for lvl in ("token", "seq_sum", "seq_mean") for n in (1, 2, 3)] + [
    "seq_max_k2",
    "seq_max_k3",
]


def overrides(args: list[str], name: str, rep_notes: list[str]) -> dict:
    """Hydra overrides (``key=value``, ``+key=value``, ``++key=value``) as a flat dict of parsed values."""
    import yaml

    out = {}
    for a in args:
        if a.startswith("--config-name") or a.startswith("--config-path") or a.startswith("-cn"):
            rep_notes.append(f"{show(a)}: the base config it names is not read; verl's ppo_trainer defaults are used")
            continue
        if a.startswith("-"):
            continue
        if a.startswith("~"):
            rep_notes.append(f"{show(a)} deletes a key; not read")
            continue
        key, eq, val = a.partition("=")
        if not eq:
            continue
        key = key.lstrip("+")
        if unresolved(val):
            out[key] = val
            continue
        try:
            out[key] = yaml.safe_load(val) if val.strip() else ""
        except yaml.YAMLError:
            out[key] = val
    return out


def read(flat: dict, name: str, known: dict, launch_notes: list[str] | None = None) -> Report:
    ver = known["verl"]["version"]
    keys = known["verl"]["keys"]
    older = known.get("older", {}).get("verl", {})
    rep = Report(name, "verl", "PPO/GRPO trainer (ppo_trainer.yaml)", f"verl {ver}")
    for n in launch_notes or []:
        rep.note(n)
    cfg, unknown = {}, []
    for k, v in flat.items():
        if k.split(".")[0] in ("defaults", "hydra"):
            continue
        key = k.lstrip("+")
        cfg[key] = v
        if key not in keys and not any(key.startswith(p + ".") for p in _open_sections(keys)):
            unknown.append(key)

    def resolve(v, key):
        for _ in range(5):
            m = re.fullmatch(r"\$\{([\w.]+)\}", v) if isinstance(v, str) else None
            if not m:
                break
            if m.group(1) not in keys:
                return MARK + v + MARK
            v = cfg.get(m.group(1), keys.get(m.group(1)))
        if isinstance(v, str) and "${" in v:
            return MARK + v + MARK
        return v

    data = {k: resolve(v, k) for k, v in cfg.items()}
    defaults = {k: resolve(v, k) for k, v in keys.items()}
    v = Values(data, defaults, name, rep)
    _release(rep, unknown, older, data, ver)
    unknown_fields(rep, unknown, f"verl {ver}'s ppo_trainer", older)

    use_loss = v.bool(A + "use_kl_loss")
    use_reward = v.bool("algorithm.use_kl_in_reward")
    adv = v.get("algorithm.adv_estimator")
    epochs = int(v.num(A + "ppo_epochs"))
    kinds = list(KL) + [k + "+" for k in KL]
    if use_loss:
        agg = v.choice(
            A + "loss_agg_mode",
            ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"],
        )
        typ = v.choice(A + "kl_loss_type", kinds)
        base, plus = (typ[:-1], "+") if typ.endswith("+") else (typ, "")
        est = KL[base]
        canon = CANON.get(base, base)
        beta = v.num(A + "kl_loss_coef")
        if beta < 0:
            raise ConfigError(f"{name}: field {A}kl_loss_coef: must be >= 0, got {beta:g}")
        t = KLTerm(
            "loss",
            est + plus,
            "token",
            beta,
            "fixed (kl_ctrl applies only to the in-reward penalty)",
            "straight-through: k2's gradient ('+')" if plus and est != "k2" else "none",
            f"use_kl_loss=True, kl_loss_type={typ}, kl_loss_coef={beta:g}",
            setting=f"verl.loss.{canon}{plus}",
            source=f"core_algos.kl_penalty + agg_loss, verl {ver}",
        )
        rep.terms.append(verdict(t, stale=epochs > 1))
        if est == "k1" and not plus:
            rep.warn(
                "k1-in-loss",
                f"kl_loss_type={typ} puts k1 in the loss: its expected gradient is zero, the term only adds noise",
            )
        if beta == 0:
            rep.warn(
                "beta-zero-with-reference",
                "use_kl_loss=True with kl_loss_coef = 0: verl still builds and runs the "
                "reference policy (need_reference_policy) for a term that is multiplied by zero",
            )
        if agg in ("token-mean", "seq-mean-token-mean"):
            what = (
                "the number of tokens in the (global) batch: the effective beta on a sequence's KL is "
                "kl_loss_coef / (mean response length)"
                if agg == "token-mean"
                else "each sequence's own length: the effective beta on a sequence's KL shrinks as it grows"
            )
            rep.warn("length-rescaled-beta", f"loss_agg_mode={agg} divides the KL loss by {what}")
        if adv == "grpo" and v.bool("algorithm.norm_adv_by_std_in_grpo"):
            rep.warn(
                "std-rescaled-beta",
                "adv_estimator=grpo with norm_adv_by_std_in_grpo=True divides the task "
                "advantages by the group's reward standard deviation while the KL loss is "
                "left as is: against the raw reward the effective beta is "
                "kl_loss_coef * std, and it changes with every group",
            )
        if epochs > 1:
            rep.note(
                f"ppo_epochs={epochs}: later epochs reuse the batch off-policy (stale row); verl's KL "
                "loss has no importance ratio"
            )
    else:
        for k in (A + "kl_loss_coef", A + "kl_loss_type"):
            if v.has(k):
                rep.note(f"{k} is set but unused: use_kl_loss is off")
    if use_reward:
        typ = v.choice("algorithm.kl_penalty", kinds)
        base = typ.rstrip("+")
        est = KL[base]
        canon = CANON.get(base, base)
        ctrl = v.choice("algorithm.kl_ctrl.type", ["fixed", "adaptive"])
        beta = v.num("algorithm.kl_ctrl.kl_coef")
        if beta < 0:
            raise ConfigError(f"{name}: field algorithm.kl_ctrl.kl_coef: must be >= 0, got {beta:g}")
        if ctrl == "adaptive":
            target = v.num("algorithm.kl_ctrl.target_kl")
            horizon = v.num("algorithm.kl_ctrl.horizon")
            ctrl = f"adaptive (initial beta, target_kl = {target:g}, horizon = {horizon:g})"
            if beta == 0:
                rep.warn(
                    "adaptive-from-zero",
                    "kl_ctrl.type=adaptive with kl_coef = 0: the adaptive controller multiplies beta by "
                    "(1 + clipped error / horizon), so from 0 it never moves; verl still runs the reference",
                )
        t = KLTerm(
            "reward",
            est,
            "token",
            beta,
            ctrl,
            "none",
            f"use_kl_in_reward=True, kl_penalty={typ}, kl_ctrl.kl_coef={beta:g}",
            setting=f"verl.reward.{canon}",
            source=f"apply_kl_penalty, verl {ver}",
        )
        rep.terms.append(verdict(t, stale=False))
        if beta == 0 and ctrl == "fixed":
            rep.warn(
                "beta-zero-with-reference",
                "use_kl_in_reward=True with a fixed kl_coef = 0: verl still builds and runs "
                "the reference policy for a penalty multiplied by zero",
            )
        if adv != "gae":
            rep.note(
                f"adv_estimator={adv}: the penalty enters the advantage together with the task reward "
                "(normalized with it); the verdict is that of the return-to-go (GAE, lam = gamma = 1)"
            )
        if adv == "gae":
            lam = v.num("algorithm.lam")
            if lam < 1:
                rep.note(f"algorithm.lam = {lam:g} < 1: GAE mixes the penalty with the critic's values")
    else:
        for k in ("algorithm.kl_ctrl.kl_coef", "algorithm.kl_penalty", "algorithm.kl_ctrl.type"):
            if v.has(k):
                rep.note(f"{k} is set but unused: use_kl_in_reward is off")
    if use_loss and use_reward:
        rep.warn(
            "two-kl-terms",
            "use_kl_loss and use_kl_in_reward are both on: the gradient "
            "is the sum of both terms' gradients, and each beta is tuned against the other",
        )
    if not rep.terms:
        rep.note("use_kl_loss and use_kl_in_reward are both off: no KL term, no reference model")
    _rollout_correction(rep, v, data, name)
    return rep


def _open_sections(keys: dict) -> list[str]:
    """Sections whose content is free-form (a dict default such as override_transformer_config)."""
    return [k for k, d in keys.items() if d is None and not any(o.startswith(k + ".") for o in keys)]


def _release(rep: Report, unknown: list[str], older: dict, data: dict, ver: str) -> None:
    old = sorted({older[k] for k in unknown if k in older})
    if not old:
        rep.release = f"fields of verl {ver}" if data else ""
        return
    rep.release = f"fields of older releases ({', '.join(old)}); read with verl {ver}'s semantics"
    # a key that no release from 0.4.0 on has: the file predates use_kl_in_reward
    early = any(r in ("verl <= 0.1", "verl <= 0.2", "verl <= 0.3.0.post1") for r in old)
    if early and "algorithm.use_kl_in_reward" not in data:
        use_loss = data.get(A + "use_kl_loss", False)
        if use_loss not in (True, "True", "true"):
            coef = data.get("algorithm.kl_ctrl.kl_coef", 0.001)
            pen = data.get("algorithm.kl_penalty", "kl")
            rep.note(
                "in verl <= 0.3.0 apply_kl_penalty ran whenever use_kl_loss was off (use_kl_in_reward came "
                f"in 0.4.0): under its own release this file also puts {KL.get(str(pen), pen)} in the reward "
                f"(kl_penalty={show(pen)}, kl_coef={show(coef)}); the terms here follow verl {ver}"
            )


def _rollout_correction(rep: Report, v: Values, data: dict, name: str) -> None:
    """``algorithm.rollout_correction``: truncated IS weights and rejection (verl rollout_corr_helper)."""
    R = "algorithm.rollout_correction."
    is_mode = v.get(R + "rollout_is") if v.has(R + "rollout_is") else None
    rs = v.get(R + "rollout_rs") if v.has(R + "rollout_rs") else None
    if isinstance(is_mode, str) and is_mode.lower() in ("null", "none", ""):
        is_mode = None
    if isinstance(rs, str) and rs.lower() in ("null", "none", ""):
        rs = None
    if is_mode is not None:
        if is_mode not in ("token", "sequence"):
            raise ConfigError(f"{name}: field {R}rollout_is: unknown value {is_mode!r} (accepted: token, sequence)")
        thr = v.get(R + "rollout_is_threshold")
        norm = v.bool(R + "rollout_is_batch_normalize")
        band = isinstance(thr, str) and "_" in thr  # "lower_upper": IcePop-style masking, not truncation
        what = "each token's ratio" if is_mode == "token" else "one ratio per sequence (exp of the summed log-ratio)"
        act = f"zeroed outside [{show(thr).replace('_', ', ')}]" if band else f"truncated at {show(thr)}"
        text = (
            f"rollout_correction.rollout_is={is_mode} (threshold {show(thr)}): {what} pi_train/pi_rollout, {act}"
            + (", normalized to mean 1 over the batch" if norm else "")
            + "; the weights multiply the policy-gradient losses only, the KL loss is not reweighted"
        )
        if band and is_mode == "sequence":
            rep.warn(
                "length-biased-filter",
                text + ": the summed log-ratio against a fixed band drops long responses more often at the same "
                "per-token mismatch (length bias)",
            )
        else:
            rep.note(text + " (see sec-practice-filters)")
    if rs is not None:
        opts = [o.strip() for o in str(rs).split(",") if o.strip()]
        for o in opts:
            if o not in RS_OPTIONS:
                raise ConfigError(
                    f"{name}: field {R}rollout_rs: unknown value {o!r} (accepted: {', '.join(RS_OPTIONS)})"
                )
        thr = v.get(R + "rollout_rs_threshold")
        if thr is None:
            raise ConfigError(f"{name}: field {R}rollout_rs_threshold: rollout_rs={rs} needs a threshold")
        for o in opts:
            lvl, k = o.rsplit("_", 1)
            stat = {"k1": "-log r", "k2": "(log r)^2 / 2", "k3": "r - 1 - log r"}[k]
            band = "outside a ratio band [lower, upper]" if k == "k1" else "above the threshold"
            base = (
                f"rollout_correction.rollout_rs={o} (threshold {show(thr)}) rejects "
                + ("each token " if lvl == "token" else "whole sequences ")
                + f"whose {'' if lvl == 'token' else lvl.split('_')[1] + ' over tokens of '}{stat} "
                f"(r = pi_train/pi_rollout) falls {band}; rejected tokens leave the response mask, so they "
                "leave every loss term, the KL loss included"
            )
            if lvl in ("seq_sum", "seq_max"):
                grows = "a sum over tokens" if lvl == "seq_sum" else "the largest of the tokens' values"
                rep.warn(
                    "length-biased-filter",
                    base + f": the statistic is {grows}, compared with a fixed threshold, so at the same per-token "
                    "mismatch long responses are rejected more often (length bias)",
                )
            else:
                rep.note(base + " (see sec-practice-filters)")
    if is_mode is None and rs is None:
        for k in ("rollout_is_threshold", "rollout_rs_threshold", "rollout_is_batch_normalize"):
            if v.has(R + k) and data[R + k] not in (None, "null", False, "false"):
                rep.note(f"{R}{k} is set but unused: rollout_is and rollout_rs are off")
