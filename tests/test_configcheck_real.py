"""The config inspector on 49 real configurations and launch scripts (tests/data/real_configs, index.csv).

Each expected row was written by hand from reading the file (the flags that turn a KL term on, its
estimator and coefficient, with the installed releases' defaults where the file sets nothing): the library,
the KL terms as (placement, estimator, beta), and the warning codes. A file the inspector rightly refuses
has the words its one-line error must contain instead.
"""

import csv
from pathlib import Path

import pytest

from kltutor.configcheck import ConfigError, inspect_file

DATA = Path(__file__).parent / "data" / "real_configs"
K3_LOSS = [("loss", "k3", 0.001)]
GRPO_W = {"length-rescaled-beta", "std-rescaled-beta"}  # token-mean KL loss, advantages divided by a std
TRL_R1 = {"unclamped-k3-bf16", "length-rescaled-beta", "std-rescaled-beta", "length-biased-filter"}

# file -> (library, [(placement, estimator, beta)], warning codes)
EXPECTED = {
    # verl examples at b178a3c: use_kl_loss=True, kl_loss_type=low_var_kl (k3), kl_loss_coef=0.001, grpo
    "verl_grpo_run_qwen2-7b.sh": ("verl", K3_LOSS, GRPO_W),
    "verl_grpo_run_qwen3-8b.sh": ("verl", K3_LOSS, GRPO_W),
    "verl_grpo_run_qwen2_5-3b_lora.sh": ("verl", K3_LOSS, GRPO_W),
    "verl_cispo_run_qwen2_5_0_5b.sh": ("verl", K3_LOSS, GRPO_W),
    "verl_tuning_qwen2-0.5b_grpo_lora.sh": ("verl", K3_LOSS, GRPO_W),
    # PPO examples: use_kl_loss=False, use_kl_in_reward=False
    "verl_ppo_run_deepseek7b_llm.sh": ("verl", [], set()),
    "verl_ppo_run_gemma.sh": ("verl", [], set()),
    "verl_ppo_run_qwen2-7b_rm.sh": ("verl", [], set()),
    # KL off through shell variables (use_kl_loss=false ... use_kl_loss=${use_kl_loss})
    "verl_gspo_test_3b_math_slurm.sh": ("verl", [], set()),
    "verl_gspo_run_qwen30b.sh": ("verl", [], set()),
    "verl_sapo_run_qwen30b.sh": ("verl", [], set()),
    "verl_gmpo_run_qwen2_5-7b_math.sh": ("verl", [], set()),
    "verl_gpg_run_qwen2-7b_math.sh": ("verl", [], set()),
    "verl_multiturn_qwen3_4b_dapo.sh": ("verl", [], set()),
    # use_kl_in_reward=True with the default kl_penalty=kl (k1) and kl_coef=0.001
    "verl_rfpp_run_qwen2-7b_math_rf.sh": ("verl", [("reward", "k1", 0.001)], set()),
    "verl_remax_run_qwen2.5-3b.sh": ("verl", [("reward", "k1", 0.001)], set()),
    "verl_rloo_run_qwen2-7b.sh": ("verl", [("reward", "k1", 0.001)], set()),
    # rollout correction: sequence IS (a note); token_k1 + seq_max_k2 rejection (the max grows with length)
    "verl_rollout_corr.sh": ("verl", [], set()),
    "verl_rollout_corr_multi_rs.sh": ("verl", [], {"length-biased-filter"}),
    # YAML: a Hydra config over ppo_trainer, a full old-layout config, a SkyPilot task wrapping a launch
    "verl_gsm8k_multiturn_grpo.yaml": ("verl", [], set()),
    "verl_ppo_trainer_split.yaml": ("verl", [], set()),
    "verl_skypilot_grpo.yaml": ("verl", [], set()),
    # older releases: v0.1 PPO sets only kl_ctrl.kl_coef (KL in the reward under its own release: a note)
    "verl_v0.1_ppo_run_deepseek7b_llm.sh": ("verl", [], set()),
    "verl_v0.2_grpo_run_deepseek7b_llm.sh": ("verl", K3_LOSS, GRPO_W),
    "verl_v0.3_grpo_run_qwen2-7b_math.sh": ("verl", K3_LOSS, GRPO_W),
    "verl_v0.4.1_grpo_run_qwen2-7b.sh": ("verl", K3_LOSS, GRPO_W),
    # OpenRLHF examples at 3c3be62 (options of 0.10.2-0.11.0): --algo.kl.init_coef 0.01, no KL loss: k1 in the reward
    "openrlhf_train_ppo_ray_hybrid_engine.sh": ("OpenRLHF", [("reward", "k1", 0.01)], set()),
    "openrlhf_train_ppo_ray_slurm.sh": ("OpenRLHF", [("reward", "k1", 0.01)], set()),
    "openrlhf_train_ppo_with_reward_fn.sh": ("OpenRLHF", [("reward", "k1", 0.01)], set()),
    "openrlhf_v0.10.4_train_ppo_ray_hybrid_engine.sh": ("OpenRLHF", [("reward", "k1", 0.01)], set()),
    # --algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 1e-3 with group_norm
    "openrlhf_train_dapo_ray_hybrid_engine.sh": ("OpenRLHF", K3_LOSS, GRPO_W),
    # k2 in the loss with reinforce_baseline (batch whitening)
    "openrlhf_train_prorlv2_math_hybrid_engine.sh": ("OpenRLHF", [("loss", "k2", 1e-4)], GRPO_W),
    "openrlhf_train_reinforce_baseline_hybrid_engine.sh": ("OpenRLHF", [("loss", "k2", 1e-5)], GRPO_W),
    "openrlhf_train_reinforce_baseline_ray_agent_async.sh": ("OpenRLHF", [("loss", "k2", 1e-5)], GRPO_W),
    # --algo.kl.init_coef 0: no KL term
    "openrlhf_train_vlm_math_hybrid_engine.sh": ("OpenRLHF", [], set()),
    # older releases' option names (translated)
    "openrlhf_v0.5.7_train_ppo_llama.sh": ("OpenRLHF", [("reward", "k1", 0.01)], set()),
    "openrlhf_v0.5.7_train_ppo_llama_ray.sh": ("OpenRLHF", [("reward", "k1", 0.01)], set()),
    "openrlhf_v0.6.0_train_grpo_llama_ray.sh": ("OpenRLHF", K3_LOSS, GRPO_W),  # --use_kl_estimator_k3
    "openrlhf_v0.7.5_train_reinforce_baseline_hybrid_engine.sh": ("OpenRLHF", [("loss", "k2", 0.001)], GRPO_W),
    "openrlhf_v0.8.11_train_grpo_ray_hybrid_engine.sh": ("OpenRLHF", K3_LOSS, GRPO_W),
    "openrlhf_v0.9.10_train_reinforce_baseline_hybrid_engine.sh": ("OpenRLHF", [("loss", "k2", 1e-5)], GRPO_W),
    # open-r1 GRPO recipes (TRL 1.16 semantics): use_vllm with the default sequence_mask correction
    "openr1_DeepSeek-R1-Distill-Qwen-1.5B_grpo_config_demo.yaml": ("TRL", [], {"length-biased-filter"}),
    "openr1_Qwen2.5-1.5B-Instruct_grpo_config_demo.yaml": ("TRL", [], {"length-biased-filter"}),
    "openr1_Qwen2.5-1.5B-Instruct_grpo_config_demo_code.yaml": ("TRL", [("loss", "k3", 0.01)], TRL_R1),
    "openr1_Qwen2.5-1.5B-Instruct_grpo_config_demo_code_ioi.yaml": ("TRL", [("loss", "k3", 0.01)], TRL_R1),
    "openr1_Qwen2.5-Coder-7B-Instruct_grpo_config_codeforces.yaml": ("TRL", [], {"length-biased-filter"}),
    # the Slurm launcher: script and config named by the job's arguments ($2), so the config is not read
    "openr1_slurm_train.slurm": ("TRL", [], {"unresolved-kl-field"}),
    # its February 2025 predecessor: grpo.py's options on the command line (no beta; use_vllm, vllm_device)
    "openr1_slurm_grpo_feb2025.slurm": ("TRL", [], {"length-biased-filter"}),
}
REFUSED = {  # a `trl sft` config: nothing says which RL trainer (its fields fit all three)
    "trl_cli_configs_example_config.yaml": ["cannot tell", "--trainer"],
}


def _index():
    with open(DATA / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_index_names_every_file_with_its_source():
    rows = _index()
    files = {p.name for p in DATA.iterdir()} - {"index.csv", "README.md"}
    assert {r["file"] for r in rows} == files == set(EXPECTED) | set(REFUSED)
    assert len(files) >= 30
    for r in rows:
        assert r["repository"].count("/") == 1 and len(r["commit"]) == 40 and r["path"]
        assert r["licence"] == "Apache-2.0"
        assert (DATA / r["file"]).stat().st_size < 20_000  # kept small


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_config(name):
    lib, terms, warnings = EXPECTED[name]
    rep = inspect_file(DATA / name)
    assert rep.library == lib
    assert [(t.placement, t.estimator, pytest.approx(t.beta)) for t in rep.terms] == terms
    assert {w.code for w in rep.warnings} == warnings
    for t in rep.terms:
        assert t.verdict and t.bias_norm is not None
    text = rep.format()
    assert "Traceback" not in text and "\x00" not in text
    assert rep.from_file or rep.defaults or lib == "TRL"  # it says where the values came from


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_real_config_refused(name):
    with pytest.raises(ConfigError) as e:
        inspect_file(DATA / name)
    assert "\n" not in str(e.value)
    for word in REFUSED[name]:
        assert word in str(e.value)


def test_share_read():
    """48 of the 49 files give a report (before the shell reader: 3 of the first 48); the one refusal is right."""
    ok = 0
    for p in DATA.iterdir():
        if p.name in ("index.csv", "README.md"):
            continue
        try:
            inspect_file(p)
            ok += 1
        except ConfigError:
            pass
    assert ok == 48


def test_older_releases_are_said():
    v01 = inspect_file(DATA / "verl_v0.1_ppo_run_deepseek7b_llm.sh")
    assert "older releases" in v01.release
    assert any("under its own release this file also puts k1 in the reward" in n for n in v01.notes)
    o = inspect_file(DATA / "openrlhf_v0.6.0_train_grpo_llama_ray.sh")
    assert o.release.startswith("options of OpenRLHF <= 0.10.1")
    assert any("--use_kl_estimator_k3 -> --algo.kl.estimator k3" in n for n in o.notes)
    assert any("--init_kl_coef -> --algo.kl.init_coef" in n for n in o.notes)
    r1 = inspect_file(DATA / "openr1_Qwen2.5-1.5B-Instruct_grpo_config_demo.yaml")
    assert r1.defaults["beta"] == "0.0" and any("TRL <= 0.18 defaulted to 0.04" in n for n in r1.notes)
    assert any("dataset_prompt_column" in n for n in r1.notes)  # open-r1's own keys: a note, not an error
    feb = inspect_file(DATA / "openr1_slurm_grpo_feb2025.slurm")
    assert "TRL <= 0.16.0" in feb.release and any("vllm_device last existed in TRL <= 0.18" in n for n in feb.notes)


def test_shell_constructs_named_and_the_rest_read():
    rep = inspect_file(DATA / "verl_gspo_test_3b_math_slurm.sh")
    assert rep.from_file["actor_rollout_ref.actor.use_kl_loss"] == "false"  # set through ${use_kl_loss}
    assert any(n.startswith("shell: not resolved") for n in rep.notes)
    slurm = inspect_file(DATA / "openr1_slurm_train.slurm")
    assert any("`$2`" in n for n in slurm.notes) and "--config" in slurm.warnings[0].message
