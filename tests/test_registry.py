"""One registry per idea (issue #26): every list of estimators and placements is derived from
``kltutor.estimators.ESTIMATORS``, so a new estimator needs one entry and no other edit; the capstone's
configuration is importable without torch; the finiteness checks can be deferred to one per step."""

import subprocess
import sys

import pytest
import torch

import kltutor.capstone.config as capstone_config
from kltutor import estimators as est
from kltutor import gradients as G
from kltutor import placements as pl
from kltutor import plotting
from kltutor import schedules as S
from kltutor.capstone.__main__ import build_parser
from kltutor.capstone.config import CapstoneConfig
from kltutor.grpo import grpo_loss
from kltutor.schedules import FixedKL
from kltutor.toys import BinaryAutoregressive
from kltutor.toys.bandits import KLBandit, simulate_training

D = torch.float64


def _k4(logp, ref_logp):
    """A made-up estimator for the test: l^4 / 4 (non-negative, derivative l^3)."""
    est.validate_logps(logp, ref_logp)
    return (logp - ref_logp).pow(4) / 4


@pytest.fixture
def with_k4(monkeypatch):
    monkeypatch.setitem(est.ESTIMATORS, "k4", est.Estimator(_k4, lambda ell: ell.pow(3), ("reward", "loss")))


def test_the_lists_as_the_book_uses_them():
    assert pl.PLACEMENTS == ("none", "k1-in-reward", "k3-in-reward", "k1-in-loss", "k2-in-loss", "k3-in-loss")
    assert capstone_config.CAPSTONE_PLACEMENTS == (*pl.PLACEMENTS, "exact-in-loss")
    assert G.PLACEMENT_KEYS == ("true", *G.ESTIMATOR_PLACEMENTS)
    assert set(G.ESTIMATOR_PLACEMENTS) == set(pl.PLACEMENTS) - {"none"}
    assert set(plotting.PLACEMENT_COLORS) == {*G.PLACEMENT_KEYS, *capstone_config.CAPSTONE_PLACEMENTS}
    assert len(set(plotting.PLACEMENT_COLORS.values())) == len(plotting.PLACEMENT_COLORS)  # one colour each


def test_a_new_estimator_appears_in_every_list(with_k4):
    new = ("k4-in-reward", "k4-in-loss")
    for listed in (
        pl.PLACEMENTS,
        pl.placement_names(exact=True),
        capstone_config.CAPSTONE_PLACEMENTS,
        capstone_config.choices("placement"),
        G.PLACEMENT_KEYS,
        G.ESTIMATOR_PLACEMENTS,
        plotting.PLACEMENT_COLORS,
        plotting.style.placement_colors(),
    ):
        assert all(name in listed for name in new), listed
    assert len(set(plotting.PLACEMENT_COLORS.values())) == len(plotting.PLACEMENT_COLORS)
    # the order of the lists: by where (reward, then loss), and by estimator
    assert pl.PLACEMENTS[-1] == "k4-in-loss" and pl.PLACEMENTS.index("k4-in-reward") < pl.PLACEMENTS.index("k1-in-loss")
    assert G.ESTIMATOR_PLACEMENTS[-2:] == new
    # the CLI offers it
    parser = build_parser()
    assert "k4-in-loss" in parser.format_help()
    assert parser.parse_args(["--placement", "k4-in-reward"]).placement == "k4-in-reward"
    # every function that takes an estimator or a placement runs it
    p = pl.parse_placement("k4-in-loss")
    assert (p.estimator, p.where, p.exact, p.is_none, p.levels) == ("k4", "loss", False, False, ("token", "sequence"))
    ell = torch.tensor([0.5, -1.0], dtype=D)
    assert est.derivative("k4", ell).tolist() == [0.125, -1.0]
    assert est.of_log_ratio("k4", ell).tolist() == [0.015625, 0.25]
    CapstoneConfig(placement="k4-in-loss", kl_level="sequence").validate()
    CapstoneConfig(placement="k4-in-reward").validate()
    pi, ref = BinaryAutoregressive(0.3, -0.5), BinaryAutoregressive(-0.2, 0.4)
    g = G.exact_kl_gradients(pi, ref, 3)
    assert set(new) <= set(g) and all(torch.isfinite(v).all() for v in g.values())
    logp = torch.tensor([[-0.5, -1.0], [-0.7, -0.2]], dtype=D)
    loss = grpo_loss(logp, logp, logp - 0.3, torch.ones_like(logp), torch.tensor([1.0, 0.0]), 2, placement="k4-in-loss")
    assert float(loss.kl_term) == pytest.approx(0.3**4 / 4, rel=1e-12)
    bandit = KLBandit(torch.tensor([0.5, 0.5], dtype=D), torch.tensor([1.0, 0.0], dtype=D))
    run = simulate_training(bandit, FixedKL(0.5), 3, estimator="k4", generator=torch.Generator().manual_seed(0))
    assert len(run.kl_measured) == 3


def test_parsed_placements_answer_what_the_capstone_asked_of_names():
    none, exact = pl.parse_placement("none"), pl.parse_placement("exact-in-loss")
    assert (none.is_none, none.exact, none.where, none.levels) == (True, False, None, ("token",))
    assert (exact.is_none, exact.exact, exact.where, exact.in_loss, exact.levels) == (
        False,
        True,
        "loss",
        True,
        ("token",),
    )
    assert pl.parse_placement("k1-in-reward").levels == ("token",)
    assert CapstoneConfig(placement="exact-in-loss").kl_placement == exact
    with pytest.raises(ValueError, match="full next-token distribution"):
        grpo_loss(
            torch.zeros(2, 1),
            torch.zeros(2, 1),
            torch.zeros(2, 1),
            torch.ones(2, 1),
            torch.zeros(2),
            2,
            "exact-in-loss",
        )


def test_every_choice_of_the_config_is_declared_once():
    """The CLI's choices are the config's, and validate() refuses what they do not list."""
    parser = build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for name in CapstoneConfig.__dataclass_fields__:
        allowed = capstone_config.choices(name)
        assert by_dest[name].choices == allowed
        if allowed is not None:
            with pytest.raises(ValueError, match=name):
                CapstoneConfig(**{name: "not-a-choice"}).validate()
        assert capstone_config.help_text(name)  # every field has its help


def test_importing_the_capstone_config_does_not_import_torch():
    code = (
        "import sys; import kltutor.capstone.config as c; import kltutor.capstone; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules); "
        "c.CapstoneConfig(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_deferred_finiteness_checks_raise_the_same_error_once_at_the_end():
    bad = torch.tensor([0.0, float("nan")])
    with pytest.raises(ValueError) as immediate:
        est.k1(bad, torch.zeros(2))
    reached = False
    with pytest.raises(ValueError) as deferred:
        with est.deferred_finiteness_checks(cpu=True):
            est.k3(torch.zeros(2), torch.zeros(2))
            est.k1(bad, torch.zeros(2))  # queued: no error yet
            reached = True
    assert reached and str(deferred.value) == str(immediate.value)
    with est.deferred_finiteness_checks(cpu=True):  # all finite: nothing raised
        est.k2(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):  # on the CPU the default stays immediate
        with est.deferred_finiteness_checks():
            est.k1(bad, torch.zeros(2))
            raise AssertionError("not reached")


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_schedule_state_dict_round_trip(name):
    kwargs = {"beta": 0.2, "target": 1.0, "horizon": 50, "end": 0.05}
    uses = S.SCHEDULES[name].uses
    kwargs = {k: v for k, v in kwargs.items() if k == "beta" or k in uses}
    a = S.make_schedule(name, **kwargs)
    for kl in (0.5, 3.0, 1.2):
        a.update(kl, n_steps=4)
    b = S.make_schedule(name, **kwargs)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for kl in (0.1, 2.0):  # the restored schedule continues exactly as the original
        assert b.update(kl, n_steps=4) == a.update(kl, n_steps=4)
    legacy = {"_beta": a.beta, "n_updates": a.n_updates, **{k: v for k, v in kwargs.items() if k != "beta"}}
    legacy |= {k: v for k, v in a.state_dict().items() if k in ("start", "progress")}
    c = S.make_schedule(name, **kwargs)
    c.load_state_dict(legacy)  # a checkpoint written by vars(schedule) before state_dict existed
    assert c.state_dict() == a.state_dict()
    with pytest.raises(ValueError, match="state must hold"):
        c.load_state_dict({"beta": 0.1})
