"""kltutor.inspect on configs in each library's own format (tests/data/inspect), without the libraries."""

import json
from pathlib import Path

import pytest

from kltutor.inspect import WARNING_CODES, ConfigError, inspect_file, inspect_text
from kltutor.inspect.__main__ import main

DATA = Path(__file__).parent / "data" / "inspect"

# file -> (library, [(placement, estimator, level, beta, verdict)], set of warning codes)
EXPECTED = {
    "trl_grpo_defaults.yaml": ("TRL", [], set()),
    "grpo_r1_style.yaml": (
        "TRL",
        [("loss", "k3", "token", 0.001, "token-level k2 (biased for T > 1)")],
        {"unclamped-k3-bf16", "length-rescaled-beta", "std-rescaled-beta"},
    ),
    "trl_grpo_gspo.json": ("TRL", [("loss", "k3", "token", 0.04, "other")], {"ratio-with-sequence-is"}),
    "trl_rloo_defaults.yaml": ("TRL", [("reward", "k1", "sequence", 0.05, "exact reverse-KL gradient")], set()),
    "trl_ppo.yaml": ("TRL", [("reward", "k1", "token", 0.05, "exact reverse-KL gradient")], set()),
    "trl_ppo_zero.yaml": ("TRL", [], {"beta-zero-with-reference"}),
    "verl_defaults.yaml": ("verl", [], set()),
    "verl_grpo.yaml": (
        "verl",
        [("loss", "k3", "token", 0.001, "per-token forward KL")],
        {"length-rescaled-beta", "std-rescaled-beta"},
    ),
    "verl_k3plus.yaml": ("verl", [("loss", "k3+", "token", 0.001, "token-level k2 (biased for T > 1)")], set()),
    "verl_reward_adaptive.yaml": ("verl", [("reward", "k1", "token", 0.2, "exact reverse-KL gradient")], set()),
    "verl_two_terms.yaml": (
        "verl",
        [("loss", "k1", "token", 0.0, "zero in expectation"), ("reward", "k3", "token", 0.05, "other")],
        {"two-kl-terms", "k1-in-loss", "beta-zero-with-reference", "length-rescaled-beta"},
    ),
    "openrlhf_defaults.txt": ("OpenRLHF", [("reward", "k1", "token", 0.01, "exact reverse-KL gradient")], set()),
    "openrlhf_grpo.txt": (
        "OpenRLHF",
        [("loss", "k3", "token", 0.001, "per-token forward KL")],
        {"length-rescaled-beta", "std-rescaled-beta"},
    ),
    "openrlhf_k1_loss.txt": (
        "OpenRLHF",
        [("loss", "k1", "token", 0.01, "zero in expectation")],
        {"k1-in-loss", "length-rescaled-beta"},
    ),
    "openrlhf_unbiased.txt": (
        "OpenRLHF",
        [("loss", "k3", "token", 0.001, "token-level k2 (biased for T > 1)")],
        {"ratio-with-sequence-is", "length-rescaled-beta"},
    ),
}

BAD = {  # file -> words the one-line error must contain
    "bad.yaml": ["bad YAML", "line 2"],
    "bad.json": ["bad JSON", "line 1"],
    "unknown_field.yaml": ["unknown field", "kl_loss_coeff"],
    "unknown_library.yaml": ["unknown library"],
    "verl_typo.yaml": ["unknown field", "actor_rollout_ref.actor.use_kl_los"],
    "verl_bad_value.yaml": ["actor_rollout_ref.actor.kl_loss_type", "unknown value 'k4'"],
    "openrlhf_old_flags.txt": ["unknown field", "--use_kl_loss", "--algo.kl.use_loss"],
    "trl_ambiguous.yaml": ["cannot tell", "--trainer"],
}


def test_every_fixture_is_covered():
    files = {p.name for p in DATA.iterdir() if p.suffix in (".yaml", ".json", ".txt")}
    assert files == set(EXPECTED) | set(BAD)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name):
    lib, terms, warnings = EXPECTED[name]
    rep = inspect_file(DATA / name)
    assert rep.library == lib
    got = [(t.placement, t.estimator, t.level, pytest.approx(t.beta), t.verdict) for t in rep.terms]
    assert got == [(p, e, lv, b, v) for p, e, lv, b, v in terms]
    assert {w.code for w in rep.warnings} == warnings
    assert rep.exit_code == (1 if warnings else 0)
    assert {w.code for w in rep.warnings} <= set(WARNING_CODES)
    for t in rep.terms:
        assert t.bias_norm is not None and (t.bias_norm < 1e-6) == (t.verdict == "exact reverse-KL gradient")


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_give_one_line(name, capsys):
    with pytest.raises(ConfigError) as e:
        inspect_file(DATA / name)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(DATA / name))
    for word in BAD[name]:
        assert word in msg
    assert main([str(DATA / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_stale_rows_when_batches_are_reused():
    rep = inspect_file(DATA / "openrlhf_unbiased.txt")
    assert rep.terms[0].stale == {"verdict": "other", "bias_norm": pytest.approx(0.543437, abs=1e-6)}
    assert inspect_file(DATA / "openrlhf_grpo.txt").terms[0].stale is None


def test_cli_text_and_exit_codes(capsys):
    assert main([str(DATA / "trl_rloo_defaults.yaml")]) == 0
    out = capsys.readouterr().out
    assert "exact reverse-KL gradient" in out and "clean" in out
    assert main([str(DATA / "verl_two_terms.yaml")]) == 1
    assert "warning [two-kl-terms]" in capsys.readouterr().out
    assert main([str(DATA / "trl_ppo.yaml"), str(DATA / "bad.yaml")]) == 2  # the worst status wins


def test_cli_json(capsys):
    assert main([str(DATA / "verl_grpo.yaml"), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["library"] == "verl" and d["exit_code"] == 1
    assert d["terms"][0]["setting"] == "verl.loss.low_var_kl"
    assert {w["code"] for w in d["warnings"]} == {"length-rescaled-beta", "std-rescaled-beta"}
    assert main([str(DATA / "bad.json"), "--json"]) == 2
    d = json.loads(capsys.readouterr().out)
    assert d["exit_code"] == 2 and "bad JSON" in d["error"]


def test_trainer_option(capsys):
    rep = inspect_file(DATA / "trl_ambiguous.yaml", trainer="rloo")
    assert rep.trainer.startswith("RLOOTrainer") and rep.terms[0].beta == 0.1
    assert main([str(DATA / "trl_ambiguous.yaml"), "--trainer", "grpo"]) == 1


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        inspect_file(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty file"):
        inspect_file(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        inspect_file(tmp_path / "list.yaml")


def test_bad_values():
    with pytest.raises(ConfigError, match="field beta: expected a number"):
        inspect_text("beta: lots\nloss_type: grpo\n", "x.yaml")
    with pytest.raises(ConfigError, match="must be >= 0"):
        inspect_text("beta: -0.1\nloss_type: grpo\n", "x.yaml")
    with pytest.raises(ConfigError, match="use_kl_loss: expected true or false"):
        inspect_text("actor_rollout_ref.actor.use_kl_loss: maybe\n", "x.yaml")
    with pytest.raises(ConfigError, match="--algo.kl.estimator: unknown value 'k5'"):
        inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.estimator k5\n", "x.txt", ".txt")
    with pytest.raises(ConfigError, match="missing value"):
        inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.init_coef\n", "x.txt", ".txt")
    with pytest.raises(ConfigError, match="entry point"):
        inspect_text("python -m openrlhf.cli.train_dpo --beta 0.1\n", "x.txt", ".txt")


def test_verl_interpolation_and_overrides():
    rep = inspect_text(
        "actor_rollout_ref.actor.use_kl_loss: true\n"
        "+actor_rollout_ref.actor.kl_loss_coef: ${algorithm.kl_ctrl.kl_coef}\n"
        "algorithm.kl_ctrl.kl_coef: 0.3\n",
        "x.yaml",
    )
    assert rep.terms[0].beta == pytest.approx(0.3)


def test_stdlib_inspect_still_importable():
    """kltutor/inspect must not shadow the standard library's inspect inside the package."""
    import inspect as std

    import kltutor.checklist  # the batch checklist: check_batch, no name that shadows inspect
    import kltutor.inspect

    assert hasattr(std, "getsource") and std.__name__ == "inspect"
    assert kltutor.inspect.__name__ == "kltutor.inspect" and callable(kltutor.checklist.check_batch)
    assert not hasattr(kltutor.checklist, "inspect")


def test_sync_ref_model_note():
    rep = inspect_text(
        "beta: 0.1\nloss_type: luspo\nsync_ref_model: true\nbf16: false\nscale_rewards: none\n", "grpo.yaml"
    )
    assert rep.exit_code == 0 and any("moving anchor" in n for n in rep.notes)
