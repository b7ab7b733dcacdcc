import math

from kltutor import overoptimization as oo
from kltutor.exercises.overoptimization import check_best_of_n_kl, check_rl_peak


def test_best_of_n_checker_accepts_reference_and_rejects_formula():
    assert check_best_of_n_kl(lambda p, r, n: oo.best_of_n_kl(p, r, n)).passed
    bad = check_best_of_n_kl(lambda p, r, n: math.log(n) - (n - 1) / n)
    assert not bad.passed and "upper bound" in str(bad)
    assert not check_best_of_n_kl(lambda p, r, n: 1 / 0).passed


def test_rl_peak_checker():
    assert check_rl_peak(lambda a, b: math.exp(2 * (a / b - 1))).passed
    bad = check_rl_peak(lambda a, b: math.exp(a / b - 1))
    assert not bad.passed and "square" in str(bad)
