"""The ledger's library facts: what the book says TRL, verl, OpenRLHF and PEFT do, pinned to their source.

Every statement of the book about a library (a flag name, a default, what a function computes, where an
importance weight is applied, a clamp, an aggregation) is a :class:`LibraryFact`: the statement, the section
that states it, and short verbatim fragments of the installed release's source (module, fragment) that show
it. Each fact is also a claim of the ledger (group "Library facts"), whose check runs anywhere:

- without the libraries (the book's environment), it validates the record: the pinned versions are those the
  stored trainer results were computed with (``kltutor/trainers/data/results.json``), every module belongs to
  its library, every fragment is short and non-empty;
- with the libraries installed at the pinned versions (``make trainers-test``), it also finds every fragment in
  the installed module's source.

``tests/test_library_facts.py`` (run by ``make trainers-test``) does the second part for every fact and runs
each library's code on the toy where the fact is about behaviour (what a function computes, a default, a
clamp), so a release that changes the code fails CI instead of leaving the book stale.

>>> from kltutor.claims import libraries
>>> libraries.VERSIONS["trl"]
'1.16.0'
>>> libraries.fact("verl-rollout-is-pg-only").library
'verl'
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from kltutor.claims._core import _claim, _require

#: The releases the book, the ledger and the adapters describe (the ``[trainers]`` extra installs them).
VERSIONS: dict[str, str] = {"trl": "1.16.0", "verl": "0.9.1", "openrlhf": "0.11.2", "peft": "0.22.0"}
PACKAGES: dict[str, str] = {"TRL": "trl", "verl": "verl", "OpenRLHF": "openrlhf", "PEFT": "peft"}


@dataclass(frozen=True)
class LibraryFact:
    """One statement of the book about a library, with the source fragments that show it.

    ``sources`` pairs a dotted module of the library (or a file relative to the package directory, for YAML
    configs) with a fragment copied verbatim from that file at the pinned release. ``behaviour`` names the
    test in ``tests/test_library_facts.py`` that runs the code on the toy ("" when the fact is about the
    code's text alone, e.g. the order of two lines).
    """

    id: str
    library: str
    statement: str
    source: str
    sources: tuple[tuple[str, str], ...]
    behaviour: str = ""


FACTS: tuple[LibraryFact, ...] = (
    LibraryFact(
        "trl-fused-lm-head-precision",
        "TRL",
        "TRL's `GRPOTrainer` scores tokens through a fused LM head (`ChunkedLogProbFunction`): the log-softmax is "
        "folded in float32, but the projection hidden @ W^T runs in the compute dtype (bf16 when bf16 is on), so the "
        "float32 log-probabilities are those of bf16-rounded logits; `cast_lm_head_to_fp32=True` projects in float32. "
        "TRL's configs turn bf16 on by default (unless fp16 is set).",
        "sec-practice-bf16",
        (
            ("trl.trainer.grpo_trainer", "outputs = model(**model_inputs, labels=labels, fused_lm_head=True)"),
            (
                "trl.kernels.chunked_logprob",
                "torch.mm(hidden_chunk, weight[start:end].to(compute_dtype).t(), out=tile)",
            ),
            ("trl.kernels.chunked_logprob", "sum_exp = torch.zeros((N,), device=device, dtype=torch.float32)"),
            ("trl.trainer.utils", "hidden_states = hidden_states.float()"),
            ("trl.trainer.base_config", "self.bf16 = not (self.fp16) if self.bf16 is None else self.bf16"),
        ),
        "test_trl_fused_lm_head_log_softmax_in_float32",
    ),
    LibraryFact(
        "trl-tempered-scoring",
        "TRL",
        "TRL's `GRPOTrainer` scores the policy and the reference model at the rollout temperature: it installs a "
        "fused LM head with `temperature=self.temperature` on both, which divides the logits by it; no top-p or "
        "top-k is applied when scoring.",
        "sec-practice-sampler",
        (
            ("trl.trainer.grpo_trainer", "self.ref_model, temperature=self.temperature"),
            ("trl.trainer.grpo_trainer", "add_fused_lm_head("),
            ("trl.trainer.utils", "logits = logits / temperature"),
        ),
        "test_trl_selective_log_softmax_divides_by_temperature",
    ),
    LibraryFact(
        "verl-tempered-scoring",
        "verl",
        "verl puts the rollout temperature in every batch's `meta_info`, so the actor's and the reference's "
        "log-probabilities are computed from logits divided by it.",
        "sec-practice-sampler",
        (
            (
                "verl.trainer.ppo.ray_trainer",
                'batch.meta_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature',
            ),
            ("verl.workers.engine.fsdp.transformer_impl", "return logits / temperature.clamp(min=1e-8)"),
        ),
    ),
    LibraryFact(
        "trl-vllm-is-pg-only",
        "TRL",
        "TRL's vLLM importance-sampling ratio is the trainer's own old score over the sampler's log-probabilities; "
        "TRL multiplies only the policy-gradient term by it and adds "
        "`beta * per_token_kl` afterwards; the logged `kl` is the masked mean of `per_token_kl`. Modes "
        "`token_truncate`, `sequence_truncate` (clip at `vllm_importance_sampling_clip_max`), `token_mask`, "
        "`sequence_mask` (the default: ratios above the cap are zeroed); cap 3.0.",
        "sec-practice-tis",
        (
            (
                "trl.trainer.grpo_trainer",
                "per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask",
            ),
            (
                "trl.trainer.grpo_trainer",
                "old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps",
            ),
            ("trl.trainer.grpo_trainer", 'per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]'),
            ("trl.trainer.grpo_trainer", "per_token_loss = per_token_loss + self.beta * per_token_kl"),
            ("trl.trainer.grpo_trainer", 'self._metrics[mode]["kl"].append(global_masked_mean(per_token_kl))'),
            (
                "trl.trainer.grpo_trainer",
                'if self.vllm_importance_sampling_mode in ["sequence_truncate", "token_truncate"]:',
            ),
        ),
        "test_trl_is_weight_before_kl_and_defaults",
    ),
    LibraryFact(
        "verl-rollout-is-pg-only",
        "verl",
        "verl's rollout correction (`algorithm.rollout_correction.rollout_is` = `token` or `sequence`, default "
        "`sequence`, threshold `rollout_is_threshold`, default 2.0) multiplies the policy-gradient losses by the "
        "weights; the KL loss is `kl_penalty` aggregated by `agg_loss` and added with `kl_loss_coef`, unweighted.",
        "sec-practice-tis",
        (
            ("verl.trainer.ppo.core_algos", "pg_losses = pg_losses * rollout_is_weights"),
            ("verl.workers.utils.losses", "policy_loss += kl_loss * config.kl_loss_coef"),
            ("verl.workers.utils.losses", 'metrics["kl_loss"] = Metric(value=kl_loss, aggregation=metric_aggregation)'),
            ("verl.workers.utils.losses", "kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob"),
            ("verl.trainer.config.algorithm", 'rollout_is: Optional[str] = "sequence"'),
            ("verl.trainer.config.algorithm", "rollout_is_threshold: str | float = 2.0"),
        ),
        "test_verl_rollout_is_defaults",
    ),
    LibraryFact(
        "trl-grpo-kl-term",
        "TRL",
        "TRL's GRPO KL term is k3 of the per-token log-ratio, unclamped; with `use_bias_correction_kl=True` (the "
        "default) it is multiplied by `coef_1`, the policy loss's own ratio, which at "
        "`importance_sampling_level='sequence'` is the geometric mean of the token ratios. `GRPOConfig` defaults: "
        "`beta=0.0`, `loss_type='dapo'`.",
        "sec-practice-sequence-ratio",
        (
            (
                "trl.trainer.grpo_trainer",
                "torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1",
            ),
            ("trl.trainer.grpo_trainer", "per_token_kl = per_token_kl * coef_1"),
            (
                "trl.trainer.grpo_trainer",
                "log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)",
            ),
            ("trl.trainer.grpo_trainer", "coef_1 = torch.exp(log_importance_weights)"),
        ),
        "test_trl_grpo_config_defaults",
    ),
    LibraryFact(
        "trl-loss-types",
        "TRL",
        "TRL's `loss_type`: 'grpo' averages each sequence's tokens then the sequences; 'bnpo' is a token mean of "
        "the local batch; 'dapo' (default) a token mean over the generation batch; 'dr_grpo' divides the sum by "
        "batch size times `max_completion_length`; 'luspo' sums each sequence's tokens and averages the sequences.",
        "sec-practice-aggregation",
        (
            (
                "trl.trainer.grpo_trainer",
                "loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()",
            ),
            ("trl.trainer.grpo_trainer", "loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)"),
            ("trl.trainer.grpo_trainer", "(per_token_loss.size(0) * self.max_completion_length)"),
            ("trl.trainer.grpo_trainer", "loss = (per_token_loss * mask).sum(-1).mean()"),
        ),
        "test_trl_grpo_config_defaults",
    ),
    LibraryFact(
        "verl-agg-loss-modes",
        "verl",
        "verl's `loss_agg_mode`: 'token-mean' (default), 'token-sum' (the sum over every valid token), "
        "'seq-mean-token-mean', 'seq-mean-token-sum', 'seq-mean-token-sum-norm' (the seq-mean-token-sum divided by "
        "`loss_scale_factor`, default the padded response length); the KL loss uses the same `agg_loss`.",
        "sec-practice-aggregation",
        (
            ("verl.trainer.ppo.core_algos", 'elif loss_agg_mode == "token-sum":'),
            (
                "verl.trainer.ppo.core_algos",
                "loss = verl_F.masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size",
            ),
            ("verl.trainer.ppo.core_algos", "loss /= loss_scale_factor"),
            ("verl.workers.utils.losses", "loss_mat=kld, loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode"),
        ),
        "test_verl_agg_loss_modes",
    ),
    LibraryFact(
        "trl-lora-reference",
        "TRL",
        "With a PEFT model and `beta > 0`, TRL copies a pretrained adapter into a `ref` adapter; only with PEFT "
        "0.17-0.19 and a LoRA config using `target_parameters` does it warn and score the reference with the "
        "adapters disabled (the base model).",
        "sec-practice-reference",
        (
            ("trl.trainer.grpo_trainer", 'Version("0.17.0") <= Version(peft.__version__) < Version("0.20.0")'),
            ("trl.trainer.grpo_trainer", 'model.add_adapter("ref", default_config)'),
        ),
        "test_trl_lora_fallback_not_taken_with_installed_peft",
    ),
    LibraryFact(
        "peft-residual-inits",
        "PEFT",
        "PEFT's PiSSA and OLoRA initialisations overwrite the base layer's weight with a residual, so disabling "
        "the adapter no longer gives the original model.",
        "sec-practice-reference",
        (
            ("peft.tuners.lora.layer", "def pissa_init(self, adapter_name, init_lora_weights):"),
            ("peft.tuners.lora.layer", "self.get_base_layer().weight.data = weight"),
            ("peft.tuners.lora.layer", "def olora_init(self, adapter_name):"),
        ),
    ),
    LibraryFact(
        "verl-kl-penalty-clamps",
        "verl",
        "verl's k3 (`low_var_kl`) clamps the log-ratio to [-20, 20] and the value to [-10, 10], so a clamped "
        "token passes no gradient; a `+` suffix keeps the value and passes k2's gradient through a straight-through "
        "term, unclamped. Only bare 'mse'/'k2' return early; 'mse+' goes through the straight-through branch and "
        "gives k2's value and gradient.",
        "sec-placements-trainers",
        (
            ("verl.trainer.ppo.core_algos", "kl = torch.clamp(kl, min=-20, max=20)"),
            ("verl.trainer.ppo.core_algos", "return torch.clamp(kld, min=-10, max=10)"),
            ("verl.trainer.ppo.core_algos", 'if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):'),
            ("verl.trainer.ppo.core_algos", "return backward_score - backward_score.detach() + forward_score.detach()"),
        ),
        "test_verl_clamp_and_straight_through",
    ),
    LibraryFact(
        "openrlhf-kl-clamps",
        "OpenRLHF",
        "OpenRLHF's `compute_approx_kl` clamps every estimator's value to [-10, 10] (a clamped token passes no "
        "gradient); with `--algo.kl.unbiased_gradient` the value is detached and the gradient is k2's times a "
        "detached ratio clamped at 10, unclamped in the log-ratio. Flags `--algo.kl.use_loss`, `--algo.kl.estimator`.",
        "sec-placements-trainers",
        (
            ("openrlhf.models.utils", "value = value.clamp(min=-10, max=10)"),
            ("openrlhf.models.utils", "KL_IS_WEIGHT_CLIP = 10.0"),
            ("openrlhf.models.utils", "return value.detach() + grad_surrogate - grad_surrogate.detach()"),
            ("openrlhf.cli.train_ppo_ray", '"--algo.kl.unbiased_gradient",'),
            ("openrlhf.cli.train_ppo_ray", '"--algo.kl.use_loss", action="store_true", default=False'),
            ("openrlhf.cli.train_ppo_ray", '"--algo.kl.estimator",'),
        ),
        "test_openrlhf_clamp_and_straight_through",
    ),
    LibraryFact(
        "verl-kl-in-reward-old-logprobs",
        "verl",
        "verl's in-reward penalty (`algorithm.use_kl_in_reward`) is computed once per batch from the log-probabilities "
        "of the policy that sampled it (`old_log_probs`) and the reference's, and stays fixed through the updates.",
        "sec-placements-trainers",
        (
            (
                "verl.trainer.ppo.ray_trainer",
                'data.batch["old_log_probs"], data.batch["ref_log_prob"], kl_penalty=kl_penalty',
            ),
        ),
    ),
    LibraryFact(
        "trl-rloo-kl-in-reward-old-logprobs",
        "TRL",
        "TRL's `RLOOTrainer` subtracts `beta` times the summed k1 from the reward, computed once per batch from the "
        "log-probabilities of the policy that sampled it (`old_per_token_logps`) and the reference's.",
        "sec-capstone-step",
        (
            ("trl.trainer.rloo_trainer", "per_token_kl = old_per_token_logps - ref_per_token_logps"),
            ("trl.trainer.rloo_trainer", "rewards = rewards - self.beta * kl"),
        ),
    ),
    LibraryFact(
        "verl-adaptive-kl-controller",
        "verl",
        "verl's `algorithm.kl_ctrl.type: adaptive` (default `fixed`) is Ziegler et al.'s controller: the error "
        "`KL/target - 1` clipped to [-0.2, 0.2], times `n_steps/horizon`, multiplies the coefficient.",
        "sec-schedules-controllers",
        (
            ("verl.trainer.ppo.core_algos", "proportional_error = np.clip(current_kl / target - 1, -0.2, 0.2)"),
            ("verl.trainer.ppo.core_algos", "mult = 1 + proportional_error * n_steps / self.horizon"),
            ("verl.trainer.config.algorithm", 'type: str = "fixed"'),
        ),
        "test_verl_adaptive_controller_is_kltutors",
    ),
    LibraryFact(
        "trl-no-ppo-trainer",
        "TRL",
        "TRL 1.16 ships no PPO trainer (`trl.experimental.ppo` was last in 1.12.0, history).",
        "sec-placements-trainers",
        (),
        "test_trl_has_no_ppo",
    ),
)


def fact(fact_id: str) -> LibraryFact:
    """The fact with id ``fact_id``."""
    for f in FACTS:
        if f.id == fact_id:
            return f
    raise KeyError(f"no library fact {fact_id!r}; ids: {', '.join(f.id for f in FACTS)}")


def source_text(module: str) -> str:
    """The installed source of ``module`` (a dotted module, or ``package:relative/path`` for a data file).

    Read from the file under the package's directory, without importing it (importing some OpenRLHF
    modules needs flash-attn, and importing verl's is slow)."""
    package, _, rest = module.partition(":") if ":" in module else (module.split(".")[0], "", "")
    spec = importlib.util.find_spec(package)  # a top-level spec: nothing is executed
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"{package} is not installed")
    root = Path(spec.origin).parent
    if rest:
        return (root / rest).read_text()
    parts = module.split(".")[1:]
    path = root.joinpath(*parts)
    return (path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py").read_text()


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (its distribution metadata), or ``None``."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def missing_fragments(f: LibraryFact) -> list[str]:
    """The fragments of ``f`` that are not in the installed source (the library must be installed)."""
    out = []
    for module, fragment in f.sources:
        if fragment not in source_text(module):
            out.append(f"{module}: {fragment!r}")
    return out


def _validate(f: LibraryFact) -> dict[str, object]:
    import json

    package = PACKAGES[f.library]
    stored = json.loads((Path(__file__).parents[1] / "trainers" / "data" / "results.json").read_text())["versions"]
    for name in ("trl", "verl", "openrlhf"):
        _require(stored[name] == VERSIONS[name], f"results.json has {name} {stored[name]}, the book {VERSIONS[name]}")
    _require(f.statement.strip() and (f.sources or f.behaviour), "a fact needs a statement and fragments or a test")
    for module, fragment in f.sources:
        _require(module.split(".")[0].split(":")[0] == package, f"{module} is not part of {package}")
        _require(0 < len(fragment) <= 120 and fragment == fragment.strip(), f"fragment must be short: {fragment!r}")
    out: dict[str, object] = {"release": f"{package} {VERSIONS[package]}", "fragments": len(f.sources)}
    if f.sources and installed_version(package) == VERSIONS[package]:
        missing = missing_fragments(f)
        _require(not missing, "not in the installed source: " + "; ".join(missing))
        out["found in the installed source"] = True
    else:
        out["installed source checked"] = "by make trainers-test"
    return out


def _register(f: LibraryFact) -> None:
    where = "; ".join(f"`{m}`: `{frag}`" for m, frag in f.sources) or "none (a behaviour test)"
    _claim(
        f.id,
        "Library facts",
        f"{f.library} {VERSIONS[PACKAGES[f.library]]}: {f.statement}",
        f"the installed release; source fragments: {where}",
        f.source,
        checked_by="kltutor.claims.libraries + tests/test_library_facts.py"
        + (f"::{f.behaviour}" if f.behaviour else ""),
        refuted=_REFUTED.get(f.id, ()),
    )(lambda f=f: _validate(f))


#: Wrong or stale versions of these facts that have appeared in the book.
_REFUTED: dict[str, tuple[str, ...]] = {
    "trl-tempered-scoring": (r"\bf2cd577\b(?![^.]*histor)", r"logits\.div_\(self\.temperature\)"),
    "verl-tempered-scoring": (r"\bb178a3c\b(?![^.]*histor)", r"verl/workers/fsdp_workers\.py"),
    "verl-kl-penalty-clamps": (r"kl_penalty returns k2 itself", r"[Aa] clamped token has zero gradient\."),
    "verl-agg-loss-modes": (r"summed, not averaged, over sequences",),
    "trl-loss-types": (r"'luspo' scales a sequence-level loss",),
    "trl-no-ppo-trainer": (r"TRL's and verl's PPO",),
    "trl-fused-lm-head-precision": (r"(?:GRPOTrainer|TRL)[^.]{0,120}\bfrom bf16 log-probabilities",),
}

for _f in FACTS:
    _register(_f)
