"""TRL: a ``GRPOConfig``/``RLOOConfig``/``PPOConfig`` YAML or JSON, or a ``trl grpo``/``accelerate launch`` line.

Field names and defaults are TRL's (``data/fields.json``); ``PPOConfig`` is that of TRL 1.12.0, the last
release with a PPO trainer. Fields of no TRL config (a project's own keys, fields of other releases) are
listed in a note, as a warning when their name speaks of the KL or the reference.
"""

from __future__ import annotations

from pathlib import Path

from kltutor.configcheck.report import (
    ConfigError,
    KLTerm,
    Report,
    Values,
    as_choice,
    exact_reference,
    unknown_fields,
    verdict,
)

TRAINERS = {"grpo": "GRPOConfig", "rloo": "RLOOConfig", "ppo": "PPOConfig"}


def pick_trainer(data: dict, name: str, known: dict, trainer: str | None, hint: str = "") -> tuple[str, str | None]:
    """Which TRL config ``data`` is: the ``trainer`` asked for, the one its fields fit, or the one its path names.

    Returns ``(class name, note or None)``; raises :class:`ConfigError` when nothing tells.
    """
    trl = known["trl"]
    own = _own(trl)
    common = set(trl["script"])
    if trainer is not None:
        if trainer.lower() not in TRAINERS:
            raise ConfigError(f"{name}: unknown trainer {trainer!r} (choose grpo, rloo or ppo)")
        return TRAINERS[trainer.lower()], None
    keys = set(data) & (set().union(*own.values()) | common)
    specific = keys - common
    cands = [c for c in own if specific <= own[c]]
    unique = [c for c in cands if specific & (own[c] - set().union(*(own[o] for o in own if o != c)))]
    if len(unique) == 1:
        return unique[0], None
    if not cands:  # fields of several configs: the one that holds most of them
        best = max(own, key=lambda c: len(specific & own[c]))
        return best, f"its fields belong to several TRL configs; read as {best}, which holds most of them"
    if len(cands) == 1:
        return cands[0], None
    path = f"{hint} {name}".lower().replace("\\", "/")
    named = [c for t, c in TRAINERS.items() if t in path and c in cands]
    if len(named) == 1:
        return named[0], f"its fields fit {', '.join(cands)}; its path names {named[0]}"
    raise ConfigError(f"{name}: cannot tell {' from '.join(cands)} (only shared fields); pass --trainer grpo|rloo|ppo")


def _own(trl: dict) -> dict:
    return {
        "GRPOConfig": set(trl["GRPOConfig"]),
        "RLOOConfig": set(trl["RLOOConfig"]),
        "PPOConfig": set(trl["PPOConfig"]["fields"]) | set(trl["base"]),
    }


def read(data: dict, name: str, known: dict, trainer: str | None, hint: str = "") -> Report:
    if "kl_placement" in data:  # kltutor's extension of GRPOTrainer (kltutor.trainers.grpo_extension)
        from kltutor.trainers.extension_spec import inspect_extension

        return inspect_extension(data, name, known)
    trl = known["trl"]
    every = set().union(*_own(trl).values()) | set(trl["script"])
    if not set(data) & every:
        raise ConfigError(
            f"{name}: unknown library: no field of a TRL config (GRPOConfig, RLOOConfig, PPOConfig), "
            f"a verl ppo_trainer or an OpenRLHF command line (first field: {next(iter(data), '')!r})"
        )
    cls, why = pick_trainer(data, name, known, trainer, hint)
    reader = {"GRPOConfig": _grpo, "RLOOConfig": _rloo, "PPOConfig": _ppo}[cls]
    rep = reader(data, name, trl)
    if why:
        rep.notes.insert(0, why)
    allowed = _own(trl)[cls] | set(trl["script"])
    unknown = [k for k in data if k not in allowed]
    where = f"TRL {trl['version']} {cls}" if cls != "PPOConfig" else "TRL 1.12.0 PPOConfig"
    older = known.get("older", {}).get("trl", {}) if cls == "GRPOConfig" else {}
    unknown_fields(rep, unknown, where, older)
    old = sorted({older[k] for k in unknown if k in older})
    if old and not rep.release:
        rep.release = f"fields of older releases ({', '.join(old)}); read with TRL {trl['version']}'s semantics"

    def _version(r):
        return tuple(int(x) for x in r.rsplit(" ", 1)[1].split(".")[:2])

    if cls == "GRPOConfig" and "beta" not in data and any(_version(r) <= (0, 18) for r in old):
        rep.note(
            "fields such as "
            + ", ".join(k for k in unknown if k in older and _version(older[k]) <= (0, 18))
            + " last existed in TRL <= 0.18, whose GRPOConfig defaulted to beta = 0.04: under its own release this "
            "file has k3 in the loss with beta = 0.04"
        )
    return rep


def _grpo(data, name, trl) -> Report:
    rep = Report(name, "TRL", "GRPOTrainer (GRPOConfig)", f"trl {trl['version']}")
    v = Values(data, trl["GRPOConfig"], name, rep)
    beta = v.num("beta")
    loss_type = v.choice("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"])
    level = v.choice("importance_sampling_level", ["token", "sequence"])
    ratio = v.bool("use_bias_correction_kl")
    iters = int(v.num("num_iterations"))
    fp16 = v.bool("fp16") if v.get("fp16") is not None else False
    bf16 = v.get("bf16")
    bf16 = (not fp16) if bf16 is None else v.bool("bf16")
    lm_head_fp32 = v.get("cast_lm_head_to_fp32") not in (None, False) and v.bool("cast_lm_head_to_fp32")
    if beta < 0:
        raise ConfigError(f"{name}: field beta: must be >= 0, got {beta:g}")
    if not v.has("beta"):
        rep.note(
            f"beta is not set: TRL {trl['version']}'s default {beta:g} applies; TRL <= 0.18 defaulted to 0.04, so a "
            "file written for those releases had k3 in the loss with beta = 0.04"
        )
    _filters(rep, v)
    if beta == 0:
        rep.note("beta = 0: no KL term, and GRPOTrainer loads no reference model")
        if v.bool("sync_ref_model"):
            rep.warn(
                "beta-zero-with-reference",
                "sync_ref_model=True with beta = 0: a reference model is configured "
                "but never used (TRL raises a ValueError for this combination)",
            )
        if v.has("use_bias_correction_kl"):
            rep.note("use_bias_correction_kl is set but unused: it only weights the KL term, which beta = 0 turns off")
        return rep
    corr = (
        "per-token ratio w_t, differentiable (use_bias_correction_kl=True)"
        if ratio and level == "token"
        else "sequence ratio broadcast to tokens (use_bias_correction_kl=True, importance_sampling_level='sequence')"
        if ratio
        else "none"
    )
    t = KLTerm(
        "loss",
        "k3",
        "token",
        beta,
        "fixed (TRL has no beta controller)",
        corr,
        f"beta={beta:g}, use_bias_correction_kl={ratio}, importance_sampling_level={level}",
        setting=f"trl.grpo.k3.{'ratio' if ratio else 'plain'}.{level}",
        source=f"GRPOTrainer._compute_loss, trl {trl['version']}",
    )
    rep.terms.append(verdict(t, stale=iters > 1))
    _sync_note(rep, v)
    if iters > 1:
        rep.note(f"num_iterations={iters}: every update after the first on a batch is off-policy (stale row)")
    if ratio and level == "sequence":
        rep.warn(
            "ratio-with-sequence-is",
            "use_bias_correction_kl=True with importance_sampling_level='sequence' "
            "multiplies every token's k3 by one sequence-level ratio (TRL issue #6586): "
            "neither the per-token correction nor the reverse-KL gradient",
        )
    if bf16 and not lm_head_fp32:
        rep.warn(
            "unclamped-k3-bf16",
            "GRPOTrainer computes k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 "
            "without clamping, here from bf16 logits (bf16 is on): its fused LM head "
            "takes the log-softmax in float32, but the projection hidden @ W^T runs in "
            "bf16, which keeps 8 significant bits of every logit, so for small "
            "log-ratios the logits' rounding swamps k3 ~ l^2/2, and exp(-l) is "
            "unbounded where the policy falls far below the reference; set "
            "cast_lm_head_to_fp32=True (the projection in float32 too)",
        )
    _length(rep, loss_type, v)
    scale = v.get("scale_rewards")
    scale = {True: "group", False: "none"}.get(scale, scale)
    if isinstance(scale, str) and scale.lower() in ("true", "false"):
        scale = "group" if scale.lower() == "true" else "none"
    if as_choice(scale, ["group", "batch", "none"], name, "scale_rewards") != "none":
        rep.warn(
            "std-rescaled-beta",
            f"scale_rewards='{scale}' divides the task advantages by the {scale} reward "
            "standard deviation while the KL loss is left as is: against the raw reward "
            "the effective beta is beta * std, and it changes with every group",
        )
    return rep


def _filters(rep: Report, v: Values) -> None:
    """vLLM importance sampling and off-policy sequence masking (TRL 1.16 GRPOTrainer._compute_loss)."""
    use_vllm = v.bool("use_vllm") if v.has("use_vllm") else False
    keys = (
        "vllm_importance_sampling_mode",
        "vllm_importance_sampling_clip_min",
        "vllm_importance_sampling_clip_max",
        "off_policy_mask_threshold",
    )
    if not use_vllm:
        unused = [k for k in keys[:3] if v.has(k) and v.data[k] is not None]
        if unused:
            rep.note(
                f"{', '.join(unused)} set but unused: TRL applies vLLM importance sampling only with use_vllm=True "
                "(see sec-practice-filters)"
            )
    elif v.bool("vllm_importance_sampling_correction"):
        mode = v.choice(
            "vllm_importance_sampling_mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
        )
        lo = v.num("vllm_importance_sampling_clip_min", allow_none=True)
        hi = v.num("vllm_importance_sampling_clip_max", allow_none=True)
        if v.has("vllm_importance_sampling_cap") and v.data["vllm_importance_sampling_cap"] is not None:
            hi = v.num("vllm_importance_sampling_cap")  # deprecated; GRPOConfig.__post_init__ copies it to clip_max
            rep.note("vllm_importance_sampling_cap (deprecated) replaces vllm_importance_sampling_clip_max")
        band = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
        after = (
            "; the weight multiplies the policy-gradient term only: the KL term (beta * k3) is added after "
            "it, uncorrected (see sec-practice-filters)"
        )
        if mode == "sequence_mask":
            rep.warn(
                "length-biased-filter",
                f"vllm_importance_sampling_mode='sequence_mask' drops whole sequences whose ratio "
                f"exp(sum of per-token log(pi_train/pi_vllm)) falls outside {band}: the log-ratio is a sum over "
                "tokens against a fixed band, so at the same per-token mismatch long responses are dropped more "
                "often (length bias)" + after.replace(" (see sec-practice-filters)", ""),
            )
        elif mode == "sequence_truncate":
            rep.note(
                f"vllm_importance_sampling_mode='sequence_truncate': one sequence ratio (a product over tokens) "
                f"clipped to {band} weights every token" + after
            )
        else:
            what = "clipped to" if mode == "token_truncate" else "zeroed outside"
            rep.note(
                f"vllm_importance_sampling_mode='{mode}': each token's ratio pi_train/pi_vllm is {what} {band}" + after
            )
    if v.has("off_policy_mask_threshold") and v.data["off_policy_mask_threshold"] is not None:
        delta = v.num("off_policy_mask_threshold")
        rep.warn(
            "one-sided-filter",
            f"off_policy_mask_threshold={delta:g} (DeepSeek-V3.2's off-policy sequence masking) drops the "
            f"negative-advantage sequences whose mean per-token k1 between the sampler and the policy exceeds "
            f"{delta:g}, and keeps every positive-advantage one: the policy-gradient term then over-weights "
            "positive advantages (biased), the KL term is not masked",
        )


def _length(rep, loss_type, v):
    if loss_type in ("grpo", "sapo"):
        rep.warn(
            "length-rescaled-beta",
            f"loss_type='{loss_type}' averages each sequence's per-token loss over its "
            "own length: a sequence's KL penalty is beta * (sum of k3)/|y|, so the "
            "effective beta on the sequence KL shrinks as responses grow",
        )
    elif loss_type in ("bnpo", "dapo", "cispo", "vespo"):
        rep.warn(
            "length-rescaled-beta",
            f"loss_type='{loss_type}' divides the summed per-token loss by the number of "
            "tokens in the batch: the effective beta on each sequence's KL is "
            "beta / (mean response length), which drifts as lengths change in training",
        )
    elif loss_type == "dr_grpo":
        L = v.num("max_completion_length")
        rep.note(
            f"loss_type='dr_grpo' divides by max_completion_length = {L:g}: the effective beta on "
            "the sequence KL is the constant beta / max_completion_length"
        )


def _sync_note(rep, v):
    if v.bool("sync_ref_model"):
        alpha = v.num("ref_model_mixup_alpha")
        steps = v.num("ref_model_sync_steps")
        rep.note(
            f"sync_ref_model=True: every {steps:g} steps the reference becomes {alpha:g} x policy + "
            f"{1 - alpha:g} x reference (TR-DPO style), so the KL is to a moving anchor"
        )


def _rloo(data, name, trl) -> Report:
    rep = Report(name, "TRL", "RLOOTrainer (RLOOConfig)", f"trl {trl['version']}")
    v = Values(data, trl["RLOOConfig"], name, rep)
    beta = v.num("beta")
    if beta < 0:
        raise ConfigError(f"{name}: field beta: must be >= 0, got {beta:g}")
    if beta == 0:
        rep.note("beta = 0: no KL term, and RLOOTrainer loads no reference model")
        return rep
    t = KLTerm(
        "reward",
        "k1",
        "sequence",
        beta,
        "fixed (TRL has no beta controller)",
        "none",
        f"beta={beta:g}",
        setting="trl.rloo.k1.sequence",
        source=f"RLOOTrainer._generate_and_score_completions, trl {trl['version']}",
    )
    rep.terms.append(verdict(t, stale=False))
    _sync_note(rep, v)
    if v.bool("normalize_advantages"):
        rep.note(
            "normalize_advantages=True rescales the advantages, KL penalty included, together: the "
            "penalty keeps its weight against the task reward"
        )
    return rep


def _ppo(data, name, trl) -> Report:
    rep = Report(
        name, "TRL", "PPOTrainer (PPOConfig, trl.experimental.ppo)", "kltutor.gradients (TRL 1.13+ has no PPO trainer)"
    )
    rep.release = "PPOConfig: TRL <= 1.12.0 (trl.experimental.ppo); removed in TRL 1.13.0"
    rep.note(
        "PPOConfig / PPOTrainer shipped last in TRL 1.12.0 (trl.experimental.ppo); the verdict "
        "is kltutor's exact placement gradient, not TRL's code"
    )
    v = Values(data, trl["PPOConfig"]["fields"], name, rep)
    beta = v.num("kl_coef")
    est = v.choice("kl_estimator", ["k1", "k3"])
    lam = v.num("lam")
    if beta == 0:
        rep.warn(
            "beta-zero-with-reference",
            "kl_coef = 0 while PPOTrainer still takes and runs a reference model (ref_model) on every batch",
        )
        return rep
    t = KLTerm(
        "reward",
        est,
        "token",
        beta,
        "fixed",
        "none",
        f"kl_coef={beta:g}, kl_estimator={est}",
        source="kltutor.gradients.exact_kl_gradients, return-to-go",
    )
    rep.terms.append(exact_reference(t, est))
    if lam < 1:
        rep.note(
            f"lam = {lam:g} < 1: GAE mixes the penalty with the critic's values; the verdict is that "
            "of the return-to-go (lam = 1, or a perfect critic)"
        )
    return rep


# --- command lines -------------------------------------------------------------------------------------------


def cli_args(args: list[str], name: str) -> tuple[dict, str | None, list[str]]:
    """``--key value``/``--key=value``/``--flag`` arguments of a TRL script: (fields, --config path, stray words)."""
    out, config, stray = {}, None, []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            stray.append(a)
            i += 1
            continue
        key, eq, val = a[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                val = args[i + 1]
                i += 1
            else:
                val = "true"
        i += 1
        if key == "config":
            config = val
        else:
            out[key.replace("-", "_")] = _scalar(val)
    return out, config, stray


def _scalar(val: str):
    low = val.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return val


def read_launch(launch, name: str, known: dict, trainer: str | None, base: Path | None) -> Report:
    """A TRL launch (``trl grpo --config c.yaml --beta 0.1`` or ``accelerate launch grpo.py ...``)."""
    from kltutor.configcheck.shell import show, unresolved

    fields, config, _ = cli_args(launch.args, name)
    entry = show(launch.entry)
    hint = entry
    data = {}
    unread = None
    if config is not None:
        text = None
        if not unresolved(config) and base is not None:
            for p in (base / config, base.parent / config, Path(config)):
                if p.is_file():
                    text = p.read_text()
                    break
        if text is None:
            unread = config
        else:
            from kltutor.configcheck import _load_mapping

            loaded = _load_mapping(text, config, Path(config).suffix.lower())
            if not isinstance(loaded, dict):
                raise ConfigError(f"{name}: {config}: expected a mapping of config fields")
            data.update(loaded)
            hint += " " + config
    data.update(fields)
    if unread is not None:
        cls = next((c for t, c in TRAINERS.items() if t in (trainer or entry.lower())), None)
        rep = Report(name, "TRL", cls or f"unknown trainer (script {entry})", f"trl {known['trl']['version']}")
        if fields:
            rep.note("options on the command line: " + ", ".join(f"{k}={show(x)}" for k, x in fields.items()))
    elif not data:
        try:
            cls, _ = pick_trainer({}, name, known, trainer, hint)
        except ConfigError:
            cls = "GRPOConfig"
        rep = {"GRPOConfig": _grpo, "RLOOConfig": _rloo, "PPOConfig": _ppo}[cls](data, name, known["trl"])
    else:
        rep = read(data, name, known, trainer, hint)
    rep.note(f"launch: {entry} at line {launch.line}" + (f", config {show(config)}" if config else ""))
    if unread is not None:
        rep.warn(
            "unresolved-kl-field",
            f"the TRL config {show(unread)} (--config) is not read: "
            + ("its path is not resolved from the file" if unresolved(unread) else "no such file next to the script")
            + "; the KL fields (beta, loss_type, ...) live there, so no KL term is reported: inspect that file",
        )
    return rep
