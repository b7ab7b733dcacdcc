"""The field names (and the defaults the inspector needs) of each library's configuration, generated from the
installed libraries and cached in ``kltutor/configcheck/data/fields.json`` so the inspector runs without them.

- TRL: the dataclass fields of ``GRPOConfig`` and ``RLOOConfig``, plus those of ``ScriptArguments`` and
  ``ModelConfig`` (a ``trl grpo --config`` file mixes them). ``PPOConfig`` last shipped in TRL 1.12.0
  (``trl.experimental.ppo``; removed in 1.13.0): its own fields are read from that release's
  ``ppo_config.py`` by :func:`ppo_fields_from_source` (pass the file with ``--trl-ppo-source``) and kept
  from the stored file otherwise; its inherited ``TrainingArguments`` fields are those of GRPOConfig's base.
- verl: every key path of ``verl/trainer/config/_generated_ppo_trainer.yaml`` with its default.
- OpenRLHF: every option of ``openrlhf/cli/train_ppo_ray.py``. Its parser is built under
  ``if __name__ == "__main__":`` (the module imports Ray and vLLM); :func:`openrlhf_options` executes
  only the statements of that block before ``parser.parse_args()`` and reads the parser's actions.

- Older releases (``older``): the names each library's older releases had and the installed one lacks, with
  the last release that had them (:func:`older_from_git`, from a clone's tags: ``--older-git
  verl=/path/to/verl/.git``); kept from the stored file when not given. The readers name such fields in a
  note instead of calling them unknown.

``python -m kltutor.configcheck.fields`` regenerates the file (needs the [trainers] extra).
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


#: The releases whose field names :func:`older_from_git` reads (each library's git tags).
OLDER_TAGS = {
    "verl": ["v0.1", "v0.2", "v0.3.0.post1", "v0.4.1", "v0.5.0", "v0.6.1", "v0.7.0"],
    "openrlhf": ["v0.5.7", "v0.6.0", "v0.7.5", "v0.8.11", "v0.9.10", "v0.10.1", "v0.10.4"],
    "trl": ["v0.14.0", "v0.16.0", "v0.18.0", "v0.19.0", "v0.23.0", "v1.0.0", "v1.9.0"],
}
_OLDER_FILES = {
    "verl": ["verl/trainer/config/_generated_ppo_trainer.yaml", "verl/trainer/config/ppo_trainer.yaml"],
    "openrlhf": ["openrlhf/cli/train_ppo_ray.py"],
    "trl": ["trl/trainer/grpo_config.py"],
}


def names_in_source(lib: str, text: str) -> set[str]:
    """The field names one release's source declares: verl's YAML keys, OpenRLHF's options, TRL's GRPOConfig."""
    import re

    if lib == "verl":
        import yaml

        return {k for k, v in _flatten(yaml.safe_load(text)).items()}
    if lib == "openrlhf":
        return set(re.findall(r"add_argument\(\s*[\"'](--[\w.\-]+)", text))
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "GRPOConfig":
            return {
                st.target.id for st in node.body if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
            }
    return set()


def older_from_git(lib: str, gitdir: str, current: set[str]) -> dict[str, str]:
    """``{name: "lib <= release"}`` for each name an older release had and the installed one lacks (the latest
    such release), read with ``git show TAG:FILE`` from a clone of the library's repository."""
    import subprocess

    out = {}
    label = {"verl": "verl", "openrlhf": "OpenRLHF", "trl": "TRL"}[lib]
    for tag in OLDER_TAGS[lib]:
        for f in _OLDER_FILES[lib]:
            r = subprocess.run(["git", "--git-dir", gitdir, "show", f"{tag}:{f}"], capture_output=True, text=True)
            if r.returncode == 0:
                for n in names_in_source(lib, r.stdout) - current:
                    out[n] = f"{label} <= {tag.lstrip('v')}"
                break
    return dict(sorted(out.items()))


def generate(ppo_source=None, path: Path | str = FIELDS_PATH, older_git: dict | None = None) -> Path:
    path = Path(path)
    stored = json.loads(path.read_text()) if path.exists() else {}
    data = {
        "generated_by": "python -m kltutor.configcheck.fields",
        "trl": trl_fields(ppo_source, stored),
        "verl": verl_fields(),
        "openrlhf": openrlhf_options(),
    }
    older = dict(stored.get("older", {}))
    current = {
        "verl": set(data["verl"]["keys"]),
        "openrlhf": set(data["openrlhf"]["options"]),
        "trl": set(data["trl"]["GRPOConfig"]),
    }
    for lib, gitdir in (older_git or {}).items():
        older[lib] = older_from_git(lib, gitdir, current[lib])
    for lib in older:  # names the installed release has again are no longer "older"
        older[lib] = {k: r for k, r in older[lib].items() if k not in current[lib]}
    data["older"] = older
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=0, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def load(path: Path | str = FIELDS_PATH) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m kltutor.configcheck.fields")
    p.add_argument("--trl-ppo-source", help="trl/experimental/ppo/ppo_config.py of TRL 1.12.0")
    p.add_argument(
        "--older-git",
        action="append",
        default=[],
        metavar="LIB=GITDIR",
        help="read older releases' field names (verl, openrlhf, trl) from a clone's tags; kept from the stored file "
        "otherwise",
    )
    a = p.parse_args()
    print(generate(a.trl_ppo_source, older_git=dict(x.split("=", 1) for x in a.older_git)))
