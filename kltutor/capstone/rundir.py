"""The run directory of a capstone run: what it holds, and how it is written so that no failure loses it
(chapter ``ch-capstone``).

```
run_dir/
  run.json        the resolved config, the package versions, one history entry per start or resume, and
                  what the run resolved at run time: "precision" (kltutor.capstone.precision) and
                  "decode_mode_used" (the sampler's decode step, after any fallback), also in each entry
  metrics.jsonl   one JSON line per step, appended and flushed to disk as each step ends
  checkpoint/     policy/ (save_pretrained, safetensors), state.pt (optimiser, RNG states, step),
                  schedule.json (the beta controller), metrics.json (the rows up to the checkpoint) and
                  manifest.json (size and sha256 of every other file, written last)
```

Every file is written to a temporary name and renamed into place (a rename within a directory is
atomic), so a crash leaves either the old file or the new one, never half of one. A checkpoint is
written whole in ``checkpoint.tmp/`` and swapped in; its manifest is checked before anything is
loaded from it. :func:`plan_run_dir` checks a run directory before any expensive work and writes
nothing; :func:`open_run_dir` then creates (or, with ``overwrite``, replaces) it.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kltutor.capstone.config import (
    REFERENCE_FIELDS,
    SCHEDULE_FIELDS,
    CapstoneConfig,
    CapstoneUserError,
    ConfigError,
    RunNotFoundError,
    flag,
)
from kltutor.capstone.runlock import LOCK_FILE

__all__ = [
    "RUN_FILE",
    "METRICS_FILE",
    "CHECKPOINT",
    "FREE_ON_RESUME",
    "FIXED_ON_RESUME",
    "ConfigChanges",
    "ResumePoint",
    "RunDirPlan",
    "Checkpoint",
    "MetricsLog",
    "atomic_write_text",
    "package_versions",
    "config_changes",
    "read_run_record",
    "update_run_record",
    "used_settings",
    "plan_run_dir",
    "open_run_dir",
    "write_manifest",
    "verify_manifest",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_step",
    "read_checkpoint_metrics",
    "set_rng_state",
    "restore_schedule",
    "find_checkpoint",
    "commit_start",
    "undo_start",
    "write_error",
]

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = "checkpoint"
MANIFEST = "manifest.json"
RUN_FORMAT = 1
# What a run directory may hold; --overwrite removes exactly these (and nothing else).
_RUN_ENTRIES = (RUN_FILE, METRICS_FILE, CHECKPOINT, CHECKPOINT + ".tmp", CHECKPOINT + ".old")
# Where --overwrite keeps the replaced run until the new one has finished a step (put back if it fails first).
_REPLACED = ".replaced.tmp"

# On resume: settings that may differ from run.json without changing what the run is.
FREE_ON_RESUME = frozenset(
    {
        "steps",
        "device",
        "bf16",
        "precision",
        "logprob_chunk",
        "decode_mode",
        "ref_scoring",
        "fast",
        "checkpoint_every",
        "progress",
        "run_dir",
        "cache_dir",
        "resume",
        "overwrite",
        "allow_config_change",
    }
)
# Settings that can never change on resume: the checkpoint's policy, its reference and its RNG state
# were made for the recorded values. Every other setting changes the run's meaning: resuming with a
# different value needs allow_config_change.
FIXED_ON_RESUME = frozenset({*REFERENCE_FIELDS, "seed"})
_SCHEDULE_SETTINGS = frozenset({"kl_schedule", "beta", *SCHEDULE_FIELDS.values()})


# ----------------------------------------------------------------------------------------- files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: Path) -> None:
    """Give a file or directory made by ``tempfile`` (mode 0600 / 0700) the mode a plain ``open`` or
    ``mkdir`` would have given it (0666 / 0777 less the umask)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, flushed to disk and
    renamed into place: readers (and a crash) see the old content or the new, never a part. A failure
    (a full disk: ``OSError`` naming ``path``) removes the temporary file and leaves ``path`` as it was."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict:
    """The versions that decide a run's numbers: Python, kltutor, torch (and CUDA), transformers, ..."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("kltutor", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class MetricsLog:
    """``metrics.jsonl``: one JSON line per step. :meth:`append` writes a whole line with one
    ``write`` and syncs it to disk, so the rows of the steps done survive a crash of the next one."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def rewrite(self, rows: list[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def append(self, row: dict) -> None:
        """Append one line; if the write fails (a full disk), the file is cut back to its whole lines."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        try:
            data = (json.dumps(row) + "\n").encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, size)
            if e.filename is None:
                e.filename = str(self.path)
            raise
        finally:
            os.close(fd)

    def check_readable(self, what: str) -> None:
        """Raise :class:`CapstoneUserError` naming the file if it exists but cannot be read as UTF-8 text."""
        try:
            if self.path.exists():
                self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = f"not UTF-8 text ({e.reason} at byte {e.start})" if isinstance(e, UnicodeDecodeError) else e.strerror
            raise CapstoneUserError(
                f"{self.path} cannot be read: {why}; {what} rewrites it from the checkpoint's rows, so move it "
                f"away (or restore it) and run again"
            ) from None

    def read(self) -> list[dict]:
        """The complete rows (a last line cut by a crash is left out)."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, **extra) -> dict:
    """Record size and sha256 of every file under ``directory`` in ``manifest.json`` (written last,
    so a directory with a manifest is complete). Every file is synced to disk first."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            files[p.relative_to(directory).as_posix()] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": 1, **extra, "files": files}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def verify_manifest(directory: Path, what: str, recover: str) -> dict:
    """Check every file that ``directory/manifest.json`` lists (present, same size, same sha256);
    return the manifest. Any difference raises :class:`CapstoneUserError` naming the file, ``what``
    it belongs to and how to ``recover``."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise CapstoneUserError(
            f"{mpath} is missing, so the {what} is incomplete (or was written by an older "
            f"kltutor) and cannot be trusted; {recover}"
        )
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CapstoneUserError(
            f"{mpath} is unreadable ({type(e).__name__}); the {what} cannot be verified; {recover}"
        ) from None
    for rel, meta in files.items():
        p = directory / rel
        if not p.is_file():
            raise CapstoneUserError(f"{p} is missing from the {what}; {recover}")
        if p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
            raise CapstoneUserError(f"{p} is corrupt (its size or sha256 differs from {mpath}); {recover}")
    return manifest


# ------------------------------------------------------------------------------------ run.json


@dataclass
class ConfigChanges:
    """Differences between a run's recorded config and a requested one, ``{field: (recorded, requested)}``,
    sorted into what resume refuses (``fixed``), what it needs ``allow_config_change`` for
    (``meaning``) and what it accepts (``free``)."""

    fixed: dict = field(default_factory=dict)
    meaning: dict = field(default_factory=dict)
    free: dict = field(default_factory=dict)

    @property
    def schedule_changed(self) -> bool:
        return bool(_SCHEDULE_SETTINGS & set(self.meaning))


def _describe(changes: dict) -> str:
    return ", ".join(f"{flag(k)} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def config_changes(recorded: CapstoneConfig, requested: CapstoneConfig) -> ConfigChanges:
    """Compare two configs field by field (see :data:`FREE_ON_RESUME`, :data:`FIXED_ON_RESUME`)."""
    out = ConfigChanges()
    a, b = recorded.to_dict(), requested.to_dict()
    for name in a:
        if a[name] == b[name]:
            continue
        bucket = out.free if name in FREE_ON_RESUME else out.fixed if name in FIXED_ON_RESUME else out.meaning
        bucket[name] = (a[name], b[name])
    return out


def read_run_record(run_dir: Path) -> dict:
    """``run_dir/run.json`` as a dict (``config``, ``versions``, ``history``); a missing or unreadable
    file raises :class:`CapstoneUserError` naming it."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CapstoneUserError(
            f"{path} is missing: {run_dir} was not written by this version of kltutor's capstone "
            "(or run.json was deleted), so the run's settings are unknown; start a new run "
            f"(another {flag('run_dir')}, or {flag('overwrite')})",
            "resume",
        )
    recover = f"restore it, or start over with {flag('overwrite')}"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise ValueError("it holds no 'config' object")
        for key, kind in (("history", list), ("versions", dict)):
            if not isinstance(record.get(key), kind):
                raise ValueError(f"its {key!r} is not a JSON {'array' if kind is list else 'object'}")
        missing = [f.name for f in dataclasses.fields(CapstoneConfig) if f.name not in record["config"]]
        if missing:  # not the defaults: the recorded run may have used other values
            raise CapstoneUserError(f"its config records no {', '.join(missing)} (edited, or another kltutor?)")
        CapstoneConfig.from_dict(record["config"]).validate()
    except CapstoneUserError as e:  # named after the file: the flags of this command did not cause it
        raise CapstoneUserError(f"{path} holds an invalid run record: {e}; {recover}", "resume") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CapstoneUserError(f"{path} is unreadable ({type(e).__name__}: {e}); {recover}", "resume") from None
    return record


def _write_run_record(run_dir: Path, cfg: CapstoneConfig, event: str, step: int, changes: dict | None = None) -> None:
    path = run_dir / RUN_FILE
    record = (
        json.loads(path.read_text()) if event == "resume" else {"format": RUN_FORMAT, "created": _now(), "history": []}
    )
    versions = package_versions()
    record["config"] = cfg.to_dict()
    record["versions"] = versions
    entry = {"event": event, "time": _now(), "step": step, "versions": versions}
    if changes:
        entry["changed"] = {k: list(v) for k, v in changes.items()}
    record["history"].append(entry)
    atomic_write_text(path, json.dumps(record, indent=1))


def update_run_record(run_dir: Path, **fields) -> None:
    """Record what a run resolved at run time (``precision``, ``decode_mode_used``) in ``run.json``: at the
    top level (the latest start's) and in the latest history entry (a resume may differ from the start)."""
    path = Path(run_dir) / RUN_FILE
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(fields)
    if record.get("history"):
        record["history"][-1].update(fields)
    atomic_write_text(path, json.dumps(record, indent=1))


def used_settings(run_dirs) -> dict[str, str]:
    """What the runs in ``run_dirs`` resolved at run time, from their ``run.json``: ``{"precision": ...,
    "decode_mode_used": ...}``, each the sorted distinct values joined by ``", "`` ("unknown" where no run
    recorded one, e.g. a run that stopped before its first step)."""
    seen: dict[str, set] = {"precision": set(), "decode_mode_used": set()}
    for d in run_dirs:
        path = Path(d) / RUN_FILE
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if isinstance(record.get("precision"), dict):
            seen["precision"].add(record["precision"].get("name"))
        if record.get("decode_mode_used"):
            seen["decode_mode_used"].add(record["decode_mode_used"])
    return {k: ", ".join(sorted(str(x) for x in v)) or "unknown" for k, v in seen.items()}


# ----------------------------------------------------------------------------- the plan of a run


@dataclass
class ResumePoint:
    """Where a resumed run continues: its checkpoint and step, and the settings it changes."""

    checkpoint: Path
    step: int
    changes: ConfigChanges
    recorded_versions: dict


@dataclass
class RunDirPlan:
    """What :func:`open_run_dir` will do; made by :func:`plan_run_dir`, which writes nothing."""

    run_dir: Path | None  # None: a new temporary directory
    resume: ResumePoint | None = None
    replace: list[Path] = field(default_factory=list)  # an earlier run's entries that overwrite removes
    nothing_to_do: bool = False
    notes: list[str] = field(default_factory=list)
    # set by open_run_dir, for undo_start: what the directory held before (resume), a temporary directory
    before: dict[str, bytes | None] = field(default_factory=dict)
    temporary: bool = False


def _writable_dir(path: Path, name: str) -> None:
    """``path`` (existing or not) can hold files: raise ConfigError naming the flag ``name`` otherwise."""
    p = path
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{path} cannot be created: {p} is a file, not a directory; pass another {flag(name)}", name)
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{p} is not writable, so {path} cannot hold the run's files; pass a writable {flag(name)}", name
        )


def find_checkpoint(run_dir: Path) -> Path | None:
    """``run_dir/checkpoint``, or ``checkpoint.old`` when a crash interrupted the swap of a new one."""
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        if (run_dir / name).is_dir():
            return run_dir / name
    return None


def _checkpoint_recovery(ckpt: Path) -> str:
    return (
        f"restore the file, or start the run over with {flag('overwrite')} (that replaces this run's files; "
        f"copy {ckpt.parent / METRICS_FILE} first to keep its metrics)"
    )


def checkpoint_step(ckpt: Path) -> int:
    """The step of the checkpoint in ``ckpt``, after verifying every file against its manifest."""
    manifest = verify_manifest(ckpt, f"checkpoint {ckpt}", _checkpoint_recovery(ckpt))
    step = manifest.get("step")
    if not isinstance(step, int) or step < 1:
        raise CapstoneUserError(f"{ckpt / MANIFEST} records no valid step ({step!r}); {_checkpoint_recovery(ckpt)}")
    return step


def adopt_recorded(cfg: CapstoneConfig, recorded: CapstoneConfig) -> CapstoneConfig:
    """On resume, schedule settings left at ``None`` (their defaults) mean "as the run recorded them"."""
    keep = {
        n: getattr(recorded, n)
        for n in SCHEDULE_FIELDS.values()
        if getattr(cfg, n) is None and getattr(recorded, n) is not None and cfg.kl_schedule == recorded.kl_schedule
    }
    return cfg.replace(**keep) if keep else cfg


def plan_run_dir(cfg: CapstoneConfig) -> tuple[RunDirPlan, CapstoneConfig]:
    """Check ``cfg.run_dir`` against ``cfg.resume`` / ``cfg.overwrite`` and return the plan and the
    resolved config (:meth:`CapstoneConfig.resolved`; on resume, with the recorded schedule settings
    that ``cfg`` leaves at ``None``). Raises :class:`CapstoneUserError`; writes nothing."""
    if cfg.run_dir is None:
        return RunDirPlan(None), cfg.resolved()
    d = Path(cfg.run_dir).expanduser()
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} is a file, not a directory; pass a directory as {flag('run_dir')}", "run_dir")
    if not d.exists():
        if cfg.resume:
            raise RunNotFoundError(
                f"{d} does not exist, so there is no run to resume; check {flag('run_dir')}, "
                f"or drop {flag('resume')} to start a new run there",
                "run_dir",
            )
        _writable_dir(d, "run_dir")
        return RunDirPlan(d), cfg.resolved()
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"{d} is not writable; pass a writable {flag('run_dir')}", "run_dir")
    entries = sorted(p.name for p in d.iterdir() if p.name != LOCK_FILE)  # the lock is the process's, not the run's
    ours = [
        n for n in entries if n in _RUN_ENTRIES or (n.startswith(".") and n.endswith(".tmp"))
    ]  # + atomic writes cut short
    if not cfg.resume:
        if not entries:
            return RunDirPlan(d), cfg.resolved()
        if not ours:
            raise ConfigError(
                f"{d} is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) and "
                f"holds no capstone run; pass an empty or new {flag('run_dir')}",
                "run_dir",
            )
        if not cfg.overwrite:
            raise ConfigError(
                f"{d} already holds a run ({', '.join(ours)}); pass {flag('resume')} to continue it, "
                f"{flag('overwrite')} to replace it, or another {flag('run_dir')}",
                "run_dir",
            )
        return RunDirPlan(d, replace=[d / n for n in ours]), cfg.resolved()
    # --- resume
    record = read_run_record(d)
    recorded = CapstoneConfig.from_dict(record["config"])
    cfg = adopt_recorded(cfg, recorded).resolved()
    ckpt = find_checkpoint(d)
    if ckpt is None:
        raise RunNotFoundError(
            f"{d} holds no checkpoint to resume from (a run writes one with "
            f"{flag('checkpoint_every')} N); start it over with {flag('overwrite')}",
            "resume",
        )
    step = checkpoint_step(ckpt)
    MetricsLog(d / METRICS_FILE).check_readable(f"{flag('resume')}")
    changes = config_changes(recorded, cfg)
    if changes.fixed:
        raise ConfigError(
            f"cannot resume {d} with a different {_describe(changes.fixed)}: its checkpoint, reference "
            "policy and random state belong to the recorded values; start a new run (another "
            f"{flag('run_dir')}, or {flag('overwrite')})",
            next(iter(changes.fixed)),
        )
    if changes.meaning and not cfg.allow_config_change:
        raise ConfigError(
            f"resuming {d} would change what the run is: {_describe(changes.meaning)} (run.json -> now); "
            f"pass {flag('allow_config_change')} to apply them from step {step + 1}, or leave those "
            "options out",
            next(iter(changes.meaning)),
        )
    notes = []
    if ckpt.name != CHECKPOINT:
        notes.append(f"{d / CHECKPOINT} is missing (a crash while replacing it?); resuming from {ckpt}")
    if cfg.steps < step:
        raise ConfigError(
            f"the checkpoint in {d} is at step {step}, so steps={cfg.steps} would end before it; pass "
            f"{flag('steps')} larger than {step} to continue the run",
            "steps",
        )
    versions = record.get("versions", {})
    now = package_versions()
    differ = {k: (versions.get(k), v) for k, v in now.items() if k in versions and versions[k] != v}
    if differ:
        notes.append(
            "run.json was written with other versions ("
            + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
            + "): the resumed steps may differ from an uninterrupted run in the last digits"
        )
    plan = RunDirPlan(d, ResumePoint(ckpt, step, changes, versions), nothing_to_do=cfg.steps == step, notes=notes)
    if plan.nothing_to_do:
        plan.notes.append(
            f"the run in {d} already has its {step} steps; nothing to do (pass {flag('steps')} larger "
            f"than {step} to continue it)"
        )
    return plan, cfg


def open_run_dir(plan: RunDirPlan, cfg: CapstoneConfig) -> Path:
    """Carry out ``plan``: create the directory (or a temporary one), set an earlier run's entries aside
    (``overwrite``; :func:`commit_start` deletes them, :func:`undo_start` puts them back), and write
    ``run.json``. Returns the run directory (also in ``plan.run_dir``)."""
    if plan.run_dir is None:
        d = Path(tempfile.mkdtemp(prefix="kltutor-capstone-"))  # private (0700), as a temporary directory should be
        plan.run_dir, plan.temporary = d, True
    else:
        d = plan.run_dir
        d.mkdir(parents=True, exist_ok=True)
    if plan.replace:
        aside = d / _REPLACED
        if aside.exists():
            shutil.rmtree(aside)
        aside.mkdir()
        for p in plan.replace:
            if p.name != _REPLACED and p.exists():
                p.rename(aside / p.name)
    if plan.resume is None:
        _write_run_record(d, cfg.replace(run_dir=str(d)), "start", 0)
    else:
        for name in (RUN_FILE, METRICS_FILE):
            plan.before[name] = (d / name).read_bytes() if (d / name).is_file() else None
        shutil.rmtree(d / (CHECKPOINT + ".tmp"), ignore_errors=True)  # left by a crash: never read
        _write_run_record(d, cfg, "resume", plan.resume.step, plan.resume.changes.meaning)
    return d


def commit_start(plan: RunDirPlan) -> None:
    """The run has finished a step: the run it replaced (``overwrite``) is deleted for good."""
    if plan.run_dir is not None:
        shutil.rmtree(plan.run_dir / _REPLACED, ignore_errors=True)
    plan.before = {}


def undo_start(plan: RunDirPlan) -> str:
    """A run failed before finishing a step: put the directory back as it was before
    :func:`open_run_dir` (a new run's files removed, a replaced run put back, a resumed run's
    ``run.json`` and ``metrics.jsonl`` restored), so the same command can run again. Returns what it did."""
    d = plan.run_dir
    if d is None or not d.exists():
        return "nothing was written"
    if plan.temporary:
        shutil.rmtree(d, ignore_errors=True)
        return f"its temporary directory {d} was removed"
    if plan.resume is not None:
        for name, data in plan.before.items():
            p = d / name
            now = p.read_bytes() if p.is_file() else None
            if now == data:
                continue
            try:
                atomic_write_bytes(p, data) if data is not None else p.unlink(missing_ok=True)
            except OSError as e:
                return f"{p} could not be restored ({_reason(e)})"
        return f"{d / RUN_FILE} and {d / METRICS_FILE} are as they were"
    for name in (RUN_FILE, METRICS_FILE, CHECKPOINT, CHECKPOINT + ".tmp"):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    aside = d / _REPLACED
    if aside.is_dir():
        for p in aside.iterdir():
            p.rename(d / p.name)
        aside.rmdir()
        return f"the run it was to replace in {d} is back in place"
    return f"what it had written in {d} was removed"


# -------------------------------------------------------------------------------- checkpoints


def _rng_state(task_gen: torch.Generator) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "task": task_gen.get_state(),
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, task_gen: torch.Generator) -> None:
    """Restore the RNG states saved by :func:`save_checkpoint` (torch, task prompts, Python, NumPy, CUDA)."""
    torch.set_rng_state(state["torch"])
    task_gen.set_state(state["task"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt: Path, policy, opt, schedule, task_gen, step: int, metrics: list[dict]) -> None:
    """Write a complete checkpoint in ``<ckpt>.tmp``, then swap it in for ``ckpt`` (the previous one is
    kept as ``<ckpt>.old`` until the swap is done, so a crash at any point leaves a usable checkpoint).
    Whatever interrupts the writing, ``<ckpt>.tmp`` is removed; an error (a full disk) becomes a
    :class:`CapstoneUserError` that says the previous checkpoint is kept."""
    tmp = Path(ckpt).with_name(Path(ckpt).name + ".tmp")
    try:
        _write_checkpoint(ckpt, policy, opt, schedule, task_gen, step, metrics)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, CapstoneUserError) or not isinstance(e, Exception):
            raise
        raise CapstoneUserError(
            f"cannot write the checkpoint of step {step} ({_reason(e)}); the partial {tmp.name} was removed and "
            f"the previous checkpoint, if any, is unchanged; free space on that disk, then continue with "
            f"{flag('resume')}"
        ) from e


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def write_error(e: Exception, what: str, name: str) -> CapstoneUserError:
    """A failed write (a full disk, a read-only file system) of ``what`` as a :class:`CapstoneUserError`
    that names the file and the flag ``name`` of the directory to change."""
    return CapstoneUserError(
        f"cannot write {what} ({_reason(e)}); free space on that disk, or pass another {flag(name)}"
    )


def _write_checkpoint(ckpt: Path, policy, opt, schedule, task_gen, step: int, metrics: list[dict]) -> None:
    ckpt = Path(ckpt)
    tmp, old = ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "policy", safe_serialization=True)
    sched_state = schedule.state_dict()
    torch.save({"optimizer": opt.state_dict(), "rng": _rng_state(task_gen), "step": step}, tmp / "state.pt")
    (tmp / "schedule.json").write_text(json.dumps(sched_state))
    (tmp / "metrics.json").write_text(json.dumps(metrics))
    write_manifest(tmp, step=step)
    if ckpt.exists():
        if old.exists():
            shutil.rmtree(old)
        ckpt.rename(old)
    tmp.rename(ckpt)
    if old.exists():
        shutil.rmtree(old)


@dataclass
class Checkpoint:
    """A verified checkpoint, loaded: the policy, and what restores the optimiser, RNGs and schedule."""

    path: Path
    step: int
    policy: object
    optimizer_state: dict
    rng_state: dict
    schedule_state: dict
    metrics: list[dict]


def load_checkpoint(ckpt: Path, device) -> Checkpoint:
    """Verify ``ckpt`` against its manifest, then load it; any problem raises :class:`CapstoneUserError`
    naming the file and how to recover."""
    from transformers import AutoModelForCausalLM

    ckpt = Path(ckpt)
    step = checkpoint_step(ckpt)
    recover = _checkpoint_recovery(ckpt)
    current = ckpt / "state.pt"
    try:
        state = torch.load(current, weights_only=True)
        current = ckpt / "schedule.json"
        schedule_state = json.loads(current.read_text())
        current = ckpt / "metrics.json"
        metrics = json.loads(current.read_text())
        current = ckpt / "policy"
        policy = AutoModelForCausalLM.from_pretrained(str(current), trust_remote_code=False, use_safetensors=True).to(
            device
        )
    except Exception as e:  # verified files that still fail to load: written by something else
        raise CapstoneUserError(f"{current} cannot be loaded ({type(e).__name__}); {recover}") from None
    if state.get("step") != step or not isinstance(metrics, list) or len(metrics) != step:
        raise CapstoneUserError(
            f"{ckpt} is inconsistent (state.pt step {state.get('step')!r}, manifest step {step}, "
            f"{len(metrics) if isinstance(metrics, list) else '?'} metric rows); {recover}"
        )
    return Checkpoint(ckpt, step, policy, state["optimizer"], state["rng"], schedule_state, metrics)


def read_checkpoint_metrics(ckpt: Path) -> list[dict]:
    """The metric rows saved with the checkpoint in ``ckpt`` (verified against its manifest first)."""
    checkpoint_step(ckpt)
    try:
        return json.loads((Path(ckpt) / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise CapstoneUserError(
            f"{Path(ckpt) / 'metrics.json'} cannot be read ({type(e).__name__}); {_checkpoint_recovery(Path(ckpt))}"
        ) from None


def restore_schedule(schedule, state: dict) -> None:
    """Put the state saved by :func:`save_checkpoint` (``schedule.state_dict()``) back into a freshly built
    schedule (:meth:`kltutor.schedules.BetaSchedule.load_state_dict`)."""
    try:
        schedule.load_state_dict(state)
    except (TypeError, ValueError) as e:
        raise CapstoneUserError(f"the checkpoint's schedule.json does not fit the run's beta schedule: {e}") from None
