"""The capstone end to end on the CPU: task reward, masks, save/load, resume == uninterrupted, clear
errors for bad configurations, and a smoke sweep over every placement."""

import json
import os

import pytest
import torch

from kltutor.capstone import (
    CAPSTONE_PLACEMENTS,
    METRICS,
    TIMING_METRICS,
    AdditionTask,
    CapstoneConfig,
    preset,
    run,
    sweep,
)
from kltutor.capstone.loop import completion_mask_from_ids
from kltutor.capstone.model import build_model, build_tokenizer, check_tokenizer, load_model
from tests.helpers.capstone_tiny import TINY_SETTINGS, cli_flags

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def tiny(capstone_cache):
    return CapstoneConfig(
        **TINY_SETTINGS | dict(steps=4, logprob_chunk=5, device="cpu", progress=False, cache_dir=str(capstone_cache))
    )


def test_task_reward():
    task = AdditionTask(max_operand=49, format_reward=0.1)
    assert task.prompt(23, 41) == "23+41=" and task.answer(23, 41) == "64"
    assert task.reward("64", True, 23, 41) == 1.0
    assert task.reward("64", False, 23, 41) == 0.0  # no EOS: not an answer
    assert task.reward("65", True, 23, 41) == 0.1  # well formed, wrong
    assert task.reward("6+", True, 23, 41) == 0.0
    assert task.reward("", True, 23, 41) == 0.0


def test_completion_mask_stops_after_the_first_eos():
    eos = 2
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 6, 2, 2]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    assert torch.equal(completion_mask_from_ids(ids, eos), expected)


def test_save_and_load_round_trip(tmp_path):
    tok = build_tokenizer("0123456789+=")
    model = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))  # no pickle
    assert (tmp_path / "model.safetensors").exists()
    model2, tok2 = load_model(tmp_path)
    ids = tok2(["23+41="], return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == tok(["23+41="], return_tensors="pt", add_special_tokens=False)["input_ids"].tolist()
    assert (tok2.pad_token, tok2.eos_token, tok2.bos_token) == ("<pad>", "<eos>", "<bos>")
    with torch.no_grad():
        torch.testing.assert_close(model2(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_tokenizer_that_lacks_what_the_task_needs():
    with pytest.raises(ValueError, match="cannot represent '7'"):
        check_tokenizer(build_tokenizer("012345689+="), AdditionTask().alphabet)
    tok = build_tokenizer("0123456789+=")
    check_tokenizer(tok, AdditionTask().alphabet)
    tok.eos_token = None
    with pytest.raises(ValueError, match="no EOS"):
        check_tokenizer(tok, AdditionTask().alphabet)


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(placement="k4-in-loss"), "unknown KL placement"),
        (dict(beta=-0.1), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(group_size=1), "group_size"),
        (dict(kl_level="sequence", placement="k1-in-reward"), "kl_level"),
        (dict(kl_level="both"), "kl_level"),
        (dict(aggregation="mean"), "aggregation"),
        (dict(steps=-1), "steps"),
        (dict(temperature=0.0), "temperature"),
        (dict(clip_std=(0.5, 0.1)), "clip_std"),
        (dict(resume=True), "run_dir"),
        (dict(hidden_size=30, num_heads=4), "divisible"),
        (dict(device="tpu"), "device"),
        (dict(kl_schedule="pid"), "kl_schedule"),
    ],
)
def test_bad_configuration_raises_a_clear_error(changes, match):
    with pytest.raises(ValueError, match=match):
        CapstoneConfig(**changes).validate()


def test_unknown_preset_and_cli_errors(capsys):
    from kltutor.capstone.__main__ import build_parser, main

    with pytest.raises(ValueError, match="unknown preset"):
        preset("tpu-pod")
    assert main(["--beta", "-1"]) == 2
    assert "beta must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--placement", "k9-in-reward"])
    helptext = build_parser().format_help()
    for f in CapstoneConfig.__dataclass_fields__:  # --help documents every option
        assert "--" + f.replace("_", "-") in helptext


def test_out_of_memory_names_a_preset(tiny, tmp_path, monkeypatch):
    import kltutor.capstone.sft as sft

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")

    monkeypatch.setattr(sft, "reference_policy", boom)
    with pytest.raises(RuntimeError, match="'colab' for a 16 GB GPU"):
        run(tiny.replace(run_dir=str(tmp_path)))


def test_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    cfg = tiny.replace(
        placement="k3-in-loss",
        beta=0.1,
        updates_per_batch=2,
        checkpoint_every=2,
        kl_schedule="adaptive",
        kl_target=0.01,
    )
    full = run(cfg.replace(run_dir=str(tmp_path / "full")))
    first = run(cfg.replace(run_dir=str(tmp_path / "cut"), steps=2))  # "interrupted" after step 2
    assert (first.checkpoint_dir / "state.pt").exists()
    resumed = run(cfg.replace(run_dir=str(tmp_path / "cut"), resume=True))
    cols = [c for c in METRICS if c not in TIMING_METRICS]
    a, b = full.frame[cols], resumed.frame[cols]
    assert len(a) == len(b) == cfg.steps
    assert a.equals(b), (a, b)
    assert a["kl_exact_seq"].iloc[-1] > 0  # the policy did move
    assert a["beta"].nunique() > 1  # and the adaptive beta (restored from the checkpoint) moved too
    rows = [json.loads(line) for line in resumed.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    with pytest.raises(FileNotFoundError):
        run(cfg.replace(run_dir=str(tmp_path / "empty"), resume=True))


@pytest.mark.slow
def test_smoke_sweep_over_every_placement(tiny, tmp_path):
    df = sweep(CAPSTONE_PLACEMENTS, [0.1], [0], tiny.replace(steps=2), out_dir=tmp_path)
    assert sorted(df["placement"].unique()) == sorted(CAPSTONE_PLACEMENTS)
    assert len(df) == 2 * len(CAPSTONE_PLACEMENTS)
    assert df[list(METRICS)].notna().all().all()
    first = df[df["step"] == 1]
    # at step 1 the policy is the reference: the exact KL on the sampled prefixes is 0
    assert first["kl_exact_seq"].abs().max() < 1e-6
    assert (df.loc[df["placement"] == "none", "beta"] == 0).all()
    assert ((df["reward"] >= 0) & (df["reward"] <= 1)).all()
    assert (df["entropy"] > 0).all()
    with pytest.raises(ValueError, match="unknown KL placement"):
        sweep(["k5-in-loss"], [0.1], [0], tiny)


def test_beta_schedule_interface():
    from kltutor.capstone.loop import make_beta_schedule

    fixed = make_beta_schedule(CapstoneConfig(beta=0.07))
    assert fixed.beta == 0.07
    fixed.update(3.0, 64)
    assert fixed.beta == 0.07  # a fixed beta never moves
    adaptive = make_beta_schedule(CapstoneConfig(beta=0.07, kl_schedule="adaptive", kl_target=0.1))
    assert adaptive.beta == pytest.approx(0.07)
    adaptive.update(10.0, 64)  # KL far above target: beta must grow
    assert adaptive.beta > 0.07


def test_cli_single_run_and_sweep(tiny, tmp_path, capsys):
    from kltutor.capstone.__main__ import main

    common = [
        "--preset",
        "smoke",
        *cli_flags(),
        "--steps",
        "2",
        "--cache-dir",
        tiny.cache_dir,
        "--no-progress",
    ]
    assert (
        main(
            common
            + [
                "--placement",
                "exact-in-loss",
                "--beta",
                "0.2",
                "--clip-std",
                "0.1",
                "5",
                "--run-dir",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["beta"] == 0.2
    assert (
        main(
            common
            + [
                "--sweep",
                "--placements",
                "none",
                "k2-in-loss",
                "--betas",
                "0.1",
                "--seeds",
                "0",
                "1",
                "--run-dir",
                str(tmp_path / "grid"),
            ]
        )
        == 0
    )
    import pandas as pd

    df = pd.read_csv(tmp_path / "grid" / "sweep.csv")
    assert len(df) == 2 * 2 * 2  # 2 placements x 2 seeds x 2 steps
    assert "sweep.csv" in capsys.readouterr().out


def test_sft_batch_rows_are_prompt_answer_eos_left_padded_with_the_loss_on_answer_and_eos():
    import torch

    from kltutor.capstone.model import build_tokenizer
    from kltutor.capstone.sft import sft_batch
    from kltutor.capstone.task import AdditionTask

    task = AdditionTask(999)
    tok = build_tokenizer(task.alphabet)
    ids, attn, lm = sft_batch(task, tok, 48, torch.Generator().manual_seed(5))
    pairs = task.sample(48, torch.Generator().manual_seed(5))  # the same draws
    assert ids.shape == attn.shape == lm.shape and lm.dtype == torch.float32
    lengths = set()
    for i, (a, b) in enumerate(pairs):
        want = tok(f"{a}+{b}={a + b}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(want)
        lengths.add(n)
        assert ids[i, -n:].tolist() == want and attn[i, -n:].eq(1).all() and attn[i, :-n].eq(0).all()
        assert ids[i, :-n].eq(tok.pad_token_id).all()
        n_answer = len(str(a + b)) + 1  # the answer's digits and EOS carry the loss, nothing else
        assert lm[i, -n_answer:].eq(1).all() and lm[i, :-n_answer].eq(0).all()
    assert len(lengths) > 1  # unequal lengths: the padding is exercised
