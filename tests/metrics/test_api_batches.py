"""POST .../metrics/ with the batch as columns (metrics/api_batches.py): the rules and
errors of the row shape, located by column and index."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.models import TrainingJob
from metrics.api_batches import HEADLINE_ONLY, NEEDS_A_VALUE
from metrics.models import MetricKey, NamedMetric
from tests.metrics.test_api import assert_error, named_values, stored_steps
from tests.support.api import Api
from tests.support.factories import TrainingJobFactory

pytestmark = pytest.mark.django_db

FIELDS = ("epoch", "loss", "accuracy", "learning_rate", "timestamp")


def as_columns(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Row-shaped points as the column body: null where a point leaves a field out."""
    columns: dict[str, Any] = {"step": [point["step"] for point in points]}
    for field in FIELDS:
        if any(field in point for point in points):
            columns[field] = [point.get(field) for point in points]
    metrics: dict[str, list[Any]] = {}
    for index, point in enumerate(points):
        for name, value in (point.get("metrics") or {}).items():
            metrics.setdefault(name, [None] * len(points))[index] = value
    if metrics:
        columns["metrics"] = metrics
    return {"columns": columns}


def post(api: Api, job: TrainingJob, body: dict[str, Any]):
    return api.post(f"/jobs/{job.pk}/metrics/", body)


def three(**columns: Any) -> dict[str, Any]:
    """Steps 0, 1, 2 with losses and the given columns (replacing the defaults)."""
    return {"columns": {"step": [0, 1, 2], "epoch": [1, 1, 1], "loss": [2.0, 1.5, 1.0]} | columns}


def test_columns_round_trip_through_the_api(api, ext_job):
    body = {
        "columns": {
            "step": [0, 1, 2, 3],
            "loss": [2.0, 1.5, None, 1.0],
            "accuracy": [0.25, None, None, 0.75],
            "learning_rate": [0.1, 0.1, None, 0.05],
            "metrics": {
                "train/grad_norm": [1.5, 1.25, None, 1.0],
                "val_loss": [None, None, 2.1, None],
                "val/acc": [None, None, "NaN", None],
            },
            "timestamp": [None, None, 1_700_000_000.5, None],
        }
    }
    response = post(api, ext_job, body)
    assert response.status_code == 200, response.content
    reply = response.json()
    assert (reply["created"], reply["duplicates"], reply["discarded"]) == (3, 0, 0)
    assert (reply["named_created"], reply["named_duplicates"]) == (5, 0)
    assert reply["job"]["current_step"] == 4

    series = api.get(f"/jobs/{ext_job.pk}/metrics/").json()
    assert series["steps"] == [0, 1, 3]
    assert series["loss"] == [2.0, 1.5, 1.0]
    assert series["accuracy"] == [0.25, None, 0.75]
    assert series["learning_rate"] == [0.1, 0.1, 0.05]
    keys = api.get(f"/jobs/{ext_job.pk}/metrics/", keys="train/grad_norm,val_loss,val/acc")
    keys = keys.json()["keys"]
    assert (keys["train/grad_norm"]["steps"], keys["train/grad_norm"]["values"]) == (
        [0, 1, 3],
        [1.5, 1.25, 1.0],
    )
    assert (keys["val_loss"]["steps"], keys["val_loss"]["values"]) == ([2], [2.1])
    assert (keys["val/acc"]["steps"], keys["val/acc"]["values"]) == ([2], [None])  # a gap
    # The epoch was derived from the step; the timestamp is the point's wall clock.
    assert set(ext_job.metrics.values_list("epoch", flat=True)) == {1}
    reported = NamedMetric.objects.get(key__name="val_loss").reported_at
    assert reported.timestamp() == pytest.approx(1_700_000_000.5)


def test_the_same_columns_twice_are_stored_once(api, ext_job):
    body = as_columns(
        [{"step": step, "loss": 1.0 / (step + 1), "metrics": {"a": step}} for step in range(10)]
    )
    first = post(api, ext_job, body).json()
    second = post(api, ext_job, body).json()
    assert (first["created"], first["named_created"]) == (10, 10)
    assert (second["created"], second["duplicates"]) == (0, 10)
    assert (second["named_created"], second["named_duplicates"]) == (0, 10)
    assert stored_steps(ext_job) == list(range(10))
    assert NamedMetric.objects.count() == 10
    assert second["job"]["current_step"] == first["job"]["current_step"] == 10


def test_one_bad_value_in_a_column_writes_nothing(api, user):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=2000)
    count = 2000
    accuracy: list[Any] = [0.5] * count
    accuracy[1234] = 1.5
    body = {
        "columns": {
            "step": list(range(count)),
            "loss": [1.0] * count,
            "accuracy": accuracy,
            "metrics": {"a": [1.0] * count},
        }
    }
    error = assert_error(post(api, job, body), 400)
    assert error == {
        "error": "1 invalid point(s): nothing was stored.",
        "details": [
            {
                "field": "columns.accuracy[1234]",
                "message": "Input should be less than or equal to 1",
                "index": 1234,
            }
        ],
    }
    assert not job.metrics.exists()
    assert not MetricKey.objects.exists()
    job.refresh_from_db()
    assert (job.current_step, job.last_reported_at) == (0, None)


@pytest.mark.parametrize(
    ("columns", "field", "message"),
    [
        ({"step": [0, "1", 2]}, "columns.step[1]", "Input should be a valid integer"),
        ({"step": [0, 1.0, 2]}, "columns.step[1]", "Input should be a valid integer"),
        ({"step": [0, None, 2]}, "columns.step[1]", "Input should be a valid integer"),
        ({"step": [0, -1, 2]}, "columns.step[1]", "Input should be greater than or equal to 0"),
        ({"step": [0, 2**64, 2]}, "columns.step[1]", "Input should be less than or equal to"),
        ({"epoch": [1, 0, 1]}, "columns.epoch[1]", "Input should be greater than or equal to 1"),
        ({"epoch": [1, True, 1]}, "columns.epoch[1]", "Input should be a valid integer"),
        ({"loss": [1.0, "nan", 1.0]}, "columns.loss[1]", "A loss must be a number, or one"),
        ({"loss": [1.0, [1], 1.0]}, "columns.loss[1]", "Input should be a valid number"),
        ({"loss": [1.0, 10**400, 1.0]}, "columns.loss[1]", "Input should be a valid number"),
        ({"accuracy": [0, -0.1, 0]}, "columns.accuracy[1]", "Input should be greater than"),
        ({"accuracy": [0, "NaN", 0]}, "columns.accuracy[1]", "Input should be a valid number"),
        ({"learning_rate": [0, -1e-9, 0]}, "columns.learning_rate[1]", "Input should be greater"),
        ({"timestamp": [0, -1, 0]}, "columns.timestamp[1]", "Input should be greater"),
        ({"metrics": {"a": [1, "nan", 1]}}, "columns.metrics.a[1]", "A value must be a number"),
        ({"metrics": {"a": [1, True, 1]}}, "columns.metrics.a[1]", "Input should be a valid"),
        ({"loss": [1.0, None, 1.0], "accuracy": [0, 0.5, 0]}, "columns.accuracy[1]", HEADLINE_ONLY),
        (
            {"loss": [1.0, None, 1.0], "learning_rate": [0, 1, 0]},
            "columns.learning_rate[1]",
            HEADLINE_ONLY,
        ),
        ({"loss": [1.0, None, 1.0]}, "columns.loss[1]", NEEDS_A_VALUE),
        (
            {"loss": [1.0, None, 1.0], "metrics": {"a": [1, None, 1]}},
            "columns.loss[1]",
            NEEDS_A_VALUE,
        ),
        ({"step": [0, 1, 0]}, "columns.step[2]", "Step 0 appears twice in the batch."),
        (
            {"step": [3, 4, 3], "loss": [1.0, 1.0, None], "metrics": {"a": [1, None, 2]}},
            "columns.metrics.a[2]",
            "Key 'a' has step 3 twice in the batch.",
        ),
    ],
)
def test_a_bad_value_is_named_by_column_and_index(api, ext_job, columns, field, message):
    error = assert_error(post(api, ext_job, three(**columns)), 400)
    [problem] = error["details"]
    index = int(field.rsplit("[", 1)[1].rstrip("]"))
    assert (problem["field"], problem["index"]) == (field, index)
    assert problem["message"].startswith(message)
    assert error["error"] == "1 invalid point(s): nothing was stored."
    assert not ext_job.metrics.exists()
    assert not NamedMetric.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (three(acc=[0.5, 0.5, 0.5]), "columns.acc", "Extra inputs are not permitted"),
        (three(metrics={"bad,name": [1, 1, 1]}), "columns.metrics.bad,name.[key]", "String"),
        (three(metrics={"a": None}), "columns.metrics.a", "Input should be a valid list"),
        (three(loss=5), "columns.loss", "Input should be a valid list"),
        ({"columns": {"loss": [1.0]}}, "columns.step", "Field required"),
        ({"columns": {"step": []}, "points": []}, "body", 'Send "points"'),
        ({}, "body", 'Send "points" (a list of points) or "columns"'),
    ],
)
def test_a_bad_column_or_shape_is_named(api, ext_job, body, field, message):
    error = assert_error(post(api, ext_job, body), 400)
    [problem] = error["details"]
    assert problem["field"] == field
    assert "index" not in problem
    assert problem["message"].startswith(message)
    assert error["error"] == "Invalid request: 1 problem(s)."
    assert not ext_job.metrics.exists()


def test_every_column_must_be_as_long_as_the_steps(api, ext_job):
    body = three(loss=[1.0, 2.0], metrics={"a": [1.0, 2.0, 3.0], "b": [1.0] * 4})
    error = assert_error(post(api, ext_job, body), 400)
    assert error == {
        "error": "2 column(s) not as long as step: nothing was stored.",
        "details": [
            {
                "field": "columns.loss",
                "message": "2 values, but 3 steps: every column needs one value per step (null "
                "for none).",
            },
            {
                "field": "columns.metrics.b",
                "message": "4 values, but 3 steps: every column needs one value per step (null "
                "for none).",
            },
        ],
    }
    assert not ext_job.metrics.exists()


def test_more_steps_than_the_maximum_is_413(api, ext_job, settings):
    settings.TRAINMON_API_MAX_POINTS = 5
    body = {"columns": {"step": list(range(6)), "loss": [1.0] * 6}}
    error = assert_error(post(api, ext_job, body), 413)
    assert error["details"] == {"limit": 5, "count": 6}
    body = {"columns": {"step": list(range(5)), "loss": [1.0] * 5}}
    assert post(api, ext_job, body).json()["created"] == 5


def test_a_non_finite_loss_in_a_column_fails_the_job_at_its_step(api, ext_job):
    raw = (
        '{"columns": {"step": [3, 0, 2, 1], "loss": [1, 1, Infinity, 1], "metrics": '
        '{"a": [NaN, 1, 1, "-Infinity"]}}}'
    )
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", raw=raw)
    assert response.status_code == 200, response.content
    reply = response.json()
    assert (reply["created"], reply["discarded"], reply["named_created"]) == (2, 2, 4)
    assert reply["job"]["failure_reason"] == "loss diverged at step 2"
    assert stored_steps(ext_job) == [0, 1]
    values = named_values(ext_job)["a"]
    assert values[1] == -math.inf
    assert values[3] is None or math.isnan(values[3])


def test_an_empty_column_batch_is_a_heartbeat(api, ext_job):
    assert post(api, ext_job, {"columns": {"step": []}}).json()["created"] == 0
    ext_job.refresh_from_db()
    assert ext_job.last_reported_at is not None


# --- the same points as rows and as columns -------------------------------------------------

value = st.floats(-10, 10) | st.sampled_from(["NaN", "Infinity", "-Infinity"])
names = st.dictionaries(st.sampled_from(["a", "b/c", "loss"]), value, max_size=3)
optional = {"epoch": st.integers(1, 3), "timestamp": st.floats(1e9, 2e9)}
headline_point = st.fixed_dictionaries(
    {"step": st.integers(0, 100), "loss": st.floats(0, 10) | st.just("NaN")},
    optional=optional
    | {"accuracy": st.floats(0, 1), "learning_rate": st.floats(0, 1), "metrics": names},
)
named_point = st.fixed_dictionaries(
    {"step": st.integers(0, 100), "metrics": names.filter(bool)}, optional=optional
)
# Now and then a point the batch rules refuse: a repeated step, an accuracy without a loss.
faulty_point = st.fixed_dictionaries(
    {"step": st.integers(0, 3)}, optional={"accuracy": st.floats(0, 1), "loss": st.just(1.0)}
)
batches = st.lists(headline_point | named_point, max_size=8) | st.lists(
    headline_point | named_point | faulty_point, min_size=1, max_size=8
)


def stored(job: TrainingJob) -> dict[str, Any]:
    """Everything a write leaves behind, but its wall-clock times."""
    job.refresh_from_db()
    keys = MetricKey.objects.filter(job=job).order_by("name")
    return {
        "headline": list(
            job.metrics.order_by("step").values_list(
                "step", "epoch", "loss", "accuracy", "learning_rate"
            )
        ),
        "named": sorted(
            (name, step, repr(value), when)
            for name, step, value, when in NamedMetric.objects.filter(key__job=job).values_list(
                "key__name", "step", "value", "reported_at"
            )
        ),
        "keys": list(keys.values_list("name", "count", "first_step", "last_step", "min_value")),
        "job": (
            job.status,
            job.failure_reason,
            job.current_step,
            job.last_loss,
            job.best_loss,
            job.best_loss_step,
            job.last_accuracy,
            job.primary_metric,
        ),
    }


def timed(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A named value without a timestamp is stamped on arrival: the two writes would differ.
    return [p | {"timestamp": 1.5e9} if "timestamp" not in p else p for p in points]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(points=batches)
def test_rows_and_columns_store_the_same_or_refuse_alike(api, user, points):
    points = timed(points)
    jobs = [
        TrainingJobFactory(owner=user, source="external", total_epochs=2, steps_per_epoch=5)
        for _ in range(2)
    ]
    rows = api.post(f"/jobs/{jobs[0].pk}/metrics/", raw=json.dumps({"points": points}))
    columns = api.post(f"/jobs/{jobs[1].pk}/metrics/", raw=json.dumps(as_columns(points)))
    assert rows.status_code == columns.status_code, (rows.content, columns.content)
    if rows.status_code == 200:
        counts = ("created", "duplicates", "discarded", "named_created", "named_duplicates")
        assert [rows.json()[c] for c in counts] == [columns.json()[c] for c in counts]
    else:
        # The same points at fault for the same reasons; only the field's spelling differs.
        rows_error, columns_error = rows.json(), columns.json()
        assert rows_error["error"] == columns_error["error"]

        def by_point(details: list[dict[str, Any]]) -> list[tuple[int, str]]:
            return sorted((problem["index"], problem["message"]) for problem in details)

        assert by_point(rows_error["details"]) == by_point(columns_error["details"])
    assert stored(jobs[0]) == stored(jobs[1])


wild = (
    st.none()
    | st.booleans()
    | st.integers(-2, 2**64)
    | st.floats()
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1", ""])
    | st.lists(st.integers(), max_size=1)
)
column = st.lists(st.integers(0, 5), max_size=5) | st.lists(wild, max_size=5) | wild


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    columns=st.fixed_dictionaries(
        {"step": column},
        optional={
            **dict.fromkeys(FIELDS, column),
            "metrics": st.dictionaries(st.sampled_from(["a", "b,c"]), column, max_size=2) | wild,
        },
    )
)
def test_generated_columns_never_cause_a_5xx_or_a_partial_write(api, user, columns):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=2, steps_per_epoch=5)
    response = api.post(f"/jobs/{job.pk}/metrics/", raw=json.dumps({"columns": columns}))
    assert response.status_code < 500, response.content
    if response.status_code == 200:
        assert job.metrics.count() == response.json()["created"]
    else:
        assert response.status_code == 400
        assert not job.metrics.exists()
        assert not MetricKey.objects.filter(job=job).exists()
