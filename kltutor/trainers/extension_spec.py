"""The settings of the capstone placements inside TRL's ``GRPOTrainer``, without TRL (chapter ``ch-capstone``).

:mod:`kltutor.trainers.grpo_extension` (the ``[trainers]`` extra) adds these fields to TRL's ``GRPOConfig``;
this module holds what needs no TRL: the field names and defaults, their validation (the capstone's own
rules, :meth:`kltutor.capstone.config.CapstoneConfig.validate`), the TRL versions the extension was checked
against, and the config inspector's reading of an extension YAML (:func:`inspect_extension`), so that
``kltutor.capstone.export`` and the inspector work in the book's environment too.
"""

from __future__ import annotations

__all__ = [
    "CHECKED_TRL_VERSIONS",
    "EXTENSION_FIELDS",
    "CAPSTONE_FIELD",
    "placement_names",
    "validate_settings",
    "inspect_extension",
]

#: The TRL releases whose ``GRPOTrainer`` the extension's hooks were checked against (tests/test_trl_extension.py).
CHECKED_TRL_VERSIONS = ("1.16.0",)

#: The fields the extension adds to ``GRPOConfig``, with their defaults. ``beta`` (TRL's own field) is the KL
#: coefficient; ``epsilon`` the clip range; ``temperature`` / ``top_p`` the sampler; ``num_generations`` the group.
EXTENSION_FIELDS = {
    "kl_placement": "k3-in-loss",  # a capstone placement name (placement_names())
    "kl_level": "token",  # k*-in-loss: per token ('token') or on the sequence log-ratio ('sequence')
    "importance_weighted_kl": False,  # in-loss KL on stale batches: token ratio (k*), prefix ratio (exact)
    "kl_aggregation": "sequence-mean",  # 'token-mean', 'sequence-mean' or 'sequence-sum' (of surrogate and KL)
    "kl_schedule": "fixed",  # a kltutor.schedules name
    "kl_target": None,  # adaptive / ppo-penalty: target sequence KL in nats
    "kl_horizon": None,  # adaptive: horizon in samples; annealing: samples to reach beta_end
    "beta_end": None,  # annealing schedules: the final beta
    "clip_std": None,  # [lo, hi]: clamp each group's reward std before dividing (kltutor.grpo.group_advantages)
    "kl_chunk": 1024,  # exact-in-loss: rows of [batch*time] per chunk of the full-vocabulary KL
}

#: The key of the capstone task's settings in an exported YAML (read by kltutor.trainers.trl_capstone).
TASK_KEY = "kltutor_task"

#: The capstone's name for each extension field (the same setting in kltutor.capstone.config.CapstoneConfig).
CAPSTONE_FIELD = {
    "kl_placement": "placement",
    "kl_level": "kl_level",
    "importance_weighted_kl": "importance_weighted_kl",
    "kl_aggregation": "aggregation",
    "kl_schedule": "kl_schedule",
    "kl_target": "kl_target",
    "kl_horizon": "kl_horizon",
    "beta_end": "beta_end",
    "clip_std": "clip_std",
    "kl_chunk": "logprob_chunk",
}


def placement_names() -> tuple[str, ...]:
    """The placement names the extension accepts: the capstone's (the one place this module reads them)."""
    from kltutor.capstone.config import CAPSTONE_PLACEMENTS

    return tuple(CAPSTONE_PLACEMENTS)


def validate_settings(values: dict, beta: float, normalize_std: bool = True) -> None:
    """Raise ``ValueError`` (one line, naming the extension field) unless ``values`` (extension fields) with
    ``beta`` form a valid capstone KL setting. The rules are the capstone's own (``CapstoneConfig.validate``)."""
    from kltutor.capstone.config import CapstoneConfig, ConfigError

    unknown = sorted(set(values) - set(EXTENSION_FIELDS))
    if unknown:
        raise ValueError(f"unknown extension field {unknown[0]!r}; known: {sorted(EXTENSION_FIELDS)}")
    if values.get("kl_placement", EXTENSION_FIELDS["kl_placement"]) not in placement_names():
        raise ValueError(
            f"kl_placement: unknown KL placement {values.get('kl_placement')!r}; choose one of {list(placement_names())}"
        )
    own = {v: k for k, v in CAPSTONE_FIELD.items()}
    kwargs = {CAPSTONE_FIELD[k]: v for k, v in values.items()}
    if isinstance(kwargs.get("clip_std"), list):
        kwargs["clip_std"] = tuple(kwargs["clip_std"])
    try:
        CapstoneConfig(beta=beta, normalize_std=normalize_std, **kwargs).validate()
    except ConfigError as e:
        field = own.get(e.field, e.field)
        raise ValueError(f"{field}: {e}") from None
    except TypeError as e:
        raise ValueError(f"bad extension settings: {e}") from None


def inspect_extension(data: dict, name: str, known: dict):
    """The inspector's report on a TRL ``GRPOConfig`` YAML that uses the extension (a ``kl_placement`` field).

    ``known`` is :func:`kltutor.configcheck.fields.load`'s field list. Each KL term is reported with the verdict
    that :mod:`kltutor.trainers` measured for the extension on chapter 3's toy (setting ids
    ``trl-ext.<placement>[.<level>][.iw]``); a field neither TRL's ``GRPOConfig`` nor the extension has is
    refused, like any unknown field.
    """
    from kltutor.configcheck import report as I
    from kltutor.placements import parse_placement

    trl = known["trl"]
    allowed = set(trl["GRPOConfig"]) | set(trl["script"]) | set(EXTENSION_FIELDS) | {TASK_KEY}
    bad = sorted(set(data) - allowed)
    if bad:
        raise I.ConfigError(f"{name}: unknown field {bad[0]!r} for TRL GRPOConfig with the kltutor extension")
    ext = {k: data.get(k, v) for k, v in EXTENSION_FIELDS.items()}
    beta = I.as_num(data.get("beta", trl["GRPOConfig"]["beta"]), name, "beta")
    scale = data.get("scale_rewards", trl["GRPOConfig"].get("scale_rewards", "group"))
    try:
        validate_settings(ext, beta, normalize_std=scale not in ("none", False))
    except ValueError as e:
        raise I.ConfigError(f"{name}: field {e}") from None
    rep = I.Report(
        name,
        "TRL",
        "GRPOTrainer + kltutor extension (KLPlacementGRPOTrainer)",
        f"trl {trl['version']} with kltutor.trainers.grpo_extension",
    )
    placement = ext["kl_placement"]
    p = parse_placement(placement)
    rep.notes.append(f"capstone placement {placement!r} (kltutor.trainers.grpo_extension), beta = {beta:g}")
    if p.is_none or beta == 0:
        rep.notes.append("no KL term" + (" (beta = 0)" if not p.is_none else ""))
        return rep
    ctrl = ext["kl_schedule"]
    if ctrl != "fixed":
        parts = [f"{k} = {ext[k]:g}" for k in ("kl_target", "kl_horizon", "beta_end") if ext[k] is not None]
        ctrl = f"{ctrl} (initial beta{', ' + ', '.join(parts) if parts else ''})"
    where, est = p.where, p.estimator  # exact-in-loss: "loss", "exact"
    level = ext["kl_level"] if p.in_loss and not p.exact else "token"
    iw = bool(ext["importance_weighted_kl"])
    corr = "none"
    if iw:
        corr = (
            "prefix ratio prod_{s<t} w_s (differentiable)" if est == "exact" else "per-token ratio w_t (differentiable)"
        )
    elif where == "reward":
        corr = "penalty frozen at sampling time, returns-to-go"
    term = I.KLTerm(
        where,
        est,
        level,
        beta,
        ctrl,
        corr,
        f"kl_placement={placement}, beta={beta:g}"
        + (f", kl_level={level}" if where == "loss" and est != "exact" else "")
        + (", importance_weighted_kl=True" if iw else ""),
        setting=setting_id(placement, level, iw),
        source=f"KLPlacementGRPOTrainer._compute_loss, trl {trl['version']}",
    )
    iters = int(I.as_num(data.get("num_iterations", trl["GRPOConfig"]["num_iterations"]), name, "num_iterations"))
    try:
        rep.terms.append(I.verdict(term, stale=iters > 1))
    except I.ConfigError:  # exact-in-loss: chapter 3's harness passes sampled-token log-probabilities only
        rep.terms.append(term)
        rep.notes.append(
            "exact-in-loss differentiates the full-vocabulary KL per position: its expected gradient is the "
            "sequence KL's exactly on-policy (``ch-placements``); the toy harness, which passes sampled-token "
            "log-probabilities only, does not run it"
        )
    if iters > 1:
        rep.notes.append(f"num_iterations={iters}: every update after the first on a batch is off-policy (stale row)")
    if where == "loss" and est == "k1" and not iw:
        rep.warnings.append(
            I.Finding("k1-in-loss", "kl_placement=k1-in-loss: k1 in the loss has zero expected gradient on-policy")
        )
    agg = ext["kl_aggregation"]
    if agg != "sequence-sum":
        what = "the batch's token count" if agg == "token-mean" else "each sequence's own length"
        rep.warnings.append(
            I.Finding(
                "length-rescaled-beta",
                f"kl_aggregation={agg} divides the KL term (and the surrogate) by {what}: the effective beta on a "
                "sequence's KL changes with the response lengths (sequence-sum keeps it beta)",
            )
        )
    if scale not in ("none", False):
        rep.warnings.append(
            I.Finding(
                "std-rescaled-beta",
                f"scale_rewards='{scale}' divides the task advantages by the group's reward standard deviation "
                "while the KL term is left as is: against the raw reward the effective beta is beta * std",
            )
        )
    return rep


def setting_id(placement: str, level: str = "token", importance_weighted: bool = False) -> str:
    """The :mod:`kltutor.trainers` setting id of the extension's placement (``trl-ext.k3-in-loss.token``)."""
    sid = f"trl-ext.{placement}"
    if placement.endswith("-in-loss") and placement != "exact-in-loss":
        sid += f".{level}"
    return sid + (".iw" if importance_weighted else "")
