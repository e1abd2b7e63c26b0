"""Named keys on the live job page: a chart per key in sections by prefix, twins sharing a
chart, the filter, lazy charts, keys added mid-run, late points from several writers, and the
wall-time axis. The page's DOM contract: #key-sections > details[data-section] >
figure[data-key][data-twin][data-chart="ready"][data-point-count]; Chart.getChart(canvas)
gives what is plotted."""

from __future__ import annotations

import random
import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest
from django.db import connection, connections, transaction

from jobs.models import TrainingJob
from jobs.services import jobs_lock
from metrics.points import MetricBatch, NamedBatch
from metrics.services import metric_batches_write
from tests.browser.support import screenshot
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import metric_batch

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

T0 = 1_700_000_000.0  # the client's wall clock at step 0 in these runs
SECONDS_PER_STEP = 10.0


def write(job: TrainingJob, named=(), steps=()) -> None:
    """Named points (name, step, value) and headline points at `steps`, through the real
    write path: lock the job, then write, as the API does."""
    rows = [(name, step, value, T0 + SECONDS_PER_STEP * step) for name, step, value in named]
    with transaction.atomic():
        (locked,) = jobs_lock([job.pk])
        batch = (
            metric_batch(steps, steps_per_epoch=job.steps_per_epoch)
            if len(steps)
            else MetricBatch.empty()
        )
        metric_batches_write(
            [(locked, batch)], named={job.pk: NamedBatch.from_points(rows)} if rows else None
        )


@pytest.fixture
def fast_polls(settings):
    settings.TRAINMON_POLL_SECONDS = 0.5


@pytest.fixture
def external(user):
    return TrainingJobFactory(
        owner=user,
        name="real-run",
        source=TrainingJob.Source.EXTERNAL,
        total_epochs=10,
        steps_per_epoch=100,
    )


def plotted_x(page, key: str, line: int = 0) -> list[float]:
    """The x values of the raw line of `key`'s chart (line 1: its validation twin)."""
    return page.evaluate(
        """([key, line]) => {
          const figure = document.querySelector(`figure[data-key="${key}"]`);
          const chart = Chart.getChart(figure.querySelector("canvas"));
          return chart.data.datasets.filter((d) => d.line === line)[0].data.map((p) => p.x);
        }""",
        [key, line],
    )


def plotted_y(page, key: str, line: int = 0) -> list[float | None]:
    return page.evaluate(
        """([key, line]) => {
          const figure = document.querySelector(`figure[data-key="${key}"]`);
          const chart = Chart.getChart(figure.querySelector("canvas"));
          return chart.data.datasets.filter((d) => d.line === line)[0].data.map((p) => p.y);
        }""",
        [key, line],
    )


def has_chart(page, key: str) -> bool:
    return page.evaluate(
        """key => Boolean(Chart.getChart(
            document.querySelector(`figure[data-key="${key}"] canvas`)))""",
        key,
    )


def ready(page, key: str) -> None:
    """Scrolls `key`'s chart into view (charts are drawn as they show) and waits for it."""
    page.locator(f'figure[data-key="{key}"]').scroll_into_view_if_needed()
    page.wait_for_selector(f'figure[data-key="{key}"][data-chart="ready"]')


def test_keys_get_sections_twins_share_a_chart_and_the_filter_hides(
    open_page, user, external, browser_errors
):
    write(
        external,
        named=[("train/acc", s, 0.5 + s / 100) for s in range(10)]
        + [("val/acc", s, 0.4 + s / 100) for s in (4, 9)]
        + [("loss", s, 2.0 - s / 10) for s in range(10)]
        + [("val_loss", s, 2.5 - s / 10) for s in (4, 9)]
        + [("val/perplexity", s, 9.0) for s in (4, 9)]
        + [("grad_norm", s, float("nan") if s == 3 else 1.0) for s in range(6)],
        steps=range(10),
    )
    page = open_page(user)
    page.goto(external.get_absolute_url())
    page.wait_for_selector("#key-sections details[data-section]")
    sections = page.eval_on_selector_all(
        "#key-sections > details", "ds => ds.map((d) => d.dataset.section)"
    )
    assert sections == ["train", "val", "other"]
    charts = page.eval_on_selector_all(
        "#key-sections details",
        """ds => Object.fromEntries(ds.map((d) => [d.dataset.section, Array.from(
             d.querySelectorAll("figure"), (f) => [f.dataset.key, f.dataset.twin || null])]))""",
    )
    assert charts == {
        "train": [["train/acc", "val/acc"]],
        "val": [["val/perplexity", None]],
        "other": [["grad_norm", None], ["loss", "val_loss"]],
    }

    # Twins: one chart, two lines, each at its own steps.
    ready(page, "train/acc")
    assert plotted_x(page, "train/acc") == list(range(10))
    assert plotted_x(page, "train/acc", line=1) == [4, 9]
    ready(page, "loss")
    assert plotted_x(page, "loss", line=1) == [4, 9]
    # NaN is a gap: a null y, and Chart.js does not span it.
    ready(page, "grad_norm")
    assert plotted_y(page, "grad_norm")[3] is None
    assert page.evaluate(
        """() => Chart.getChart(document.querySelector('figure[data-key="grad_norm"] canvas'))
             .data.datasets.every((d) => d.spanGaps === false)"""
    )
    assert "6 points" in page.inner_text('figure[data-key="grad_norm"] figcaption')
    screenshot(page, "job-named-keys")

    # The filter: type to keep the matching charts; sections without one are hidden.
    page.fill("#key-filter", "acc")
    page.wait_for_selector('figure[data-key="grad_norm"]', state="hidden")
    assert page.is_visible('figure[data-key="train/acc"]')  # matches train/acc and val/acc
    assert page.is_hidden('details[data-section="other"]')
    assert page.is_hidden('details[data-section="val"]')
    assert "2 of 6 keys" in page.inner_text("#key-count")
    page.fill("#key-filter", "")
    page.wait_for_selector('figure[data-key="grad_norm"]', state="visible")
    assert page.is_visible('details[data-section="val"]')

    # X axis: relative wall time from the points' own timestamps (10 s a step here).
    page.select_option("#x-axis", "time")
    page.wait_for_function("() => document.getElementById('charts').dataset.xAxis === 'time'")
    # (SQLite keeps times to the millisecond)
    expected = [SECONDS_PER_STEP * s for s in range(10)]
    assert plotted_x(page, "train/acc") == pytest.approx(expected, abs=0.01)
    assert plotted_x(page, "train/acc", line=1) == pytest.approx([40.0, 90.0], abs=0.01)
    page.select_option("#x-axis", "step")
    page.wait_for_function("() => document.getElementById('charts').dataset.xAxis === 'step'")
    assert plotted_x(page, "train/acc") == list(range(10))

    # A collapsed section frees its charts; opening it draws them again.
    page.click('details[data-section="train"] > summary')
    page.wait_for_function(
        """() => !Chart.getChart(document.querySelector('figure[data-key="train/acc"] canvas'))"""
    )
    page.click('details[data-section="train"] > summary')
    ready(page, "train/acc")
    assert has_chart(page, "train/acc")
    assert browser_errors.messages == []


def test_charts_below_the_fold_are_drawn_as_they_scroll_in_and_polled_only_then(
    open_page, user, external, browser_errors, fast_polls
):
    names = [f"metric_{i:02d}" for i in range(40)]
    write(external, named=[(name, s, float(s)) for name in names for s in range(3)])
    page = open_page(user)
    polls: list[str] = []
    page.on("request", lambda request: "/poll/" in request.url and polls.append(request.url))
    page.goto(external.get_absolute_url())
    page.wait_for_selector('figure[data-key="metric_39"]', state="attached")
    assert page.eval_on_selector_all("figure[data-chart]", "fs => fs.length") == 0  # off screen
    ready(page, "metric_00")
    drawn = page.eval_on_selector_all("figure[data-chart]", "fs => fs.map((f) => f.dataset.key)")
    assert "metric_39" not in drawn and len(drawn) < len(names)
    assert not has_chart(page, "metric_39")

    # One poll per page, for the charts on screen only.
    request = page.wait_for_event("request", predicate=lambda r: "/poll/" in r.url)
    polls.clear()
    page.wait_for_event("request", predicate=lambda r: "/poll/" in r.url)
    assert len(polls) == 1
    assert "metric_00" in request.url and "metric_39" not in request.url

    page.locator('figure[data-key="metric_39"]').scroll_into_view_if_needed()
    ready(page, "metric_39")
    assert plotted_x(page, "metric_39") == [0, 1, 2]
    request = page.wait_for_event(
        "request", predicate=lambda r: "/poll/" in r.url and "metric_39" in r.url
    )
    assert "cursor=" in request.url
    assert browser_errors.messages == []


def test_a_key_added_mid_run_gets_its_chart_and_a_twin_joins_its_chart(
    open_page, user, external, browser_errors, fast_polls
):
    write(external, named=[("train/loss", s, 1.0) for s in range(5)], steps=range(5))
    page = open_page(user)
    page.goto(external.get_absolute_url())
    ready(page, "train/loss")

    write(external, named=[("lr_scale", s, 0.5) for s in range(3)])
    page.wait_for_selector('details[data-section="other"] figure[data-key="lr_scale"]')
    ready(page, "lr_scale")
    assert plotted_x(page, "lr_scale") == [0, 1, 2]

    write(external, named=[("val/loss", 4, 1.5)])
    page.wait_for_selector('figure[data-key="train/loss"][data-twin="val/loss"]')
    ready(page, "train/loss")
    page.wait_for_function(
        """() => Chart.getChart(document.querySelector('figure[data-key="train/loss"] canvas'))
             .data.datasets.some((d) => d.line === 1 && d.data.length === 1)"""
    )
    # The new points of a live chart keep coming.
    write(external, named=[("val/loss", 9, 1.2), ("train/loss", 9, 0.9)], steps=range(5, 10))
    page.wait_for_function(
        """() => Chart.getChart(document.querySelector('figure[data-key="train/loss"] canvas'))
             .data.datasets.filter((d) => d.line === 1)[0].data.length === 2"""
    )
    assert plotted_x(page, "train/loss") == [0, 1, 2, 3, 4, 9]
    page.wait_for_function(
        "() => Number(document.getElementById('charts').dataset.pointCount) === 10"
    )
    assert browser_errors.messages == []


WRITERS = 4
BATCH = 7


def shared_sqlite():
    """The test database's one connection when it is in-memory SQLite (the live server
    shares it, as the Ticker in conftest does), else None: PostgreSQL gives each thread its
    own connection."""
    main = connections["default"]
    return main if main.vendor == "sqlite" and main.is_in_memory_db() else None


def write_from_threads(job: TrainingJob, shares: list[list[int]]) -> None:
    """One thread per share of steps, each writing its steps in batches of BATCH, in the
    share's order, headline and "train/loss" points of value 2.0, through the real path."""
    shared = shared_sqlite()
    one_at_a_time = threading.Lock()  # a shared connection takes one writer at a time
    errors: list[BaseException] = []

    def writer(share: list[int]) -> None:
        if shared is not None:
            shared.inc_thread_sharing()
            connections["default"] = shared
        try:
            for start in range(0, len(share), BATCH):
                chunk = share[start : start + BATCH]
                with one_at_a_time if shared is not None else nullcontext():
                    write(job, named=[("train/loss", s, 2.0) for s in chunk], steps=sorted(chunk))
                time.sleep(0.02)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            if shared is None:
                connection.close()
            else:
                shared.dec_thread_sharing()

    threads = [threading.Thread(target=writer, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


LATE_STEPS = 200  # steps 0..199 arrive late, after 200..299 are plotted


def test_late_batches_from_several_writers_reach_the_open_chart_in_step_order(
    open_page, user, external, browser_errors, fast_polls
):
    write(external, named=[("train/loss", s, 1.0) for s in range(200, 300)], steps=range(200, 300))
    page = open_page(user)
    page.goto(external.get_absolute_url())
    ready(page, "train/loss")
    assert plotted_x(page, "train/loss") == list(range(200, 300))
    page.wait_for_function(
        "() => Number(document.getElementById('charts').dataset.pointCount) === 100"
    )
    refetches: list[str] = []
    page.on("request", lambda r: "/series/" in r.url and refetches.append(r.url))

    # Several writers post small batches of earlier steps, each in its own shuffled order,
    # while the page polls (as MLflow's async logging does from 10 threads).
    steps = list(range(LATE_STEPS))
    random.Random(12).shuffle(steps)
    shares = [sorted(steps[i::WRITERS], reverse=True) for i in range(WRITERS)]
    shared = shared_sqlite()
    if shared is not None:
        # An in-memory SQLite test database is one shared-cache database: a poll read while a
        # writer holds its lock fails ("table is locked"), which a file database in WAL mode
        # (production) never does. There, hold the page's polls while the writers run; the
        # page still learns of every point afterwards, from its ingest cursor.
        pause_toggle = "() => document.getElementById('live-toggle').click()"  # no scrolling
        page.evaluate(pause_toggle)
        page.wait_for_selector("#charts[data-live=paused]", state="attached")
        page.wait_for_timeout(600)  # a poll already out comes back
    write_from_threads(external, shares)
    if shared is not None:
        page.evaluate(pause_toggle)
    assert page.evaluate(
        """() => { const box = document.querySelector('figure[data-key="train/loss"]')
             .getBoundingClientRect(); return box.top < innerHeight && box.bottom > 0; }"""
    ), "the chart stays on screen, so the polls carry its points"

    stored = 300
    page.wait_for_function(
        """n => {
          const canvas = document.querySelector('figure[data-key="train/loss"] canvas');
          return Chart.getChart(canvas).data.datasets[0].data.length === n;
        }""",
        arg=stored,
    )
    assert plotted_x(page, "train/loss") == list(range(stored))
    assert plotted_y(page, "train/loss")[:LATE_STEPS] == [2.0] * LATE_STEPS
    assert "All 300 points" in page.inner_text('figure[data-key="train/loss"] figcaption')
    assert refetches == [], "the late points came with the polls, merged in by step"
    # The headline loss chart too.
    page.wait_for_function(
        "n => Number(document.getElementById('charts').dataset.pointCount) === n", arg=stored
    )
    headline = page.evaluate(
        "() => Chart.getChart(document.getElementById('chart-loss'))"
        ".data.datasets[0].data.map((p) => p.x)"
    )
    assert headline == list(range(stored))
    assert np.all(np.diff(headline) == 1)
    assert browser_errors.messages == []


def test_a_validation_twin_of_the_headline_loss_joins_the_loss_chart(
    open_page, user, external, browser_errors, fast_polls
):
    write(external, named=[("val/loss", s, 1.5) for s in (4, 9)], steps=range(10))
    page = open_page(user)
    page.goto(external.get_absolute_url())
    page.wait_for_selector('figure[data-metric="loss"][data-twin="val/loss"]')
    loss_lines = """() => {
      const chart = Chart.getChart(document.getElementById("chart-loss"));
      return [0, 1].map((line) => chart.data.datasets.filter((d) => d.line === line)[0]
        .data.map((p) => p.x));
    }"""
    page.wait_for_function(f"() => ({loss_lines})()[1].length === 2")
    assert page.evaluate(loss_lines) == [list(range(10)), [4, 9]]
    # It keeps its own chart in its section, and both follow the run.
    ready(page, "val/loss")
    write(external, named=[("val/loss", 14, 1.2)], steps=range(10, 15))
    page.wait_for_function(f"() => ({loss_lines})()[1].length === 3")
    assert page.evaluate(loss_lines)[0] == list(range(15))
    assert browser_errors.messages == []


def test_compare_picks_a_shared_key(open_page, user, browser_errors):
    first, second = (
        TrainingJobFactory(owner=user, name=name, total_epochs=10, steps_per_epoch=100)
        for name in ("run-a", "run-b")
    )
    write(first, named=[("val/loss", s, 1.0 - s / 20) for s in range(5)], steps=range(5))
    write(second, named=[("val/loss", s, 2.0) for s in (0, 2)], steps=range(3))
    page = open_page(user)
    page.goto(f"/compare/?jobs={first.pk},{second.pk}")
    assert page.is_hidden("#compare-key-submit")  # the picker submits itself
    with page.expect_navigation():
        page.select_option("#compare-key", "val/loss")
    assert "key=val%2Floss" in page.url
    assert page.inner_text("#compare-chart-title") == "val/loss"
    lines = page.evaluate(
        """() => Chart.getChart(document.getElementById("compare-chart")).data.datasets
             .filter((d) => d.raw).map((d) => d.data.map((p) => p.x))"""
    )
    assert lines == [[0, 1, 2, 3, 4], [0, 2]]
    row = page.locator(f'tr[data-job-id="{first.pk}"]')
    assert row.locator('[data-column="best"]').inner_text() == "0.8000"
    assert browser_errors.messages == []


def test_a_late_range_too_large_for_a_poll_reloads_the_charts(
    open_page, user, browser_errors, fast_polls
):
    external = TrainingJobFactory(
        owner=user, source=TrainingJob.Source.EXTERNAL, total_epochs=10, steps_per_epoch=1000
    )
    write(
        external, named=[("train/loss", s, 1.0) for s in range(3000, 3100)], steps=range(3000, 3100)
    )
    page = open_page(user)
    page.goto(external.get_absolute_url())
    ready(page, "train/loss")
    page.wait_for_function(
        "() => Number(document.getElementById('charts').dataset.pointCount) === 100"
    )
    reloads: list[str] = []
    page.on("request", lambda r: "/series/" in r.url and reloads.append(r.url))
    # More late points than one poll carries (POLL_MAX_POINTS): the poll says reload.
    late = range(2500)
    write(external, named=[("train/loss", s, 2.0) for s in late], steps=late)
    page.wait_for_function(
        "() => Number(document.getElementById('charts').dataset.totalPoints) === 2600"
    )
    page.wait_for_selector('figure[data-key="train/loss"] figcaption:has-text("of 2,600 points")')
    assert "of 2,600 points" in page.inner_text("#points-note")
    assert any("keys=train%2Floss" in url for url in reloads)
    assert any("keys=" not in url for url in reloads)
    x = plotted_x(page, "train/loss")
    assert x == sorted(x) and x[0] == 0 and x[-1] == 3099 and len(x) <= 2000
    assert browser_errors.messages == []
