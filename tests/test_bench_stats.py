"""The benchmark suite's statistics and report helpers: pure functions, no timing."""

import pytest

from bench.core import comparison
from bench.report import table
from bench.stats import Summary, format_number, format_ratio, median, percentile, ratio


def test_percentile_interpolates_between_samples_like_numpy() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 1.0) == 4.0
    assert percentile(samples, 0.5) == 2.5
    assert percentile(samples, 0.9) == pytest.approx(3.7)


def test_median_of_odd_count_is_the_middle_sample() -> None:
    assert median([5.0, 1.0, 3.0]) == 3.0


def test_percentile_rejects_empty_samples_and_bad_fractions() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_summary_resists_an_outlier() -> None:
    summary = Summary.of([10.0] * 9 + [1000.0])
    assert summary.median == 10.0
    assert summary.count == 10
    assert summary.maximum == 1000.0


def test_ratio_of_zero_denominator_is_undefined() -> None:
    assert ratio(1.0, 0.0) is None
    assert format_ratio(None) == "—"
    assert format_ratio(ratio(3.0, 2.0)) == "1.50x"


def test_numbers_keep_about_three_significant_figures() -> None:
    assert format_number(0) == "0"
    assert format_number(1.234) == "1.23"
    assert format_number(12.34) == "12.3"
    assert format_number(1234.5) == "1,234"


def test_comparison_gives_each_subject_a_ratio_column_and_lists_failures() -> None:
    headers, rows = comparison(
        {"sdrun fly": [0.2, 0.2, 0.2], "crun": [0.1, 0.1, 0.1]}, ["sdrun fly"], "s", {"podman": "exited with 125"}
    )
    assert headers == ("runtime", "median [s]", "p90 [s]", "n", "sdrun fly ÷ it")
    assert rows[0] == ("sdrun fly", "0.20", "0.20", "3", "1.00x")
    assert rows[1] == ("crun", "0.10", "0.10", "3", "2.00x")
    assert rows[2][:2] == ("podman", "failed: exited with 125")


def test_markdown_table_right_aligns_numeric_columns() -> None:
    text = table(("runtime", "median"), [("crun", "1.5"), ("runc", "2,000")])
    assert text.splitlines()[1] == "|:---|---:|"
