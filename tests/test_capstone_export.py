"""``python -m kltutor.capstone export --to trl|verl|openrlhf``: every placement x target is written and read back by
the config inspector with the same placement and beta, or refused in one line naming what is missing and the
nearest exact alternative. Runs in the book's environment (no trainer library needed: the inspector's field lists
and verdicts are stored in the package)."""

import pytest
import yaml

from kltutor.capstone import export
from kltutor.capstone.__main__ import main as capstone_main
from kltutor.capstone.config import CAPSTONE_PLACEMENTS, CapstoneConfig
from kltutor.placements import parse_placement

BETA = 0.07
# placement x target -> refused (and the words the refusal must contain), or None: expressed
REFUSED = {
    ("exact-in-loss", "verl"): "exact-in-loss",
    ("exact-in-loss", "openrlhf"): "exact-in-loss",
}


def _flags(tmp_path, placement, target, *extra):
    out = tmp_path / target
    argv = ["export", "--to", target, "--out", str(out), "--preset", "smoke", "--placement", placement]
    argv += [] if placement == "none" else ["--beta", str(BETA)]
    return argv + ["--cache-dir", str(tmp_path / "cache"), *extra], out


@pytest.mark.parametrize("target", export.TARGETS)
@pytest.mark.parametrize("placement", CAPSTONE_PLACEMENTS)
def test_round_trip(tmp_path, capsys, placement, target):
    argv, out = _flags(tmp_path, placement, target)
    rc = capstone_main(argv)
    cap = capsys.readouterr()
    if (placement, target) in REFUSED:
        assert rc == 2
        line = cap.err.strip()
        assert "\n" not in line and "nearest exact alternative" in line and REFUSED[placement, target] in line
        assert not out.exists() or not any(out.iterdir())
        return
    assert rc == 0, cap.err
    path = out / export.FILES[target]
    rep = export.inspect_export(path)
    assert rep.library == {"trl": "TRL", "verl": "verl", "openrlhf": "OpenRLHF"}[target]
    if placement == "none":
        assert rep.terms == []
        return
    assert len(rep.terms) == 1, rep.format()
    t = rep.terms[0]
    assert t.beta == pytest.approx(BETA)
    if placement == "exact-in-loss":
        assert (t.placement, t.estimator) == ("loss", "exact")
    else:
        p = parse_placement(placement)
        assert (t.placement, t.estimator) == (p.where, p.estimator)
    assert f"reads it back as: {rep.library}" in cap.out


def test_trl_yaml_is_the_experiment(tmp_path):
    """The TRL export carries every setting of the experiment, and the extension's config accepts it."""
    cfg = CapstoneConfig(
        placement="k3-in-reward",
        beta=0.03,
        kl_schedule="adaptive",
        kl_target=2.0,
        group_size=6,
        prompts_per_step=4,
        aggregation="sequence-sum",
        temperature=0.9,
        top_p=0.95,
        lr=2e-4,
        steps=11,
        updates_per_batch=2,
        cache_dir=str(tmp_path),
    )
    files, _ = export.export(cfg, "trl", tmp_path / "x", num_processes=2)
    v = yaml.safe_load(files[0].read_text())
    assert v["kl_placement"] == "k3-in-reward" and v["beta"] == 0.03
    assert (v["kl_schedule"], v["kl_target"], v["kl_horizon"]) == ("adaptive", 2.0, 10000)
    assert v["num_generations"] == 6 and v["per_device_train_batch_size"] == 12  # 24 completions on 2 processes
    assert v["kl_aggregation"] == "sequence-sum" and v["temperature"] == 0.9 and v["top_p"] == 0.95
    assert v["learning_rate"] == 2e-4 and v["max_steps"] == 22 and v["num_iterations"] == 2
    assert v["kltutor_task"] == {"max_operand": 49, "format_reward": 0.0}
    rep = export.inspect_export(files[0])
    assert "adaptive" in rep.terms[0].controller


@pytest.mark.parametrize(
    "target, extra, words",
    [
        ("verl", ["--kl-level", "sequence"], "--kl-level sequence"),
        ("openrlhf", ["--aggregation", "sequence-sum"], "--aggregation sequence-sum"),
        ("verl", ["--kl-schedule", "linear", "--beta-end", "0.01"], "--kl-schedule linear"),
        ("openrlhf", ["--importance-weighted-kl", "--updates-per-batch", "2"], "--importance-weighted-kl"),
        ("verl", ["--kl-schedule", "adaptive"], "fed the mean per-token KL"),
        ("openrlhf", ["--kl-schedule", "adaptive"], "fed the mean per-token KL"),
    ],
)
def test_refusals_are_one_line(tmp_path, capsys, target, extra, words):
    argv, _ = _flags(tmp_path, "k3-in-loss", target, *extra)
    assert capstone_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err and "nearest exact alternative" in err, err


def test_bad_command_lines(tmp_path, capsys):
    assert capstone_main(["export", "--placement", "k1-in-reward"]) == 2
    assert "needs --to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        capstone_main(["export", "--to", "deepspeed"])
    assert e.value.code == 2
    argv, _ = _flags(tmp_path, "k4-in-loss", "trl")
    with pytest.raises(SystemExit):
        capstone_main(argv)
    assert "invalid choice: 'k4-in-loss'" in capsys.readouterr().err
    argv, _ = _flags(tmp_path, "k1-in-reward", "trl", "--num-processes", "3")
    assert capstone_main(argv) == 2
    assert "does not divide the batch" in capsys.readouterr().err
