"""The libraries' own on-policy distillation losses on the exact toy, classified (chapter ``ch-distillation``).

The student is chapter 3's policy and the teacher chapter 3's reference (:data:`kltutor.trainers.core.TOY`).
Each *setting* wraps a library's loss, called as is, on a batch of one student sequence: ``fn(seq, student,
teacher) -> scalar``, with the toy's logits ``(0, a + b c_t)`` fed in the shape the library expects. Its exact
expected gradient over the student's ``2**T`` sequences (:func:`kltutor.distillation.expected_loss_gradient`),
divided by the factor the library puts in front of the per-sequence token sum (``1/T`` for a token mean), is
classified against the candidates of :func:`reference_gradients` by :func:`kltutor.trainers.core.classify`, and
its ``|bias|`` is measured against the gradient of the sequence-level reverse KL, the objective of on-policy
distillation.

- TRL 1.16: ``GKDTrainer.generalized_jsd_loss`` (``trl.experimental.gkd``) and the stable
  ``DistillationTrainer``'s loss ``_chunked_divergence_loss`` (``trl.trainer.distillation_trainer``), each at
  ``beta`` 0 (forward KL), 0.5 and 1 (reverse KL).
- verl 0.9.1: ``verl.trainer.distillation.losses.distillation_loss`` with ``loss_mode`` k1 / k3 / k2, as a loss
  (``use_policy_gradient=False``, the default) and as a reward (``use_policy_gradient=True``).

The verdicts are stored in ``kltutor/trainers/data/distillation.json`` (:func:`load`), so the chapter renders
without the libraries; ``python -m kltutor.trainers.distillation check`` re-runs the installed code and fails
when a verdict or a gradient moved (``tests/test_trainers_distillation.py``, ``-m trainers``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from kltutor import distillation as D
from kltutor.trainers import core, load_stored, version_changes

__all__ = [
    "DATA_PATH",
    "CANDIDATES",
    "DistillSetting",
    "reference_gradients",
    "settings",
    "compute",
    "write",
    "load",
    "compare",
    "frame",
]

DATA_PATH = Path(__file__).with_name("data") / "distillation.json"
DIGITS = 10

#: The candidate expected gradients, in the order :func:`kltutor.trainers.core.classify` tries them.
CANDIDATES = (
    "sequence reverse KL (the objective)",
    "per-token reverse KL, states fixed",
    "per-token forward KL, states fixed",
    "per-token generalised JSD(0.5), states fixed",
    "zero in expectation",
)


@dataclass
class DistillSetting:
    """One distillation loss of one library, with the callable that runs the library's own code."""

    library: str
    trainer: str
    name: str
    flags: str
    signal: str  # "full vocabulary" or "sampled token"
    use: str  # "loss" (differentiated) or "reward" (advantage of a policy gradient)
    fn: Callable = field(repr=False)
    scale: float = 1.0
    default: bool = False
    note: str = ""
    source: str = ""

    def record(self) -> dict:
        keys = ("library", "trainer", "name", "flags", "signal", "use", "scale", "default", "note", "source")
        return {k: getattr(self, k) for k in keys}


def reference_gradients(student, teacher, seq_len: int) -> dict[str, Tensor]:
    """The candidates (``kltutor.distillation``, per-sequence sums)."""
    return {
        CANDIDATES[0]: D.sequence_gradient(student, teacher, seq_len),
        CANDIDATES[1]: D.local_gradient(student, teacher, seq_len, "reverse"),
        CANDIDATES[2]: D.local_gradient(student, teacher, seq_len, "forward"),
        CANDIDATES[3]: D.local_gradient(student, teacher, seq_len, "gjsd", 0.5),
        CANDIDATES[4]: torch.zeros(2, dtype=torch.float64),
    }


# ----------------------------------------------------------------------------------------------- TRL
def _gkd(beta: float):
    def fn(seq, student, teacher):
        from trl.experimental.gkd import GKDTrainer

        labels = torch.zeros(seq.shape, dtype=torch.long)  # every completion token counts (none is -100)
        with torch.no_grad():
            t_logits = D.toy_logits(teacher, seq)
        return GKDTrainer.generalized_jsd_loss(D.toy_logits(student, seq), t_logits, labels=labels, beta=beta)

    return fn


def _toy_head(model, seq):
    """The toy as a backbone and an ``lm_head``: hidden state ``(1, c_t)``, weight rows ``(0, 0)`` and ``(a, b)``."""
    c = model.counts(seq)
    hidden = torch.stack([torch.ones_like(c), c], dim=-1)
    weight = torch.stack([torch.zeros(2, dtype=torch.float64), torch.stack([model.a, model.b])])
    return hidden, weight


def _chunked(beta: float):
    def fn(seq, student, teacher):
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        h_s, w_s = _toy_head(student, seq)
        with torch.no_grad():
            h_t, w_t = _toy_head(teacher, seq)
        loss, _, _ = _chunked_divergence_loss(h_s, h_t, w_s, w_t.detach(), torch.ones(seq.shape), beta)
        return loss

    return fn


def _trl_settings(seq_len: int) -> list[DistillSetting]:
    out = []
    for beta, what in ((0.0, "forward KL"), (0.5, "generalised JSD"), (1.0, "reverse KL")):
        out.append(
            DistillSetting(
                "TRL",
                "GKDTrainer",
                f"trl.gkd.beta{beta:g}",
                f"GKDConfig(beta={beta:g}), on student samples (lmbda=1)",
                "full vocabulary",
                "loss",
                _gkd(beta),
                1.0 / seq_len,
                default=beta == 0.5,
                note=f"{what}; the default lmbda=0.5 trains half the batches on dataset completions",
                source="trl/experimental/gkd/gkd_trainer.py (GKDTrainer.generalized_jsd_loss)",
            )
        )
    for beta, what in ((0.0, "forward KL"), (0.5, "generalised JSD"), (1.0, "reverse KL")):
        out.append(
            DistillSetting(
                "TRL",
                "DistillationTrainer",
                f"trl.distillation.beta{beta:g}",
                f"DistillationConfig(beta={beta:g})",
                "full vocabulary",
                "loss",
                _chunked(beta),
                1.0 / seq_len,
                default=beta == 1.0,
                note=what,
                source="trl/trainer/distillation_trainer.py (_chunked_divergence_loss)",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- verl
def _verl(loss_mode: str, use_policy_gradient: bool):
    def fn(seq, student, teacher):
        from tensordict import TensorDict
        from verl.trainer.distillation.losses import distillation_loss
        from verl.workers.config import DistillationLossConfig

        T = seq.shape[1]
        logp = student.token_logprobs(seq)
        with torch.no_grad():
            t_logp = teacher.token_logprobs(seq)
        # verl's model output is unpadded: entry i holds the log-probability of token i + 1 of the sequence
        # (one prompt token here), so the response's T values come first and one pad follows.
        pad = torch.zeros(1, 1, dtype=logp.dtype)
        data = TensorDict(
            {
                "prompts": torch.zeros(1, 1, dtype=torch.long),
                "responses": seq.long(),
                "attention_mask": torch.ones(1, T + 1, dtype=torch.long),
                "response_mask": torch.ones(1, T, dtype=torch.long),
                "teacher_logprobs": torch.cat([t_logp, pad], 1).reshape(-1),
                "old_log_probs": logp.detach().clone(),
            },
            batch_size=[],
        )
        data["dp_size"] = 1
        data["batch_num_tokens"] = T
        data["global_batch_size"] = 1
        # the Hydra defaults (verl/trainer/config/distillation/distillation.yaml): no clamps
        loss_config = DistillationLossConfig(
            loss_mode=loss_mode, use_policy_gradient=use_policy_gradient, loss_max_clamp=None, log_prob_min_clamp=None
        )
        config = SimpleNamespace(loss_agg_mode="token-mean", global_batch_info={}, loss_scale_factor=None)
        dist = SimpleNamespace(distillation_loss=loss_config)
        out = {"log_probs": torch.cat([logp, pad], 1).reshape(-1)}
        loss, _ = distillation_loss(config, dist, out, data)
        return loss

    return fn


def _verl_settings(seq_len: int) -> list[DistillSetting]:
    out = []
    # k1 as a loss is refused by DistillationLossConfig (its gradient does not depend on the teacher)
    for mode, pg in (("k3", False), ("k2", False), ("k1", True), ("k3", True)):
        out.append(
            DistillSetting(
                "verl",
                "distillation (PPO actor)",
                f"verl.distill.{mode}.{'reward' if pg else 'loss'}",
                f"distillation_loss.loss_mode={mode}, use_policy_gradient={pg}",
                "sampled token",
                "reward" if pg else "loss",
                _verl(mode, pg),
                1.0 / seq_len,
                default=(mode == "k3" and not pg),
                note=(
                    "advantage = -estimator of each token, no return-to-go"
                    + ("; the config class's own default (the YAML's is the loss)" if mode == "k3" else "")
                    if pg
                    else "the YAML default"
                    if mode == "k3"
                    else ""
                ),
                source="verl/trainer/distillation/losses.py (distillation_loss)",
            )
        )
    return out


LIBRARIES = {"TRL": ("trl", _trl_settings), "verl": ("verl", _verl_settings)}


def settings(libraries=None, seq_len: int | None = None) -> list[DistillSetting]:
    """Every setting of the given libraries (all by default)."""
    T = core.TOY["seq_len"] if seq_len is None else seq_len
    libs = list(LIBRARIES) if libraries is None else list(libraries)
    for lib in libs:
        if lib not in LIBRARIES:
            raise ValueError(f"unknown library {lib!r}; choose one of {list(LIBRARIES)}")
    return [s for lib in libs for s in LIBRARIES[lib][1](T)]


def _round(v) -> list[float]:
    return [round(float(x), DIGITS) + 0.0 for x in v]


def compute(libraries=None) -> dict:
    """Run every setting on the toy (needs the libraries): the dict :func:`write` stores."""
    import importlib
    import platform

    student, teacher, _, T = core.toy_models()
    refs = reference_gradients(student, teacher, T)
    true = refs[CANDIDATES[0]]
    libs = list(LIBRARIES) if libraries is None else list(libraries)
    versions = {"torch": torch.__version__.split("+")[0], "python": platform.python_version()}
    rows = []
    for s in settings(libs, T):
        pkg = LIBRARIES[s.library][0]
        versions[pkg] = importlib.import_module(pkg).__version__
        g = D.expected_loss_gradient(student, teacher, T, s.fn) / s.scale
        verdict, _ = core.classify(g, refs)
        rows.append(
            {
                **s.record(),
                "gradient": _round(g),
                "verdict": verdict,
                "bias_norm": round(float((g - true).norm()), DIGITS),
            }
        )
    return {
        "generated_by": "python -m kltutor.trainers.distillation regenerate",
        "toy": {"student": core.TOY["policy"], "teacher": core.TOY["reference"], "seq_len": T},
        "versions": versions,
        "references": {k: _round(v) for k, v in refs.items()},
        "settings": rows,
    }


def write(data: dict, path: Path | str = DATA_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def load(path: Path | str = DATA_PATH) -> dict:
    """The committed verdicts (no library needed)."""
    return load_stored(path, "verdicts", "python -m kltutor.trainers.distillation regenerate")


def compare(fresh: dict, stored: dict, tol: float = 1e-7) -> list[str]:
    """Differences between a fresh :func:`compute` and the stored file, one line each (empty: they agree)."""
    out = version_changes(fresh, stored)
    libs = {r["library"] for r in fresh["settings"]}
    old = {r["name"]: r for r in stored["settings"] if r["library"] in libs}
    new = {r["name"]: r for r in fresh["settings"]}
    for name in sorted(set(old) ^ set(new)):
        out.append(f"setting {name}: {'only in the stored file' if name in old else 'new in the library'}")
    for name in sorted(set(old) & set(new)):
        if old[name]["verdict"] != new[name]["verdict"]:
            out.append(f"{name}: verdict was {old[name]['verdict']!r}, now {new[name]['verdict']!r}")
        d = max(abs(x - y) for x, y in zip(old[name]["gradient"], new[name]["gradient"]))
        if d > tol:
            out.append(f"{name}: gradient moved by {d:.2e}")
    return out


def frame(data: dict | None = None):
    """The stored verdicts as the chapter's table (a pandas DataFrame)."""
    import pandas as pd

    data = load() if data is None else data
    return pd.DataFrame(
        [
            {
                "library": r["library"],
                "trainer": r["trainer"],
                "setting": r["flags"],
                "signal": r["signal"],
                "used as": r["use"],
                "expected gradient": r["verdict"],
                "|bias|": r["bias_norm"],
                "default": "yes" if r["default"] else "",
            }
            for r in data["settings"]
        ]
    )


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m kltutor.trainers.distillation", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["show", "regenerate", "check"])
    args = p.parse_args(argv)
    if args.command == "show":
        print(frame().to_string(index=False))
        return 0
    try:
        fresh = compute()
    except ImportError as e:
        print(f"a library is missing ({e}); install the extra: make trainers-venv", file=sys.stderr)
        return 2
    if args.command == "regenerate":
        print(f"wrote {write(fresh)} ({len(fresh['settings'])} settings)")
        return 0
    diffs = compare(fresh, load())
    for d in diffs:
        print(d)
    print("the installed libraries agree with the stored verdicts" if not diffs else f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
