"""The capstone's experiment as a TRL run with :mod:`kltutor.trainers.grpo_extension` (``[trainers]`` extra).

- :func:`addition_reward`: the capstone's exact reward (:class:`kltutor.capstone.task.AdditionTask`) as a TRL
  reward function;
- :func:`prompt_dataset`: a ``datasets.Dataset`` of the task's prompts;
- :func:`layout_free_rollout`: a TRL ``rollout_func`` that samples each completion with its own generator,
  seeded by (seed, step, the completion's index in the *global* batch), so one process and two processes
  draw the same completions (TRL's own ``generate`` draws from one stream per process);
- :func:`make_trainer`: a :class:`~kltutor.trainers.grpo_extension.KLPlacementGRPOTrainer` from the GRPOConfig
  fields that :func:`kltutor.capstone.export.trl_config_values` writes (the ``export --to trl`` YAML);
- ``python -m kltutor.trainers.trl_capstone CONFIG.yaml --model DIR [--save FILE]``: train, then optionally
  save the final parameters (the two-process test runs this under ``accelerate launch``).
"""

from __future__ import annotations

import argparse
import sys

import torch

__all__ = ["addition_reward", "prompt_dataset", "layout_free_rollout", "make_trainer", "main"]

from kltutor.trainers.extension_spec import TASK_KEY  # the task's settings in an exported YAML


def addition_reward(max_operand: int, format_reward: float, eos_token_id: int):
    """A TRL reward function: the capstone's reward of each completion (terminated: EOS among its ids)."""
    from kltutor.capstone.task import AdditionTask

    task = AdditionTask(max_operand, format_reward)

    def capstone_reward(prompts, completions, completion_ids, **kwargs):
        out = []
        for p, c, ids in zip(prompts, completions, completion_ids):
            a, b = (int(x) for x in p.rstrip("=").split("+"))
            out.append(task.reward(c, eos_token_id in ids, a, b))
        return out

    return capstone_reward


def prompt_dataset(max_operand: int, n: int, seed: int):
    """``n`` prompts ``"a+b="`` drawn like the capstone's (:meth:`AdditionTask.sample`), as a ``datasets.Dataset``."""
    from datasets import Dataset

    from kltutor.capstone.task import AdditionTask

    g = torch.Generator().manual_seed(seed)
    task = AdditionTask(max_operand)
    return Dataset.from_dict({"prompt": [task.prompt(a, b) for a, b in task.sample(n, g)]})


def layout_free_rollout(seed: int):
    """A TRL ``rollout_func``: each completion sampled alone, from a generator seeded by its global index.

    TRL calls it with this process's prompts (``len(prompts)`` rows, each group's copies consecutive); row ``i``
    of process ``r`` is row ``r * len(prompts) + i`` of the global batch, as in TRL's own slicing. Sampling is
    ancestral at ``temperature`` with ``top_p``/``top_k`` as the trainer's config says, so the log-probabilities
    TRL scores afterwards are those of the sampling distribution."""

    from kltutor.capstone.sampler import filter_logits

    def rollout(prompts, trainer):
        args = trainer.args
        model = trainer.accelerator.unwrap_model(trainer.model)
        tok = trainer.processing_class
        eos = tok.eos_token_id
        step = trainer.state.global_step
        rank = trainer.accelerator.process_index
        prompt_ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        completions = []
        dev = trainer.accelerator.device
        with torch.no_grad():
            for i, ids in enumerate(prompt_ids):
                g = torch.Generator().manual_seed(hash((seed, step, rank * len(prompts) + i)) % (2**63))
                x = torch.tensor([ids], device=dev)
                out = []
                for _ in range(args.max_completion_length):
                    logits = model(input_ids=x).logits[0, -1].float() / args.temperature
                    logits = filter_logits(logits[None], args.top_k or 0, args.top_p)[0]
                    probs = torch.softmax(logits, -1).cpu()
                    t = int(torch.multinomial(probs, 1, generator=g))
                    out.append(t)
                    if t == eos:
                        break
                    x = torch.cat([x, torch.tensor([[t]], device=dev)], 1)
                completions.append(out)
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

    return rollout


def make_trainer(values: dict, model_path: str, output_dir: str, layout_free: bool = False, n_prompts: int = 256):
    """A :class:`KLPlacementGRPOTrainer` on the capstone task from a YAML's ``values`` (GRPOConfig fields plus
    the extension's, and the task's under ``kltutor_task``), the model (and reference) at ``model_path``."""
    from transformers import PreTrainedTokenizerFast

    from kltutor.capstone.model import load_model
    from kltutor.trainers.grpo_extension import KLPlacementGRPOConfig, KLPlacementGRPOTrainer

    values = dict(values)
    task = values.pop(TASK_KEY)
    values.pop("model_name_or_path", None)
    cfg = KLPlacementGRPOConfig(output_dir=output_dir, **values)
    model, tok = load_model(model_path)
    if not isinstance(tok, PreTrainedTokenizerFast):  # pragma: no cover - the capstone's own tokenizer is one
        raise ValueError(f"{model_path}: expected the capstone's fast tokenizer")
    data = prompt_dataset(task["max_operand"], n_prompts, cfg.seed)
    return KLPlacementGRPOTrainer(
        model=model,
        reward_funcs=addition_reward(task["max_operand"], task["format_reward"], tok.eos_token_id),
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        rollout_func=layout_free_rollout(cfg.seed) if layout_free else None,
    )


def main(argv=None) -> int:
    import yaml

    p = argparse.ArgumentParser(prog="python -m kltutor.trainers.trl_capstone", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the YAML that `python -m kltutor.capstone export --to trl` wrote")
    p.add_argument("--model", required=True, help="the model directory (the capstone's SFT reference)")
    p.add_argument("--output-dir", default="trl-capstone-out")
    p.add_argument("--layout-free", action="store_true", help="sample each completion from its own seeded generator")
    p.add_argument("--save", default=None, help="write the final parameters here (torch.save of a state dict)")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "YAML"), help="override a field")
    a = p.parse_args(argv)
    try:
        with open(a.config) as f:
            values = yaml.safe_load(f)
        for k, v in a.set:
            values[k] = yaml.safe_load(v)
        trainer = make_trainer(values, a.model, a.output_dir, layout_free=a.layout_free)
    except (OSError, ValueError, TypeError, KeyError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    trainer.train()
    if a.save and trainer.accelerator.is_main_process:
        state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, a.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
