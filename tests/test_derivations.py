"""Every derivation of the book holds: one test runs each proof in kltutor.derivations' registry.

Each proof lives once, in the module of the chapter that teaches it (kltutor/derivations/<topic>.py);
the interview chapter calls those. The rest of this file checks the registry itself, that the book
names only proofs that exist, and the helpers some proofs rest on.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import sympy as sp

from kltutor import derivations
from kltutor.derivations import DerivationError, registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = registry()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_derivation_holds(name):
    assert REGISTRY[name]() is True


def test_every_proof_is_registered_under_its_chapter_module():
    """A module's public zero-argument proofs are exactly its registered ones; every module is a chapter's."""
    names = set()
    for mod in derivations.MODULES:
        m = importlib.import_module(f"kltutor.derivations.{mod}")
        registered = {n.split(".", 1)[1] for n in REGISTRY if n.startswith(f"{mod}.")}
        assert registered, f"kltutor.derivations.{mod} registers no proof"
        assert registered <= set(m.__all__), f"{mod}: registered but not exported: {registered - set(m.__all__)}"
        names |= {f"{mod}.{n}" for n in registered}
    assert names == set(REGISTRY)
    files = {p.stem for p in (ROOT / "kltutor" / "derivations").glob("*.py")} - {"__init__"}
    assert files == set(derivations.MODULES), "every derivations module is a chapter's, named after its topic"


def test_the_book_names_only_proofs_that_exist():
    """Backticked `module.function` names of kltutor.derivations in the chapters are registry names or helpers."""
    modules = "|".join(derivations.MODULES)
    for md in sorted((ROOT / "book").glob("[0-9][0-9]_*.md")):
        for mod, fn in re.findall(rf"`(?:kltutor\.derivations\.)?({modules})\.([a-z_0-9]+)`", md.read_text()):
            m = importlib.import_module(f"kltutor.derivations.{mod}")
            assert hasattr(m, fn), f"{md.name}: `{mod}.{fn}` is not in kltutor.derivations.{mod}"


# --------------------------------------------------------------------------- helpers the proofs rest on
def test_fundamentals_closed_form_numeric_value():
    from kltutor.derivations import fundamentals as fundamentals_proofs

    expr = fundamentals_proofs.gaussian_kl_closed_form(0, 1, 0, 2)
    assert float(expr) == pytest.approx(float(sp.log(2) + sp.Rational(1, 8) - sp.Rational(1, 2)))


def test_mgf_expectation_matches_integration():
    from kltutor.derivations import estimators as estimators_proofs

    z, d = sp.Symbol("z", real=True), sp.Symbol("delta", positive=True)
    expr = (z**2 + 3 * z) * sp.exp(-d * z) + z**4
    fast = estimators_proofs._E(expr)
    slow = estimators_proofs.expectation_by_integration(expr)
    assert sp.simplify(fast - slow) == 0


def test_expectation_rejects_nonlinear_exponent():
    from kltutor.derivations import estimators as estimators_proofs

    z = sp.Symbol("z", real=True)
    with pytest.raises(DerivationError):
        estimators_proofs._E(sp.exp(z**2 / 4))


def test_k2_bias_leading_term_sign():
    from kltutor.derivations import estimators as estimators_proofs

    ex = estimators_proofs.k2_bias_expressions()
    theta, eps = sp.symbols("theta epsilon", positive=True)
    lead = ex["bernoulli_bias_series"]
    assert lead.subs({theta: sp.Rational(3, 10), eps: 1}) < 0
    assert lead.subs({theta: sp.Rational(7, 10), eps: 1}) > 0


def test_zero_test_rejects_a_wrong_identity():
    """The zero test used by the proofs is not vacuous: a wrong power of beta fails it."""
    from kltutor.derivations import schedules as schedules_proofs

    beta, q, r, pi, mean, var, kl = schedules_proofs.tilted_bandit()
    assert not derivations.is_zero(sp.together(sp.diff(kl, beta) + var / beta**2))
    assert derivations.is_zero(sp.together(sp.diff(kl, beta) + var / beta**3))


def test_placement_gradients_numbers_match_finite_differences():
    """The sympy expected gradients agree with autograd on an enumerated softmax policy."""
    import torch

    from kltutor.derivations import placements as placements_proofs

    torch.manual_seed(0)
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    pi = torch.softmax(theta, 0)
    reverse = (pi * (pi.log() - ref.log())).sum()
    forward = (ref * (ref.log() - pi.log())).sum()
    g_rev = torch.autograd.grad(reverse, theta, retain_graph=True)[0][0].item()
    g_fwd = torch.autograd.grad(forward, theta, retain_graph=True)[0][0].item()
    # k3-in-loss: expectation (weights detached) of the autograd gradient of k3 at each outcome
    ell = pi.log() - ref.log()
    k3 = torch.exp(-ell) - 1 + ell
    g_k3 = torch.autograd.grad((pi.detach() * k3).sum(), theta)[0][0].item()

    g = placements_proofs.placement_gradient_expressions()
    p = pi.detach().tolist()
    subs = {
        sp.Symbol("p1", positive=True): p[0],
        sp.Symbol("p2", positive=True): p[1],
        sp.Symbol("q1", positive=True): 0.2,
        sp.Symbol("q2", positive=True): 0.5,
    }
    assert float(g["reverse_kl"].subs(subs)) == pytest.approx(g_rev, rel=1e-9)
    assert float(g["forward_kl"].subs(subs)) == pytest.approx(g_fwd, rel=1e-9)
    assert float(g["k3-in-loss"].subs(subs)) == pytest.approx(g_k3, rel=1e-9)


def test_shared_building_blocks():
    """softmax sums to 1, simplex points are normalised, tilt is pi_ref e^{r/beta}/Z and kl(p, p) = 0."""
    z = derivations.logits("z", 3)
    assert sp.simplify(sum(derivations.softmax(z)) - 1) == 0
    q = derivations.simplex("q", 3)
    assert sp.simplify(sum(q) - 1) == 0
    r, beta = sp.symbols("r0:3", real=True), sp.Symbol("beta", positive=True)
    t = derivations.tilt(q, r, beta)
    assert sp.simplify(t[0] / t[1] - q[0] / q[1] * sp.exp((r[0] - r[1]) / beta)) == 0
    assert derivations.kl(q, q) == 0
