from __future__ import annotations

import json
import math
from typing import Any

import pytest
from django.test import RequestFactory
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError

from metrics.api_schemas import MetricsBody, SeriesOut, metrics_body_for, non_finite
from trainmon.api_bodies import json_body, json_response, python_body

Body = metrics_body_for(3)


def request_with(raw: str | bytes) -> Any:
    return RequestFactory().post("/api/v1/x/", raw, content_type="application/json")


def outcome(parse: Any, raw: str | bytes) -> Any:
    """What `parse` makes of `raw`: the points as plain values, or the error it raises."""
    try:
        body = parse(request_with(raw), Body)
    except NinjaValidationError as error:
        return ("invalid", error.errors)
    except HttpError as error:
        return ("http", error.status_code, error.message)
    if body.columns is not None:
        return _plain(dict(body.columns))
    return [
        {
            **point.model_dump(exclude={"loss", "metrics"}),
            "loss": None if point.loss is None else repr(non_finite(point.loss)),
            "metrics": point.metrics
            and {name: repr(non_finite(value)) for name, value in point.metrics.items()},
        }
        for point in body.points or []
    ]


def _plain(value: Any) -> Any:
    # A column's values as from the row shape: NaN and the infinities as floats, by repr.
    if isinstance(value, dict):
        return {name: _plain(inner) for name, inner in value.items()}
    if isinstance(value, list):
        return [_plain(inner) for inner in value]
    return repr(non_finite(value)) if isinstance(value, float | str) else value


BODIES = [
    "",
    "{",
    "nope",
    "\xff",
    "[]",
    "null",
    "5",
    "{}",
    '{"points": 3}',
    '{"points": [], "extra": 1}',
    '{"points": [{"step": 0, "loss": 1}, {"step": 1, "loss": 2}, {"step": 2}, {"step": 3}]}',
    '{"points": [{"step": 0, "loss": 1}, {"step": "x"}, {"step": 2}, {"step": -1}]}',
    '{"points": [{"step": 0, "loss": 1.5, "epoch": 2, "accuracy": 0.5, "learning_rate": 0}]}',
    '{"points": [{"step": 0, "loss": "NaN"}, {"step": 1, "loss": "-Infinity"}, {"step": 2}]}',
    '{"points": [{"step": 0, "loss": NaN}, {"step": 1, "loss": Infinity}, {"step": 2}]}',
    '{"points": [{"step": 0, "loss": 1e400}, {"step": 1, "loss": -1e400}]}',
    '{"points": [{"step": 0, "loss": "nan"}, {"step": 1, "loss": "1.5"}, {"step": 2}]}',
    '{"points": [{"step": 0, "loss": [1]}, {"step": 1, "loss": true}, {"step": 2}]}',
    '{"points": [{"step": 0, "accuracy": NaN}, {"step": 1, "learning_rate": -1}]}',
    '{"points": [{"step": 0, "accuracy": 1e400}, {"step": 1, "timestamp": 1e400}]}',
    '{"points": [{"step": 0, "metrics": {"a": "Infinity", "b": NaN, "c": 2, "d": "x"}}]}',
    '{"points": [{"step": 0, "metrics": {"a": "Infinity", "b": NaN, "c": 2}}]}',
    '{"points": [{"step": 0, "metrics": {"bad\\u0000name": 1}}]}',
    '{"points": [{"step": 0, "loss": 1, "loss": 2}]}',
    '{"points": null}',
    '{"points": [], "columns": {"step": []}}',
    '{"columns": {"step": [0, 1], "loss": [1.5, null], "metrics": {"a": [null, "NaN"]}}}',
    '{"columns": {"step": [0, 1], "loss": ["NaN", -1e400], "epoch": [null, 2]}}',
    '{"columns": {"step": [0, "1", -1], "loss": ["nan", true], "acc": []}}',
    '{"columns": {"step": [0], "metrics": {"a": [1e400], "bad,name": [1], "c": [[1]]}}}',
    '{"columns": {"step": [0, 1, 2, 3]}}',
    '{"columns": {"loss": [1]}}',
]


@pytest.mark.parametrize("raw", BODIES)
def test_json_body_gives_what_ninjas_parsing_gives(raw):
    assert outcome(json_body, raw) == outcome(python_body, raw)


def test_an_empty_body_is_a_missing_payload():
    assert outcome(json_body, "") == (
        "invalid",
        [{"type": "missing", "loc": ("body", "payload"), "msg": "Field required"}],
    )


def test_invalid_json_is_a_400_http_error():
    assert outcome(json_body, "{") == ("http", 400, "Cannot parse request body")


def test_errors_are_located_under_the_payload():
    kind, errors = outcome(json_body, '{"points": [{"step": 0, "loss": 1}, {"step": "x"}]}')
    assert kind == "invalid"
    assert [error["loc"] for error in errors] == [("body", "payload", "points", 1, "step")]


@pytest.mark.parametrize(
    "body", [{"points": [{"step": "bad"}] * 4}, {"columns": {"step": ["bad"] * 4}}]
)
def test_the_points_limit_is_checked_before_the_points(body):
    raw = json.dumps(body)
    for parse in (json_body, python_body):
        assert outcome(parse, raw)[0] == "invalid"
        errors = outcome(parse, raw)[1]
        assert [(error["type"], error["ctx"]["actual_length"]) for error in errors] == [
            ("too_long", 4)
        ]


def test_one_limited_class_per_limit():
    assert issubclass(metrics_body_for(3), MetricsBody)
    assert metrics_body_for(3) is metrics_body_for(3)


def test_a_body_takes_points_or_columns_not_both_nor_neither():
    for raw in ("{}", '{"points": [], "columns": {"step": []}}'):
        kind, [error] = outcome(json_body, raw)
        assert (kind, error["loc"], error["type"]) == ("invalid", ("body", "payload"), "one_shape")


def test_non_finite_strings_stay_strings_from_json_and_read_as_floats():
    raw = b'{"points": [{"step": 0, "loss": "NaN", "metrics": {"a": "-Infinity"}}]}'
    [point] = json_body(request_with(raw), Body).points
    assert point.loss == "NaN"
    assert point.metrics == {"a": "-Infinity"}
    assert point.loss is not None
    assert math.isnan(non_finite(point.loss))
    assert non_finite(point.metrics["a"]) == -math.inf


def test_json_response_renders_as_ninja_did_with_null_for_non_finite_floats():
    body = SeriesOut(
        steps=[0, 5],
        loss=[1.5, 1e-05],
        accuracy=[None, 0.5],
        learning_rate=[math.nan, 0.1],
        total=2,
        downsampled=False,
        last_step=5,
    )
    response = json_response(body)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(response.content) == {
        "steps": [0, 5],
        "loss": [1.5, 1e-05],
        "accuracy": [None, 0.5],
        "learning_rate": [None, 0.1],
        "total": 2,
        "downsampled": False,
        "last_step": 5,
    }
