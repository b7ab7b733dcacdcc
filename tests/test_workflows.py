"""The GitHub Actions workflows (.github/workflows): the book is built with the README's command and
deployed to GitHub Pages; the tests run `.ci/run` on pushes and pull requests. Checked three ways: their
structure here, GitHub's workflow schema (check-jsonschema's vendored copy, offline) and zizmor's static
analysis (offline), both from the `dev` extra."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
README = (ROOT / "README.md").read_text()


def _load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as true
    return wf


def _runs(job: dict) -> list[str]:
    return [s["run"].strip() for s in job["steps"] if "run" in s]


def _uses(job: dict) -> list[str]:
    return [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]


def test_readme_names_the_commands_the_workflows_run():
    assert re.search(r"^make book\b", README, re.M) and re.search(r"^make test\b", README, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make pdf" in README


def test_ci_runs_the_ci_script_on_push_and_pull_request():
    wf = _load("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    (job,) = wf["jobs"].values()
    assert ".ci/run" in _runs(job)
    assert "actions/checkout" in _uses(job)
    assert wf["permissions"] == {"contents": "read"}


def test_book_builds_with_the_readme_command_and_deploys_to_pages():
    wf = _load("book.yml")
    assert "push" in wf["on"] and "workflow_dispatch" in wf["on"]
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    runs = _runs(build)
    assert runs.index("make book") < runs.index("make pdf"), runs
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    sys.path.insert(0, str(ROOT / "scripts"))
    import book_site

    assert upload["with"]["path"] == str(book_site.HTML.relative_to(ROOT))
    copied = next(r for r in runs if r.startswith("cp "))
    assert "_build/html" in copied and "study-guide.pdf" in copied and "kltutor-book.pdf" in copied
    assert deploy["needs"] == "build" and _uses(deploy) == ["actions/deploy-pages"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"


def test_workflows_name_no_other_repository():
    """The repository URL lives in _config.yml only (Colab buttons and install cells use it)."""
    for f in WORKFLOWS.glob("*.yml"):
        assert "github.com/" not in f.read_text(), f"{f.name} names a repository URL; use _config.yml's"


def test_workflows_match_githubs_schema():
    pytest.importorskip("check_jsonschema", reason="the dev extra installs check-jsonschema")
    files = sorted(map(str, WORKFLOWS.glob("*.yml")))
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_zizmor_finds_nothing():
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("the dev extra installs zizmor")
    out = subprocess.run(
        [zizmor, "--offline", "--no-progress", str(WORKFLOWS)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr
