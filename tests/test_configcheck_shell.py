"""kltutor.configcheck.shell: the launch command of a shell script, its variables resolved, nothing run."""

import pytest

from kltutor.configcheck import inspect_text
from kltutor.configcheck.shell import MARK, read_script, show, unresolved

VERL = "python3 -m verl.trainer.main_ppo"


def _args(text):
    s = read_script(text)
    assert len(s.launches) >= 1, s
    return [show(a) for a in s.launches[0].args], s


def test_variables_continuations_and_trailing_commands():
    args, s = _args(
        "set -x\n"
        "use_kl_loss=True  # a comment\n"
        'export KL_COEF="0.002"\n'
        "MODEL=${MODEL_PATH:-Qwen/Qwen2.5-7B}\n"
        f"{VERL} \\\n"
        "    actor_rollout_ref.actor.use_kl_loss=${use_kl_loss} \\\n"
        "    actor_rollout_ref.actor.kl_loss_coef=$KL_COEF \\\n"
        '    actor_rollout_ref.model.path="$MODEL" $@ 2>&1 | tee log.txt\n'
        'echo "done"\n'
    )
    assert args == [
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.002",
        "actor_rollout_ref.model.path=Qwen/Qwen2.5-7B",
    ]
    assert s.assumed == ["MODEL_PATH=Qwen/Qwen2.5-7B"]
    assert s.unknowns == {"arguments": ["$@"]}


def test_arrays_bash_c_srun_and_ray_submit():
    args, _ = _args(
        "ARGS=(\n  --algo.kl.use_loss   # the KL loss\n  --algo.kl.estimator k3\n)\n"
        "MORE=(--algo.kl.init_coef 1e-3)\n"
        'srun --nodes=1 -w "$node" bash -c "ray job submit --address=http://x:8265 -- '
        'python3 -m openrlhf.cli.train_ppo_ray ${ARGS[*]} ${MORE[*]}" &>> log &\n'
        "sleep 10\n"
    )
    assert args == ["--algo.kl.use_loss", "--algo.kl.estimator", "k3", "--algo.kl.init_coef", "1e-3"]
    args, _ = _args('A=(x=1 "y=2 3")\nA+=(z=4)\npython3 -m verl.trainer.main_ppo "${A[@]}" ${A[0]}\n')
    assert args == ["x=1", "y=2 3", "z=4", "x=1"]


def test_heredoc_read_into_a_variable():
    args, _ = _args(
        "read -r -d '' cmd <<EOF\nopenrlhf.cli.train_ppo \\\n   --init_kl_coef 0.02 \\\n   --max_epochs 1\n"
        "    # --packing_samples\nEOF\n"
        "if [[ ${1} != slurm ]]; then\n    deepspeed --module $cmd\nfi\n"
    )
    assert args == ["--init_kl_coef", "0.02", "--max_epochs", "1"]


def test_unresolved_values_keep_a_marker():
    s = read_script(f'COEF=$(python -c "print(0.1)")\n{VERL} algorithm.kl_ctrl.kl_coef=$COEF x=$HOME/y $1\n')
    args = s.launches[0].args
    assert unresolved(args[0]) and show(args[0]) == 'algorithm.kl_ctrl.kl_coef=$(python -c "print(0.1)")'
    assert unresolved(args[1]) and MARK not in show(args[1])
    assert set(s.unknowns) == {"output", "environment", "arguments"}
    assert all("the rest of the script is read" in n for n in s.summary())


def test_arithmetic_and_defaults():
    args, _ = _args(f"N=4\nB=$((N * 8))\n{VERL} data.train_batch_size=$B trainer.x=${{UNSET:-7}}\n")
    assert args == ["data.train_batch_size=32", "trainer.x=7"]


def test_trl_launches():
    s = read_script(
        "accelerate launch --config_file recipes/zero3.yaml --num_processes 7 src/open_r1/grpo.py "
        "--config recipes/grpo/config_demo.yaml --beta 0.02\n"
    )
    assert s.launches[0].kind == "trl" and s.launches[0].entry == "src/open_r1/grpo.py"
    assert read_script("trl grpo --config c.yaml\n").launches[0].entry == "trl grpo"


def test_an_unresolved_kl_field_is_a_warning_and_the_rest_is_read():
    rep = inspect_text(
        f"{VERL} actor_rollout_ref.actor.use_kl_loss=True actor_rollout_ref.actor.kl_loss_coef=$KL "
        "algorithm.adv_estimator=grpo\n",
        "run.sh",
        ".sh",
    )
    assert [(t.placement, t.estimator, t.beta) for t in rep.terms] == [("loss", "k3", 0.001)]
    w = [w for w in rep.warnings if w.code == "unresolved-kl-field"]
    assert len(w) == 1 and "$KL" in w[0].message and "default 0.001" in w[0].message
    assert rep.defaults["actor_rollout_ref.actor.kl_loss_coef"] == "0.001"
    assert rep.from_file["algorithm.adv_estimator"] == "grpo"


def test_trl_launch_reads_its_config_file(tmp_path):
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "config.yaml").write_text("beta: 0.04\nloss_type: dr_grpo\nscale_rewards: none\nbf16: false\n")
    script = tmp_path / "run.sh"
    script.write_text("accelerate launch --num_processes 2 train_grpo.py --config grpo/config.yaml --beta 0.1\n")
    from kltutor.configcheck import inspect_file

    rep = inspect_file(script)
    assert rep.library == "TRL" and [(t.estimator, t.beta) for t in rep.terms] == [("k3", 0.1)]  # the CLI wins
    assert rep.from_file["loss_type"] == "dr_grpo" and rep.exit_code == 0
    rep = inspect_text(script.read_text(), "run.sh", ".sh")  # no folder: the config is named, not read
    assert rep.terms == [] and [w.code for w in rep.warnings] == ["unresolved-kl-field"]


@pytest.mark.parametrize(
    "text",
    ["echo hello\n", "#!/bin/bash\nset -e\n", "python train.py --lr 3\n"],
)
def test_scripts_without_a_launch_are_refused(text):
    from kltutor.configcheck import ConfigError

    with pytest.raises(ConfigError, match="no launch command"):
        inspect_text(text, "x.sh", ".sh")


def test_declare_local_and_functions():
    args, _ = _args(
        "main() {\n  declare -a A=(x=1 y=2)\n  local K=3\n  export L=4 M\n"
        '  python3 -m verl.trainer.main_ppo "${A[@]}" k=$K l=$L\n}\nmain "$@"\n'
    )
    assert args == ["x=1", "y=2", "k=3", "l=4"]


def test_trl_cli_subcommand_names_the_trainer(tmp_path):
    from kltutor.configcheck import inspect_file

    (tmp_path / "c.yaml").write_text("beta: 0.1\nnum_generations: 4\n")  # fits GRPOConfig and RLOOConfig
    (tmp_path / "run.sh").write_text("trl rloo --config c.yaml --beta 0.2\n")
    rep = inspect_file(tmp_path / "run.sh")
    assert rep.trainer.startswith("RLOOTrainer") and [(t.placement, t.beta) for t in rep.terms] == [("reward", 0.2)]
    (tmp_path / "run.sh").write_text("trl grpo --config c.yaml\n")
    rep = inspect_file(tmp_path / "run.sh")
    assert rep.trainer.startswith("GRPOTrainer") and [(t.placement, t.beta) for t in rep.terms] == [("loss", 0.1)]
