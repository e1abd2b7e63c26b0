"""The job page's points budget for named charts, which the bench requests as the page does."""

from __future__ import annotations

from bench.figures import CHARTS_JS, named_max_points
from metrics.series import POINTS_PER_BUCKET, SERIES_MAX_POINTS
from metrics.summary import summary_width_for


def test_the_bench_asks_for_the_points_charts_js_asks_for():
    budget = named_max_points()
    assert f"const NAMED_MAX_POINTS = {budget};" in CHARTS_JS.read_text()
    assert "max_points=${namedMaxPoints}" in CHARTS_JS.read_text()


def test_the_budget_lets_the_summary_serve_a_10000_point_key():
    budget = named_max_points()
    assert 10 <= budget < SERIES_MAX_POINTS
    assert (budget - 1) % POINTS_PER_BUCKET == 0  # whole buckets and the first point
    # The finest summary level has enough buckets: no raw rows read for such a key.
    assert summary_width_for(10_000, (budget - 1) // POINTS_PER_BUCKET) == 64
