"""The notebook pipeline's guards: stored twins are exactly what `execute` writes, the nbval
sanitizer cannot blank a number, and the perturbed-numerics runner sets what it says."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import perturbed  # noqa: E402

import notebooks as pipeline  # noqa: E402

SOURCE = pipeline.chapter_sources()[0]


def _executed_copy() -> nbformat.NotebookNode:
    """A fresh conversion with everything execution adds: outputs, counts, execution metadata."""
    nb = pipeline.read_source(SOURCE)
    nb.metadata["language_info"] = {"name": "python", "version": "3.x"}
    nb.metadata["papermill"] = {"parameters": {}, "version": "2.7.0"}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{i}\n")]
            cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    return nb


def test_a_fresh_execution_differs_only_in_outputs():
    assert pipeline._first_difference(pipeline.read_source(SOURCE), _executed_copy()) is None


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda nb: setattr(nb.cells[0], "id", "54a1714b"), "id '54a1714b' (source gives"),
        (lambda nb: setattr(nb.cells[3], "source", nb.cells[3].source + "\nprint(1)"), "source at line"),
        (lambda nb: nb.cells[3].metadata.update(tags=["nbval-ignore-output"]), "metadata"),
        (lambda nb: nb.metadata.update(widgets={}), "notebook metadata differs in ['widgets']"),
        (lambda nb: nb.cells.pop(), "cells, its source"),
        (
            lambda nb: nb.cells.insert(
                3, nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]})
            ),
            "injected by papermill",
        ),
    ],
)
def test_anything_else_is_a_difference(change, expected):
    nb = _executed_copy()
    change(nb)
    diff = pipeline._first_difference(pipeline.read_source(SOURCE), nb)
    assert diff is not None and expected in diff


def test_the_stored_notebooks_are_what_the_pipeline_writes(capsys):
    assert pipeline.check() == 0, capsys.readouterr().out


def test_sync_takes_ids_tags_and_markdown_from_the_source(tmp_path, monkeypatch):
    nb = _executed_copy()
    nb.cells[0].id = "stale-id"
    nb.cells[0].source = "old prose"
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata["tags"] = ["stale"]
    target = tmp_path / (SOURCE.stem + ".ipynb")
    nbformat.write(nb, target)
    monkeypatch.setattr(pipeline, "source_of", lambda _path: SOURCE)
    assert pipeline.sync([str(target)]) == 0
    synced = nbformat.read(target, as_version=4)
    assert pipeline._first_difference(pipeline.read_source(SOURCE), synced) is None
    assert synced.cells[2].outputs == nb.cells[2].outputs  # outputs kept


def test_the_sanitizer_cannot_blank_a_number():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tests" / "nbval_sanitize.cfg")
    printed = ["0.1234", "-0.0022", "1.2e-05", "< 1e-12", "42,624", "1.7 ± 0.3", "62.9", "0.000143", "3 s"]
    for section in cfg.sections():
        rule = re.compile(cfg[section]["regex"])
        hits = [text for text in printed if rule.search(text)]
        assert not hits, f"sanitizer rule [{section}] would blank {hits}"


def test_perturbed_environments():
    scalar = perturbed.environment("scalar")
    assert scalar["ATEN_CPU_CAPABILITY"] == "default" and scalar["OMP_NUM_THREADS"] == "1"
    avx2 = perturbed.environment("avx2")
    assert avx2 is None or avx2["ATEN_CPU_CAPABILITY"] == "avx2"
    with pytest.raises(ValueError, match="unknown variant"):
        perturbed.environment("avx1024")


def test_perturbed_runs_the_command_with_a_fresh_cache_and_removes_it(tmp_path):
    probe = (
        "import os, sys; print(os.environ['ATEN_CPU_CAPABILITY'], os.environ['KLTUTOR_CACHE']);"
        "import torch; print(torch.backends.cpu.get_cpu_capability())"
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "perturbed.py"), "--", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("perturbed (scalar):")
    capability, cache = out[1].split()
    assert capability == "default" and out[2] == "DEFAULT"  # torch really runs its scalar kernels
    assert not Path(cache).exists()
    fails = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "perturbed.py"), "--", sys.executable, "-c", "raise SystemExit(3)"],
        capture_output=True,
        text=True,
    )
    assert fails.returncode == 3  # the command's status is the runner's


def test_split_print_output_is_joined():
    out = [
        nbformat.v4.new_output("stream", name="stdout", text="a\n"),
        nbformat.v4.new_output("stream", name="stdout", text="b\n"),
        nbformat.v4.new_output("stream", name="stderr", text="w\n"),
        nbformat.v4.new_output("stream", name="stdout", text="c\n"),
    ]
    merged = pipeline._merge_streams(out)
    assert [(o["name"], o["text"]) for o in merged] == [("stdout", "a\nb\n"), ("stderr", "w\n"), ("stdout", "c\n")]
