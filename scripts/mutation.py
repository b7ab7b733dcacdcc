"""Mutation testing of kltutor's core modules with mutmut 3 (``make mutation``; not part of CI).

For each module in :data:`MODULES` this copies the package and the module's own test files into a
scratch directory ``_build/mutation/<name>/``, runs ``mutmut run`` there (one worker unless told
otherwise), and reports per module how many mutants the unit tests killed. A mutant that survives
is either a gap in the tests (write the test that kills it) or an *equivalent* mutant, one that no
test can tell from the original; equivalent ones are listed, one line of reason each, in
``docs/mutation-equivalents.md`` and counted separately.

Each mutant runs only the tests of its own module (``tests/test_<module>.py`` and
``tests/test_<module>_*.py``, or the globs given in :data:`MODULES`), and of those only the tests
that call the mutated function, so a full run over every module takes minutes on one core:

    python scripts/mutation.py                   # every module
    python scripts/mutation.py estimators grpo   # some modules
    python scripts/mutation.py --workers 2       # more worker processes

What is not mutated (mutmut's ``do_not_mutate_patterns``, :data:`SKIP_LINES`): the lines of a
``raise`` statement's message. The *condition* that raises is mutated like any other line; the
wording of the message is not a value the tests pin.

The report is printed and written to ``_build/mutation/summary.md``; every survivor's diff is in
``_build/mutation/<name>/survivors.txt``. The exit status is 1 when a module scores below
``--target`` (default 0.9) or a survivor is neither killed nor listed as equivalent.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "mutation"
EQUIVALENTS = ROOT / "docs" / "mutation-equivalents.md"

# name -> (source file, test-file globs). Add a module here to put it under mutation testing; with
# no globs its tests are tests/test_<last part of the name>.py and tests/test_<last part>_*.py.
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "estimators": ("kltutor/estimators.py", ()),
    "divergences": ("kltutor/divergences.py", ()),
    "placements": ("kltutor/placements.py", ()),
    "gradients": ("kltutor/gradients.py", ()),
    "grpo": ("kltutor/grpo.py", ()),
    "schedules": ("kltutor/schedules.py", ()),
    "preference": ("kltutor/preference.py", ()),
    "overoptimization": ("kltutor/overoptimization.py", ()),
    "capstone.loss": ("kltutor/capstone/loss.py", ("tests/test_capstone_loss.py", "tests/test_capstone_step.py")),
}

# Regular expressions of source lines mutmut leaves alone (see the module docstring).
SKIP_LINES = (
    r"^\s*raise \w+\(",  # raise ValueError(f"..."): the message
    r"^\s*f?\"[^\"]*\"\s*\)?,?\s*$",  # a continuation line of a message: nothing but one string literal
    r"^\s*f?'[^']*'\s*\)?,?\s*$",
)


# mutmut's verdicts that count as caught: a test failed, or the mutant hung (an infinite loop the
# tests would never let through).
CAUGHT = ("killed", "timeout")


def test_files(name: str) -> list[str]:
    source, globs = MODULES[name]
    stem = name.split(".")[-1]
    patterns = globs or (f"tests/test_{stem}.py", f"tests/test_{stem}_*.py")
    files = sorted({f for p in patterns for f in glob.glob(str(ROOT / p))})
    return [str(Path(f).relative_to(ROOT)) for f in files]


def read_equivalents() -> dict[str, str]:
    """Mutant name -> reason, from the lines ``- `kltutor.x.y__mutmut_N`: reason`` of the equivalents file."""
    if not EQUIVALENTS.exists():
        return {}
    out = {}
    for line in EQUIVALENTS.read_text().splitlines():
        m = re.match(r"^\s*[-*]\s*`(kltutor\.[\w.]+__mutmut_\d+)`\s*[:\u2014-]\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str) -> Path:
    source, _ = MODULES[name]
    tests = test_files(name)
    if not tests:
        raise SystemExit(f"mutation: no test files for module {name!r}")
    work = OUT / name.replace(".", "_")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "kltutor", work / "kltutor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (work / "tests").mkdir()
    for f in tests + [p for p in ("tests/conftest.py", "tests/__init__.py") if (ROOT / p).exists()]:
        shutil.copy2(ROOT / f, work / f)
    if (ROOT / "tests" / "helpers").is_dir():  # the helpers the tests import (tests.helpers.*)
        shutil.copytree(
            ROOT / "tests" / "helpers", work / "tests" / "helpers", ignore=shutil.ignore_patterns("__pycache__")
        )
    config = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in config:
        raise SystemExit("mutation: pyproject.toml already has a [tool.mutmut] section; this script writes its own")
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["kltutor"]\n'
        f"only_mutate = {toml_list([source])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-x"]\n'
        f"do_not_mutate_patterns = {toml_list(SKIP_LINES)}\n"
    )
    (work / "pyproject.toml").write_text(config)
    return work


def mutmut(work: Path, *args: str, capture: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # import the mutated copy, nothing else
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    exe = Path(sys.executable).with_name("mutmut")
    res = subprocess.run([str(exe), *args], cwd=work, env=env, text=True, capture_output=capture)
    if res.returncode != 0:
        raise SystemExit(
            f"mutation: `mutmut {' '.join(args)}` failed in {work}:\n{(res.stdout or '')[-3000:]}{(res.stderr or '')[-3000:]}"
        )
    return res.stdout or ""


def run_module(name: str, workers: int) -> dict:
    work = prepare(name)
    log = work / "run.log"
    print(f"mutation: {name}: {', '.join(test_files(name))}", flush=True)
    with open(log, "w") as fh:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        exe = Path(sys.executable).with_name("mutmut")
        rc = subprocess.run(
            [str(exe), "run", "--max-children", str(workers)], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT
        ).returncode
    if rc != 0:
        raise SystemExit(f"mutation: mutmut run failed for {name} (exit {rc}); see {log}")
    status: dict[str, str] = {}
    for line in mutmut(work, "results", "--all", "true").splitlines():
        m = re.match(r"^\s*(kltutor\.\S+__mutmut_\d+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    survivors = sorted((k for k, v in status.items() if v not in CAUGHT), key=_natural)
    with open(work / "survivors.txt", "w") as fh:
        for s in survivors:
            diff = mutmut(work, "show", s)
            fh.write(f"### {s}: {status[s]}\n{diff}\n")
    return {"name": name, "status": status, "survivors": survivors}


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    ap.add_argument("--workers", type=int, default=1, help="mutmut worker processes (default 1)")
    ap.add_argument("--target", type=float, default=0.9, help="minimum fraction killed per module (default 0.9)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        ap.error("mutmut is not installed in this environment: pip install 'mutmut>=3.8,<4'")
    equivalents = read_equivalents()
    rows, failed = [], False
    for name in args.modules or list(MODULES):
        res = run_module(name, args.workers)
        st = res["status"]
        n = len(st)
        killed = sum(v in CAUGHT for v in st.values())
        equiv = [s for s in res["survivors"] if s in equivalents]
        unexplained = [s for s in res["survivors"] if s not in equivalents]
        prefix = "kltutor." + MODULES[name][0][len("kltutor/") : -3].replace("/", ".") + "."
        stale = [k for k in equivalents if k.startswith(prefix) and st.get(k) in CAUGHT]
        score = killed / n if n else 1.0
        failed |= score < args.target or bool(unexplained)
        rows.append((name, n, killed, len(equiv), len(unexplained), score, (killed + len(equiv)) / n if n else 1.0))
        for s in unexplained:
            print(f"  survivor (not killed, not listed as equivalent): {s} [{st[s]}]")
        for s in stale:
            print(f"  listed as equivalent but killed now (remove it from {EQUIVALENTS.name}): {s}")
    lines = [
        "| module | mutants | killed | equivalent | unexplained | killed / all | (killed + equivalent) / all |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1%} | {r[6]:.1%} |" for r in rows),
    ]
    tot = [sum(r[i] for r in rows) for i in (1, 2, 3, 4)]
    if len(rows) > 1 and tot[0]:
        lines.append(
            f"| all | {tot[0]} | {tot[1]} | {tot[2]} | {tot[3]} | {tot[1] / tot[0]:.1%} | {(tot[1] + tot[2]) / tot[0]:.1%} |"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
