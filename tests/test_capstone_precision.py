"""The capstone's precision choice (kltutor.capstone.precision, issue #31 item 3), on the CPU.

A GPU without bfloat16 (the T4 of free Colab) is imitated by replacing the capability probe and the
device: the choice (float16 with loss scaling), the one-line error for ``--precision bfloat16`` there,
and a whole run on the CPU under float16 autocast with the GradScaler in the SFT and the GRPO update,
recorded in run.json.
"""

import json

import pytest
import torch

from kltutor.capstone import loop, precision, preflight, sft
from kltutor.capstone.__main__ import main
from kltutor.capstone.config import CapstoneConfig, ConfigError
from tests.helpers.capstone_tiny import TINY_SETTINGS, cli_flags

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def no_bf16_gpu(monkeypatch):
    """The capability probe of a GPU without bfloat16, and its name, without a GPU."""
    monkeypatch.setattr(precision, "bf16_supported", lambda device: device.type != "cuda")
    monkeypatch.setattr(precision, "_gpu_name", lambda device: "Tesla T4 (compute capability 7.5)")


@pytest.fixture
def bf16_gpu(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    monkeypatch.setattr(precision, "_gpu_name", lambda device: "NVIDIA H100 (compute capability 9.0)")


def resolve(device, **cfg):
    return precision.resolve_precision(CapstoneConfig(**cfg).validate(), device)


def test_auto_picks_float16_with_loss_scaling_on_a_gpu_without_bf16(no_bf16_gpu):
    p = resolve(CUDA)
    assert (p.name, p.requested, p.dtype, p.autocast, p.loss_scaling) == ("float16", "auto", torch.float16, True, True)
    assert "Tesla T4" in p.reason and "no bfloat16" in p.reason
    assert isinstance(p.grad_scaler(CPU), torch.amp.GradScaler)  # the CPU's scaler stands in for CUDA's


def test_auto_picks_bf16_where_supported_and_float32_on_the_cpu(bf16_gpu):
    p = resolve(CUDA)
    assert (p.name, p.loss_scaling, p.grad_scaler(CPU)) == ("bfloat16", False, None)
    p = resolve(CPU)
    assert (p.name, p.autocast, p.loss_scaling, p.grad_scaler(CPU)) == ("float32", False, False, None)
    assert p.reason == "auto: float32 on the CPU"


@pytest.mark.parametrize("asked", ["float16", "float32", "bfloat16"])
def test_an_explicit_precision_is_used_as_asked_where_possible(asked, bf16_gpu):
    for device in (CUDA, CPU):
        p = resolve(device, precision=asked)
        assert (p.name, p.requested, p.loss_scaling) == (asked, asked, asked == "float16")


def test_no_bf16_is_the_older_spelling_of_float32(no_bf16_gpu):
    assert resolve(CUDA, bf16=False).name == "float32"
    assert resolve(CUDA, bf16=False, precision="float16").name == "float16"  # an explicit choice wins
    with pytest.raises(ConfigError, match="contradicts bf16=False") as e:
        CapstoneConfig(bf16=False, precision="bfloat16").validate()
    assert e.value.field == "precision"


def test_bf16_on_a_gpu_without_it_is_a_config_error(no_bf16_gpu):
    with pytest.raises(ConfigError) as e:
        resolve(CUDA, precision="bfloat16")
    assert e.value.field == "precision"
    assert str(e.value).startswith("Tesla T4 (compute capability 7.5) has no bfloat16; use --precision float16")


def test_the_probe_does_not_count_emulated_bf16_as_support(monkeypatch):
    """torch >= 2.3's is_bf16_supported() says True on a T4 (it can emulate bf16, slowly); the probe asks
    for native support."""
    seen = {}

    def probe(including_emulation: bool = True):
        seen["including_emulation"] = including_emulation
        return including_emulation  # a T4: emulation only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", probe)
    assert precision.bf16_supported(CUDA) is False and seen == {"including_emulation": False}
    assert precision.bf16_supported(CPU) is True


def test_the_cli_error_is_one_line(no_bf16_gpu, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(preflight, "resolve_device", lambda device: CUDA)
    code = main([*cli_flags(), "--no-progress", "--cache-dir", str(tmp_path / "c"), "--precision", "bfloat16"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: --precision: Tesla T4 (compute capability 7.5) has no bfloat16; use --precision")
    assert not (tmp_path / "c").exists()


def test_a_run_on_a_gpu_without_bf16_trains_under_float16_autocast_with_loss_scaling(
    no_bf16_gpu, monkeypatch, tmp_path
):
    """'auto' resolved as on a T4 (the device the resolver sees is CUDA), the run itself on the CPU, whose
    autocast supports float16 (torch >= 2.x): the forward passes run in float16 and every optimiser step
    (SFT and GRPO) goes through the GradScaler; run.json records the choice."""
    real = precision.resolve_precision

    def as_on_a_t4(cfg, device):
        return real(cfg, CUDA)

    for module in (preflight, loop, sft):
        monkeypatch.setattr(module, "resolve_precision", as_on_a_t4)
    autocast_seen, scaler_steps = [], []
    stats = loop.sequence_stats

    def spy_stats(*a, **k):
        autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return stats(*a, **k)

    monkeypatch.setattr(loop, "sequence_stats", spy_stats)
    update = torch.amp.GradScaler.update

    def spy_update(self, *a, **k):
        scaler_steps.append(self.get_scale())
        return update(self, *a, **k)

    monkeypatch.setattr(torch.amp.GradScaler, "update", spy_update)
    cfg = CapstoneConfig(
        **TINY_SETTINGS, steps=3, device="cpu", progress=False, run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path)
    )
    res = loop.run(cfg)
    assert res.precision.name == "float16" and res.precision.loss_scaling
    assert autocast_seen == [(True, torch.float16)] * 3  # the GRPO forward of each step
    assert len(scaler_steps) == TINY_SETTINGS["sft_steps"] + 3  # SFT and GRPO both scale their losses
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res.metrics)
    rec = json.loads((res.run_dir / "run.json").read_text())
    assert rec["precision"]["name"] == "float16" and rec["precision"]["requested"] == "auto"
    assert rec["precision"]["loss_scaling"] is True and "no bfloat16" in rec["precision"]["reason"]
    assert rec["decode_mode_used"] == res.decode_mode_used == "eager"  # the CPU decodes eagerly
    assert rec["history"][-1]["precision"] == rec["precision"]


def test_a_step_context_built_by_hand_gets_the_runs_precision_and_scaler(no_bf16_gpu, monkeypatch):
    """A StepContext without ``precision`` (benchmarks, tests) resolves it at its first step, with the
    GradScaler float16 needs; the step runs under float16 autocast and its loss is finite."""
    from kltutor.capstone.loop import _step
    from kltutor.capstone.model import build_tokenizer
    from kltutor.capstone.task import AdditionTask
    from tests.helpers.capstone_tiny import step_context

    real = precision.resolve_precision
    monkeypatch.setattr(loop, "resolve_precision", lambda cfg, device: real(cfg, CUDA))
    task = AdditionTask(9, format_reward=0.5)
    ctx = step_context(task, build_tokenizer(task.alphabet), precision="auto")
    assert ctx.precision is None and ctx.scaler is None
    row = _step(ctx, 0)
    assert ctx.precision.name == "float16" and isinstance(ctx.scaler, torch.amp.GradScaler)
    assert torch.isfinite(torch.tensor(row.loss)) and row.step == 1
