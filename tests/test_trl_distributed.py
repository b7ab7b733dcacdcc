"""The TRL extension run distributed for real: two processes (torchrun, gloo, CPU) versus one, same global batch.

Each run is ``python -m kltutor.trainers.trl_capstone`` on the tiny capstone model for ``STEPS`` optimiser steps,
with TRL's ``rollout_func`` hook sampling every completion from a generator seeded by its index in the global
batch (:func:`kltutor.trainers.trl_capstone.layout_free_rollout`), so both layouts train on the same completions.
Plain SGD without gradient clipping makes the parameters a linear function of the summed gradients, so a wrong
reduction across ranks (a sum instead of a mean, a per-rank token count) would show at the size of the update
itself; Adam's and clipping's scale invariance would hide it. Tolerance: ``1e-5`` of the largest parameter
movement -- float32 gradients summed in another order (gloo's all-reduce of two halves) differ by ~1e-7 relative
per step; three steps and the nonlinearity of the later steps in the earlier ones stay far below 1e-5.

Slow (two torchrun launches per placement, ~30 s each on two cores); `make trainers-test` runs it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytestmark = [pytest.mark.trainers, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).parent))
from capstone_tiny import TINY_SETTINGS  # noqa: E402

from kltutor.capstone.config import CapstoneConfig  # noqa: E402

STEPS = 3
REL_TOL = 1e-5
# an in-reward penalty, an in-loss estimator under the global token mean, the exact KL summed per sequence
PLACEMENTS = [
    ("k1-in-reward", "sequence-mean"),
    ("k3-in-loss", "token-mean"),
    ("exact-in-loss", "sequence-sum"),
]
ROOT = Path(__file__).resolve().parents[1]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from kltutor.capstone.sft import reference_policy

    cache = tmp_path_factory.mktemp("cache")
    cfg = CapstoneConfig(**TINY_SETTINGS, cache_dir=str(cache), progress=False, device="cpu")
    _, _, info = reference_policy(cfg)
    return cfg, str(info.path)


def _run(tmp: Path, cfg: CapstoneConfig, model: str, nproc: int) -> dict:
    import yaml

    from kltutor.capstone.export import trl_config_values

    values = trl_config_values(cfg, nproc)
    values.update(
        optim="sgd", max_grad_norm=1e6, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True
    )
    conf = tmp / f"grpo-{nproc}.yaml"
    conf.write_text(yaml.safe_dump(values))
    out = tmp / f"params-{nproc}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = _torchrun() + ["--nproc_per_node", str(nproc), "--master_port", str(29500 + nproc), "-m"]
    cmd += ["kltutor.trainers.trl_capstone", str(conf), "--model", model, "--layout-free"]
    cmd += ["--save", str(out), "--output-dir", str(tmp / f"out-{nproc}")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("placement, aggregation", PLACEMENTS)
def test_two_processes_equal_one(reference, tmp_path, placement, aggregation):
    base, model = reference
    cfg = base.replace(placement=placement, beta=0.1, aggregation=aggregation, steps=STEPS, lr=0.05)
    one = _run(tmp_path, cfg, model, 1)
    two = _run(tmp_path, cfg, model, 2)
    start = torch.load(_safetensors_as_state(model))
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"{placement} {aggregation}: max |1-process - 2-process| = {diff:.2e}, max movement = {moved:.2e}")
    assert moved > 1e-3  # the runs trained
    assert diff <= REL_TOL * moved, (diff, moved)
    shutil.rmtree(tmp_path / "out-1", ignore_errors=True)
    shutil.rmtree(tmp_path / "out-2", ignore_errors=True)


def _safetensors_as_state(model_dir: str) -> Path:
    from safetensors.torch import load_file

    out = Path(model_dir).parent / "start.pt"
    if not out.exists():
        state = load_file(str(Path(model_dir) / "model.safetensors"))
        if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:  # tied embeddings
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        torch.save(state, out)
    return out
