"""The tiny capstone the tests share: one set of settings, as config fields and as flags, and one GRPO
step's context built by hand (without a run directory or an SFT reference)."""

import torch

from kltutor.capstone.config import CapstoneConfig
from kltutor.capstone.loop import StepContext, make_beta_schedule, make_sampler
from kltutor.capstone.model import build_model
from kltutor.trainers.extension_checks import TINY

# A one-layer Qwen2 on sums up to 9 whose SFT takes a second or two; every test of a whole run uses it.
# Defined once in the package, whose stored TRL-extension figures were measured on it.
TINY_SETTINGS = TINY


def cli_flags(settings: dict = TINY_SETTINGS) -> list[str]:
    """The command-line flags that give ``settings`` (``--max-operand 9 --hidden-size 32 ...``)."""
    out: list[str] = []
    for name, value in settings.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out


def eos_heavy_model(tok, seed: int, layers: int = 1):
    """A fresh tiny Qwen2 whose EOS logit is scaled up: completions end at different steps, rewards differ."""
    model = build_model(tok, 32, layers, 2 * layers, layers, 64, seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight[tok.eos_token_id] *= 6.0
    return model


def step_context(task, tok, ref_seed: int = 0, layers: int = 1, **cfg_changes) -> StepContext:
    """What :func:`kltutor.capstone.loop._step` reads, for a policy (seed 0) and a reference (``ref_seed``)
    made by :func:`eos_heavy_model`; 4 prompts x 4 completions of up to 4 tokens on the CPU."""
    policy, ref = eos_heavy_model(tok, 0, layers), eos_heavy_model(tok, ref_seed, layers).requires_grad_(False)
    cfg = CapstoneConfig(
        max_operand=9,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=4,
        device="cpu",
        progress=False,
        format_reward=0.5,
        **cfg_changes,
    ).validate()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    device = torch.device("cpu")
    return StepContext(
        cfg,
        policy,
        ref,
        tok,
        task,
        opt,
        make_beta_schedule(cfg),
        torch.Generator().manual_seed(0),
        device,
        make_sampler(cfg, policy, ref, tok, task, device),
        timings={},
    )
