from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from jobs.live_figures import job_live_figures
from jobs.models import TrainingJob
from jobs.services import job_fail, job_pause, jobs_lock
from metrics.points import MetricBatch, NamedBatch
from metrics.series import SERIES_MAX_POINTS
from metrics.services import metric_batches_write
from metrics.views import COMPARE_MAX_JOBS, MAX_KEYS_PER_REQUEST, series_colours
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import points_write

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db

POLL_DATA = re.compile(
    r'<script type="application/json" id="poll-data" hx-swap-oob="true">(.*?)</script>', re.S
)


@pytest.fixture
def running(user):
    return TrainingJobFactory(owner=user, total_epochs=100, steps_per_epoch=1000)


def series_url(job, **params):
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return reverse("metrics:series", args=[job.pk]) + (f"?{query}" if query else "")


def poll_url(job, **params):
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return reverse("metrics:poll", args=[job.pk]) + (f"?{query}" if query else "")


def poll_data(response) -> dict:
    """The poll's JSON: the answer itself, or after a status change its #poll-data."""
    if response["Content-Type"] == "application/json":
        return json.loads(response.content)
    match = POLL_DATA.search(response.content.decode())
    assert match, "the poll response carries #poll-data out of band"
    return json.loads(match.group(1))


# --- series -----------------------------------------------------------------------------------


def test_series_is_compact_json_of_every_point(user_client, running):
    job = points_write(
        running, range(5), losses=[5, 4, 3, 2, 1], accuracies=[np.nan, 0.2, 0.3, 0.4, 0.5]
    )
    response = user_client.get(series_url(job))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert b", " not in response.content  # compact separators
    body = response.json()
    times = body.pop("times")  # when each point was stored: the wall-clock axis
    assert len(times) == 5 and times == sorted(times)
    assert abs(times[-1] - time.time()) < 60
    assert body == {
        "steps": [0, 1, 2, 3, 4],
        "loss": [5.0, 4.0, 3.0, 2.0, 1.0],
        "accuracy": [None, 0.2, 0.3, 0.4, 0.5],
        "learning_rate": [1e-3] * 5,
        "total": 5,
        "shown": 5,
        "last_step": 4,
        "status": "running",
        "cursor": job.ingest_seq,
    }


def test_series_of_an_empty_job(user_client, running):
    body = user_client.get(series_url(running)).json()
    assert (body["steps"], body["total"], body["shown"], body["last_step"]) == ([], 0, 0, None)


@pytest.mark.parametrize(
    ("asked", "at_most"), [("1", 10), ("-5", 10), ("50", 50), ("999999", 10000)]
)
def test_series_max_points_is_clamped(user_client, running, asked, at_most):
    job = points_write(running, range(20_000))
    body = user_client.get(series_url(job, max_points=asked)).json()
    assert body["total"] == 20_000
    assert at_most // 2 <= body["shown"] <= at_most
    assert body["last_step"] == 19_999


@pytest.mark.parametrize("bad", ["abc", "1.5", "1e3"])
def test_series_rejects_a_non_integer_max_points(user_client, running, bad):
    response = user_client.get(series_url(running, max_points=bad))
    assert response.status_code == 400
    assert "max_points must be an integer" in response.json()["error"]


def test_series_and_poll_of_another_users_or_a_missing_job_are_404(user_client, other_user):
    theirs = TrainingJobFactory(owner=other_user)
    for url in (series_url(theirs), poll_url(theirs, after=-1)):
        assert user_client.get(url).status_code == 404
    assert user_client.get("/jobs/999999/series/").status_code == 404
    assert user_client.get("/jobs/999999/poll/?after=-1").status_code == 404


def test_staff_may_chart_anyones_job(client, staff_user, running):
    client.force_login(staff_user)
    assert client.get(series_url(running)).status_code == 200


def test_anonymous_users_are_sent_to_log_in(client, running):
    response = client.get(series_url(running))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_series_and_poll_answer_get_only(user_client, running):
    assert user_client.post(series_url(running)).status_code == 405
    assert user_client.post(poll_url(running, after=-1)).status_code == 405


# --- poll -------------------------------------------------------------------------------------


def test_poll_sends_only_the_new_points_and_the_figures_as_json(user_client, running):
    job = points_write(running, range(10), losses=np.arange(10, 0, -1))
    response = user_client.get(poll_url(job, after=6, status="running"))
    assert (response.status_code, response["Content-Type"]) == (200, "application/json")
    data = response.json()
    assert data["steps"] == [7, 8, 9]
    assert data["loss"] == [3.0, 2.0, 1.0]
    assert data["last_step"] == 9
    assert data["catch_up"] is False
    assert (data["status"], data["terminal"]) == ("running", False)
    # The cards' figures as the page writes them; no partial (and no header: unchanged
    # status, the buttons keep their focus).
    assert data["figures"] == job_live_figures(job)
    assert data["figures"]["texts"]["last_loss"] == "1.0000"
    assert data["figures"]["bar"]["aria-valuenow"] == "10"
    assert rendered(response) == set()
    assert "HX-Trigger" not in response


def test_poll_resends_the_header_when_the_status_changed(user_client, running):
    job = points_write(running, range(10))
    html = user_client.get(poll_url(job, after=9, status="paused")).content.decode()
    assert re.search(r'id="job-header"[^>]*hx-swap-oob="true"', html)
    assert "badge-running" in html


def test_poll_with_nothing_new_keeps_the_clients_last_step(user_client, running):
    job = points_write(running, range(10))
    data = poll_data(user_client.get(poll_url(job, after=9)))
    assert (data["steps"], data["last_step"], data["total"]) == ([], 9, 0)


def test_poll_json_cannot_break_out_of_its_script_element(user_client, user):
    # A status change: the JSON travels in #poll-data, beside the partials.
    job = TrainingJobFactory(owner=user, name="</script><b>x</b>", status=Status.PAUSED)
    response = user_client.get(poll_url(job, after=-1, status="running"))
    match = POLL_DATA.search(response.content.decode())
    assert "</script>" not in match.group(1)
    assert "<b>" not in response.content.decode()


def test_a_client_far_behind_gets_a_catch_up(user_client, running):
    job = points_write(running, range(5000))
    data = poll_data(user_client.get(poll_url(job, after=-1)))
    assert data["catch_up"] is True
    assert data["total"] == 5000
    assert data["shown"] <= 2000
    assert data["steps"][0] == 0 and data["last_step"] == 4999


@pytest.mark.parametrize(
    "query",
    ["", "after=", "after=abc", "after=1.5", "after=-2", "after=3&status=bogus"],
)
def test_poll_rejects_bad_parameters(user_client, running, query):
    response = user_client.get(reverse("metrics:poll", args=[running.pk]) + "?" + query)
    assert response.status_code == 400
    assert response.content  # a message saying what is wrong


def test_a_finished_job_answers_286_with_its_final_points(user_client, user):
    job = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=20)
    job = points_write(job, range(20))  # the last step completes a simulated job
    assert job.status == Status.COMPLETED
    response = user_client.get(poll_url(job, after=14, status="running"))
    assert response.status_code == 286
    data = poll_data(response)
    assert data["steps"] == [15, 16, 17, 18, 19]
    assert (data["status"], data["terminal"]) == ("completed", True)
    assert 'id="job-progress"' in response.content.decode()
    assert json.loads(response["HX-Trigger"]) == {
        "toast": {"message": f"{job.name} completed", "level": "success"}
    }


def test_a_failure_toast_carries_the_reason(user_client, running):
    job_fail(job=running, reason="out of memory")
    response = user_client.get(poll_url(running, after=-1, status="running"))
    assert response.status_code == 286
    toast = json.loads(response["HX-Trigger"])["toast"]
    assert toast == {"message": f"{running.name} failed: out of memory", "level": "error"}


def test_a_status_change_toasts_once_the_client_knows_it(user_client, running):
    job_pause(job=running)
    changed = user_client.get(poll_url(running, after=-1, status="running"))
    assert changed.status_code == 200  # paused jobs may resume: keep polling
    assert json.loads(changed["HX-Trigger"])["toast"]["message"] == f"{running.name} paused"
    same = user_client.get(poll_url(running, after=-1, status="paused"))
    assert "HX-Trigger" not in same
    unknown = user_client.get(poll_url(running, after=-1))
    assert "HX-Trigger" not in unknown


def test_poll_query_count_does_not_grow_with_points(user_client, user, django_assert_num_queries):
    small = points_write(
        TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=1000), range(10)
    )
    large = points_write(
        TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=1000), range(5000)
    )
    with CaptureQueriesContext(connection) as baseline:
        assert len(poll_data(user_client.get(poll_url(small, after=-1)))["steps"]) == 10
    metric_queries = [q for q in baseline.captured_queries if "trainingmetric" in q["sql"]]
    assert len(metric_queries) == 1
    for after in (-1, 4000, 4998):  # catch-up, a full page, one point
        with django_assert_num_queries(len(baseline.captured_queries)):
            user_client.get(poll_url(large, after=after))


def test_series_query_count_does_not_grow_with_points(user_client, user, django_assert_num_queries):
    small = points_write(TrainingJobFactory(owner=user), range(10))
    large = points_write(
        TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=1000), range(5000)
    )
    with CaptureQueriesContext(connection) as baseline:
        user_client.get(series_url(small))
    with django_assert_num_queries(len(baseline.captured_queries)):
        user_client.get(series_url(large, max_points=100))


# --- the charts partial -----------------------------------------------------------------------


def test_charts_partial_exposes_the_dom_contract(rf, running):
    request = rf.get("/")
    request.user = running.owner
    html = render_to_string("metrics/_charts.html", {"job": running}, request=request)
    assert 'id="charts"' in html and 'data-point-count="0"' in html
    assert f'data-series-url="{reverse("metrics:series", args=[running.pk])}"' in html
    assert 'id="live-toggle"' in html and 'id="points-note"' in html
    assert 'id="poll-data"' in html
    assert f'hx-get="{reverse("metrics:poll", args=[running.pk])}"' in html
    assert 'hx-swap="none"' in html
    assert reverse("metrics:export_csv", args=[running.pk]) in html
    assert reverse("metrics:export_json", args=[running.pk]) in html
    for canvas in ("chart-loss", "chart-accuracy", "chart-lr"):
        assert f'<canvas id="{canvas}"' in html


def test_charts_take_their_figures_from_the_server(user_client, running, settings):
    settings.TRAINMON_POLL_SECONDS = 7
    html = user_client.get(running.get_absolute_url()).content.decode()
    assert f'data-max-points="{SERIES_MAX_POINTS}"' in html
    # Gated by charts.js (htmx:beforeRequest), not by an hx-trigger filter, which needs eval.
    assert 'hx-trigger="every 7s, charts-poll-now"' in html


def test_a_finished_jobs_charts_do_not_poll(rf, user):
    job = TrainingJobFactory(owner=user, status=Status.COMPLETED)
    request = rf.get("/")
    request.user = user
    html = render_to_string("metrics/_charts.html", {"job": job}, request=request)
    assert "hx-get" not in html
    assert re.search(r'id="live-toggle"[^>]*disabled', html)


# --- compare ----------------------------------------------------------------------------------


def compare(client, query):
    return client.get(reverse("metrics:compare") + "?" + query)


def compare_data(response) -> list[dict]:
    match = re.search(
        r'<script id="compare-data" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    return json.loads(match.group(1))


@pytest.fixture
def two_runs(user):
    first = TrainingJobFactory(owner=user, hyperparameters={"lr": 0.1, "batch": 32, "opt": "sgd"})
    second = TrainingJobFactory(owner=user, hyperparameters={"lr": 0.01, "batch": 32})
    points_write(first, range(10), losses=np.linspace(2, 1, 10))
    points_write(second, range(5), losses=np.linspace(3, 2, 5))
    first.refresh_from_db()
    second.refresh_from_db()
    return first, second


@pytest.mark.parametrize("style", ["comma", "repeated"])
def test_compare_overlays_the_jobs_in_the_order_asked(user_client, two_runs, style):
    first, second = two_runs
    query = (
        f"jobs={second.pk},{first.pk}" if style == "comma" else f"jobs={second.pk}&jobs={first.pk}"
    )
    response = compare(user_client, query)
    assert response.status_code == 200
    data = compare_data(response)
    assert [job["id"] for job in data] == [second.pk, first.pk]
    assert data[1]["steps"] == list(range(10)) and data[1]["total"] == 10
    assert data[0]["name"] == second.name
    assert len({job["colour"] for job in data}) == 2
    html = response.content.decode()
    assert html.index(second.name) < html.index(first.name)


def test_compare_table_highlights_differing_hyperparameters(user_client, two_runs):
    first, second = two_runs
    html = compare(user_client, f"jobs={first.pk},{second.pk}").content.decode()
    header = re.search(r"<thead>(.*?)</thead>", html, re.S).group(1)
    assert re.search(r'<th scope="col" class="differs"[^>]*>lr</th>', header)
    assert re.search(r'<th scope="col" class="differs"[^>]*>opt</th>', header)  # missing in one
    assert re.search(r'<th scope="col">batch</th>', header)  # the same in both
    first_row = re.search(rf'<tr data-job-id="{first.pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="differs"><code>0.1</code></td>' in first_row
    assert "<td><code>32</code></td>" in first_row
    assert f"{first.best_loss:.4f}" in first_row and f"{first.last_loss:.4f}" in first_row
    second_row = re.search(rf'<tr data-job-id="{second.pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="differs"><code>—</code></td>' in second_row


def test_compare_skips_jobs_that_are_not_yours_and_says_so(user_client, two_runs, other_user):
    first, _ = two_runs
    theirs = TrainingJobFactory(owner=other_user, name="secret-run")
    response = compare(user_client, f"jobs={first.pk},{theirs.pk},999999")
    assert response.status_code == 200
    assert [job["id"] for job in compare_data(response)] == [first.pk]
    html = response.content.decode()
    assert "secret-run" not in html
    assert f"#{theirs.pk}" in html and "#999999" in html


def test_compare_with_nothing_visible_is_404(user_client, other_user):
    theirs = TrainingJobFactory(owner=other_user)
    assert compare(user_client, f"jobs={theirs.pk}").status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("jobs=1,abc", "is not a job id"),
        ("jobs=-3", "is not a job id"),
        ("jobs=0", "is not a job id"),
        ("", "Choose at least one job"),
        ("jobs=,", "Choose at least one job"),
        ("jobs=" + ",".join(str(i) for i in range(1, COMPARE_MAX_JOBS + 2)), "at most"),
    ],
)
def test_compare_rejects_bad_ids_with_a_clear_page(user_client, query, message):
    response = compare(user_client, query)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert f"Tick up to {COMPARE_MAX_JOBS} jobs" in response.content.decode()


def test_compare_queries_are_bounded_by_the_job_count(
    user_client, user, django_assert_max_num_queries
):
    jobs = [
        points_write(
            TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=1000), range(n)
        )
        for n in (10, 3000, 5000)
    ]
    # session, user, the jobs, then one series query per job
    with django_assert_max_num_queries(3 + len(jobs)):
        response = compare(user_client, "jobs=" + ",".join(str(job.pk) for job in jobs))
    assert all(job["steps"][-1] == job["total"] - 1 for job in compare_data(response))


def test_series_colours_are_stable_and_distinct_on_a_page():
    assert series_colours([3, 11]) == {3: 3, 11: 4}  # 11 % 8 == 3 is taken by the lower id
    assert series_colours([11])[11] == 3
    many = series_colours(list(range(100, 108)))
    assert sorted(many.values()) == list(range(8))


# --- named series: series?keys=, keys/, poll?cursor= ------------------------------------------


def named_write(job, points) -> TrainingJob:
    """Store named points (name, step, value[, unix time]) through the real write path."""
    rows = [(p[0], p[1], p[2], p[3] if len(p) > 3 else time.time()) for p in points]
    with transaction.atomic():
        (locked,) = jobs_lock([job.pk])
        metric_batches_write(
            [(locked, MetricBatch.empty())], named={job.pk: NamedBatch.from_points(rows)}
        )
    job.refresh_from_db()
    return job


def keys_url(job):
    return reverse("metrics:keys", args=[job.pk])


@pytest.fixture
def external(user):
    return TrainingJobFactory(
        owner=user, source=TrainingJob.Source.EXTERNAL, total_epochs=100, steps_per_epoch=1000
    )


def test_series_of_named_keys_draws_nan_as_a_gap(user_client, external):
    job = named_write(
        external,
        [
            ("val/loss", 0, 1.0, 1000.0),
            ("val/loss", 1, math.nan, 1001.0),
            ("val/loss", 2, 0.5, 1002.5),
        ]
        + [("train/loss", step, 2.0 - step / 10, 1000.0 + step) for step in range(5)],
    )
    response = user_client.get(series_url(job, keys="val/loss,missing"))
    assert response.status_code == 200
    body = response.json()
    assert body["cursor"] == job.ingest_seq > 0
    assert set(body["keys"]) == {"val/loss", "missing"}  # only the keys asked for
    val = body["keys"]["val/loss"]
    assert (val["steps"], val["values"]) == ([0, 1, 2], [1.0, None, 0.5])
    assert val["times"] == pytest.approx([1000.0, 1001.0, 1002.5], abs=0.01)
    assert (val["total"], val["shown"]) == (3, 3)
    assert body["keys"]["missing"]["steps"] == [] and body["keys"]["missing"]["total"] == 0


def test_series_of_a_long_key_is_downsampled(user_client, external):
    job = named_write(external, [("grad_norm", step, float(step % 7)) for step in range(5000)])
    val = user_client.get(series_url(job, keys="grad_norm", max_points=100)).json()["keys"]
    assert val["grad_norm"]["total"] == 5000
    assert 50 <= val["grad_norm"]["shown"] <= 100
    assert val["grad_norm"]["steps"] == sorted(val["grad_norm"]["steps"])


@pytest.mark.parametrize(
    ("asked", "at_most"), [("1", 10), ("451", 451), ("999999", 10_000)], ids=str
)
def test_named_series_take_the_pages_points_budget_within_bounds(
    user_client, external, asked, at_most
):
    """charts.js asks for fewer points per named chart than for the headline chart."""
    steps = range(12_000)
    job = named_write(external, [(name, step, float(step % 5)) for name in "ab" for step in steps])
    body = user_client.get(series_url(job, keys="a,b", max_points=asked)).json()
    for name in "ab":
        assert body["keys"][name]["total"] == 12_000
        assert at_most // 2 <= body["keys"][name]["shown"] <= at_most
        assert body["keys"][name]["steps"][-1] == 11_999


@pytest.mark.parametrize("bad", ["abc", "1.5", "-", "1e3"])
def test_named_series_refuse_a_bad_points_budget(user_client, external, bad):
    job = named_write(external, [("a", 0, 1.0)])
    response = user_client.get(series_url(job, keys="a", max_points=bad))
    assert response.status_code == 400
    assert "max_points must be an integer" in response.json()["error"]


def test_series_refuses_too_many_keys(user_client, external):
    names = ",".join(f"k{i}" for i in range(MAX_KEYS_PER_REQUEST + 1))
    response = user_client.get(series_url(external, keys=names))
    assert response.status_code == 400
    assert str(MAX_KEYS_PER_REQUEST) in response.json()["error"]


def test_a_huge_keys_list_is_refused_without_reading_it_all(user_client, external):
    names = ",".join(f"k{i}" for i in range(200_000))
    started = time.monotonic()
    assert user_client.get(series_url(external, keys=names)).status_code == 400
    assert user_client.get(poll_url(external, cursor=0, keys=names)).status_code == 400
    assert time.monotonic() - started < 5  # a list scanned per name would be quadratic


def test_keys_lists_every_key_with_its_stats(user_client, external):
    job = named_write(
        external,
        [("val_loss", 3, 0.7), ("val_loss", 9, math.nan), ("loss", 1, 2.0), ("loss", 2, 1.5)],
    )
    response = user_client.get(keys_url(job))
    assert response.status_code == 200
    body = response.json()
    assert body["cursor"] == job.ingest_seq
    assert body["keys"] == [
        {
            "key": "loss",
            "count": 2,
            "first_step": 1,
            "last_step": 2,
            "last": 1.5,
            "min": 1.5,
            "max": 2.0,
        },
        {
            "key": "val_loss",
            "count": 2,
            "first_step": 3,
            "last_step": 9,
            "last": None,
            "min": 0.7,
            "max": 0.7,
        },
    ]


def test_keys_of_another_users_job_are_404(user_client, other_user):
    theirs = TrainingJobFactory(owner=other_user)
    assert user_client.get(keys_url(theirs)).status_code == 404
    assert user_client.get(series_url(theirs, keys="a")).status_code == 404
    assert user_client.get(poll_url(theirs, cursor=0, keys="a")).status_code == 404


def test_poll_by_cursor_sends_what_was_ingested_since_for_the_keys_asked(user_client, external):
    job = named_write(external, [("a", 0, 1.0), ("b", 0, 1.0)])
    cursor = job.ingest_seq
    job = named_write(job, [("a", 1, 2.0), ("b", 1, 2.0), ("c", 5, 3.0)])
    data = poll_data(user_client.get(poll_url(job, cursor=cursor, keys="a,c", status="running")))
    assert data["cursor"] == job.ingest_seq > cursor
    assert set(data["keys"]) == {"a", "c"}  # b changed too, but no chart asked for it
    assert (data["keys"]["a"]["steps"], data["keys"]["a"]["values"]) == ([1], [2.0])
    assert data["new_keys"] == ["c"]
    assert data["reload"] is False
    assert data["headline"]["steps"] == []
    assert (data["status"], data["terminal"]) == ("running", False)
    # Up to date: nothing.
    again = poll_data(user_client.get(poll_url(job, cursor=data["cursor"], keys="a,c")))
    assert (again["keys"], again["new_keys"], again["cursor"]) == ({}, [], data["cursor"])


def test_poll_by_cursor_carries_late_points(user_client, running):
    job = points_write(running, range(10, 20))
    job = named_write(job, [("val/loss", step, 1.0) for step in range(10, 20)])
    cursor = job.ingest_seq
    # A retried batch lands behind what the chart shows.
    job = points_write(job, range(0, 5))
    job = named_write(job, [("val/loss", step, 0.5) for step in (2, 4, 6)])
    data = poll_data(user_client.get(poll_url(job, cursor=cursor, keys="val/loss")))
    assert data["headline"]["steps"] == [0, 1, 2, 3, 4]
    assert len(data["headline"]["times"]) == 5
    assert data["keys"]["val/loss"]["steps"] == [2, 4, 6]
    assert data["reload"] is False


def test_poll_by_cursor_from_the_future_asks_for_a_reload(user_client, external):
    job = named_write(external, [("a", 0, 1.0)])
    data = poll_data(user_client.get(poll_url(job, cursor=job.ingest_seq + 5, keys="a")))
    assert data["reload"] is True
    assert data["cursor"] == job.ingest_seq


@pytest.mark.parametrize("huge", [str(2**63), str(10**30)])
def test_poll_takes_a_cursor_or_step_beyond_any_without_error(user_client, external, huge):
    job = named_write(external, [("a", 0, 1.0)])
    data = poll_data(user_client.get(poll_url(job, cursor=huge, keys="a")))
    assert (data["reload"], data["cursor"]) == (True, job.ingest_seq)
    data = poll_data(user_client.get(poll_url(job, after=huge)))
    assert data["steps"] == []


@pytest.mark.parametrize("query", ["cursor=", "cursor=abc", "cursor=-1", "cursor=1.5"])
def test_poll_rejects_a_bad_cursor(user_client, running, query):
    response = user_client.get(reverse("metrics:poll", args=[running.pk]) + "?" + query)
    assert response.status_code == 400
    assert b"cursor" in response.content


@pytest.mark.parametrize("position", ["", "abc", "-1"])
def test_poll_rejects_a_bad_progress_position(user_client, running, position):
    response = user_client.get(poll_url(running, cursor=0, progress_seq=position))
    assert response.status_code == 400
    assert b"progress_seq" in response.content


def test_poll_by_cursor_of_a_finished_job_answers_286(user_client, user):
    job = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=20)
    cursor = job.ingest_seq
    job = points_write(job, range(20))
    response = user_client.get(poll_url(job, cursor=cursor, keys="", status="running"))
    assert response.status_code == 286
    data = poll_data(response)
    assert data["headline"]["steps"] == list(range(20))
    assert data["terminal"] is True


def test_poll_by_cursor_query_count_does_not_grow_with_keys(
    user_client, external, django_assert_num_queries
):
    job = named_write(external, [("a", 0, 1.0)])
    cursor = job.ingest_seq
    job = named_write(job, [(f"k{i}", step, 1.0) for i in range(20) for step in range(50)])
    job = points_write(job, range(5))
    keys = ",".join(f"k{i}" for i in range(20))
    # session, user, job, then one statement: the ingest log and its ranges' points
    with django_assert_num_queries(4):
        response = user_client.get(poll_url(job, cursor=cursor, keys=keys, status="running"))
    data = response.json()
    assert all(len(data["keys"][f"k{i}"]["steps"]) == 50 for i in range(20))
    assert data["headline"]["steps"] == [0, 1, 2, 3, 4]


def test_charts_partial_offers_named_keys_filter_and_time_axis(rf, running):
    request = rf.get("/")
    request.user = running.owner
    html = render_to_string("metrics/_charts.html", {"job": running}, request=request)
    assert f'data-keys-url="{reverse("metrics:keys", args=[running.pk])}"' in html
    assert 'id="key-filter"' in html and 'id="key-sections"' in html
    assert re.search(r'<select id="x-axis">\s*<option value="step" selected>', html)
    assert '<option value="time">' in html
    assert "style=" not in html and "<script>" not in html  # the CSP allows neither


# --- a poll renders only what changed --------------------------------------------------------


def rendered(response) -> set[str]:
    return {template.name for template in response.templates}


def job_reads(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "jobs_trainingjob" in q["sql"]]


def test_an_up_to_date_poll_answers_204_without_rendering_or_reading_points(user_client, external):
    job = named_write(external, [("a", 0, 1.0)])
    with CaptureQueriesContext(connection) as queries:
        response = user_client.get(poll_url(job, cursor=job.ingest_seq, keys="a", status="running"))
    # htmx 2 swaps nothing on a 204 and keeps polling.
    assert (response.status_code, response.content) == (204, b"")
    assert rendered(response) == set()
    assert "HX-Trigger" not in response
    assert "no-cache" in response["Cache-Control"]
    assert len(job_reads(queries)) == 1  # the job's live fields, nothing else
    assert not [q for q in queries.captured_queries if "metrics_" in q["sql"]]


def test_an_up_to_date_poll_by_step_answers_204(user_client, running):
    job = points_write(running, range(10))
    response = user_client.get(poll_url(job, after=9, status="running"))
    assert (response.status_code, response.content) == (204, b"")


def test_a_poll_with_news_renders_nothing_and_sends_the_figures(user_client, external):
    cursor = external.ingest_seq
    job = points_write(external, range(5))
    response = user_client.get(poll_url(job, cursor=cursor, keys="", status="running"))
    assert (response.status_code, response["Content-Type"]) == (200, "application/json")
    data = response.json()
    assert data["headline"]["steps"] == [0, 1, 2, 3, 4]
    assert data["figures"] == job_live_figures(job)
    assert data["figures"]["ingest_seq"] == job.ingest_seq
    assert rendered(response) == set()


def test_the_polls_figures_are_the_pages_texts(user_client, external):
    """The page's cards and the poll's JSON say the same, written once (jobs.live_figures):
    each data-figure element of a freshly loaded page holds the text the poll sends for it."""
    cursor = external.ingest_seq
    job = points_write(external, range(5), losses=[0.5, 0.25, 0.125, 0.3, 0.2])
    page = user_client.get(job.get_absolute_url()).content.decode()
    on_page = dict(re.findall(r'data-figure="(\w+)"[^>]*>([^<]*)<', page))
    texts = poll_data(user_client.get(poll_url(job, cursor=cursor, keys="", status="running")))
    assert on_page == texts["figures"]["texts"]
    assert on_page["best_loss"] == "0.1250" and on_page["best_loss_step"] == "at step 2"
    bar = re.search(r'<div [^>]*role="progressbar"[^>]*>', page).group(0)
    for name, value in texts["figures"]["bar"].items():
        assert (f' {name}="{value}"' in bar) is (value is not None), name


def test_a_status_change_alone_reaches_the_page(user_client, running):
    job = points_write(running, range(10))
    job_pause(job=job)
    # The page is up to date with the points but still shows "running".
    with CaptureQueriesContext(connection) as queries:
        response = user_client.get(poll_url(job, cursor=job.ingest_seq, keys="", status="running"))
    assert response.status_code == 200
    assert (poll_data(response)["status"], poll_data(response)["cursor"]) == (
        "paused",
        job.ingest_seq,
    )
    html = response.content.decode()
    assert re.search(r'id="job-header"[^>]*hx-swap-oob="true"', html)
    assert 'data-status="paused"' in html
    assert json.loads(response["HX-Trigger"])["toast"]["message"] == f"{job.name} paused"
    # One read of the live partials' fields: none of the fields they show loads on its own.
    assert len(job_reads(queries)) == 1
    # Once the page shows it, the next poll is empty again.
    again = user_client.get(poll_url(job, cursor=job.ingest_seq, keys="", status="paused"))
    assert again.status_code == 204


def test_figures_older_than_the_charts_cursor_are_sent_again(user_client, running):
    shown = running.ingest_seq  # the page rendered its progress here...
    job = points_write(running, range(10))  # ...and fetched its charts' series after this
    url = poll_url(job, cursor=job.ingest_seq, keys="", status="running", progress_seq=shown)
    response = user_client.get(url)
    assert response.status_code == 200
    data = response.json()
    assert data["headline"]["steps"] == []  # the charts have every point
    assert data["figures"]["ingest_seq"] == job.ingest_seq
    assert data["figures"]["texts"]["progress_steps"] == "step 10 / 100,000"
    assert rendered(response) == set()
    current = poll_url(
        job, cursor=job.ingest_seq, keys="", status="running", progress_seq=job.ingest_seq
    )
    assert user_client.get(current).status_code == 204


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_a_finished_job_stops_polling_even_when_the_page_is_up_to_date(user_client, user, status):
    job = TrainingJobFactory(owner=user, status=status)
    response = user_client.get(poll_url(job, cursor=job.ingest_seq, keys="", status=status))
    assert response.status_code == 286  # htmx 2 stops polling
    assert poll_data(response)["terminal"] is True
    assert poll_data(response)["figures"] == job_live_figures(job)


def test_an_up_to_date_poll_of_another_users_job_is_404(user_client, other_user):
    theirs = TrainingJobFactory(owner=other_user)
    url = poll_url(theirs, cursor=theirs.ingest_seq, keys="", status="running")
    assert user_client.get(url).status_code == 404


def test_staff_polls_of_another_users_job_are_up_to_date_too(staff_client, other_user):
    theirs = TrainingJobFactory(owner=other_user)
    url = poll_url(theirs, cursor=theirs.ingest_seq, keys="", status="running")
    assert staff_client.get(url).status_code == 204


def test_a_logged_out_session_stops_polling_at_once(client, user):
    job = TrainingJobFactory(owner=user)
    url = poll_url(job, cursor=job.ingest_seq, keys="", status="running")
    client.force_login(user)
    assert client.get(url).status_code == 204
    client.post(reverse("logout"))
    response = client.get(url, headers={"HX-Request": "true"})
    assert response.status_code == 200 and "HX-Redirect" in response  # to the login page


# --- compare: any key the jobs share ---------------------------------------------------------


@pytest.fixture
def two_named_runs(two_runs):
    first, second = two_runs
    named_write(
        first,
        [("val/loss", 0, 0.9), ("val/loss", 5, 0.4), ("val/loss", 9, 0.6), ("only_first", 1, 1.0)],
    )
    named_write(second, [("val/loss", 0, 1.2), ("val/loss", 4, 0.8), ("grad", 1, 1.0)])
    return first, second


def test_compare_picker_lists_the_keys_every_job_has(user_client, two_named_runs):
    first, second = two_named_runs
    html = compare(user_client, f"jobs={first.pk},{second.pk}").content.decode()
    picker = re.search(r'<select id="compare-key" name="key">(.*?)</select>', html, re.S).group(1)
    assert re.findall(r'<option value="([^"]*)"', picker) == ["", "val/loss"]
    assert re.search(r'<option value="" selected>loss \(headline\)', picker)
    assert f'name="jobs" value="{first.pk},{second.pk}"' in html


def test_compare_overlays_the_chosen_key_with_last_and_best(user_client, two_named_runs):
    first, second = two_named_runs
    response = compare(user_client, f"jobs={first.pk},{second.pk}&key=val/loss")
    assert response.status_code == 200
    data = compare_data(response)
    assert [(job["steps"], job["values"]) for job in data] == [
        ([0, 5, 9], [0.9, 0.4, 0.6]),
        ([0, 4], [1.2, 0.8]),
    ]
    html = response.content.decode()
    assert re.search(r'<option value="val/loss" selected>', html)
    assert '<th scope="col">Best val/loss</th>' in html
    first_row = re.search(rf'<tr data-job-id="{first.pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num" data-column="best">0.4000</td>' in first_row
    assert '<td class="num" data-column="last">0.6000</td>' in first_row
    second_row = re.search(rf'<tr data-job-id="{second.pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num" data-column="best">0.8000</td>' in second_row


def test_compare_a_key_some_jobs_lack_shows_them_empty(user_client, two_named_runs):
    first, second = two_named_runs
    response = compare(user_client, f"jobs={first.pk},{second.pk}&key=only_first")
    data = compare_data(response)
    assert data[0]["steps"] == [1] and data[1]["steps"] == []
    html = response.content.decode()
    second_row = re.search(rf'<tr data-job-id="{second.pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num" data-column="best">—</td>' in second_row
    assert re.search(r'<option value="only_first" selected>', html)


def test_compare_rejects_a_bad_key_name(user_client, two_runs):
    first, _ = two_runs
    response = compare(user_client, f"jobs={first.pk}&key=bad%0Aname")
    assert response.status_code == 400
    assert "is not a metric key name" in response.content.decode()


def test_compare_of_a_key_queries_are_bounded_by_the_job_count(
    user_client, user, django_assert_max_num_queries
):
    jobs = [
        named_write(
            TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=1000),
            [("val/loss", step, 1.0) for step in range(n)],
        )
        for n in (10, 3000)
    ]
    # session, user, the jobs (with their key names), the keys, then one series per job
    with django_assert_max_num_queries(4 + len(jobs)):
        response = compare(
            user_client, "jobs=" + ",".join(str(job.pk) for job in jobs) + "&key=val/loss"
        )
    assert [job["total"] for job in compare_data(response)] == [10, 3000]
