"""The TRL extension run distributed for real: two processes (torchrun, gloo, CPU) versus one, same global batch.

Each run is ``python -m kltutor.trainers.trl_capstone`` on the tiny capstone model for ``STEPS`` optimiser steps,
with TRL's ``rollout_func`` hook sampling every completion from a generator seeded by its index in the global
batch (:func:`kltutor.trainers.trl_capstone.layout_free_rollout`), so both layouts train on the same completions.
Plain SGD without gradient clipping makes the parameters a linear function of the summed gradients, so a wrong
reduction across ranks (a sum instead of a mean, a per-rank token count) would show at the size of the update
itself; Adam's and clipping's scale invariance would hide it. Tolerance: ``1e-5`` of the largest parameter
movement -- float32 gradients summed in another order (gloo's all-reduce of two halves) differ by ~1e-7 relative
per step; three steps and the nonlinearity of the later steps in the earlier ones stay far below 1e-5.

Slow (two torchrun launches per placement, ~30 s each on two cores); `make trainers-test` runs it.
"""

import pytest

pytest.importorskip("trl")
pytestmark = [pytest.mark.trainers, pytest.mark.slow]

from kltutor.trainers import extension_checks as X  # noqa: E402

REL_TOL = 1e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return X.reference(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("placement, aggregation", X.DISTRIBUTED)
def test_two_processes_equal_one(reference, tmp_path, placement, aggregation):
    r = X.distributed(reference, tmp_path, placement, aggregation)
    print(f"{placement} {aggregation}: max |1-process - 2-process| = {r['diff']:.2e}, max movement = {r['moved']:.2e}")
    assert r["moved"] > 1e-3  # the runs trained
    assert r["diff"] <= REL_TOL * r["moved"], r
