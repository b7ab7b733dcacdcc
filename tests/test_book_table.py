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
