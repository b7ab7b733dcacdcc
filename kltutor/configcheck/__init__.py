"""The config inspector: ``python -m kltutor.configcheck FILE`` (introduced in ``ch-placements``, section
``sec-placements-inspector``).

Reads what people launch training with: a TRL config (YAML or JSON with ``GRPOConfig``, ``RLOOConfig`` or
``PPOConfig`` fields, or a ``trl grpo``/``accelerate launch ... grpo.py --beta ...`` line), a verl YAML
(``ppo_trainer`` layout, nested or dotted keys) or launch script (``python3 -m verl.trainer.main_ppo
key=value ...``), or an OpenRLHF launch script (``python -m openrlhf.cli.train_ppo_ray ...``). Shell
scripts are read by :mod:`~kltutor.configcheck.shell` (variables, arrays, ``bash -c``, ``srun``, pipes);
one reader per library (:mod:`~kltutor.configcheck.trl`, :mod:`~kltutor.configcheck.verl`,
:mod:`~kltutor.configcheck.openrlhf`) reports each KL term the config turns on (placement, estimator,
token or sequence level, beta and its controller), the exact-gradient verdict that :mod:`kltutor.trainers`
measured with that library's own code on chapter 3's toy, which values came from the file and which from
the library's defaults, notes, and warnings (codes and the book section explaining each in
:data:`WARNING_CODES`):

- ``two-kl-terms``: a KL term in the reward and one in the loss at once;
- ``k1-in-loss``: k1 in the loss, whose expected gradient is zero on-policy;
- ``beta-zero-with-reference``: beta = 0 while the configuration still loads a reference model;
- ``adaptive-from-zero``: an adaptive beta controller starting from 0, which never moves;
- ``ratio-with-sequence-is``: the KL term's ratio correction combined with sequence-level importance sampling;
- ``unclamped-k3-bf16``: k3 computed without clamping from log-probabilities of bf16 logits (TRL's fused LM
  head takes the log-softmax in float32 but projects in bf16 unless ``cast_lm_head_to_fp32``);
- ``length-rescaled-beta``: a loss aggregation that divides the KL term by a response length;
- ``std-rescaled-beta``: the task advantage is divided by a reward standard deviation and the KL term is not;
- ``length-biased-filter`` / ``one-sided-filter``: a rejection filter whose statistic grows with length
  against a fixed threshold, or that masks only negative-advantage sequences (``sec-practice-filters``);
- ``unknown-kl-field``: a field the inspector does not know whose name speaks of the KL or the reference;
- ``unresolved-kl-field``: a field the analysis reads whose value the file does not determine.

Fields it does not know that have nothing to do with the KL are notes. :func:`inspect_file` returns a
:class:`Report`; a file it cannot read at all (missing, not text, bad YAML or JSON, no library recognised, a
KL field with an impossible value such as ``beta: nan``) raises :class:`ConfigError` with one line naming
the file and the field. The CLI prints the report (``--json`` for machines) and exits 0 when clean, 1 with
warnings, 2 when the file is unreadable. Field names come from ``kltutor/configcheck/data/fields.json``
(generated from the installed libraries by :mod:`~kltutor.configcheck.fields`) and verdicts from
``kltutor/trainers/data/results.json``, so neither the libraries nor torch nor numpy are needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from kltutor.configcheck import fields as _fields
from kltutor.configcheck import openrlhf, shell, trl, verl
from kltutor.configcheck.report import WARNING_CODES, ConfigError, Finding, KLTerm, Report

__all__ = ["ConfigError", "KLTerm", "Finding", "Report", "inspect_file", "inspect_text", "WARNING_CODES"]

SCRIPT_SUFFIXES = (".txt", ".sh", ".bash", ".slurm", ".sbatch", ".cmd", "")
MAX_BYTES = 2_000_000


def _load_mapping(text: str, name: str, suffix: str):
    import yaml

    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: bad JSON at line {e.lineno}: {e.msg}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}: bad YAML{where}: {problem}") from None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def inspect_text(
    text: str, name: str = "<config>", suffix: str = ".yaml", trainer: str | None = None, base: Path | None = None
) -> Report:
    """Inspect a configuration given as text (``suffix`` picks the parser: .json, .yaml/.yml, .sh/.txt/...).

    ``base``: the folder a launch script's ``--config`` path is resolved against (``inspect_file`` passes the
    file's folder; without it a TRL launch's separate config file is named in a warning, not read).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{name}: expected text")
    if "\x00" in text:
        raise ConfigError(f"{name}: not a text file (it holds NUL bytes)")
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{name}: too large for a config ({len(text)} characters; the limit is {MAX_BYTES})")
    if not text.strip():
        raise ConfigError(f"{name}: empty file")
    known = _fields.load()
    suffix = suffix.lower()
    if suffix != ".json" and (suffix in SCRIPT_SUFFIXES or shell.looks_like_script(text)):
        rep = _from_script(text, name, known, trainer, base, strict=suffix in SCRIPT_SUFFIXES)
        if rep is not None:
            return rep
    data = _load_mapping(text, name, suffix)
    if data is None:
        raise ConfigError(f"{name}: empty file")
    if not isinstance(data, dict):
        if isinstance(data, str) and shell.looks_like_script(data):
            rep = _from_script(data, name, known, trainer, base, strict=True)
            if rep is not None:
                return rep
        raise ConfigError(f"{name}: expected a mapping of config fields, got a {type(data).__name__}")
    data = {str(k): v for k, v in data.items()}
    flat = _flatten(data)
    verl_sections = {k.split(".")[0] for k in known["verl"]["keys"]}
    tops = {k.lstrip("+").split(".")[0] for k in flat}
    if tops & {"actor_rollout_ref", "algorithm"} or (tops - {"defaults", "hydra"}) <= verl_sections and tops:
        notes = []
        if isinstance(data.get("defaults"), list):
            notes.append(
                f"defaults {data['defaults']!r}: the composed configs are not read; verl's ppo_trainer "
                "defaults stand in for them"
            )
        return verl.read(flat, name, known, notes)
    every = set(known["trl"]["GRPOConfig"]) | set(known["trl"]["RLOOConfig"]) | set(known["trl"]["script"])
    if not set(data) & every:  # a YAML that wraps a launch script (e.g. SkyPilot's run:)
        for key, value in data.items():
            if isinstance(value, str) and shell.looks_like_script(value):
                rep = _from_script(value, name, known, trainer, base, strict=False)
                if rep is not None:
                    rep.notes.insert(0, f"the launch command is read from the YAML's {key!r} script")
                    return rep
    return trl.read(data, name, known, trainer, hint=name)


def _from_script(text, name, known, trainer, base, strict) -> Report | None:
    try:
        script = shell.read_script(text)
    except RecursionError:  # pragma: no cover - absurdly nested input
        raise ConfigError(f"{name}: cannot read the shell script (nested too deeply)") from None
    notes = script.summary()
    if script.assumed:
        notes.append(
            "variables taken at the default the script gives them (${VAR:-default}): "
            + ", ".join(shell.show(a) for a in script.assumed[:6])
        )
    launches = [la for la in script.launches if la.kind in ("verl", "openrlhf", "trl")]
    if not launches:
        opts = known["openrlhf"]["options"]
        for words in script.commands:  # a bare option list (no entry point) of OpenRLHF
            dashed = [w.split("=")[0] for w in words if w.startswith("--")]
            if dashed and sum(d in opts or d in openrlhf.RENAMED for d in dashed) * 2 > len(dashed):
                start = next(i for i, w in enumerate(words) if w.startswith("--"))
                launches = [shell.Launch("openrlhf", "openrlhf.cli.train_ppo_ray", words[start:], 1)]
                notes.append("no entry point: the options are read as openrlhf.cli.train_ppo_ray's")
                break
    if not launches:
        if not strict or _is_mapping(text):
            return None  # read as YAML (a pasted config without a file name, or a .txt holding YAML)
        first = next((w for c in script.commands for w in c if w.startswith("--")), None)
        raise ConfigError(
            f"{name}: unknown library: no launch command of verl (verl.trainer.main_ppo), OpenRLHF "
            "(openrlhf.cli.train_ppo_ray) or TRL (trl grpo, accelerate launch ...grpo.py) found"
            + (f", and {first!r} is no openrlhf.cli.train_ppo_ray option" if first else "")
        )
    launch = launches[0]
    if len(launches) > 1:
        notes.append(f"{len(launches)} launch commands; the first (line {launch.line}) is read")
    if launch.kind == "verl":
        flat = verl.overrides(launch.args, name, notes)
        if "main_ppo" not in launch.entry:
            notes.append(f"entry point {shell.show(launch.entry)}: read with verl's ppo_trainer fields")
        rep = verl.read(flat, name, known, notes)
    elif launch.kind == "openrlhf":
        rep = openrlhf.read(launch, name, known, notes)
    else:
        rep = trl.read_launch(launch, name, known, trainer, base)
        for n in notes:
            rep.note(n)
    return rep


def _is_mapping(text: str) -> bool:
    try:
        return isinstance(_load_mapping(text, "", ".yaml"), dict)
    except ConfigError:
        return False


def inspect_file(path, trainer: str | None = None) -> Report:
    """Inspect one configuration file (see the module docstring); raises :class:`ConfigError` on a bad file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: too large for a config ({len(raw)} bytes; the limit is {MAX_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read (not UTF-8 text)") from None
    return inspect_text(text, str(path), p.suffix.lower(), trainer, base=p.parent)
