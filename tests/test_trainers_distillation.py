"""The installed TRL and verl distillation losses against the stored verdicts (chapter ``ch-distillation``).

Runs with the [trainers] extra (`make trainers-test`); skips cleanly without it. Every setting's verdict and
gradient must match kltutor/trainers/data/distillation.json (regenerate it with
`python -m kltutor.trainers.distillation regenerate` after an upgrade, then review the chapter's table), and the
library facts the chapter states are found in the installed source.
"""

import importlib.util
import inspect
from pathlib import Path

import pytest

from kltutor.trainers import distillation as TD

pytestmark = pytest.mark.trainers

HAVE = {lib: importlib.util.find_spec(pkg) is not None for lib, (pkg, _) in TD.LIBRARIES.items()}


def _need(lib):
    if not HAVE[lib]:
        pytest.skip(f"{lib} is not installed (make trainers-test installs it)")


@pytest.fixture(scope="module")
def fresh():
    libs = [k for k, v in HAVE.items() if v]
    if not libs:
        pytest.skip("neither TRL nor verl is installed (make trainers-test installs them)")
    return TD.compute(libs)


@pytest.mark.parametrize("lib", list(TD.LIBRARIES))
def test_matches_stored_verdicts(fresh, lib):
    _need(lib)
    one = {
        **fresh,
        "settings": [r for r in fresh["settings"] if r["library"] == lib],
        "versions": {k: v for k, v in fresh["versions"].items() if k == TD.LIBRARIES[lib][0]},
    }
    diffs = TD.compare(one, TD.load())
    assert not diffs, "\n".join(diffs)


def test_verdicts_the_chapter_states(fresh):
    got = {r["name"]: r["verdict"] for r in fresh["settings"]}
    if HAVE["TRL"]:
        for trainer in ("gkd", "distillation"):
            assert got[f"trl.{trainer}.beta0"] == "per-token forward KL, states fixed"
            assert got[f"trl.{trainer}.beta1"] == "per-token reverse KL, states fixed"
            assert got[f"trl.{trainer}.beta0.5"] == "per-token generalised JSD(0.5), states fixed"
    if HAVE["verl"]:
        assert got["verl.distill.k3.loss"] == "per-token forward KL, states fixed"
        assert got["verl.distill.k1.reward"] == "per-token reverse KL, states fixed"
        assert got["verl.distill.k3.reward"] == "other"
    # no library setting follows the gradient of the sequence-level reverse KL
    assert "sequence reverse KL (the objective)" not in got.values()


def test_trl_source_facts():
    _need("TRL")
    from trl import DistillationConfig
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    src = inspect.getsource(GKDTrainer.generalized_jsd_loss)
    # beta = 0 and beta = 1 are special-cased to the plain KLs: the mixture formula would give 0 there
    assert "if beta == 0:\n            jsd = F.kl_div(student_log_probs, teacher_log_probs" in src
    assert "elif beta == 1:\n            jsd = F.kl_div(teacher_log_probs, student_log_probs" in src
    assert "jsd = beta * kl_teacher + (1 - beta) * kl_student" in src
    # lmbda is the probability that a step trains on the student's own generations
    assert "if random.random() <= self.lmbda:" in inspect.getsource(GKDTrainer.training_step)
    gkd = GKDConfig(output_dir="/tmp/kltutor-gkd", report_to="none", use_cpu=True, bf16=False)
    assert (gkd.beta, gkd.lmbda, gkd.seq_kd) == (0.5, 0.5, False)
    import trl

    experimental = Path(trl.__file__).parent / "experimental"
    for name in ("gold", "iw_opd", "server_distillation", "sdpo", "sdft", "async_distillation"):
        assert (experimental / name).is_dir(), name  # named in the chapter as shipped, not classified
    d = DistillationConfig(output_dir="/tmp/kltutor-distill", report_to="none", use_cpu=True, bf16=False)
    assert d.beta == 1.0


def test_verl_source_facts():
    _need("verl")
    import yaml
    from verl.trainer.distillation import losses
    from verl.workers.config import DistillationLossConfig

    src = inspect.getsource(losses.distillation_loss)
    assert "advantages=-distillation_losses.detach()," in src  # the per-token estimator, no return-to-go
    root = Path(losses.__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config" / "distillation" / "distillation.yaml").read_text())["distillation_loss"]
    assert (cfg["loss_mode"], cfg["use_policy_gradient"], cfg["loss_max_clamp"]) == ("k3", False, None)
    dc = DistillationLossConfig()
    assert (dc.loss_mode, dc.use_policy_gradient) == ("k3", True)  # the class's default differs from the YAML's
    topk = inspect.getsource(losses.compute_forward_kl_topk)
    assert "distillation_losses = distillation_losses.clamp_min(0.0)" in topk  # a truncated KL can be negative
    assert 'names=["forward_kl_topk"]' in inspect.getsource(losses)  # the loss mode chapter 9 names
    from verl.trainer.distillation.fsdp import losses as fsdp_losses

    assert "teacher_topk_ids" in inspect.signature(fsdp_losses.compute_forward_kl_topk).parameters
    with pytest.raises(ValueError, match="k1 loss"):
        DistillationLossConfig(loss_mode="k1", use_policy_gradient=False)


def test_openrlhf_ships_no_distillation_loss():
    """The chapter says OpenRLHF 0.11.2 has no on-policy distillation loss to classify."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None:
        pytest.skip("OpenRLHF is not installed (make trainers-test installs it)")
    from importlib.metadata import version

    assert version("openrlhf") == "0.11.2"
    root = Path(spec.origin).parent
    hits = [
        p
        for p in root.rglob("*.py")
        if "distill" in p.read_text(errors="ignore").lower() or "teacher" in p.read_text(errors="ignore").lower()
    ]
    assert not hits, hits
