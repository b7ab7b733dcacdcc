"""The stable-k3 checker accepts correct implementations and rejects the usual wrong ones."""

import math

import torch

from kltutor import estimators as est
from kltutor.exercises.estimators import check_stable_k3


def _series_solution(logp, ref_logp):
    l = logp - ref_logp
    x = -l.clamp(-0.5, 0.5)
    acc = torch.zeros_like(x)
    for n in range(17, 1, -1):
        acc = acc * x + 1 / math.factorial(n)
    return torch.where(l.abs() <= 0.5, acc * x * x, torch.expm1(-l) + l)


def test_accepts_library_and_reader_solution():
    assert check_stable_k3(est.k3).passed
    assert check_stable_k3(_series_solution).passed


def test_rejects_naive_form_as_inaccurate_near_zero():
    r = check_stable_k3(est.k3_naive)
    assert not r.passed and any("near l = 0" in m for m in r.messages)


def test_rejects_expm1_only_form():
    assert not check_stable_k3(est.k3_expm1).passed


def test_rejects_sign_flipped_ratio():
    flipped = lambda logp, ref_logp: _series_solution(ref_logp, logp)  # noqa: E731 - uses pi/pi_ref instead of pi_ref/pi
    r = check_stable_k3(flipped)
    assert not r.passed and any("wrong value" in m for m in r.messages)


def test_rejects_k1_and_wrong_shape_and_exceptions():
    assert not check_stable_k3(est.k1).passed
    assert not check_stable_k3(lambda a, b: est.k3(a, b).sum()).passed

    def boom(a, b):
        raise RuntimeError("not implemented")

    r = check_stable_k3(boom)
    assert not r.passed and "RuntimeError" in r.messages[0]


def test_rejects_nan_gradient_where():
    def unclamped(logp, ref_logp):
        l = logp - ref_logp
        x = -l
        acc = torch.zeros_like(x)
        for n in range(40, 1, -1):
            acc = acc * x + 1 / math.factorial(n)
        return torch.where(l.abs() <= 0.5, acc * x * x, torch.expm1(-l) + l)

    r = check_stable_k3(unclamped)
    assert not r.passed
