"""Keep book/ sources and notebooks/ twins in step, and execute chapters with papermill.

python scripts/notebooks.py execute [notebooks/NN_x.ipynb ...] [-p NAME VALUE ...]
    Write each book/NN_x.md into notebooks/NN_x.ipynb (jupytext) and execute it in place with
    papermill, so the stored outputs are the ones the site shows and nbval validates.
python scripts/notebooks.py sync [notebooks/NN_x.ipynb ...]
    Copy edits of Markdown cells from book/ into the executed twins without re-executing; refuses
    (and says which chapter to execute) when a code cell changed.
python scripts/notebooks.py check
    Fail if a stored twin differs from a fresh conversion of its source in anything but outputs
    and execution metadata (cell ids, types, sources and metadata, notebook metadata, papermill
    parameters injected by `execute -p`), if a twin is not executed, holds an error, or if a
    chapter's Colab install cell names another repository than _config.yml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = ROOT / "notebooks"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def chapter_sources() -> list[Path]:
    return sorted(BOOK.glob("[0-9][0-9]_*.md"))


def twin(source: Path) -> Path:
    return NOTEBOOKS / (source.stem + ".ipynb")


def source_of(notebook: Path) -> Path:
    return BOOK / (notebook.stem + ".md")


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def read_source(source: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(source)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:03d}"  # stable ids: re-executing a chapter gives a small diff
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata.pop("jupytext", None)
    return nb


# What executing a notebook may change: everything else must equal a fresh conversion of the source.
EXECUTION_NB_METADATA = {"language_info", "papermill"}
EXECUTION_CELL_FIELDS = {"outputs", "execution_count"}
EXECUTION_CELL_METADATA = {"execution", "papermill"}


def _normalised(nb: nbformat.NotebookNode) -> tuple[dict, list[dict]]:
    """The parts of a notebook that execution must not change: its metadata and every cell's fields."""
    meta = {k: v for k, v in nb.metadata.items() if k not in EXECUTION_NB_METADATA}
    meta["nbformat"] = (nb.nbformat, nb.nbformat_minor)
    cells = []
    for cell in nb.cells:
        c = {k: v for k, v in cell.items() if k not in EXECUTION_CELL_FIELDS and k != "metadata"}
        c["metadata"] = {k: v for k, v in cell.metadata.items() if k not in EXECUTION_CELL_METADATA}
        cells.append(c)
    return meta, cells


def _describe(field: str, want, have) -> str:
    if field == "source" and isinstance(want, str) and isinstance(have, str):
        w, h = want.splitlines(), have.splitlines()
        n = next((j for j, (x, y) in enumerate(zip(w, h)) if x != y), min(len(w), len(h)))
        return f"source at line {n + 1}: {(h[n] if n < len(h) else '<end>')!r} (source gives {(w[n] if n < len(w) else '<end>')!r})"
    return f"{field} {have!r} (source gives {want!r})"


def _first_difference(want: nbformat.NotebookNode, have: nbformat.NotebookNode) -> str | None:
    """Describe the first way ``have`` (a stored twin) differs from ``want`` (a fresh conversion), or None."""
    want_meta, want_cells = _normalised(want)
    have_meta, have_cells = _normalised(have)
    injected = [i for i, c in enumerate(have.cells) if "injected-parameters" in c.metadata.get("tags", [])]
    if injected:
        return (
            f"cell {injected[0]} holds parameters injected by papermill (`execute -p`); "
            "stored twins are executed with the chapter's own parameters, the ones CI validates"
        )
    if want_meta != have_meta:
        keys = sorted(k for k in set(want_meta) | set(have_meta) if want_meta.get(k) != have_meta.get(k))
        return f"notebook metadata differs in {keys}"
    for i, (a, b) in enumerate(zip(want_cells, have_cells)):
        if a == b:
            continue
        fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"cell {i} (id {a.get('id')}) differs in " + "; ".join(_describe(k, a.get(k), b.get(k)) for k in fields)
    if len(want_cells) != len(have_cells):
        return f"has {len(have_cells)} cells, its source {len(want_cells)}"
    return None


def check() -> int:
    problems: list[str] = []
    url = repository_url()
    sources = chapter_sources()
    stems = {s.stem for s in sources}
    for extra in sorted(NOTEBOOKS.glob("*.ipynb")):
        if extra.stem not in stems:
            problems.append(f"{extra.relative_to(ROOT)} has no source in book/")
    for source in sources:
        nb_path = twin(source)
        if not nb_path.exists():
            problems.append(f"{source.relative_to(ROOT)} has no executed twin {nb_path.relative_to(ROOT)}")
            continue
        have_nb = nbformat.read(nb_path, as_version=4)
        diff = _first_difference(read_source(source), have_nb)
        if diff:
            problems.append(
                f"{nb_path.relative_to(ROOT)} is not what the pipeline writes from "
                f"{source.relative_to(ROOT)}: {diff}; run "
                f"`python scripts/notebooks.py execute {nb_path.relative_to(ROOT)}`"
            )
        code = [c for c in have_nb.cells if c.cell_type == "code"]
        if not code or not any(c.get("outputs") for c in code):
            problems.append(f"{nb_path.relative_to(ROOT)} is not executed: run `make notebooks`")
        for c in code:
            for o in c.get("outputs", []):
                if o.get("output_type") == "error":
                    problems.append(f"{nb_path.relative_to(ROOT)} stores an error: {o.get('ename')}: {o.get('evalue')}")
        first = code[0].source if code else ""
        if "google.colab" not in first or url not in first:
            problems.append(f"{source.relative_to(ROOT)}: the first code cell must install kltutor on Colab from {url}")
        if not any("parameters" in c.metadata.get("tags", []) for c in code):
            problems.append(f"{source.relative_to(ROOT)} has no cell tagged `parameters`")
    for p in problems:
        print("FAIL", p)
    print(f"{len(sources)} chapter(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def sync(paths: list[str]) -> int:
    targets = [ROOT / p for p in paths] if paths else [twin(s) for s in chapter_sources()]
    stale = []
    for nb_path in targets:
        source = read_source(source_of(nb_path))
        executed = nbformat.read(nb_path, as_version=4)
        old = [c for c in executed.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        old_code = [c.source.strip() for c in old if c.cell_type == "code"]
        new_code = [c.source.strip() for c in source.cells if c.cell_type == "code"]
        if old_code != new_code:
            stale.append(nb_path)
            continue
        code_iter = iter(c for c in old if c.cell_type == "code")
        cells = []
        for cell in source.cells:
            if cell.cell_type == "code":
                done = next(code_iter)
                done.id, done.source = cell.id, cell.source
                kept = {k: v for k, v in done.metadata.items() if k in EXECUTION_CELL_METADATA}
                done.metadata = nbformat.from_dict({**cell.metadata, **kept})
                cells.append(done)
            else:
                cells.append(cell)
        executed.cells = cells
        nbformat.write(executed, nb_path)
    for nb_path in stale:
        print(
            f"code changed in {nb_path.relative_to(ROOT)}: run `python scripts/notebooks.py execute {nb_path.relative_to(ROOT)}`"
        )
    return 1 if stale else 0


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def execute(paths: list[str], parameters: dict) -> int:
    import papermill as pm

    targets = [Path(p) for p in paths] if paths else [twin(s) for s in chapter_sources()]
    for nb_path in targets:
        nb_path = (ROOT / nb_path) if not nb_path.is_absolute() else nb_path
        source = source_of(nb_path)
        nbformat.write(read_source(source), nb_path)
        print(f"executing {nb_path.relative_to(ROOT)}", flush=True)
        pm.execute_notebook(
            str(nb_path),
            str(nb_path),
            parameters=parameters or None,
            cwd=str(NOTEBOOKS),
            kernel_name="python3",
            progress_bar=False,
            request_save_on_cell_execute=False,
        )
        _strip_papermill_noise(nb_path)
    return 0


def _merge_streams(outputs: list) -> list:
    """Join consecutive stdout (stderr) chunks: how print output is split into messages is timing."""
    merged: list = []
    for out in outputs:
        if (
            out.get("output_type") == "stream"
            and merged
            and merged[-1].get("output_type") == "stream"
            and merged[-1].get("name") == out.get("name")
        ):
            merged[-1]["text"] = merged[-1]["text"] + out["text"]
        else:
            merged.append(out)
    return merged


def _strip_papermill_noise(nb_path: Path) -> None:
    """Drop per-run timestamps papermill stores and join split stream chunks, so an unchanged
    chapter gives an unchanged file."""
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata.get("papermill", {}).pop("start_time", None)
    nb.metadata.get("papermill", {}).pop("end_time", None)
    nb.metadata.get("papermill", {}).pop("duration", None)
    nb.metadata.get("papermill", {}).pop("input_path", None)
    nb.metadata.get("papermill", {}).pop("output_path", None)
    for cell in nb.cells:
        pm_meta = cell.metadata.get("papermill")
        if pm_meta is not None:
            cell.metadata.pop("papermill")
        if cell.metadata.get("tags") == []:
            cell.metadata.pop("tags")
        cell.metadata.get("execution", {}).clear()
        if "execution" in cell.metadata and not cell.metadata["execution"]:
            cell.metadata.pop("execution")
        if cell.cell_type == "code":
            cell.outputs = _merge_streams(cell.outputs)
    nbformat.write(nb, nb_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("execute", help="sync and execute chapters")
    ex.add_argument("notebooks", nargs="*")
    ex.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    sy = sub.add_parser("sync", help="copy Markdown edits into executed twins, keeping outputs")
    sy.add_argument("notebooks", nargs="*")
    sub.add_parser("check", help="check sources and executed twins are in sync")
    args = parser.parse_args(argv)
    if args.cmd == "check":
        return check()
    if args.cmd == "sync":
        return sync(args.notebooks)
    return execute(args.notebooks, {k: _parse_value(v) for k, v in args.parameter})


if __name__ == "__main__":
    sys.exit(main())
