"""The GPU call's scripts hang together (issues 31 and 32): a lent GPU is short-lived, so a typo found
there costs the call. Checked on any machine: every ``benchmarks/*.sh`` parses (``bash -n``); every
script or file they, ``docs/STATUS.md`` and ``benchmarks/README.md`` name exists; every wheel folder a
script reads is the one ``benchmarks/fetch_gpu_wheels.sh`` fills and git ignores (and, once fetched, holds
the pinned wheels); the parameters ``benchmarks/colab_session.sh`` passes to papermill are the
chapter's, and the lines it greps are the ones the chapter's GPU cell prints.
"""

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))
CHAPTER = ROOT / "book" / "11_capstone.md"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_there_are_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"gpu_call.sh", "gpu_session.sh", "colab_session.sh", "fetch_gpu_wheels.sh"} <= names, names


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_parses(script):
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


def test_every_named_file_exists():
    sources = [*SCRIPTS, ROOT / "docs" / "STATUS.md", ROOT / "benchmarks" / "README.md"]
    named = {
        (src.name, m.rstrip("."))
        for src in sources
        for m in re.findall(r"\bbenchmarks/[A-Za-z0-9_.-]+\.(?:sh|py|md)\b\.?", _text(src))
    }
    assert named, "no benchmarks/ paths found: the pattern is wrong"
    missing = sorted((src, path) for src, path in named if not (ROOT / path).is_file())
    assert not missing, missing


def _fetched_folders() -> dict[str, list[str]]:
    """``{folder: [pinned requirement, ...]}`` of the ``pip download ... -d FOLDER`` lines of the fetch script."""
    out: dict[str, list[str]] = {}
    for line in _text(ROOT / "benchmarks" / "fetch_gpu_wheels.sh").splitlines():
        m = re.search(r"pip download .*-d (\S+) (.*?)(?:\s+#.*)?$", line.replace("$PIP", "pip"))
        if m:
            out[m.group(1)] = m.group(2).split()
    return out


def test_the_wheel_folders_read_are_the_ones_fetched_and_ignored():
    fetched = _fetched_folders()
    assert set(fetched) == {".whl", ".whl-colab"}, fetched
    read = {m for p in SCRIPTS if p.name != "fetch_gpu_wheels.sh" for m in re.findall(r"(\.whl(?:-colab)?)/", _text(p))}
    assert read == set(fetched), (read, set(fetched))
    ignored = _text(ROOT / ".gitignore").split()
    for folder in fetched:
        assert f"/{folder}/" in ignored, f"{folder} is not git-ignored"
    # the call carries exactly these folders (the run(...) line in gpu_call.sh's header)
    carry = re.search(r"carry=\[([^\]]*)\]", _text(ROOT / "benchmarks" / "gpu_call.sh")).group(1)
    assert set(ast.literal_eval(f"[{carry}]")) == set(fetched)


def test_the_fetched_wheels_are_the_pinned_ones():
    """Once ``bash benchmarks/fetch_gpu_wheels.sh`` has run (before a GPU call), ``.whl`` holds one wheel per
    pinned requirement; skipped before that (the folders are git-ignored)."""
    pins = [r for r in _fetched_folders()[".whl"] if "==" in r]
    assert pins, "the fetch script pins nothing"
    if not (ROOT / ".whl").is_dir():
        pytest.skip("the wheels are not fetched here (bash benchmarks/fetch_gpu_wheels.sh)")
    have = [p.name.lower() for p in (ROOT / ".whl").glob("*.whl")]
    for pin in pins:
        name, version = pin.split("==")
        stem = f"{name.replace('-', '_').lower()}-{version}-"
        assert any(h.startswith(stem) for h in have), f"{pin} missing from .whl ({have})"
    colab = [p.name.lower() for p in (ROOT / ".whl-colab").glob("*.whl")]
    for name in ("papermill", "ipykernel"):
        assert any(h.startswith(name + "-") for h in colab), f"{name} missing from .whl-colab"


def _parameters_cell() -> str:
    m = re.search(r"```\{code-cell\} ipython3\n:tags: \[parameters\]\n(.*?)```", _text(CHAPTER), re.S)
    assert m, "the chapter has no parameters cell"
    return m.group(1)


def test_colab_session_passes_the_chapters_parameters():
    names = set(re.findall(r"^(\w+) =", _parameters_cell(), re.M))
    script = _text(ROOT / "benchmarks" / "colab_session.sh")
    passed = set(re.findall(r"-p (\w+) ", script))
    assert {"gpu_preset", "gpu_precision", "gpu_steps", "gpu_seeds", "gpu_placements", "gpu_betas"} <= passed
    assert passed <= names, sorted(passed - names)
    # the precisions it asks for are the config's choices
    from kltutor.capstone.config import choices

    runs = re.findall(r'RUNS="([^"]+)"', script)
    asked = {spec.split(":")[2] for r in runs for spec in r.split()}
    assert asked and asked <= set(choices("precision")), asked


def test_the_gpu_cell_prints_what_colab_session_greps():
    text = _text(CHAPTER)
    cell = text[text.index("(sec-capstone-gpu)=") :]
    cell = cell[: cell.index("## ", cell.index("```{code-cell}"))]
    script = _text(ROOT / "benchmarks" / "colab_session.sh")
    for key in ("GPU: ", "decode mode used: ", "precision used: ", "peak allocated: "):
        assert key in script and f'print(f"{key}' in cell, key
    assert ':.2f} GiB")' in cell  # peak allocated: <x.xx> GiB
