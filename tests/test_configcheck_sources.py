"""What the config inspector says about each library, checked against the installed releases' source
(``-m trainers``; run by ``make trainers-test``): a quoted fragment per statement, and the library's own
function run on a toy where it runs on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainers


def _source(package: str, rel: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    return (Path(list(spec.submodule_search_locations)[0]) / rel).read_text()


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_openrlhf_kl_loss_is_a_global_token_mean():
    """#25 item 12: aggregate_loss gets no token_level_loss for the KL term, whatever --actor.loss_agg_mode."""
    actor = _source("openrlhf", "trainer/ray/ppo_actor.py")
    assert "kl_loss = aggregate_loss(kl, experience.action_mask, **loss_batch_info)" in actor
    assert 'token_level_loss=self.args.actor.loss_agg_mode == "token-mean"' in actor  # the policy loss only
    utils = _source("openrlhf", "utils/loss_utils.py")
    assert 'return {"dp_size": dp_size, "batch_num_tokens": num_tokens / gas, "global_batch_size"' in utils
    loss = _source("openrlhf", "models/loss.py")
    assert "token_level_loss: bool = True," in loss.split("def aggregate_loss", 1)[1][:200]


def test_openrlhf_group_norm_always_divides_by_the_group_std():
    """#25 item 12: --algo.advantage.no_std_norm acts on the gae/reinforce/reinforce_baseline whitening only."""
    maker = _squash(_source("openrlhf", "trainer/ppo_utils/experience_maker.py"))
    assert (
        _squash(
            'elif args.algo.advantage.estimator == "group_norm": '
            "rewards = (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-9)"
        )
        in maker
    )
    whiten = maker.split('if args.algo.advantage.estimator in ["gae", "reinforce", "reinforce_baseline"]:', 1)
    assert len(whiten) == 2 and "if not args.algo.advantage.no_std_norm:" in whiten[1][:600]
    assert maker.count("no_std_norm") == 1


def test_openrlhf_is_correction_gates_the_policy_loss_only():
    loss = _squash(_source("openrlhf", "models/loss.py"))
    assert 'if self.is_correction_level != "off" and self.policy_loss_type == "ppo":' in loss
    assert "stat = masked_mean(stat, action_mask, dim=-1).unsqueeze(-1)" in loss  # a mean over the sequence
    assert "coef = torch.where(keep, token_is, 0.0)" in loss
    cli = _source("openrlhf", "cli/train_ppo_ray.py")
    for option in ("is_correction_level", "is_correction_mode", "is_correction_gating", "is_correction_threshold"):
        assert f'"--algo.advantage.{option}"' in cli


def test_trl_sequence_mask_sums_the_log_ratio_and_weights_the_policy_term_only():
    src = _squash(_source("trl", "trainer/grpo_trainer.py"))
    assert "per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)" in src
    weight = src.index('per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]')
    kl = src.index("per_token_loss = per_token_loss + self.beta * per_token_kl")
    mask = src.index("per_token_loss = per_token_loss * off_policy_mask")
    assert mask < weight < kl  # the KL term is added after the weights and the mask
    config = _squash(_source("trl", "trainer/grpo_config.py"))
    assert "self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap" in config


def test_trl_off_policy_mask_on_a_toy():
    """Only negative-advantage sequences whose mean k1 exceeds the threshold are dropped (TRL's own function)."""
    pytest.importorskip("trl")
    import torch
    from trl import GRPOTrainer

    logp = torch.zeros(4, 3)
    sampling = torch.tensor([[0.0] * 3, [0.9] * 3, [0.9] * 3, [0.1] * 3])  # mean k1 0, 0.9, 0.9, 0.1
    adv = torch.tensor([[-1.0], [-1.0], [1.0], [-1.0]])
    keep = GRPOTrainer.get_off_policy_mask(adv, logp, sampling, torch.ones(4, 3), 0.5)
    assert keep.flatten().tolist() == [1.0, 0.0, 1.0, 1.0]


def test_verl_seq_sum_rejects_long_sequences_at_the_same_per_token_mismatch():
    """The length-biased-filter warning on verl's own compute_rollout_rejection_mask: the same per-token
    log-ratio passes a seq_mean threshold for both lengths and fails seq_sum/seq_max only for the longer."""
    pytest.importorskip("verl")
    import torch
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_rejection_mask

    log_ratio = torch.full((2, 10), -0.2)  # k3 per token = exp(-0.2) - 1 + 0.2 = 0.0187
    mask = torch.zeros(2, 10)
    mask[0, :2] = 1  # 2 tokens
    mask[1, :] = 1  # 10 tokens
    kept = {}
    for mode in ("seq_sum_k3", "seq_mean_k3"):
        new_mask, _ = compute_rollout_rejection_mask(log_ratio, mask, rollout_rs=mode, rollout_rs_threshold=0.1)
        kept[mode] = (new_mask.sum(-1) > 0).tolist()
    assert kept == {"seq_sum_k3": [True, False], "seq_mean_k3": [True, True]}
    src = _source("verl", "trainer/ppo/rollout_corr_helper.py")
    assert 'batch.batch["response_mask"] = modified_response_mask' in src  # every loss term, KL loss included
    assert "def _sequence_max(values: torch.Tensor)" in src
    # rollout_is: a "lower_upper" threshold masks (IcePop), a single one truncates; sequence = summed log-ratio
    flat = _squash(src)
    assert "use_icepop = rollout_is_threshold_lower is not None" in flat
    assert "rollout_is_weights = raw_rollout_is_weights.clamp(max=rollout_is_threshold_upper)" in flat
    assert "log_ratio_sum: torch.Tensor = verl_F.masked_sum(log_ratio, response_mask, axis=-1)" in flat


def test_adaptive_controllers_are_multiplicative():
    """The adaptive-from-zero warning: both controllers multiply beta, so from 0 it stays 0."""
    verl = _squash(_source("verl", "trainer/ppo/core_algos.py")).split("class AdaptiveKLController", 1)[1]
    assert "self.value *= mult" in verl[:2000]
    orl = _squash(_source("openrlhf", "trainer/ppo_utils/kl_controller.py")).split("class AdaptiveKLController", 1)[1]
    assert "self.value = init_kl_coef" in orl and "self.value *= mult" in orl[:800]


def test_verl_kl_loss_aggregation_and_rollout_is_weights():
    """verl's KL loss follows the actor's loss_agg_mode (length-rescaled-beta); rollout IS weights multiply the
    policy-gradient losses only (the rollout_is note)."""
    losses = _squash(_source("verl", "workers/utils/losses.py"))
    kl = losses.split("kld = kl_penalty(", 1)[1][:400]
    assert "kl_loss = agg_loss( loss_mat=kld, loss_mask=response_mask, loss_agg_mode=config.loss_agg_mode" in kl
    assert "rollout_is" not in kl
    algos = _squash(_source("verl", "trainer/ppo/core_algos.py"))
    assert algos.count("pg_losses = pg_losses * rollout_is_weights") >= 3
