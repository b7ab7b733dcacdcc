"""A KL config inspector: ``python -m kltutor.inspect FILE`` (introduced in chapter 3).

Reads a TRL config (YAML or JSON with ``GRPOConfig``, ``RLOOConfig`` or ``PPOConfig`` fields), a verl
YAML (``ppo_trainer`` layout, nested or dotted keys), or an OpenRLHF ``train_ppo_ray`` command line saved as
text; reports the library, each KL term the config turns on (placement, estimator, token or sequence level,
beta and its controller), the exact-gradient verdict that :mod:`kltutor.trainers` measured with that
library's own code on chapter 3's toy, and warnings:

- ``two-kl-terms``: a KL term in the reward and one in the loss at once;
- ``k1-in-loss``: k1 in the loss, whose expected gradient is zero;
- ``beta-zero-with-reference``: beta = 0 while the configuration still loads a reference model;
- ``ratio-with-sequence-is``: the KL term's ratio correction combined with sequence-level importance sampling;
- ``unclamped-k3-bf16``: k3 computed without clamping from bf16 log-probabilities;
- ``length-rescaled-beta``: a loss aggregation that divides the KL term by a response length, so the
  effective beta changes with the length of the responses;
- ``std-rescaled-beta``: the task reward's advantage is divided by a reward standard deviation and the
  KL term is not, so beta is effectively multiplied by that standard deviation (a KL term and reward
  normalized *together*, e.g. an in-reward penalty whitened with the advantages, keeps its weight).

:func:`inspect_file` returns a :class:`Report`; a user mistake (unreadable file, bad YAML or JSON, unknown
library, unknown field or value) raises :class:`ConfigError` with one line naming the file and the field.
The CLI prints the report (``--json`` for machines) and exits 0 when clean, 1 with warnings, 2 when the file
is unreadable. Field names come from ``kltutor/inspect/data/fields.json`` (generated from the installed
libraries) and verdicts from ``kltutor/trainers/data/results.json``, so no library is needed.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kltutor.inspect import fields as _fields

__all__ = ["ConfigError", "KLTerm", "Finding", "Report", "inspect_file", "inspect_text", "WARNING_CODES"]

WARNING_CODES = (
    "two-kl-terms",
    "k1-in-loss",
    "beta-zero-with-reference",
    "ratio-with-sequence-is",
    "unclamped-k3-bf16",
    "length-rescaled-beta",
    "std-rescaled-beta",
)
TRL_TRAINERS = {"grpo": "GRPOConfig", "rloo": "RLOOConfig", "ppo": "PPOConfig"}


class ConfigError(ValueError):
    """A configuration the inspector cannot read; the message is one line naming the file (and field)."""


@dataclass
class KLTerm:
    placement: str  # "reward" or "loss"
    estimator: str  # k1, k2, k3, abs (+ for verl's straight-through variants)
    level: str  # "token" or "sequence"
    beta: float
    controller: str
    correction: str
    fields: str  # the config fields that turn it on
    setting: str | None = None  # the kltutor.trainers setting id whose verdict applies
    verdict: str | None = None
    bias_norm: float | None = None
    stale: dict | None = None  # verdict on a stale batch, when the config updates several times per batch
    source: str = ""  # where the verdict comes from


@dataclass
class Finding:
    code: str
    message: str


@dataclass
class Report:
    file: str
    library: str
    trainer: str
    checked_against: str  # library version whose code gave the verdicts
    terms: list[KLTerm] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.warnings else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def format(self) -> str:
        lines = [f"{self.file}: {self.library} {self.trainer} (verdicts from {self.checked_against})"]
        if not self.terms:
            lines.append("KL terms: none")
        for i, t in enumerate(self.terms, 1):
            lines.append(
                f"KL term {i}: {t.estimator} in the {t.placement}, {t.level} level, beta = {t.beta:g}, "
                f"controller: {t.controller}; correction: {t.correction}"
            )
            lines.append(f"  set by: {t.fields}")
            if t.verdict:
                b = "< 1e-6" if t.bias_norm < 1e-6 else f"= {t.bias_norm:.3f}"
                lines.append(
                    f"  exact expected gradient (chapter 3 toy): {t.verdict}, |bias| {b}"
                    + (f"  ({t.source})" if t.source else "")
                )
            if t.stale:
                lines.append(
                    f"  on a stale batch (2nd+ update): {t.stale['verdict']}, |bias| = {t.stale['bias_norm']:.3f}"
                )
        for n in self.notes:
            lines.append(f"note: {n}")
        for w in self.warnings:
            lines.append(f"warning [{w.code}]: {w.message}")
        lines.append("clean" if not self.warnings else f"{len(self.warnings)} warning(s)")
        return "\n".join(lines)


# --- reading -------------------------------------------------------------------------------------------------


def _load_mapping(text: str, name: str, suffix: str):
    import yaml

    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: bad JSON at line {e.lineno}: {e.msg}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}: bad YAML{where}: {problem}") from None


def _looks_like_command(text: str) -> bool:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if "openrlhf.cli." in body:
        return True
    return bool(re.search(r"(^|\s)--[A-Za-z]", body)) and not re.search(r"^\s*[\w.+-]+\s*:", body, re.M)


def inspect_text(text: str, name: str = "<config>", suffix: str = ".yaml", trainer: str | None = None) -> Report:
    """Inspect a configuration given as text (``suffix`` picks the parser: .json, .yaml/.yml, .txt/.sh)."""
    known = _fields.load()
    if suffix in (".txt", ".sh", ".cmd", "") and "verl.trainer.main_ppo" in text:
        return _verl(_verl_overrides(text, name), name, known)
    if suffix in (".txt", ".sh", ".cmd", "") and _looks_like_command(text):
        return _openrlhf(_parse_command(text, name, known), name, known)
    data = _load_mapping(text, name, suffix)
    if data is None:
        raise ConfigError(f"{name}: empty file")
    if not isinstance(data, dict):
        if isinstance(data, str) and _looks_like_command(data):
            return _openrlhf(_parse_command(data, name, known), name, known)
        raise ConfigError(f"{name}: expected a mapping of config fields, got a {type(data).__name__}")
    flat = _flatten(data)
    verl_sections = {k.split(".")[0] for k in known["verl"]["keys"]}
    tops = {k.lstrip("+").split(".")[0] for k in flat}
    if tops & {"actor_rollout_ref", "algorithm"} or (tops - {"defaults", "hydra"}) <= verl_sections and tops:
        return _verl(flat, name, known)
    return _trl(data, name, known, trainer)


def inspect_file(path, trainer: str | None = None) -> Report:
    """Inspect one configuration file (see the module docstring); raises :class:`ConfigError` on a bad file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    return inspect_text(text, str(path), p.suffix.lower(), trainer)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- values --------------------------------------------------------------------------------------------------


def _bool(v, name, key):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ConfigError(f"{name}: field {key}: expected true or false, got {v!r}")


def _num(v, name, key, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or v is None:
        raise ConfigError(f"{name}: field {key}: expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        raise ConfigError(f"{name}: field {key}: expected a number, got {v!r}") from None


def _choice(v, options, name, key):
    if v not in options:
        raise ConfigError(f"{name}: field {key}: unknown value {v!r} (accepted: {', '.join(map(str, options))})")
    return v


def _results():
    from kltutor import trainers

    return trainers.load_results()


def _verdict(term: KLTerm, results: dict, stale: bool) -> KLTerm:
    from kltutor import trainers

    r = trainers.setting(term.setting, results)
    term.verdict = r["on_policy"]["verdict"]
    term.bias_norm = r["on_policy"]["bias_norm"]
    if stale and r.get("stale"):
        term.stale = {"verdict": r["stale"]["verdict"], "bias_norm": r["stale"]["bias_norm"]}
    return term


# --- TRL -----------------------------------------------------------------------------------------------------


def _trl(data: dict, name: str, known: dict, trainer: str | None) -> Report:
    if "kl_placement" in data:  # kltutor's extension of GRPOTrainer (kltutor.trainers.grpo_extension)
        from kltutor.trainers.extension_spec import inspect_extension

        return inspect_extension(data, name, known)
    trl = known["trl"]
    own = {
        "GRPOConfig": set(trl["GRPOConfig"]),
        "RLOOConfig": set(trl["RLOOConfig"]),
        "PPOConfig": set(trl["PPOConfig"]["fields"]) | set(trl["base"]),
    }
    common = set(trl["script"])
    keys = set(data)
    if trainer is not None:
        if trainer.lower() not in TRL_TRAINERS:
            raise ConfigError(f"{name}: unknown trainer {trainer!r} (choose grpo, rloo or ppo)")
        cls = TRL_TRAINERS[trainer.lower()]
    else:
        every = own["GRPOConfig"] | own["RLOOConfig"] | own["PPOConfig"] | common
        unknown = sorted(keys - every)
        if unknown and not keys & every - common:
            raise ConfigError(
                f"{name}: unknown library: field {unknown[0]!r} belongs to no TRL config "
                "(GRPOConfig, RLOOConfig, PPOConfig), verl ppo_trainer or OpenRLHF command line"
            )
        if unknown:
            raise ConfigError(
                f"{name}: unknown field {unknown[0]!r} (not in TRL {trl['version']} GRPOConfig, "
                "RLOOConfig or PPOConfig)"
            )
        cands = [c for c in own if keys - common <= own[c]]
        unique = [c for c in cands if keys & (own[c] - set().union(*(own[o] for o in own if o != c)))]
        if len(unique) == 1:
            cls = unique[0]
        elif len(cands) == 1:
            cls = cands[0]
        elif not cands:
            raise ConfigError(f"{name}: fields of several TRL configs mixed (no one config has them all)")
        else:
            stem = Path(name).name.lower()
            named = [c for t, c in TRL_TRAINERS.items() if t in stem and c in cands]
            if len(named) != 1:
                raise ConfigError(
                    f"{name}: cannot tell {' from '.join(cands)} (only shared fields); pass --trainer grpo|rloo|ppo"
                )
            cls = named[0]
    allowed = own[cls] | common
    bad = sorted(keys - allowed)
    if bad:
        raise ConfigError(f"{name}: unknown field {bad[0]!r} for TRL {cls}")
    rep = {"GRPOConfig": _trl_grpo, "RLOOConfig": _trl_rloo, "PPOConfig": _trl_ppo}[cls](data, name, trl)
    if trainer is None and cls not in unique and len(cands) > 1:
        rep.notes.insert(0, f"its fields fit {', '.join(cands)}; the file name picked {cls}")
    return rep


def _get(data, defaults, key):
    return data[key] if key in data else defaults.get(key)


def _trl_grpo(data, name, trl) -> Report:
    d = trl["GRPOConfig"]
    rep = Report(name, "TRL", "GRPOTrainer (GRPOConfig)", f"trl {trl['version']}")
    beta = _num(_get(data, d, "beta"), name, "beta")
    loss_type = _choice(
        _get(data, d, "loss_type"),
        ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"],
        name,
        "loss_type",
    )
    level = _choice(
        _get(data, d, "importance_sampling_level"), ["token", "sequence"], name, "importance_sampling_level"
    )
    ratio = _bool(_get(data, d, "use_bias_correction_kl"), name, "use_bias_correction_kl")
    iters = int(_num(_get(data, d, "num_iterations"), name, "num_iterations"))
    fp16 = _bool(_get(data, d, "fp16"), name, "fp16") if _get(data, d, "fp16") is not None else False
    bf16 = _get(data, d, "bf16")
    bf16 = (not fp16) if bf16 is None else _bool(bf16, name, "bf16")
    lm_head_fp32 = _bool(_get(data, d, "cast_lm_head_to_fp32") or False, name, "cast_lm_head_to_fp32")
    if beta < 0:
        raise ConfigError(f"{name}: field beta: must be >= 0, got {beta:g}")
    if beta == 0:
        rep.notes.append("beta = 0: no KL term, and GRPOTrainer loads no reference model")
        if _bool(_get(data, d, "sync_ref_model"), name, "sync_ref_model"):
            rep.warnings.append(
                Finding(
                    "beta-zero-with-reference",
                    "sync_ref_model=True with beta = 0: a reference model is configured "
                    "but never used (TRL raises a ValueError for this combination)",
                )
            )
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
    rep.terms.append(_verdict(t, _results(), stale=iters > 1))
    _sync_note(rep, data, d, name)
    if iters > 1:
        rep.notes.append(f"num_iterations={iters}: every update after the first on a batch is off-policy (stale row)")
    if ratio and level == "sequence":
        rep.warnings.append(
            Finding(
                "ratio-with-sequence-is",
                "use_bias_correction_kl=True with importance_sampling_level='sequence' "
                "multiplies every token's k3 by one sequence-level ratio (TRL issue #6586): "
                "neither the per-token correction nor the reverse-KL gradient",
            )
        )
    if bf16 and not lm_head_fp32:
        rep.warnings.append(
            Finding(
                "unclamped-k3-bf16",
                "GRPOTrainer computes k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 "
                "without clamping, here from bf16 log-probabilities (bf16 is on): bf16 "
                "keeps 8 significant bits, so for small log-ratios the rounding of logp "
                "swamps k3 ~ l^2/2, and exp(-l) is unbounded where the policy falls far "
                "below the reference; set cast_lm_head_to_fp32=True or compute "
                "log-probabilities in float32",
            )
        )
    _trl_length(rep, loss_type, data, d, name)
    scale = _get(data, d, "scale_rewards")
    scale = {True: "group", False: "none"}.get(scale, scale)
    if _choice(scale, ["group", "batch", "none"], name, "scale_rewards") != "none":
        rep.warnings.append(
            Finding(
                "std-rescaled-beta",
                f"scale_rewards='{scale}' divides the task advantages by the {scale} reward "
                "standard deviation while the KL loss is left as is: against the raw reward "
                "the effective beta is beta * std, and it changes with every group",
            )
        )
    return rep


def _trl_length(rep, loss_type, data, d, name):
    if loss_type in ("grpo", "sapo"):
        rep.warnings.append(
            Finding(
                "length-rescaled-beta",
                f"loss_type='{loss_type}' averages each sequence's per-token loss over its "
                "own length: a sequence's KL penalty is beta * (sum of k3)/|y|, so the "
                "effective beta on the sequence KL shrinks as responses grow",
            )
        )
    elif loss_type in ("bnpo", "dapo", "cispo", "vespo"):
        rep.warnings.append(
            Finding(
                "length-rescaled-beta",
                f"loss_type='{loss_type}' divides the summed per-token loss by the number of "
                "tokens in the batch: the effective beta on each sequence's KL is "
                "beta / (mean response length), which drifts as lengths change in training",
            )
        )
    elif loss_type == "dr_grpo":
        L = _num(_get(data, d, "max_completion_length"), name, "max_completion_length")
        rep.notes.append(
            f"loss_type='dr_grpo' divides by max_completion_length = {L:g}: the effective beta on "
            "the sequence KL is the constant beta / max_completion_length"
        )


def _sync_note(rep, data, d, name):
    if _bool(_get(data, d, "sync_ref_model"), name, "sync_ref_model"):
        alpha = _num(_get(data, d, "ref_model_mixup_alpha"), name, "ref_model_mixup_alpha")
        steps = _num(_get(data, d, "ref_model_sync_steps"), name, "ref_model_sync_steps")
        rep.notes.append(
            f"sync_ref_model=True: every {steps:g} steps the reference becomes {alpha:g} x policy + "
            f"{1 - alpha:g} x reference (TR-DPO style), so the KL is to a moving anchor"
        )


def _trl_rloo(data, name, trl) -> Report:
    d = trl["RLOOConfig"]
    rep = Report(name, "TRL", "RLOOTrainer (RLOOConfig)", f"trl {trl['version']}")
    beta = _num(_get(data, d, "beta"), name, "beta")
    if beta < 0:
        raise ConfigError(f"{name}: field beta: must be >= 0, got {beta:g}")
    if beta == 0:
        rep.notes.append("beta = 0: no KL term, and RLOOTrainer loads no reference model")
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
    rep.terms.append(_verdict(t, _results(), stale=False))
    _sync_note(rep, data, d, name)
    if _bool(_get(data, d, "normalize_advantages"), name, "normalize_advantages"):
        rep.notes.append(
            "normalize_advantages=True rescales the advantages, KL penalty included, together: the "
            "penalty keeps its weight against the task reward"
        )
    return rep


def _trl_ppo(data, name, trl) -> Report:
    d = trl["PPOConfig"]["fields"]
    rep = Report(
        name, "TRL", "PPOTrainer (PPOConfig, trl.experimental.ppo)", "kltutor.gradients (TRL 1.13+ has no PPO trainer)"
    )
    rep.notes.append(
        "PPOConfig / PPOTrainer shipped last in TRL 1.12.0 (trl.experimental.ppo); the verdict "
        "is kltutor's exact placement gradient, not TRL's code"
    )
    beta = _num(_get(data, d, "kl_coef"), name, "kl_coef")
    est = _choice(_get(data, d, "kl_estimator"), ["k1", "k3"], name, "kl_estimator")
    lam = _num(_get(data, d, "lam"), name, "lam")
    if beta == 0:
        rep.warnings.append(
            Finding(
                "beta-zero-with-reference",
                "kl_coef = 0 while PPOTrainer still takes and runs a reference model (ref_model) on every batch",
            )
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
    _exact_reference(t, est)
    rep.terms.append(t)
    if lam < 1:
        rep.notes.append(
            f"lam = {lam:g} < 1: GAE mixes the penalty with the critic's values; the verdict is that "
            "of the return-to-go (lam = 1, or a perfect critic)"
        )
    return rep


def _exact_reference(term: KLTerm, estimator: str) -> None:
    from kltutor.trainers import core

    pi, ref, _, T = core.toy_models()
    from kltutor import gradients as G

    g = G.exact_kl_gradients(pi, ref, T)
    vec = g[f"{estimator}-in-reward"]
    term.verdict, _ = core.classify(vec, core.reference_gradients(pi, ref, T))
    term.bias_norm = float((vec - g["true"]).norm())


# --- verl ----------------------------------------------------------------------------------------------------

VERL_KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}
VERL_CANON = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}
A = "actor_rollout_ref.actor."


def _verl_overrides(text: str, name: str) -> dict:
    """The Hydra overrides ``key=value`` of a ``python3 -m verl.trainer.main_ppo ...`` command (a ``run_*.sh``)."""
    import yaml

    try:
        tokens = shlex.split(re.sub(r"\\\r?\n", " ", text), comments=True)
    except ValueError as e:
        raise ConfigError(f"{name}: cannot split the command line: {e}") from None
    start = next(i for i, t in enumerate(tokens) if t == "verl.trainer.main_ppo") + 1
    flat = {}
    for tok in tokens[start:]:
        if tok == "$@":
            continue
        key, eq, val = tok.partition("=")
        if not eq or not key:
            raise ConfigError(f"{name}: unexpected argument {tok!r} (expected a Hydra override key=value)")
        try:
            flat[key] = yaml.safe_load(val) if val else None
        except yaml.YAMLError:
            flat[key] = val
    return flat


def _verl(flat: dict, name: str, known: dict) -> Report:
    keys = known["verl"]["keys"]
    cfg = {}
    for k, v in flat.items():
        if k.split(".")[0] in ("defaults", "hydra"):
            continue
        key = k.lstrip("+")
        if key not in keys:
            raise ConfigError(f"{name}: unknown field {key!r} (not in verl {known['verl']['version']} ppo_trainer)")
        cfg[key] = v

    def get(key):
        v = cfg.get(key, keys.get(key))
        for _ in range(5):
            m = re.fullmatch(r"\$\{([\w.]+)\}", v) if isinstance(v, str) else None
            if not m:
                break
            if m.group(1) not in keys:
                raise ConfigError(f"{name}: field {key}: cannot resolve {v!r}")
            v = cfg.get(m.group(1), keys.get(m.group(1)))
        return v

    rep = Report(name, "verl", "PPO/GRPO trainer (ppo_trainer.yaml)", f"verl {known['verl']['version']}")
    results = _results()
    use_loss = _bool(get(A + "use_kl_loss"), name, A + "use_kl_loss")
    use_reward = _bool(get("algorithm.use_kl_in_reward"), name, "algorithm.use_kl_in_reward")
    adv = get("algorithm.adv_estimator")
    epochs = int(_num(get(A + "ppo_epochs"), name, A + "ppo_epochs"))
    agg = _choice(
        get(A + "loss_agg_mode"),
        ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"],
        name,
        A + "loss_agg_mode",
    )
    kinds = list(VERL_KL) + [k + "+" for k in VERL_KL]
    if use_loss:
        typ = _choice(get(A + "kl_loss_type"), kinds, name, A + "kl_loss_type")
        base, plus = (typ[:-1], "+") if typ.endswith("+") else (typ, "")
        est = VERL_KL[base]
        canon = VERL_CANON.get(base, base)
        beta = _num(get(A + "kl_loss_coef"), name, A + "kl_loss_coef")
        t = KLTerm(
            "loss",
            est + plus,
            "token",
            beta,
            "fixed (kl_ctrl applies only to the in-reward penalty)",
            "straight-through: k2's gradient ('+')" if plus and est != "k2" else "none",
            f"use_kl_loss=True, kl_loss_type={typ}, kl_loss_coef={beta:g}",
            setting=f"verl.loss.{canon}{plus}",
            source=f"core_algos.kl_penalty + agg_loss, verl {known['verl']['version']}",
        )
        rep.terms.append(_verdict(t, results, stale=epochs > 1))
        if est == "k1" and not plus:
            rep.warnings.append(
                Finding(
                    "k1-in-loss",
                    f"kl_loss_type={typ} puts k1 in the loss: its expected gradient is zero, the term only adds noise",
                )
            )
        if beta == 0:
            rep.warnings.append(
                Finding(
                    "beta-zero-with-reference",
                    "use_kl_loss=True with kl_loss_coef = 0: verl still builds and runs the "
                    "reference policy (need_reference_policy) for a term that is multiplied "
                    "by zero",
                )
            )
        if agg in ("token-mean", "seq-mean-token-mean"):
            what = (
                "the number of tokens in the (global) batch: the effective beta on a sequence's KL is "
                "kl_loss_coef / (mean response length)"
                if agg == "token-mean"
                else "each sequence's own length: the effective beta on a sequence's KL shrinks as it grows"
            )
            rep.warnings.append(Finding("length-rescaled-beta", f"loss_agg_mode={agg} divides the KL loss by {what}"))
        if adv == "grpo" and _bool(get("algorithm.norm_adv_by_std_in_grpo"), name, "algorithm.norm_adv_by_std_in_grpo"):
            rep.warnings.append(
                Finding(
                    "std-rescaled-beta",
                    "adv_estimator=grpo with norm_adv_by_std_in_grpo=True divides the task "
                    "advantages by the group's reward standard deviation while the KL loss is "
                    "left as is: against the raw reward the effective beta is "
                    "kl_loss_coef * std, and it changes with every group",
                )
            )
        if epochs > 1:
            rep.notes.append(
                f"ppo_epochs={epochs}: later epochs reuse the batch off-policy (stale row); verl's KL "
                "loss has no importance ratio"
            )
    if use_reward:
        typ = _choice(get("algorithm.kl_penalty"), kinds, name, "algorithm.kl_penalty")
        base = typ.rstrip("+")
        est = VERL_KL[base]
        canon = VERL_CANON.get(base, base)
        ctrl = _choice(get("algorithm.kl_ctrl.type"), ["fixed", "adaptive"], name, "algorithm.kl_ctrl.type")
        beta = _num(get("algorithm.kl_ctrl.kl_coef"), name, "algorithm.kl_ctrl.kl_coef")
        if ctrl == "adaptive":
            target = _num(get("algorithm.kl_ctrl.target_kl"), name, "algorithm.kl_ctrl.target_kl")
            horizon = _num(get("algorithm.kl_ctrl.horizon"), name, "algorithm.kl_ctrl.horizon")
            ctrl = f"adaptive (initial beta, target_kl = {target:g}, horizon = {horizon:g})"
        t = KLTerm(
            "reward",
            est,
            "token",
            beta,
            ctrl,
            "none",
            f"use_kl_in_reward=True, kl_penalty={typ}, kl_ctrl.kl_coef={beta:g}",
            setting=f"verl.reward.{canon}",
            source=f"apply_kl_penalty, verl {known['verl']['version']}",
        )
        rep.terms.append(_verdict(t, results, stale=False))
        if beta == 0 and ctrl == "fixed":
            rep.warnings.append(
                Finding(
                    "beta-zero-with-reference",
                    "use_kl_in_reward=True with a fixed kl_coef = 0: verl still builds and runs "
                    "the reference policy for a penalty multiplied by zero",
                )
            )
        if adv != "gae":
            rep.notes.append(
                f"adv_estimator={adv}: the penalty enters the advantage together with the task reward "
                "(normalized with it); the verdict is that of the return-to-go (GAE, lam = gamma = 1)"
            )
        if adv == "gae":
            lam = _num(get("algorithm.lam"), name, "algorithm.lam")
            if lam < 1:
                rep.notes.append(f"algorithm.lam = {lam:g} < 1: GAE mixes the penalty with the critic's values")
    if use_loss and use_reward:
        rep.warnings.append(
            Finding(
                "two-kl-terms",
                "use_kl_loss and use_kl_in_reward are both on: the gradient "
                "is the sum of both terms' gradients, and each beta is tuned against the other",
            )
        )
    if not rep.terms:
        rep.notes.append("use_kl_loss and use_kl_in_reward are both off: no KL term, no reference model")
    return rep


# --- OpenRLHF ------------------------------------------------------------------------------------------------

OPENRLHF_RENAMED = {
    "--init_kl_coef": "--algo.kl.init_coef",
    "--use_kl_loss": "--algo.kl.use_loss",
    "--kl_estimator": "--algo.kl.estimator",
    "--kl_target": "--algo.kl.target",
    "--kl_horizon": "--algo.kl.horizon",
    "--advantage_estimator": "--algo.advantage.estimator",
    "--max_epochs": "--train.max_epochs",
}


def _parse_command(text: str, name: str, known: dict) -> dict:
    opts = known["openrlhf"]["options"]
    try:
        tokens = shlex.split(re.sub(r"\\\r?\n", " ", text), comments=True)
    except ValueError as e:
        raise ConfigError(f"{name}: cannot split the command line: {e}") from None
    start = None
    for i, tok in enumerate(tokens):
        if "openrlhf.cli." in tok:
            if not tok.endswith("train_ppo_ray"):
                raise ConfigError(
                    f"{name}: unknown library entry point {tok!r} (the inspector reads "
                    "openrlhf.cli.train_ppo_ray command lines)"
                )
            start = i + 1
            break
    if start is None:
        dashed = [i for i, t in enumerate(tokens) if t.startswith("--")]
        old = [tokens[i] for i in dashed if tokens[i].split("=")[0] in OPENRLHF_RENAMED]
        if not dashed or not any(tokens[i].split("=")[0] in opts for i in dashed) and not old:
            first = tokens[dashed[0]] if dashed else (tokens[0] if tokens else "")
            raise ConfigError(
                f"{name}: unknown library: {first!r} is no openrlhf.cli.train_ppo_ray option and "
                "the file is not a TRL or verl YAML/JSON config"
            )
        start = dashed[0]
    args = {}
    toks = tokens[start:]
    i = 0
    while i < len(toks):
        tok = toks[i]
        if not tok.startswith("--"):
            raise ConfigError(f"{name}: unexpected argument {tok!r} (expected an --option)")
        opt, eq, val = tok.partition("=")
        if opt not in opts:
            hint = (
                f" (OpenRLHF {known['openrlhf']['version']} calls it {OPENRLHF_RENAMED[opt]})"
                if opt in OPENRLHF_RENAMED
                else ""
            )
            raise ConfigError(f"{name}: unknown field {opt!r}{hint}")
        spec = opts[opt]
        i += 1
        if spec["flag"]:
            if eq:
                raise ConfigError(f"{name}: field {opt}: a switch takes no value")
            args[spec["dest"]] = True
            continue
        if eq:
            vals = [val]
        else:
            n = spec["nargs"]
            vals = []
            while i < len(toks) and not toks[i].startswith("--") and (not isinstance(n, int) or len(vals) < n):
                vals.append(toks[i])
                i += 1
            if not vals:
                raise ConfigError(f"{name}: field {opt}: missing value")
        if spec["choices"] and any(v not in map(str, spec["choices"]) for v in vals):
            raise ConfigError(
                f"{name}: field {opt}: unknown value {vals[0]!r} (accepted: {', '.join(map(str, spec['choices']))})"
            )
        args[spec["dest"]] = vals[0] if len(vals) == 1 else vals
    return args


def _openrlhf(args: dict, name: str, known: dict) -> Report:
    opts = {v["dest"]: v for v in known["openrlhf"]["options"].values()}
    ver = known["openrlhf"]["version"]

    def get(dest):
        return args[dest] if dest in args else opts[dest]["default"]

    rep = Report(name, "OpenRLHF", "train_ppo_ray", f"openrlhf {ver}")
    adv = get("algo.advantage.estimator")
    std_norm = not get("algo.advantage.no_std_norm")
    results = _results()
    beta = _num(get("algo.kl.init_coef"), name, "--algo.kl.init_coef")
    use_loss = bool(get("algo.kl.use_loss"))
    est = get("algo.kl.estimator")
    unbiased = bool(get("algo.kl.unbiased_gradient"))
    target = _num(get("algo.kl.target"), name, "--algo.kl.target", allow_none=True)
    horizon = _num(get("algo.kl.horizon"), name, "--algo.kl.horizon")
    epochs = int(_num(get("train.max_epochs"), name, "--train.max_epochs"))
    agg = get("actor.loss_agg_mode")
    ctrl = "fixed" if target is None else f"adaptive (initial beta, target = {target:g}, horizon = {horizon:g})"
    if beta <= 0:
        rep.notes.append("--algo.kl.init_coef <= 0: no KL term, and no reference model is started")
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
        rep.terms.append(_verdict(t, results, stale=epochs > 1))
        if est == "k1" and not unbiased:
            rep.warnings.append(
                Finding(
                    "k1-in-loss",
                    "--algo.kl.use_loss with --algo.kl.estimator k1 (the default "
                    "estimator) puts k1 in the loss: its expected gradient is zero",
                )
            )
        if unbiased and get("actor.policy_loss_type") == "gspo":
            rep.warnings.append(
                Finding(
                    "ratio-with-sequence-is",
                    "--algo.kl.unbiased_gradient weights each token's KL by the per-token ratio "
                    "w_t while --actor.policy_loss_type gspo importance-samples whole sequences:"
                    " the two corrections disagree, and neither makes a per-token KL loss exact "
                    "on stale batches",
                )
            )
        what = (
            "the number of tokens in the batch: the effective beta on a sequence's KL is "
            "init_coef / (mean response length)"
            if agg == "token-mean"
            else "each sequence's own length: the effective beta on a sequence's KL shrinks as it grows"
        )
        rep.warnings.append(
            Finding("length-rescaled-beta", f"--actor.loss_agg_mode {agg} divides the KL loss by {what}")
        )
        if std_norm and adv in ("group_norm", "gae", "reinforce", "reinforce_baseline"):
            rep.warnings.append(
                Finding(
                    "std-rescaled-beta",
                    f"--algo.advantage.estimator {adv} divides the task advantages by a reward "
                    "standard deviation (group_norm: the group's; otherwise the batch "
                    "whitening) while the KL loss is left as is: against the raw reward the "
                    "effective init_coef is init_coef * std",
                )
            )
        if epochs > 1:
            rep.notes.append(f"--train.max_epochs {epochs}: later epochs reuse the batch off-policy (stale row)")
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
        rep.terms.append(_verdict(t, results, stale=False))
        if adv == "group_norm" and not get("algo.advantage.no_std_norm"):
            rep.warnings.append(
                Finding(
                    "std-rescaled-beta",
                    "--algo.advantage.estimator group_norm divides the task reward by its "
                    "group's standard deviation before compute_reward adds the KL penalty: "
                    "against the raw reward the effective init_coef is init_coef * std",
                )
            )
        if adv == "gae":
            lam = _num(get("algo.advantage.lambd"), name, "--algo.advantage.lambd")
            if lam < 1:
                rep.notes.append(f"--algo.advantage.lambd {lam:g} < 1: GAE mixes the penalty with the critic")
    return rep
