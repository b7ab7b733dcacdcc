"""The capstone's command line against bad and unusual input (issue #16).

Each row of CASES is one mistake a user can make: the test runs ``python -m kltutor.capstone`` (in
process, through ``main``) on a copy of a finished run and of the reference cache, and asserts the exit
code 2, one line on stderr that matches the expected message (it names the flag or the file), no
traceback, and that no file of the run or of the cache changed and no new path was created. The
tests after the table cover what must work instead: resume without repeating options, allowed
config changes, --overwrite, a no-op resume, the sweep's temporary directory, every schedule in
--help, atomic checkpoints and metrics that survive a failure.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kltutor.capstone import rundir
from kltutor.capstone.__main__ import build_parser, main
from tests.helpers.capstone_tiny import cli_flags

os.environ.setdefault("TQDM_DISABLE", "1")

TINY = [*cli_flags(), "--no-progress"]

ARCHITECTURE = ("--hidden-size", "--num-layers", "--num-heads", "--num-kv-heads", "--intermediate-size")
TINY_WITHOUT_ARCHITECTURE = [a for i, a in enumerate(TINY) if a not in ARCHITECTURE and TINY[i - 1] not in ARCHITECTURE]


@pytest.fixture(scope="module")
def cache(capstone_cache):
    """The reference cache shared with tests/test_capstone_run.py (the SFT runs once per session)."""
    return capstone_cache


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    """A finished 2-step run with a checkpoint at step 2 (copied by every test that uses it)."""
    d = tmp_path_factory.mktemp("finished") / "run"
    assert main(TINY + ["--cache-dir", str(cache), "--steps", "2", "--checkpoint-every", "2", "--run-dir", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def other_vocabulary_model(tmp_path_factory):
    """A save_pretrained model whose tokenizer knows only the digits 0-5 (a teacher with another vocabulary)."""
    from kltutor.capstone.model import build_model, build_tokenizer

    d = tmp_path_factory.mktemp("othervocab") / "model"
    tok = build_tokenizer("012345")
    build_model(tok, 16, 1, 2, 1, 32).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def snapshot(*roots: Path) -> dict:
    """sha256 and mtime of every file under ``roots`` (what "nothing changed" is checked against)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            else:
                out[str(p)] = "dir"
    return out


def truncate(p: Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _ckpt(run):
    return run / "checkpoint"


def _only_ref(cache):
    (ref,) = [p for p in cache.iterdir() if p.name.startswith("reference-")]
    return ref


def edit_run_json(run, change):
    rec = json.loads((run / "run.json").read_text())
    change(rec["config"])
    (run / "run.json").write_text(json.dumps(rec, indent=1))


def hold_lock(run, cache):
    """Take the run directory's lock as another run would (an flock on its own open file, which
    conflicts with any other, in this process too); the test releases it at the end."""
    from kltutor.capstone.runlock import RunLock

    lock = RunLock(run)
    lock.acquire()
    return lock


# Each case: (id, arguments, expected message (regex), preparation of the copied run / cache or None).
# Placeholders: {run} a copy of the finished run, {new} a path that does not exist, {file} a regular file,
# {empty} an empty directory, {foreign} a directory holding someone else's file, {cache} a copy of the cache.
CASES = [
    # --- values
    ("placement-unknown", "--placement k9-in-reward", r"argument --placement: invalid choice: 'k9-in-reward'", None),
    ("beta-negative", "--beta -1", r"^error: --beta: beta must be a finite number >= 0", None),
    ("beta-nan", "--beta nan", r"--beta: beta must be", None),
    ("group-size-1", "--group-size 1", r"--group-size: group_size must be >= 2", None),
    ("clip-std-crossed", "--clip-std 0.5 0.1", r"--clip-std: clip_std must be \(lo, hi\) with 0 < lo <= hi", None),
    ("steps-0", "--steps 0", r"--steps: steps=0 trains nothing", None),
    ("steps-negative", "--steps -1", r"--steps: steps must be an integer >= 0", None),
    ("seed-negative", "--seed -1", r"--seed: seed must be an integer >= 0", None),
    ("seed-2-32", "--seed 4294967296", r"--seed: seed must be an integer in \[0, 2\*\*32 - 1\]", None),
    ("sft-seed-2-32", "--sft-seed 4294967296", r"--sft-seed: sft_seed must be an integer in \[0, 2\*\*32 - 1\]", None),
    (
        "max-operand-1e20",
        "--max-operand 100000000000000000000",
        r"--max-operand: max_operand must be below 1e\+18 \(the task draws operands as 64-bit integers\)",
        None,
    ),
    ("clip-eps-1e300", "--clip-eps 1e300", r"--clip-eps: clip_eps must be at most 3.4e\+38 in size", None),
    ("lr-1e300", "--lr 1e300", r"--lr: lr must be at most 3.4e\+38", None),
    (
        "intermediate-size-cannot-be-allocated",
        "--intermediate-size 100000000000",
        r"--intermediate-size: the model built from scratch would have 9.6e\+12 parameters, .* GiB .*more than "
        r"the .* GiB of memory of the (CPU|CUDA); lower --intermediate-size",
        None,
    ),
    ("temperature-0", "--temperature 0", r"--temperature: temperature must be a finite number > 0", None),
    ("temperature-inf", "--temperature inf", r"--temperature: temperature must be a finite number > 0", None),
    ("top-p-0", "--top-p 0", r"--top-p: top_p must be in \(0, 1\]", None),
    ("top-p-above-1", "--top-p 1.5", r"--top-p: top_p must be in \(0, 1\]", None),
    ("top-k-negative", "--top-k -1", r"--top-k: top_k must be an integer >= 0", None),
    ("logprob-dtype-unknown", "--logprob-dtype float16", r"argument --logprob-dtype: invalid choice: 'float16'", None),
    ("decode-mode-unknown", "--decode-mode fast", r"argument --decode-mode: invalid choice: 'fast'", None),
    ("precision-unknown", "--precision fp8", r"argument --precision: invalid choice: 'fp8'", None),
    (
        "precision-bf16-with-no-bf16",
        "--precision bfloat16 --no-bf16",
        r"^error: --precision: precision='bfloat16' contradicts bf16=False \(--no-bf16\)",
        None,
    ),
    ("ref-scoring-unknown", "--ref-scoring x", r"argument --ref-scoring: invalid choice: 'x'", None),
    ("format-reward-1", "--format-reward 1", r"--format-reward: format_reward must be in \[0, 1\)", None),
    ("heads-not-dividing", "--hidden-size 30 --num-heads 4", r"--hidden-size: hidden_size must be divisible", None),
    ("lr-not-a-number", "--lr fast", r"argument --lr: invalid float value: 'fast'", None),
    ("clip-eps-0", "--clip-eps 0", r"--clip-eps: clip_eps must be a finite number > 0", None),
    (
        "max-grad-norm-negative",
        "--max-grad-norm -1",
        r"--max-grad-norm: max_grad_norm must be a finite number > 0",
        None,
    ),
    (
        "updates-per-batch-0",
        "--updates-per-batch 0",
        r"--updates-per-batch: updates_per_batch must be a positive integer",
        None,
    ),
    ("logprob-chunk-0", "--logprob-chunk 0", r"--logprob-chunk: logprob_chunk must be a positive integer", None),
    ("sft-seed-negative", "--sft-seed -5", r"--sft-seed: sft_seed must be an integer >= 0", None),
    (
        "checkpoint-every-negative",
        "--checkpoint-every -1",
        r"--checkpoint-every: checkpoint_every must be an integer >= 0",
        None,
    ),
    (
        "kl-horizon-not-an-int",
        "--kl-schedule adaptive --kl-horizon 1e4",
        r"argument --kl-horizon: invalid int value: '1e4'",
        None,
    ),
    ("bf16-with-a-value", "--bf16 yes", r"unrecognized arguments: yes", None),
    ("fast-with-a-value", "--no-fast yes", r"unrecognized arguments: yes", None),
    ("preset-unknown", "--preset tpu-pod", r"argument --preset: invalid choice: 'tpu-pod'", None),
    ("device-unknown", "--device tpu", r"argument --device: invalid choice: 'tpu'", None),
    ("aggregation-unknown", "--aggregation mean", r"argument --aggregation: invalid choice: 'mean'", None),
    # --- schedules: every one in --help can be built, or the message says what it needs
    ("schedule-unknown", "--kl-schedule pid", r"argument --kl-schedule: invalid choice: 'pid'", None),
    (
        "linear-without-end",
        "--kl-schedule linear",
        r"--beta-end: kl_schedule='linear' anneals beta .* set beta_end",
        None,
    ),
    ("adaptive-beta-0", "--kl-schedule adaptive --beta 0", r"--beta: kl_schedule='adaptive' .* must then be > 0", None),
    (
        "adaptive-horizon-0",
        "--kl-schedule adaptive --kl-horizon 0",
        r"--kl-horizon: kl_horizon must be an integer >= 1",
        None,
    ),
    (
        "adaptive-target-nan",
        "--kl-schedule adaptive --kl-target nan",
        r"--kl-target: kl_target must be a finite number > 0",
        None,
    ),
    ("adaptive-target-negative", "--kl-schedule adaptive --kl-target -1", r"--kl-target: kl_target must be", None),
    (
        "cosine-end-inf",
        "--kl-schedule cosine --beta-end inf",
        r"--beta-end: beta_end must be a finite number > 0",
        None,
    ),
    # --- options the mode would ignore
    (
        "target-with-fixed",
        "--kl-target 2",
        r"--kl-target: kl_target is read by the schedules adaptive, ppo-penalty only",
        None,
    ),
    ("horizon-with-ppo", "--kl-schedule ppo-penalty --kl-horizon 100", r"--kl-horizon: kl_horizon is read by", None),
    ("end-with-fixed", "--beta-end 0.01", r"--beta-end: beta_end is read by the schedules .*linear", None),
    (
        "target-with-linear",
        "--kl-schedule linear --beta-end 0.01 --kl-target 1",
        r"--kl-target: .*'linear' would ignore it",
        None,
    ),
    (
        "schedule-with-none",
        "--placement none --kl-schedule adaptive",
        r"--kl-schedule: placement 'none' has no KL term",
        None,
    ),
    (
        "beta-with-none",
        "--placement none --beta 0.1",
        r"--beta weights the KL term, and --placement none has none",
        None,
    ),
    ("clip-std-without-normalize", "--no-normalize-std --clip-std 0.1 1", r"--clip-std: .*normalize_std=False", None),
    (
        "iw-with-in-reward",
        "--importance-weighted-kl --placement k1-in-reward",
        r"--importance-weighted-kl: .*has none",
        None,
    ),
    (
        "iw-sequence-level",
        "--importance-weighted-kl --kl-level sequence --placement k3-in-loss",
        r"token level only",
        None,
    ),
    (
        "sequence-level-in-reward",
        "--kl-level sequence --placement k1-in-reward",
        r"--kl-level: kl_level='sequence' applies",
        None,
    ),
    (
        "architecture-with-model",
        "--model {empty} --num-layers 3",
        r"--num-layers sizes the model built from scratch",
        None,
    ),
    ("sft-lr-without-sft", "--sft-steps 0 --sft-lr 0.1", r"--sft-(batch-size|lr) is not used with --sft-steps 0", None),
    (
        "allow-change-without-resume",
        "--allow-config-change",
        r"--allow-config-change: allow_config_change applies to resume only",
        None,
    ),
    # --- devices and models
    ("cuda-without-gpu", "--device cuda", r"--device: device='cuda' but no CUDA GPU is available", None),
    ("model-path-missing", "--model {new}", r"--model: .* does not exist", None),
    (
        "model-name-not-cached",
        "--model nobody/no-such-model",
        r"--model: 'nobody/no-such-model' is neither a local directory nor a model in the local Hugging Face cache",
        None,
    ),
    ("model-is-a-file", "--model {file}", r"--model: .* is not a model directory \(no config.json\)", None),
    ("model-dir-empty", "--model {empty}", r"--model: .* is not a model directory", None),
    # --- on-policy distillation (--teacher)
    (
        "teacher-missing",
        "--placement none --teacher {new}",
        r"^error: --teacher: the teacher .*new does not exist",
        None,
    ),
    ("teacher-not-a-model", "--placement none --teacher {empty}", r"--teacher: .* is not a model directory", None),
    (
        "teacher-other-vocabulary",
        "--placement none --teacher {othervocab}",
        r"--teacher: the teacher .* has another vocabulary than the policy \(vocab_size 9 vs 15",
        None,
    ),
    (
        "teacher-with-a-kl-placement",
        "--teacher reference --teacher-task-weight 1",
        r"--teacher: with a teacher .*placement 'k1-in-reward' would add a second KL term .*use placement 'none'",
        None,
    ),
    (
        "teacher-reference-without-task",
        "--placement none --teacher reference",
        r"--teacher-task-weight: teacher='reference' with teacher_task_weight=0 trains nothing",
        None,
    ),
    (
        "teacher-estimator-without-teacher",
        "--teacher-estimator exact",
        r"--teacher-estimator: teacher_estimator applies to on-policy distillation only",
        None,
    ),
    (
        "teacher-estimator-unknown",
        "--teacher-estimator k2",
        r"argument --teacher-estimator: invalid choice: 'k2'",
        None,
    ),
    (
        "teacher-discount-above-1",
        "--placement none --teacher {othervocab} --teacher-discount 1.5",
        r"--teacher-discount: teacher_discount must be in \[0, 1\]",
        None,
    ),
    # --- paths
    ("run-dir-is-a-file", "--run-dir {file}", r"--run-dir: .* is a file, not a directory", None),
    ("run-dir-empty-string", "--run-dir {blank}", r"^error: --run-dir: run_dir must name a directory, got ''", None),
    ("resume-run-dir-empty-string", "--resume --run-dir {blank}", r"--run-dir: run_dir must name a directory", None),
    ("cache-dir-empty-string", "--cache-dir {blank}", r"^error: --cache-dir: cache_dir must name a directory", None),
    ("run-dir-under-a-file", "--run-dir {file}/sub", r"--run-dir: .* cannot be created: .* is a file", None),
    (
        "run-dir-holds-a-run",
        "--run-dir {run}",
        r"--run-dir: .* already holds a run \(checkpoint, metrics.jsonl, run.json\); pass --resume",
        None,
    ),
    (
        "run-dir-foreign",
        "--run-dir {foreign}",
        r"--run-dir: .* is not empty \(notes.txt\) and holds no capstone run",
        None,
    ),
    ("cache-dir-is-a-file", "--cache-dir {file}", r"--cache-dir: the cache directory .* is a file", None),
    (
        "cache-dir-under-a-file",
        "--cache-dir {file}/sub",
        r"--cache-dir: the cache directory .* cannot be created: .* is a file",
        None,
    ),
    # --- resume
    (
        "resume-missing-dir",
        "--resume --run-dir {new}",
        r"--run-dir: .* does not exist, so there is no run to resume",
        None,
    ),
    ("resume-without-run-dir", "--resume", r"^error: --resume needs the --run-dir", None),
    (
        "resume-and-overwrite",
        "--resume --overwrite --run-dir {run}",
        r"--overwrite: resume and overwrite contradict",
        None,
    ),
    (
        "resume-with-preset",
        "--resume --run-dir {run} --preset smoke",
        r"^error: --resume takes the run's settings from its run.json; leave --preset out",
        None,
    ),
    ("resume-empty-dir", "--resume --run-dir {empty}", r"--resume: .*run.json is missing", None),
    (
        "resume-steps-below",
        "--resume --run-dir {run} --steps 1",
        r"--steps: the checkpoint in .* is at step 2, so steps=1 would end before it",
        None,
    ),
    (
        "resume-other-beta",
        "--resume --run-dir {run} --beta 0.2 --steps 4",
        r"--beta: resuming .* would change what the run is: --beta 0.05 -> 0.2 .*--allow-config-change",
        None,
    ),
    (
        "resume-other-placement-lr",
        "--resume --run-dir {run} --placement k3-in-loss --lr 0.01 --steps 4",
        r"--placement 'k1-in-reward' -> 'k3-in-loss', --lr 0.001 -> 0.01",
        None,
    ),
    (
        "resume-other-task",
        "--resume --run-dir {run} --max-operand 19 --steps 4 --allow-config-change",
        r"--max-operand: cannot resume .* with a different --max-operand 9 -> 19",
        None,
    ),
    (
        "resume-other-seed",
        "--resume --run-dir {run} --seed 3 --steps 4",
        r"--seed: cannot resume .* --seed 0 -> 3",
        None,
    ),
    (
        "resume-no-checkpoint",
        "--resume --run-dir {run} --steps 4",
        r"--resume: .* holds no checkpoint to resume from",
        lambda run, cache: shutil.rmtree(_ckpt(run)),
    ),
    (
        "resume-run-json-missing",
        "--resume --run-dir {run} --steps 4",
        r"run.json is missing",
        lambda run, cache: (run / "run.json").unlink(),
    ),
    (
        "resume-run-json-truncated",
        "--resume --run-dir {run} --steps 4",
        r"run.json is unreadable \(JSONDecodeError",
        lambda run, cache: truncate(run / "run.json"),
    ),
    (
        "resume-run-json-missing-a-field",
        "--resume --run-dir {run} --steps 4",
        r"^error: --resume: .*run.json holds an invalid run record: its config records no lr .*--overwrite",
        lambda run, cache: edit_run_json(run, lambda c: c.pop("lr")),
    ),
    (  # the file is named, not --beta, which this command did not pass
        "resume-run-json-beta-a-string",
        "--resume --run-dir {run} --steps 4",
        r"^error: --resume: .*run.json holds an invalid run record: beta must be a number, got '0.05'",
        lambda run, cache: edit_run_json(run, lambda c: c.update(beta="0.05")),
    ),
    (
        "resume-run-json-bool-a-string",
        "--resume --run-dir {run} --steps 4",
        r"run.json holds an invalid run record: normalize_std must be true or false, got 'no'",
        lambda run, cache: edit_run_json(run, lambda c: c.update(normalize_std="no")),
    ),
    (
        "resume-run-json-seed-too-large",
        "--resume --run-dir {run} --steps 4",
        r"run.json holds an invalid run record: seed must be an integer in \[0, 2\*\*32 - 1\]",
        lambda run, cache: edit_run_json(run, lambda c: c.update(seed=2**40)),
    ),
    (
        "resume-metrics-not-utf8",
        "--resume --run-dir {run} --steps 4",
        r"^error: .*metrics.jsonl cannot be read: not UTF-8 text \(invalid start byte at byte 0\); --resume "
        r"rewrites it from the checkpoint's rows, so move it away",
        lambda run, cache: (run / "metrics.jsonl").write_bytes(b"\xff\xfe{not utf-8}\n"),
    ),
    (
        "resume-metrics-unreadable",
        "--resume --run-dir {run} --steps 4",
        r"metrics.jsonl cannot be read: Is a directory",
        lambda run, cache: ((run / "metrics.jsonl").unlink(), (run / "metrics.jsonl").mkdir()),
    ),
    # --- one process per run directory (the lock is held as another process would hold it)
    (
        "run-dir-in-use",
        "--run-dir {run} --overwrite",
        rf"^error: --run-dir: .*run is in use by another run \(process {os.getpid()} on .*lock file .*\.lock\); wait",
        hold_lock,
    ),
    (
        "run-dir-in-use-resume",
        "--resume --run-dir {run} --steps 4",
        r"--run-dir: .* is in use by another run",
        hold_lock,
    ),
    (
        "run-dir-in-use-new-run",
        "--run-dir {empty}",
        r"--run-dir: .*empty is in use by another run",
        lambda r, c: hold_lock(r.parent / "empty", c),
    ),
    # --- corrupt checkpoints: the message names the file and how to recover
    (
        "ckpt-state-truncated",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/state.pt is corrupt .*--overwrite",
        lambda run, cache: truncate(_ckpt(run) / "state.pt"),
    ),
    (
        "ckpt-state-missing",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/state.pt is missing from the checkpoint",
        lambda run, cache: (_ckpt(run) / "state.pt").unlink(),
    ),
    (
        "ckpt-weights-truncated",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/policy/model.safetensors is corrupt",
        lambda run, cache: truncate(_ckpt(run) / "policy" / "model.safetensors"),
    ),
    (
        "ckpt-config-missing",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/policy/config.json is missing",
        lambda run, cache: (_ckpt(run) / "policy" / "config.json").unlink(),
    ),
    (
        "ckpt-metrics-truncated",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/metrics.json is corrupt",
        lambda run, cache: truncate(_ckpt(run) / "metrics.json"),
    ),
    (
        "ckpt-schedule-missing",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/schedule.json is missing",
        lambda run, cache: (_ckpt(run) / "schedule.json").unlink(),
    ),
    (
        "ckpt-manifest-missing",
        "--resume --run-dir {run} --steps 4",
        r"checkpoint/manifest.json is missing, so the checkpoint .* is incomplete",
        lambda run, cache: (_ckpt(run) / "manifest.json").unlink(),
    ),
    # --- corrupt reference cache: the message names the directory to delete
    (
        "cache-weights-truncated",
        "--run-dir {new}",
        r"model.safetensors is corrupt .*; delete the directory .*reference-\w+ \(rm -r",
        lambda run, cache: truncate(_only_ref(cache) / "model.safetensors"),
    ),
    (
        "cache-info-missing",
        "--run-dir {new}",
        r"info.json is missing from the cached reference policy .*; delete the directory",
        lambda run, cache: (_only_ref(cache) / "info.json").unlink(),
    ),
    (
        "cache-manifest-missing",
        "--run-dir {new}",
        r"manifest.json is missing, so the cached reference policy .* delete the directory",
        lambda run, cache: (_only_ref(cache) / "manifest.json").unlink(),
    ),
    # --- sweeps
    (
        "sweep-placement-unknown",
        "--sweep --placements k5-in-loss",
        r"--placements: unknown KL placement 'k5-in-loss'",
        None,
    ),
    (
        "sweep-beta-negative",
        "--sweep --betas -0.1",
        r"--betas: every beta of a sweep must be a finite number >= 0",
        None,
    ),
    ("sweep-beta-nan", "--sweep --betas nan", r"--betas: every beta of a sweep", None),
    ("sweep-seed-negative", "--sweep --seeds -2", r"--seeds: every seed of a sweep must be an integer >= 0", None),
    (
        "sweep-with-placement",
        "--sweep --placement k1-in-reward",
        r"--placement sets one run; a sweep takes --placements",
        None,
    ),
    ("sweep-with-beta", "--sweep --beta 0.1", r"--beta sets one run", None),
    ("sweep-with-seed", "--sweep --seed 1", r"--seed sets one run", None),
    ("sweep-with-resume", "--sweep --resume --run-dir {run}", r"--resume cannot be used with --sweep", None),
    (
        "placements-without-sweep",
        "--placements none",
        r"--placements applies to --sweep only; for one run use --placement",
        None,
    ),
    (
        "sweep-adaptive-beta-0",
        "--sweep --placements k1-in-reward --betas 0 --kl-schedule adaptive",
        r"--betas: sweep run placement='k1-in-reward', beta=0, seed=0: kl_schedule='adaptive' .* > 0",
        None,
    ),
    (
        "sweep-iw-in-reward",
        "--sweep --placements k3-in-loss k1-in-reward --importance-weighted-kl",
        r"sweep run placement='k1-in-reward'.*importance_weighted_kl weights an in-loss KL term",
        None,
    ),
    ("sweep-run-dir-is-a-file", "--sweep --placements none --run-dir {file}", r"is a file, not a directory", None),
    (
        "sweep-existing-runs",
        "--sweep --placements k1-in-reward --run-dir {sweepruns}",
        r"--run-dir: .*sweepruns already holds runs of a sweep \(k1-in-reward_beta0.05_seed0\); pass --overwrite",
        None,
    ),
    (
        "sweep-existing-csv",
        "--sweep --placements none --run-dir {sweepdir}",
        r"already holds a sweep \(sweep.csv\); pass --overwrite",
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_exit_2_and_changes_nothing(
    case, finished_run, cache, other_vocabulary_model, tmp_path, capsys
):
    name, args, expected, prepare = case
    if name == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run, cache_copy = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(finished_run, run)
    shutil.copytree(cache, cache_copy)
    (tmp_path / "file.txt").write_text("not a directory")
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("someone else's")
    sweepdir = tmp_path / "sweep"
    sweepdir.mkdir()
    shutil.copytree(finished_run, sweepdir / "k1-in-reward_beta0.05_seed0")
    sweepruns = tmp_path / "sweepruns"
    shutil.copytree(sweepdir, sweepruns)
    (sweepdir / "sweep.csv").write_text("placement\n")
    held = prepare(run, cache_copy) if prepare is not None else None
    paths = {
        "blank": "",
        "run": run,
        "new": tmp_path / "new",
        "file": tmp_path / "file.txt",
        "empty": tmp_path / "empty",
        "foreign": tmp_path / "foreign",
        "sweepdir": sweepdir,
        "sweepruns": sweepruns,
        "othervocab": other_vocabulary_model,
    }
    argv = [a.format(**paths) for a in args.split()]
    if "--cache-dir" not in argv:
        argv += ["--cache-dir", str(cache_copy)]
    # a resume takes the run's settings from its run.json; everything else starts from the tiny model
    # (--model brings its own architecture, so the tiny model's sizes are left out)
    if "--resume" in argv and "--run-dir" in argv:
        full = argv + ["--no-progress"]
    else:
        full = (TINY_WITHOUT_ARCHITECTURE if "--model" in argv else TINY) + argv
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        rc = main(full)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (name, rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(expected, lines[0]), f"{name}: {lines[0]!r} does not match {expected!r}"
    assert snapshot(tmp_path) == before, f"{name}: files changed"
    assert not paths["new"].exists()
    if hasattr(held, "release"):
        held.release()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _enospc_writing(path, *args, **kwargs):
    """What rundir's atomic writes raise when the disk is full: the error names the file."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _enospc_appending(log, row):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(log.path))


def _enospc_under(name, real):
    """``real``, except that writing under a directory called ``name`` fails with a full disk."""

    def patched(path, *args, **kwargs):
        if name in Path(path).parts:
            _enospc()
        return real(path, *args, **kwargs)

    return patched


def _cannot_allocate(*args, **kwargs):
    raise RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 12800000000000 bytes. Error code 12 (Cannot allocate memory)"
    )


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# Failures after every check has passed: (id, arguments, (module, attribute, replacement(real)), exit code,
# expected message (regex), the files of the copied run that may change). Nothing else may change (in
# content: a file put back as it was has a new mtime), and {new} must not exist afterwards (a failed
# start leaves nothing that blocks the same command).
FAILURES = [
    (
        "disk-full-new-run",
        "--run-dir {new}",
        (rundir, "atomic_write_bytes", lambda real: _enospc_writing),
        2,
        r"^error: cannot write .*new/run.json \(OSError: No space left on device\); free space on that disk, or "
        r"pass another --run-dir; it stopped before its first step: what it had written in .*new was removed$",
        [],
    ),
    (
        "disk-full-overwrite",
        "--run-dir {run} --overwrite",
        (rundir, "atomic_write_bytes", lambda real: _enospc_writing),
        2,
        r"cannot write .*run/run.json .*; it stopped before its first step: the run it was to replace in .* is back",
        [],
    ),
    (
        "disk-full-resume",
        "--resume --run-dir {run} --steps 4",
        (rundir, "atomic_write_bytes", lambda real: _enospc_writing),
        2,
        r"cannot write .*run/run.json .*; it stopped before its first step: .*run.json and .*metrics.jsonl are as "
        r"they were",
        [],
    ),
    (
        "disk-full-metrics",
        "--run-dir {new}",
        (rundir.MetricsLog, "append", lambda real: _enospc_appending),
        2,
        r"^error: cannot write .*new/metrics.jsonl \(OSError: No space left on device\); .*it stopped before its "
        r"first step",
        [],
    ),
    (
        "disk-full-checkpoint",
        "--resume --run-dir {run} --steps 4 --checkpoint-every 1",
        (torch, "save", lambda real: _enospc),
        2,
        r"^error: cannot write the checkpoint of step 3 \(OSError: No space left on device\); the partial "
        r"checkpoint.tmp was removed and the previous checkpoint, if any, is unchanged; free space on that disk, "
        r"then continue with --resume; the metrics of the finished steps are in .*metrics.jsonl$",
        ["run/run.json", "run/metrics.jsonl"],  # the resume recorded, the row of step 3
    ),
    (
        "disk-full-cache",
        "--run-dir {new} --cache-dir {empty} --sft-steps 5",  # a short SFT: only its saving matters
        (rundir, "write_manifest", lambda real: _enospc_under("empty", real)),
        2,
        r"^error: cannot write the reference policy to the cache .*empty \(OSError: No space left on device\); "
        r"free space on that disk, or pass another --cache-dir; it stopped before its first step",
        [],
    ),
    (
        "cpu-allocation-fails",
        "--run-dir {new} --cache-dir {empty}",
        ("kltutor.capstone.sft", "build_model", lambda real: _cannot_allocate),
        2,
        r"^error: CPU out of memory \(.*can't allocate memory.*\)\. This configuration does not fit: use a "
        r"smaller preset",
        [],
    ),
    (  # run.json had its resume entry and metrics.jsonl was rewritten: both are put back as they were
        "interrupted-resume-before-its-first-step",
        "--resume --run-dir {run} --steps 4",
        (rundir, "load_checkpoint", lambda real: _interrupt),
        130,
        r"^interrupted; it stopped before its first step: .*run/run.json and .*run/metrics.jsonl are as they were$",
        [],
    ),
    (
        "interrupted-before-the-first-step",
        "--run-dir {new}",
        ("kltutor.capstone.sft", "reference_policy", lambda real: _interrupt),
        130,
        r"^interrupted; it stopped before its first step: what it had written in .*new was removed$",
        [],
    ),
]


@pytest.mark.parametrize("case", FAILURES, ids=[c[0] for c in FAILURES])
def test_a_failure_after_the_checks_is_one_line_and_changes_nothing(
    case, finished_run, cache, tmp_path, capsys, monkeypatch
):
    import importlib

    name, args, (where, attr, replacement), code, expected, may_change = case
    run, cache_copy = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(finished_run, run)
    shutil.copytree(cache, cache_copy)
    (tmp_path / "empty").mkdir()
    paths = {"run": run, "new": tmp_path / "new", "empty": tmp_path / "empty"}
    argv = [a.format(**paths) for a in args.split()]
    if "--cache-dir" not in argv:
        argv += ["--cache-dir", str(cache_copy)]
    full = argv + ["--no-progress"] if "--resume" in argv else TINY + argv
    target = importlib.import_module(where) if isinstance(where, str) else where
    monkeypatch.setattr(target, attr, replacement(getattr(target, attr)))
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(full)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, (name, rc, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expected, lines[0]), f"{name}: {lines[0]!r} does not match {expected!r}"
    after = snapshot(tmp_path)
    sha = {k: v[0] if isinstance(v, tuple) else v for k, v in before.items()}
    sha_after = {k: v[0] if isinstance(v, tuple) else v for k, v in after.items()}
    changed = sorted(k for k in set(sha) | set(sha_after) if sha.get(k) != sha_after.get(k))
    assert changed == sorted(str(tmp_path / p) for p in may_change), f"{name}: changed {changed}"
    assert not paths["new"].exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".lock"))


def test_the_table_covers_every_option_of_help():
    """Every flag in --help appears in the table or in a test below (a new option needs a row)."""
    import inspect

    # TINY is built from tests.helpers.capstone_tiny
    text = inspect.getsource(sys.modules[__name__]) + " ".join(cli_flags())
    helptext = build_parser().format_help()
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", helptext)) - {"--help"}
    missing = sorted(
        f for f in flags if f not in text and "--no-" + f[2:] not in text and f.replace("--no-", "--") not in text
    )
    assert not missing, missing


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TQDM_DISABLE": "1"}
    for args in (["--kl-schedule", "linear"], ["--placement", "none", "--kl-horizon", "5"], ["--steps", "0"]):
        p = subprocess.run(
            [sys.executable, "-m", "kltutor.capstone", "--cache-dir", str(tmp_path / "c"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert sorted(os.listdir(tmp_path)) == []  # nothing written, not even the cache directory


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_json_records_the_resolved_config_and_versions(finished_run):
    rec = json.loads((finished_run / "run.json").read_text())
    cfg = rec["config"]
    assert cfg["steps"] == 2 and cfg["placement"] == "k1-in-reward" and cfg["max_operand"] == 9
    assert cfg["run_dir"] == str(finished_run) and cfg["kl_target"] is None  # fixed schedule: no target
    assert rec["versions"]["torch"] == torch.__version__ and "transformers" in rec["versions"]
    assert [h["event"] for h in rec["history"]] == ["start"]
    assert [r["step"] for r in _rows(finished_run)] == [1, 2]
    assert rundir.checkpoint_step(finished_run / "checkpoint") == 2
    umask = os.umask(0)
    os.umask(umask)
    assert (finished_run / "run.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's private 0600


def test_resume_takes_run_json_settings_and_a_finished_run_is_a_no_op(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    assert main(["--run-dir", str(run), "--resume", "--no-progress"]) == 0  # steps == the checkpoint's step
    err = capsys.readouterr().err
    assert "already has its 2 steps; nothing to do (pass --steps larger than 2" in err
    assert snapshot(run) == before
    assert main(["--run-dir", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]
    rec = json.loads((run / "run.json").read_text())
    assert [h["event"] for h in rec["history"]] == ["start", "resume"] and rec["config"]["steps"] == 3
    assert rec["config"]["lr"] == 1e-3  # from run.json, not the smoke preset's 1e-4
    assert _rows(run)[:2] == _rows(finished_run)  # the rows before the checkpoint are kept as they were


def test_allowed_config_change_applies_and_is_recorded(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert (
        main(
            [
                "--run-dir",
                str(run),
                "--resume",
                "--steps",
                "4",
                "--beta",
                "0.3",
                "--lr",
                "0.002",
                "--checkpoint-every",
                "2",
                "--allow-config-change",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = _rows(run)
    assert [r["beta"] for r in rows] == [0.05, 0.05, 0.3, 0.3]
    rec = json.loads((run / "run.json").read_text())
    assert rec["history"][-1]["changed"] == {"beta": [0.05, 0.3], "lr": [0.001, 0.002]}
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.002 and state["step"] == 4


def test_overwrite_replaces_the_run_and_keeps_other_files(finished_run, tmp_path, cache):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "my-notes.txt").write_text("keep me")
    assert main(TINY + ["--cache-dir", str(cache), "--steps", "1", "--run-dir", str(run), "--overwrite"]) == 0
    assert [r["step"] for r in _rows(run)] == [1]
    assert not (run / "checkpoint").exists()  # the old run's checkpoint is gone: a later --resume cannot mix runs
    assert (run / "my-notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "my-notes.txt", "run.json"]  # nothing set aside


def test_sweep_without_run_dir_writes_to_a_temporary_directory(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(TINY + ["--cache-dir", str(cache), "--steps", "1", "--sweep", "--placements", "none"]) == 0
    out = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["tmp"]  # nothing in the current directory
    (sweep_dir,) = (tmp_path / "tmp").iterdir()
    assert f"wrote {sweep_dir / 'sweep.csv'}" in out
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["none_beta0_seed0", "sweep.csv", "sweep.json"]


@pytest.mark.parametrize(
    "schedule,extra",
    [
        ("fixed", []),
        ("adaptive", ["--kl-target", "0.01"]),
        ("ppo-penalty", []),
        ("linear", ["--beta-end", "0.01"]),
        ("cosine", ["--beta-end", "0.01"]),
        ("exponential", ["--beta-end", "0.01", "--kl-horizon", "8"]),
    ],
)
def test_every_schedule_in_help_runs(schedule, extra, tmp_path, cache):
    from kltutor.schedules import SCHEDULES

    assert schedule in SCHEDULES and schedule in build_parser().format_help()
    run = tmp_path / "run"
    assert (
        main(
            TINY
            + [
                "--cache-dir",
                str(cache),
                "--steps",
                "2",
                "--beta",
                "0.1",
                "--kl-schedule",
                schedule,
                "--run-dir",
                str(run),
                *extra,
            ]
        )
        == 0
    )
    betas = [r["beta"] for r in _rows(run)]
    assert betas[0] == 0.1
    if schedule == "exponential":  # 8 samples per step over a horizon of 8: the end at step 2
        assert betas[1] == pytest.approx(0.01)
    rec = json.loads((run / "run.json").read_text())["config"]
    if schedule == "linear":  # the default horizon is the whole run: 2 steps x 2 prompts x 4 completions
        assert rec["kl_horizon"] == 16 and betas[1] == pytest.approx(0.1 + (0.01 - 0.1) * 8 / 16)
    if schedule == "adaptive":
        assert rec["kl_horizon"] == 10000 and rec["kl_target"] == 0.01


def test_metrics_survive_a_failure_and_the_error_says_where(tmp_path, cache, monkeypatch, capsys):
    import kltutor.capstone.loop as loop

    real, calls = loop._step, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise FloatingPointError("the loss is nan at step 2; lower lr or beta")
        return real(*a, **k)

    monkeypatch.setattr(loop, "_step", failing)
    run = tmp_path / "run"
    assert (
        main(TINY + ["--cache-dir", str(cache), "--steps", "4", "--checkpoint-every", "1", "--run-dir", str(run)]) == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: the run diverged: the loss is nan") and f"{run / 'metrics.jsonl'}" in err
    assert [r["step"] for r in _rows(run)] == [1, 2]
    assert rundir.checkpoint_step(run / "checkpoint") == 2
    monkeypatch.setattr(loop, "_step", real)
    assert main(["--run-dir", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4]


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, cache, monkeypatch):
    run = tmp_path / "run"
    assert (
        main(TINY + ["--cache-dir", str(cache), "--steps", "2", "--checkpoint-every", "2", "--run-dir", str(run)]) == 0
    )
    before = snapshot(run / "checkpoint")

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_manifest", crash)  # the new checkpoint is half written when the crash comes
    assert main(["--run-dir", str(run), "--resume", "--steps", "4", "--no-progress"]) == 130
    assert snapshot(run / "checkpoint") == before and not (run / "checkpoint.tmp").exists()  # the partial one removed
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4]  # the rows of the steps done are kept
    monkeypatch.undo()
    # a crash between the two renames of the swap: only checkpoint.old is left
    (run / "checkpoint").rename(run / "checkpoint.old")
    assert main(["--run-dir", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]
    assert rundir.checkpoint_step(run / "checkpoint") == 3 and not (run / "checkpoint.old").exists()


def _save_model(path: Path, alphabet: str):
    from kltutor.capstone.model import build_model, build_tokenizer

    tok = build_tokenizer(alphabet)
    build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).save_pretrained(
        path
    )
    tok.save_pretrained(path)


def test_a_local_model_directory_works_and_a_tokenizer_without_digits_is_refused(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _save_model(good, "0123456789+=")
    _save_model(bad, "012345689+=")  # no '7'
    common = TINY_WITHOUT_ARCHITECTURE + ["--cache-dir", str(tmp_path / "cache"), "--sft-steps", "5", "--steps", "1"]
    assert main(common + ["--model", str(good), "--run-dir", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["model"] == str(good)
    capsys.readouterr()
    assert main(common + ["--model", str(bad), "--run-dir", str(tmp_path / "run2")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --model: cannot use") and "cannot represent '7'" in line
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1]


def test_the_reference_cache_is_written_atomically_with_a_manifest(cache, finished_run):
    refs = [p.name for p in cache.iterdir()]
    assert refs and all(n.startswith("reference-") for n in refs)  # no temporary directory left behind
    manifest = json.loads((cache / refs[0] / "manifest.json").read_text())
    assert {"model.safetensors", "info.json", "tokenizer.json", "config.json"} <= set(manifest["files"])
    umask = os.umask(0)
    os.umask(umask)
    assert (cache / refs[0]).stat().st_mode & 0o777 == 0o777 & ~umask  # readable by others, not mkdtemp's 0700


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a read-only directory")
def test_read_only_run_dir(tmp_path, cache, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        assert main(TINY + ["--cache-dir", str(cache), "--run-dir", str(d)]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        d.chmod(0o700)


# --- one process per run directory, and interrupts (real processes)

REPO = str(Path(__file__).resolve().parents[1])


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "kltutor.capstone", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _wait_for_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the process has written ``n`` metric rows (its loop is running), or fail with its stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.communicate()[1]}")
        if len(rundir.MetricsLog(run / "metrics.jsonl").read()) >= n:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run wrote no rows in time")


def _interrupted_step(err: str, name: str) -> int:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert f"{name} received: finishing the step in progress, then writing a checkpoint" in err, err
    m = re.fullmatch(
        rf"interrupted by {name} after step (\d+) of 100000: its checkpoint is in .*checkpoint and its metrics in "
        r".*metrics.jsonl; continue the run with: python -m kltutor.capstone --run-dir .*run --resume",
        lines[-1],
    )
    assert m, lines[-1]
    return int(m.group(1))


def _after_interrupt(run: Path, step: int) -> None:
    """The interrupted run kept its work: a checkpoint at ``step``, its rows, no lock, no partial checkpoint;
    ``--resume`` continues it."""
    assert rundir.checkpoint_step(run / "checkpoint") == step
    assert [r["step"] for r in _rows(run)] == list(range(1, step + 1))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "metrics.jsonl", "run.json"]
    assert main(["--run-dir", str(run), "--resume", "--steps", str(step + 1), "--no-progress"]) == 0
    assert [r["step"] for r in _rows(run)] == list(range(1, step + 2))


def test_a_second_process_is_refused_and_ctrl_c_keeps_the_work(cache, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    common = TINY + ["--cache-dir", str(cache)]
    proc = _spawn(common + ["--steps", "100000", "--run-dir", str(run)], tmp_path)
    try:
        _wait_for_rows(run, 2, proc)
        before = snapshot(run / "run.json")
        for argv in (
            common + ["--steps", "3", "--run-dir", str(run)],  # a second run
            common + ["--steps", "3", "--run-dir", str(run), "--overwrite"],
            ["--run-dir", str(run), "--resume", "--steps", "100001", "--no-progress"],
        ):
            capsys.readouterr()
            assert main(argv) == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert re.search(rf"^error: --run-dir: .*run is in use by another run \(process {proc.pid} on ", line)
        assert snapshot(run / "run.json") == before  # nothing of the running run was touched
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    _after_interrupt(run, _interrupted_step(err, "SIGINT"))


def test_sigterm_keeps_the_work(cache, finished_run, tmp_path, monkeypatch, capsys):
    """SIGTERM (what a scheduler or ``docker stop`` sends), delivered to this process during step 2."""
    import kltutor.capstone.loop as loop

    real, calls = loop._step, []

    def terminated(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(loop, "_step", terminated)
    run = tmp_path / "run"
    args = TINY + ["--cache-dir", str(cache), "--steps", "100000", "--checkpoint-every", "1000", "--run-dir", str(run)]
    assert main(args) == 128 + signal.SIGTERM
    step = _interrupted_step(capsys.readouterr().err, "SIGTERM")
    assert step == 2
    monkeypatch.setattr(loop, "_step", real)
    _after_interrupt(run, step)


def test_a_second_ctrl_c_stops_at_once(tmp_path, cache, monkeypatch, capsys):
    import kltutor.capstone.loop as loop

    real, calls = loop._step, []

    def twice(*a, **k):  # Ctrl-C twice during step 2: the second one does not wait for the step
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(loop, "_step", twice)
    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    rc = main(TINY + ["--cache-dir", str(cache), "--steps", "5", "--checkpoint-every", "1", "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("SIGINT received: finishing the step in progress"), err
    assert re.fullmatch(
        r"interrupted by SIGINT again: stopped at once; the metrics of the finished steps are in .*metrics.jsonl",
        lines[1],
    )
    assert [r["step"] for r in _rows(run)] == [1] and rundir.checkpoint_step(run / "checkpoint") == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "metrics.jsonl", "run.json"]
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, cache, capsys):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended: its lock is stale
    run = tmp_path / "run"
    run.mkdir()
    holder = {"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (run / ".lock").write_text(json.dumps(holder))
    assert main(TINY + ["--cache-dir", str(cache), "--steps", "1", "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"note: took over the stale lock .*run/\.lock left by process {pid} on .*, since 2026-01-01", err)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "run.json"]  # the lock is gone


def test_no_progress_silences_every_bar(tmp_path, monkeypatch, capfd):
    """SFT, transformers' loading and saving bars, GRPO: nothing with --no-progress; --progress shows them."""
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        fresh = ["--cache-dir", str(tmp_path / "cache"), "--sft-steps", "5", "--steps", "2", "--checkpoint-every", "2"]
        capfd.readouterr()
        assert main(TINY + fresh + ["--run-dir", str(tmp_path / "quiet")]) == 0  # TINY has --no-progress
        err = capfd.readouterr().err
        assert "it/s" not in err and "%|" not in err, err
        assert main(TINY + fresh + ["--run-dir", str(tmp_path / "loud"), "--progress"]) == 0
        err = capfd.readouterr().err
        assert "GRPO k1-in-reward" in err and "Loading weights" in err, err
        assert hf_logging.is_progress_bar_enabled()  # --no-progress restored transformers' setting
    finally:
        hf_logging.enable_progress_bar() if was else hf_logging.disable_progress_bar()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_disk(small_disk, cache, capsys):
    """The run directory on a real 64 KiB file system: run.json and the first row fit, the checkpoint does not."""
    run = small_disk / "run"
    args = TINY + ["--cache-dir", str(cache), "--steps", "3", "--checkpoint-every", "1", "--run-dir", str(run)]
    capsys.readouterr()
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.search(
        r"^error: cannot write the checkpoint of step 1 \(.*\); the partial checkpoint.tmp was removed", line
    )
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "run.json"]
    assert [r["step"] for r in _rows(run)] == [1]
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)  # space freed
    assert main(args + ["--overwrite"]) == 0
    assert rundir.checkpoint_step(run / "checkpoint") == 3
