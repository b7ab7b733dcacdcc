"""The field names (and the defaults the inspector needs) of each library's configuration, generated from the
installed libraries and cached in ``kltutor/inspect/data/fields.json`` so the inspector runs without them.

- TRL: the dataclass fields of ``GRPOConfig`` and ``RLOOConfig``, plus those of ``ScriptArguments`` and
  ``ModelConfig`` (a ``trl grpo --config`` file mixes them). ``PPOConfig`` last shipped in TRL 1.12.0
  (``trl.experimental.ppo``; removed in 1.13.0): its own fields are read from that release's
  ``ppo_config.py`` by :func:`ppo_fields_from_source` (pass the file with ``--trl-ppo-source``) and kept
  from the stored file otherwise; its inherited ``TrainingArguments`` fields are those of GRPOConfig's base.
- verl: every key path of ``verl/trainer/config/_generated_ppo_trainer.yaml`` with its default.
- OpenRLHF: every option of ``openrlhf/cli/train_ppo_ray.py``. Its parser is built under
  ``if __name__ == "__main__":`` (the module imports Ray and vLLM); :func:`openrlhf_options` executes
  only the statements of that block before ``parser.parse_args()`` and reads the parser's actions.

``python -m kltutor.inspect.fields`` regenerates the file (needs the [trainers] extra).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

FIELDS_PATH = Path(__file__).with_name("data") / "fields.json"


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _dc_fields(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            try:
                out[f.name] = _jsonable(f.default_factory())  # type: ignore[misc]
            except Exception:
                out[f.name] = None
        else:
            out[f.name] = None
    return out


def ppo_fields_from_source(path: Path | str) -> dict:
    """``{field: default}`` of ``class PPOConfig`` in a TRL ``ppo_config.py`` (constants only; others ``None``)."""
    tree = ast.parse(Path(path).read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "PPOConfig":
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    default = None
                    v = st.value
                    if isinstance(v, ast.Call):
                        for kw in v.keywords:
                            if kw.arg == "default":
                                try:
                                    default = ast.literal_eval(kw.value)
                                except ValueError:
                                    default = None
                    elif v is not None:
                        try:
                            default = ast.literal_eval(v)
                        except ValueError:
                            default = None
                    out[st.target.id] = _jsonable(default)
    if not out:
        raise ValueError(f"{path}: no PPOConfig class found")
    return out


def trl_fields(ppo_source: Path | str | None = None, stored: dict | None = None) -> dict:
    import trl
    from trl import GRPOConfig, ModelConfig, RLOOConfig, ScriptArguments
    from trl.trainer.base_config import _BaseConfig

    base = set(_dc_fields(_BaseConfig))
    out = {
        "version": trl.__version__,
        "GRPOConfig": _dc_fields(GRPOConfig),
        "RLOOConfig": _dc_fields(RLOOConfig),
        "base": sorted(base),
        "script": sorted(set(_dc_fields(ScriptArguments)) | set(_dc_fields(ModelConfig))),
    }
    if ppo_source is not None:
        out["PPOConfig"] = {
            "source": "trl 1.12.0, trl/experimental/ppo/ppo_config.py (the last release with PPO)",
            "fields": ppo_fields_from_source(ppo_source),
        }
    elif stored and "PPOConfig" in stored.get("trl", {}):
        out["PPOConfig"] = stored["trl"]["PPOConfig"]
    return out


def _flatten(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out[key] = None  # a section
            out.update(_flatten(v, key + "."))
        else:
            out[key] = _jsonable(v)
    return out


def verl_fields() -> dict:
    import verl
    import yaml

    path = Path(verl.__file__).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml"
    return {
        "version": verl.__version__,
        "source": "verl/trainer/config/_generated_ppo_trainer.yaml",
        "keys": _flatten(yaml.safe_load(path.read_text())),
    }


def openrlhf_options() -> dict:
    """``{option: {"default", "flag", "nargs", "choices"}}`` from the installed ``train_ppo_ray.py``'s parser."""
    import argparse
    from importlib.metadata import version

    import openrlhf

    path = Path(openrlhf.__file__).parent / "cli" / "train_ppo_ray.py"
    tree = ast.parse(path.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    import sys

    # the module's standard-library imports (not Ray, vLLM or openrlhf), then the parser statements
    body = [
        n
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        and all(
            (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] in sys.stdlib_module_names
            for a in n.names
        )
    ]
    for st in main.body:
        if "parse_args" in ast.unparse(st):
            break
        body.append(st)
    ns = {"argparse": argparse, "__name__": "kltutor_openrlhf_parser"}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), ns)  # the library's parser code
    parser = ns["parser"]
    opts = {}
    for a in parser._actions:
        for s in a.option_strings:
            if not s.startswith("--") or s == "--help":
                continue
            opts[s] = {
                "dest": a.dest,
                "default": _jsonable(a.default),
                "flag": a.nargs == 0,
                "nargs": a.nargs if isinstance(a.nargs, int) else (a.nargs or 1),
                "choices": _jsonable(list(a.choices)) if a.choices else None,
            }
    return {"version": version("openrlhf"), "source": "openrlhf/cli/train_ppo_ray.py", "options": opts}


def generate(ppo_source=None, path: Path | str = FIELDS_PATH) -> Path:
    path = Path(path)
    stored = json.loads(path.read_text()) if path.exists() else {}
    data = {
        "generated_by": "python -m kltutor.inspect.fields",
        "trl": trl_fields(ppo_source, stored),
        "verl": verl_fields(),
        "openrlhf": openrlhf_options(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=0, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def load(path: Path | str = FIELDS_PATH) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m kltutor.inspect.fields")
    p.add_argument("--trl-ppo-source", help="trl/experimental/ppo/ppo_config.py of TRL 1.12.0")
    print(generate(p.parse_args().trl_ppo_source))
