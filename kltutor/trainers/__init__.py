"""What TRL, verl and OpenRLHF compute for their KL terms, classified on ``ch-placements``'s exact toy.

Each library's own KL code (one adapter per library: :mod:`~kltutor.trainers.trl_adapter`,
:mod:`~kltutor.trainers.verl_adapter`, :mod:`~kltutor.trainers.openrlhf_adapter`) is run on
:class:`kltutor.toys.BinaryAutoregressive` with ``ch-placements``'s parameters; the exact expected gradient of every
KL setting is computed by enumeration (:func:`kltutor.trainers.core.expected_gradient`) and classified as
the exact reverse-KL gradient, token-level k2 (biased for T > 1), the per-token forward KL, zero in
expectation, or other, with the bias norm. The libraries are an optional extra (``pip install -e
".[trainers]"``, or ``make trainers-venv``); the results, with the library versions, are cached in
``kltutor/trainers/data/results.json`` so ``ch-placements`` renders its table without them:

- :func:`load_results` reads the committed file; :func:`results_frame` turns it into the chapter's table;
- :func:`compute` re-runs every adapter (needs the extra); ``python -m kltutor.trainers regenerate``
  rewrites the file, ``python -m kltutor.trainers check`` fails if the installed libraries disagree with it.

The ``TRL+kltutor`` rows are kltutor's own extension of TRL's ``GRPOTrainer`` with the capstone's placements
(:mod:`~kltutor.trainers.grpo_extension`, through :mod:`~kltutor.trainers.trl_extension_adapter`; chapter
``ch-capstone``), classified by the same harness.

Introduced in ``ch-placements`` (section "What the trainers compute"). The libraries' on-policy distillation
losses are classified the same way by :mod:`kltutor.trainers.distillation` (``ch-distillation``, stored in
``kltutor/trainers/data/distillation.json``; ``python -m kltutor.trainers.distillation check``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

__all__ = [
    "ADAPTERS",
    "DATA_PATH",
    "available",
    "compute",
    "load_results",
    "results_frame",
    "setting",
    "write_results",
    "compare",
]

ADAPTERS = {
    "TRL": "trl_adapter",
    "verl": "verl_adapter",
    "OpenRLHF": "openrlhf_adapter",
    "TRL+kltutor": "trl_extension_adapter",  # the capstone placements in GRPOTrainer (grpo_extension)
}
DATA_PATH = Path(__file__).with_name("data") / "results.json"
DIGITS = 10  # gradients are stored rounded to 1e-10 (the libraries compute in float32 or float64)


def _adapter(library: str):
    if library not in ADAPTERS:
        raise ValueError(f"unknown library {library!r}; choose one of {list(ADAPTERS)}")
    return importlib.import_module(f"kltutor.trainers.{ADAPTERS[library]}")


def available() -> dict[str, str | None]:
    """For each library, its installed version, or ``None`` when it (or what its adapter needs) is missing."""
    out = {}
    for lib in ADAPTERS:
        a = _adapter(lib)
        try:
            importlib.import_module(a.PACKAGE)
            out[lib] = a.version()
        except Exception:
            out[lib] = None
    return out


def _round(v) -> list[float]:
    return [round(float(x), DIGITS) + 0.0 for x in v]


def compute(libraries=None, progress: bool = False) -> dict:
    """Run every setting of the given libraries (all by default) on the toy; the dict :func:`write_results` stores."""
    import platform

    import torch

    from kltutor.trainers import core

    libraries = list(ADAPTERS) if libraries is None else list(libraries)
    pi, ref, old, T = core.toy_models()
    refs = core.reference_gradients(pi, ref, T)
    true = refs["exact reverse-KL gradient"]
    versions = {"torch": torch.__version__.split("+")[0], "python": platform.python_version()}
    rows = []
    settings = []
    for lib in libraries:
        a = _adapter(lib)
        versions[a.PACKAGE] = a.version()
        settings.extend(a.settings())
    it = settings
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(settings, desc="settings")
    for s in it:
        rec = s.record()
        for regime in ("on-policy", "stale"):
            if regime == "stale" and s.placement != "loss":
                rec["stale"] = None
                continue
            g = core.expected_gradient(s, pi, ref, old, T, regime=regime)
            verdict, dist = core.classify(g, refs)
            rec[regime.replace("-", "_")] = {
                "gradient": _round(g),
                "verdict": verdict,
                "bias_norm": round(float((g - true).norm()), DIGITS),
            }
        rows.append(rec)
    return {
        "generated_by": "python -m kltutor.trainers regenerate",
        "toy": dict(core.TOY),
        "versions": versions,
        "references": {k: _round(v) for k, v in refs.items()},
        "settings": rows,
    }


def write_results(data: dict, path: Path | str = DATA_PATH, merge: bool = True) -> Path:
    """Write ``data`` as JSON; with ``merge``, libraries absent from ``data`` keep their rows from the old file."""
    path = Path(path)
    if merge and path.exists():
        old = json.loads(path.read_text())
        libs = {r["library"] for r in data["settings"]}
        kept = [r for r in old["settings"] if r["library"] not in libs]
        versions = {**old["versions"], **data["versions"]}
        data = {**data, "versions": versions, "settings": kept + data["settings"]}
        order = list(ADAPTERS)
        data["settings"].sort(key=lambda r: order.index(r["library"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def load_stored(path: Path | str, what: str, command: str) -> dict:
    """A committed results file (no library needed); a missing one is an error naming the ``command`` that
    writes it (``what``: what the file holds)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no stored {what}; run `{command}` with the [trainers] extra installed")
    return json.loads(path.read_text())


def version_changes(fresh: dict, stored: dict) -> list[str]:
    """One line for each library whose installed version (``fresh["versions"]``) is not the stored one
    (Python and torch aside: they do not change what a library computes on the toy)."""
    return [
        f"version of {pkg}: stored {stored['versions'].get(pkg)}, installed {v}"
        for pkg, v in fresh["versions"].items()
        if pkg not in ("python", "torch") and stored["versions"].get(pkg) != v
    ]


def load_results(path: Path | str = DATA_PATH) -> dict:
    """The committed results (no library needed)."""
    return load_stored(path, "trainer results", "python -m kltutor.trainers regenerate")


def setting(name: str, data: dict | None = None) -> dict:
    """One stored setting by its id (e.g. ``"trl.grpo.k3.ratio.token"``)."""
    data = load_results() if data is None else data
    for r in data["settings"]:
        if r["name"] == name:
            return r
    raise KeyError(f"no trainer setting {name!r}; known: {[r['name'] for r in data['settings']]}")


def compare(fresh: dict, stored: dict, tol: float = 1e-7) -> list[str]:
    """Differences between a fresh :func:`compute` and the stored file, one line each (empty: they agree).

    Compares, for every setting of the libraries in ``fresh``: presence, verdicts, and gradients to ``tol``
    (the libraries' float32 paths reproduce to about 1e-8 on the toy); and the versions.
    """
    out = version_changes(fresh, stored)
    libs = {r["library"] for r in fresh["settings"]}
    old = {r["name"]: r for r in stored["settings"] if r["library"] in libs}
    new = {r["name"]: r for r in fresh["settings"]}
    for name in sorted(set(old) ^ set(new)):
        out.append(f"setting {name}: {'only in the stored file' if name in old else 'new in the library'}")
    for name in sorted(set(old) & set(new)):
        for regime in ("on_policy", "stale"):
            a, b = old[name].get(regime), new[name].get(regime)
            if (a is None) != (b is None):
                out.append(f"{name} [{regime}]: present in one of the two only")
                continue
            if a is None:
                continue
            if a["verdict"] != b["verdict"]:
                out.append(f"{name} [{regime}]: verdict was {a['verdict']!r}, now {b['verdict']!r}")
            d = max(abs(x - y) for x, y in zip(a["gradient"], b["gradient"]))
            if d > tol:
                out.append(f"{name} [{regime}]: gradient moved by {d:.2e}")
    return out


def results_frame(data: dict | None = None):
    """The chapter's table: one row per library setting, verdicts and bias norms (on-policy and stale batch)."""
    import pandas as pd

    data = load_results() if data is None else data
    rows = []
    for r in data["settings"]:
        st = r.get("stale")
        rows.append(
            {
                "library": r["library"],
                "trainer": r["trainer"],
                "flags": r["flags"],
                "placement": f"{r['estimator']}-in-{r['placement']}",
                "default": "yes" if r["default"] else "",
                "on-policy gradient": r["on_policy"]["verdict"],
                "|bias|": r["on_policy"]["bias_norm"],
                "stale batch |bias|": float("nan") if st is None else st["bias_norm"],
            }
        )
    return pd.DataFrame(rows)
