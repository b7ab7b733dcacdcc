"""kltutor.configcheck on configs in each library's own format (tests/data/configcheck), without the libraries."""

import json
from pathlib import Path

import pytest

from kltutor.configcheck import WARNING_CODES, ConfigError, inspect_file, inspect_text
from kltutor.configcheck.__main__ import main

DATA = Path(__file__).parent / "data" / "configcheck"

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
    # a field it does not know is a note, or a warning when its name speaks of the KL or the reference
    "grpo_unknown_field.yaml": (
        "TRL",
        [("loss", "k3", "token", 0.1, "token-level k2 (biased for T > 1)")],
        {"unknown-kl-field", "unclamped-k3-bf16", "length-rescaled-beta", "std-rescaled-beta"},
    ),
    "verl_typo.yaml": ("verl", [], {"unknown-kl-field"}),
    # OpenRLHF <= 0.10.1 spellings, translated with a note
    "openrlhf_old_flags.txt": (
        "OpenRLHF",
        [("loss", "k3", "token", 0.001, "per-token forward KL")],
        {"length-rescaled-beta", "std-rescaled-beta"},
    ),
    # #25: group_norm divides by the group std even with --algo.advantage.no_std_norm, and the KL loss is a
    # global token mean whatever --actor.loss_agg_mode says (OpenRLHF 0.11.2)
    "openrlhf_group_norm_no_std.txt": (
        "OpenRLHF",
        [("loss", "k3", "token", 0.001, "per-token forward KL")],
        {"length-rescaled-beta", "std-rescaled-beta"},
    ),
    "openrlhf_reinforce_no_std.txt": (
        "OpenRLHF",
        [("loss", "k2", "token", 1e-5, "token-level k2 (biased for T > 1)")],
        {"length-rescaled-beta"},
    ),
}

BAD = {  # file -> words the one-line error must contain
    "bad.yaml": ["bad YAML", "line 2"],
    "bad.json": ["bad JSON", "line 1"],
    "unknown_library.yaml": ["unknown library"],
    "verl_bad_value.yaml": ["actor_rollout_ref.actor.kl_loss_type", "unknown value 'k4'"],
    "trl_ambiguous.yaml": ["cannot tell", "--trainer"],
    "beta_nan.yaml": ["field beta", "finite", "nan"],
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


def test_like_a_paper(capsys):
    """--like PAPER adds kltutor.papers.compare's lines to the report; the exit status keeps its meaning."""
    from kltutor import papers

    f = str(DATA / "grpo_r1_style.yaml")  # TRL GRPO, k3 in the loss, beta = 0.001
    assert main([f, "--like", "deepseek-r1"]) == main([f])
    out = capsys.readouterr().out
    assert "compared with DeepSeek-R1" in out and "nothing the paper states differs" in out
    plain = main([f])
    capsys.readouterr()
    assert main([f, "--like", "DeepSeekMath", "--json"]) == plain
    d = json.loads(capsys.readouterr().out)
    diffs = papers.compare(inspect_file(f).to_dict(), "deepseekmath")
    assert diffs and d["like"] == {
        "paper": "deepseekmath",
        "arxiv": papers.paper("deepseekmath")["arxiv"],
        "differences": diffs,
    }
    assert any("0.04" in line for line in diffs)  # DeepSeekMath's beta, quoted
    assert main([f, "--like", "dapo"]) in (0, 1)
    assert "difference(s)" in capsys.readouterr().out  # DAPO has no KL term at all


def test_like_an_unknown_paper_is_one_line(capsys):
    assert main([str(DATA / "grpo_r1_style.yaml"), "--like", "gpt-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --like: no paper 'gpt-5'") and "deepseekmath" in err[0]


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
    for bad in ("nan", ".inf", "-.inf", "NaN"):
        with pytest.raises(ConfigError, match="field beta: must be a finite number"):
            inspect_text(f"beta: {bad}\nloss_type: grpo\n", "x.yaml")
    with pytest.raises(ConfigError, match="field --algo.kl.init_coef: must be a finite number"):
        inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.init_coef inf\n", "x.sh", ".sh")
    with pytest.raises(ConfigError, match="kl_loss_coef: must be a finite number"):
        inspect_text(
            "python3 -m verl.trainer.main_ppo actor_rollout_ref.actor.use_kl_loss=True "
            "actor_rollout_ref.actor.kl_loss_coef=nan\n",
            "x.sh",
            ".sh",
        )


def test_verl_interpolation_and_overrides():
    rep = inspect_text(
        "actor_rollout_ref.actor.use_kl_loss: true\n"
        "+actor_rollout_ref.actor.kl_loss_coef: ${algorithm.kl_ctrl.kl_coef}\n"
        "algorithm.kl_ctrl.kl_coef: 0.3\n",
        "x.yaml",
    )
    assert rep.terms[0].beta == pytest.approx(0.3)


def test_stdlib_inspect_still_importable():
    """kltutor.configcheck does not shadow the standard library's inspect; the old name is an alias of it."""
    import inspect as std

    import kltutor.checklist  # the batch checklist: check_batch, no name that shadows inspect
    import kltutor.configcheck
    import kltutor.inspect

    assert hasattr(std, "getsource") and std.__name__ == "inspect"
    assert kltutor.inspect.inspect_text is kltutor.configcheck.inspect_text
    assert kltutor.inspect.Report is kltutor.configcheck.Report and kltutor.inspect.ConfigError is ConfigError
    assert callable(kltutor.checklist.check_batch) and not hasattr(kltutor.checklist, "inspect")


def test_sync_ref_model_note():
    rep = inspect_text(
        "beta: 0.1\nloss_type: luspo\nsync_ref_model: true\nbf16: false\nscale_rewards: none\n", "grpo.yaml"
    )
    assert rep.exit_code == 0 and any("moving anchor" in n for n in rep.notes)


def test_unclamped_k3_bf16_names_the_bf16_projection():
    # TRL 1.16's fused LM head takes the log-softmax in float32 and projects in bf16 (library fact
    # trl-fused-lm-head-precision): the warning blames the logits, not "bf16 log-probabilities"
    (w,) = [w for w in inspect_text("beta: 0.04\nbf16: true\n", "grpo.yaml").warnings if w.code == "unclamped-k3-bf16"]
    assert "bf16 logits" in w.message and "log-softmax in float32" in w.message and "bf16 log-prob" not in w.message
    rep = inspect_text("beta: 0.04\nbf16: true\ncast_lm_head_to_fp32: true\n", "grpo.yaml")
    assert "unclamped-k3-bf16" not in {w.code for w in rep.warnings}


# --- issue #24: values, unknown fields, readable reports ----------------------------------------------------


def test_adaptive_controller_from_zero_warns():
    rep = inspect_text(
        "algorithm:\n  use_kl_in_reward: true\n  kl_ctrl:\n    type: adaptive\n    kl_coef: 0.0\n", "verl.yaml"
    )
    assert [w.code for w in rep.warnings] == ["adaptive-from-zero"] and "never moves" in rep.warnings[0].message
    rep = inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.init_coef 0 --algo.kl.target 0.1\n", "o.sh")
    assert [w.code for w in rep.warnings] == ["adaptive-from-zero"] and rep.terms == []


def test_set_but_unused_coefficients_are_notes():
    rep = inspect_text(
        "actor_rollout_ref.actor.use_kl_loss: false\nactor_rollout_ref.actor.kl_loss_coef: 0.1\n", "v.yaml"
    )
    assert rep.exit_code == 0 and any("kl_loss_coef is set but unused" in n for n in rep.notes)
    rep = inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.init_coef 0 --algo.kl.estimator k3\n", "o.sh")
    assert any("--algo.kl.estimator is set but unused" in n for n in rep.notes)
    rep = inspect_text("beta: 0.0\nuse_bias_correction_kl: false\n", "grpo.yaml")
    assert any("use_bias_correction_kl is set but unused" in n for n in rep.notes)


def test_unknown_fields_are_notes_unless_they_name_the_kl():
    rep = inspect_text(
        "beta: 0.1\nloss_type: dr_grpo\nscale_rewards: none\nbf16: false\nmy_reward_fn: acc\n", "grpo.yaml"
    )
    assert rep.exit_code == 0 and any("my_reward_fn" in n for n in rep.notes)
    rep = inspect_text("beta: 0.1\nloss_type: dr_grpo\nscale_rewards: none\nbf16: false\nref_kl_clip: 3\n", "grpo.yaml")
    assert [w.code for w in rep.warnings] == ["unknown-kl-field"] and "ref_kl_clip" in rep.warnings[0].message
    rep = inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.new_switch --my.flag 3\n", "o.sh")
    assert [w.code for w in rep.warnings] == ["unknown-kl-field"] and any("--my.flag" in n for n in rep.notes)


def test_values_from_the_file_and_from_defaults():
    rep = inspect_text("actor_rollout_ref.actor.use_kl_loss: true\n", "v.yaml")
    assert rep.from_file == {"actor_rollout_ref.actor.use_kl_loss": "true"}
    assert rep.defaults["actor_rollout_ref.actor.kl_loss_coef"] == "0.001"
    text = rep.format()
    assert (
        "read from the file: actor_rollout_ref.actor.use_kl_loss=true" in text and "assumed (library defaults)" in text
    )
    d = rep.to_dict()
    assert d["from_file"] and d["defaults"] and all(w["section"] for w in d["warnings"])


@pytest.mark.parametrize(
    "text, words",
    [
        ("\x00\x01binary", ["not a text file"]),
        ("   \n", ["empty file"]),
        ("x" * 2_000_001, ["too large"]),
    ],
)
def test_bad_input_is_one_line(text, words):
    with pytest.raises(ConfigError) as e:
        inspect_text(text, "paste", ".yaml")
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)


def test_not_utf8_file(tmp_path):
    (tmp_path / "x.yaml").write_bytes(b"beta: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        inspect_file(tmp_path / "x.yaml")


# --- issue #28: rejection filters and rollout correction -------------------------------------------------------


def test_trl_vllm_sequence_mask_and_off_policy_mask():
    base = "beta: 0.0\nuse_vllm: true\n"
    rep = inspect_text(base, "grpo.yaml")  # TRL 1.16's default mode is sequence_mask
    (w,) = rep.warnings
    assert w.code == "length-biased-filter" and w.section == "sec-practice-filters" and "sum" in w.message
    rep = inspect_text(base + "vllm_importance_sampling_mode: token_truncate\n", "grpo.yaml")
    assert rep.exit_code == 0 and any("token_truncate" in n and "policy-gradient term only" in n for n in rep.notes)
    rep = inspect_text(
        base + "vllm_importance_sampling_mode: token_mask\noff_policy_mask_threshold: 0.5\n", "grpo.yaml"
    )
    assert [w.code for w in rep.warnings] == ["one-sided-filter"] and "negative-advantage" in rep.warnings[0].message
    rep = inspect_text(base + "vllm_importance_sampling_cap: 2.0\n", "grpo.yaml")
    assert "[-inf, 2]" in rep.warnings[0].message and any("deprecated" in n for n in rep.notes)
    rep = inspect_text("beta: 0.0\nvllm_importance_sampling_mode: sequence_mask\n", "grpo.yaml")
    assert rep.exit_code == 0 and any("set but unused" in n for n in rep.notes)


def test_verl_rollout_rejection_modes():
    R = "algorithm.rollout_correction."
    rep = inspect_text(f"{R}rollout_rs: seq_sum_k3\n{R}rollout_rs_threshold: 0.01\n", "v.yaml")
    assert [w.code for w in rep.warnings] == ["length-biased-filter"]
    assert "KL loss included" in rep.warnings[0].message
    rep = inspect_text(f"{R}rollout_rs: seq_mean_k3,token_k1\n{R}rollout_rs_threshold: '0.01,0.5_2'\n", "v.yaml")
    assert rep.exit_code == 0 and sum("rollout_rs=" in n for n in rep.notes) == 2
    with pytest.raises(ConfigError, match="rollout_rs: unknown value 'seq_k9'"):
        inspect_text(f"{R}rollout_rs: seq_k9\n{R}rollout_rs_threshold: 1\n", "v.yaml")
    rep = inspect_text(f"{R}rollout_is: sequence\n{R}rollout_is_threshold: '0.5_2.0'\n", "v.yaml")
    assert [w.code for w in rep.warnings] == ["length-biased-filter"] and "zeroed outside [0.5, 2.0]" in rep.warnings[
        0
    ].message
    rep = inspect_text(f"{R}rollout_is: token\n{R}rollout_is_threshold: 2.0\n", "v.yaml")
    assert rep.exit_code == 0 and any("truncated at 2.0" in n for n in rep.notes)
    with pytest.raises(ConfigError, match="needs a threshold"):
        inspect_text(f"{R}rollout_rs: token_k2\n", "v.yaml")


def test_openrlhf_is_correction():
    cmd = "python -m openrlhf.cli.train_ppo_ray --algo.kl.init_coef 0 "
    rep = inspect_text(
        cmd + "--algo.advantage.is_correction_level seq --algo.advantage.is_correction_gating binary_kl "
        "--algo.advantage.is_correction_threshold 0.01\n",
        "o.sh",
    )
    assert any("binary KL" in n and "mean over the sequence" in n for n in rep.notes)
    rep = inspect_text(cmd + "--algo.advantage.is_correction_level token --actor.policy_loss_type gspo\n", "o.sh")
    assert any("set but unused" in n and "--actor.policy_loss_type ppo" in n for n in rep.notes)


# --- issue #30: the inspector without torch -------------------------------------------------------------------


def test_imports_and_reports_without_torch_or_numpy(tmp_path):
    """``import kltutor.configcheck`` and a report need neither torch nor numpy (the in-browser page)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'numpy', 'pandas', 'scipy', 'sympy'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import kltutor.configcheck as cc\n"
        "r = cc.inspect_text('kl_coef: 0.05\\ncliprange: 0.2\\n', 'ppo.yaml')\n"
        "assert r.terms[0].verdict == 'exact reverse-KL gradient', r.format()\n"
        "r = cc.inspect_text('python3 -m verl.trainer.main_ppo actor_rollout_ref.actor.use_kl_loss=True', 'x.sh', '.sh')\n"
        "assert r.terms[0].estimator == 'k3' and r.exit_code == 1\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')]\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_exact_reference_verdicts_match_torch():
    """data/exact_reference.json (the TRL PPO verdicts, stored so no torch is needed) is what torch computes."""
    import json

    from kltutor.configcheck.report import _EXACT_PATH, compute_exact_reference

    assert json.loads(_EXACT_PATH.read_text()) == compute_exact_reference()


def test_old_command_still_works(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for mod in ("kltutor.inspect", "kltutor.configcheck"):
        out = subprocess.run(
            [sys.executable, "-m", mod, str(DATA / "verl_two_terms.yaml")],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 1 and "warning [two-kl-terms]" in out.stdout, out.stderr


def test_pasted_text_without_a_file_name():
    """The in-browser page passes no suffix: a YAML config and a launch script are both recognised."""
    assert inspect_text("beta: 0.1\nloss_type: dr_grpo\n", "paste", "").library == "TRL"
    assert inspect_text("python -m openrlhf.cli.train_ppo_ray --algo.kl.init_coef 0.02\n", "paste", "").library == (
        "OpenRLHF"
    )
    with pytest.raises(ConfigError, match="no launch command"):
        inspect_text("echo hi\n", "paste", "")
