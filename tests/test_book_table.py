"""kltutor.book.table: deterministic HTML and text forms, formats applied, bad formats refused."""

import pandas as pd
import pytest

from kltutor.book import table


def _df():
    return pd.DataFrame({"beta": [0.1, 0.5], "KL": [1.23456, 0.00012], "ok": [True, False], "name": ["a", "b<"]})


def test_html_is_a_table_with_formats_applied_and_escaped():
    html = table(_df(), {"KL": ".2e"}, caption="demo")._repr_html_()
    assert html.startswith('<div class="kltutor-table"><table')
    assert "<caption>demo</caption>" in html
    assert '<td class="num">1.20e-04</td>' in html
    assert "<td>b&lt;</td>" in html and "<td>yes</td>" in html
    assert "id=" not in html  # no generated ids: the stored output compares equal on any machine


def test_same_input_gives_identical_output_and_text_is_aligned():
    a, b = table(_df(), ".3f"), table(_df(), ".3f")
    assert a._repr_html_() == b._repr_html_() and repr(a) == repr(b)
    lines = repr(a).splitlines()
    assert lines[0].split() == ["beta", "KL", "ok", "name"]
    assert lines[1].split()[:2] == ["0.100", "1.235"]


def test_index_and_callable_formats():
    df = pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index(["p", "q"], name="row"))
    t = table(df, {"x": lambda v: f"<{v:.1f}>"}, index=True)
    assert t.header == ["row", "x"] and t.rows == [["p", "<1.0>"], ["q", "<2.0>"]]


def test_unknown_format_column_is_refused():
    with pytest.raises(KeyError, match="columns"):
        table(_df(), {"nope": ".3f"})


# --- printing numbers only as far as they mean something ---------------------------------------
import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kltutor.book import below, num, pm, sci  # noqa: E402


def test_below_prints_the_bound_and_fails_when_it_does_not_hold():
    assert below(5.6e-17, 1e-12) == "< 1e-12"
    assert below(-3e-9, 1e-6) == "< 1e-6"  # a bound on |value|
    assert below(torch.tensor(2e-13, dtype=torch.float64), 1e-12) == "< 1e-12"
    with pytest.raises(AssertionError, match="1e-12"):
        below(2e-12, 1e-12)
    with pytest.raises(AssertionError):
        below(float("nan"), 1.0)  # NaN never passes a bound
    with pytest.raises(ValueError, match="positive"):
        below(0.0, 0.0)
    with pytest.raises(ValueError, match="single number"):
        below(torch.zeros(3), 1.0)


def test_sci_is_compact():
    assert [sci(1e-12), sci(1e-6), sci(2.5e-8), sci(0.001), sci(1e6)] == ["1e-12", "1e-6", "2.5e-8", "0.001", "1e6"]
    assert [sci(2.38e-4, True), sci(3e-4, True), sci(9.2, True), sci(1.6e10, True)] == ["3e-4", "3e-4", "10", "2e10"]
    with pytest.raises(ValueError, match="positive"):
        sci(0.0, round_up=True)


def test_num_drops_the_sign_of_a_rounded_zero_only():
    assert num(-3e-9) == "0.0000" and num(-0.0, ".2f") == "0.00"
    assert num(-0.00051, ".3f") == "-0.001" and num(-2.5) == "-2.5000"
    assert num(-3e-9, ".1e") == "-3.0e-09"  # not zero at this precision: the sign stays
    assert num(float("inf")) == "inf"


def test_pm_prints_digits_the_uncertainty_leaves_meaningful():
    assert pm(1.74390, 0.0523) == "1.74 ± 0.05"
    assert pm(0.1417, 0.0031, digits=2) == "0.1417 ± 0.0031"
    assert pm(0.9447, 0.0962) == "0.9 ± 0.1"  # 0.096 rounds up to 0.1: one decimal fewer
    assert pm(123.4, 12.3) == "120 ± 10"
    assert pm(np.float64(-0.02), 0.004) == "-0.020 ± 0.004"
    assert pm(5.0, 0.0) == "5 ± 0"
    with pytest.raises(ValueError, match="non-negative"):
        pm(1.0, -0.1)
    with pytest.raises(ValueError, match="finite"):
        pm(math.nan, 0.1)


def test_table_never_prints_a_negative_zero():
    t = table(pd.DataFrame({"mu": [-3e-9, 1.0]}), {"mu": ".4f"})
    assert t.rows == [["0.0000"], ["1.0000"]]
