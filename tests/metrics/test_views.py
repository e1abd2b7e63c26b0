from __future__ import annotations

import json
import re

import numpy as np
import pytest
from django.db import connection
from django.template.loader import render_to_string
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from jobs.models import TrainingJob
from jobs.services import job_fail, job_pause
from metrics.series import SERIES_MAX_POINTS
from metrics.views import COMPARE_MAX_JOBS, series_colours
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
    assert response.json() == {
        "steps": [0, 1, 2, 3, 4],
        "loss": [5.0, 4.0, 3.0, 2.0, 1.0],
        "accuracy": [None, 0.2, 0.3, 0.4, 0.5],
        "learning_rate": [1e-3] * 5,
        "total": 5,
        "shown": 5,
        "last_step": 4,
        "status": "running",
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


def test_poll_sends_only_the_new_points_and_the_partials_out_of_band(user_client, running):
    job = points_write(running, range(10), losses=np.arange(10, 0, -1))
    response = user_client.get(poll_url(job, after=6, status="running"))
    assert response.status_code == 200
    data = poll_data(response)
    assert data["steps"] == [7, 8, 9]
    assert data["loss"] == [3.0, 2.0, 1.0]
    assert data["last_step"] == 9
    assert data["catch_up"] is False
    assert (data["status"], data["terminal"]) == ("running", False)
    html = response.content.decode()
    for element_id in ("job-progress", "job-stats"):
        assert re.search(rf'id="{element_id}"[^>]*hx-swap-oob="true"', html), element_id
    assert 'id="job-header"' not in html  # unchanged status: the buttons keep their focus
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
