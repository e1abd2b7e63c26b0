"""log-batch's metric parsing: the column-by-column path for plain batches answers exactly as
the point-by-point path that checks everything (and words the errors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracking.protocol import MlflowError
from tracking.services import (
    MAX_STEP,
    MAX_TIMESTAMP_MS,
    _checked_metric_points,
    _plain_metric_points,
    metric_points,
)

KEYS = st.sampled_from(["loss", "val/loss", "train/metric_0", "", "bad key!", "k" * 251, 7])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nope", True, None]),
)
STAMPS = st.one_of(
    st.integers(0, MAX_TIMESTAMP_MS),
    st.sampled_from([-1, MAX_TIMESTAMP_MS + 1, 2**64, 1.5, "17", None, False]),
)
STEPS = st.one_of(
    st.integers(0, 5),
    st.sampled_from([-1, MAX_STEP, MAX_STEP + 1, 2**63, 3.0, "2", None, True]),
)


@st.composite
def metrics(draw: st.DrawFn) -> dict[str, Any]:
    metric = {"key": draw(KEYS), "value": draw(VALUES), "timestamp": draw(STAMPS)}
    if draw(st.booleans()):
        metric["step"] = draw(STEPS)
    for name in draw(st.sets(st.sampled_from(["key", "value", "timestamp"]), max_size=1)):
        del metric[name]
    return metric


def outcome(parse, items: list[dict[str, Any]]) -> Any:
    try:
        batch = parse(items)
    except MlflowError as error:
        return ("error", error.code, error.message)
    return (
        batch.names,
        batch.key_index.tolist(),
        batch.steps.tolist(),
        [repr(value) for value in batch.values.tolist()],  # NaN equals NaN
        batch.times.tolist(),
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(metrics(), max_size=8))
def test_any_batch_gets_the_same_points_or_error_as_the_checked_path(items):
    assert outcome(metric_points, items) == outcome(_checked_metric_points, items)


PLAIN = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["loss", "val/loss", "lr"]),
        "value": st.floats(allow_nan=True, allow_infinity=True),
        "timestamp": st.integers(0, MAX_TIMESTAMP_MS),
    },
    optional={"step": st.integers(0, 4)},
)


@settings(max_examples=100, deadline=None)
@given(st.lists(PLAIN, max_size=12))
def test_a_plain_batch_gets_the_checked_paths_points_repeats_and_all(items):
    assert _plain_metric_points(items) is not None
    assert outcome(metric_points, items) == outcome(_checked_metric_points, items)


def test_a_plain_batch_takes_the_column_path_and_keeps_the_first_point_per_key_and_step():
    items = [
        {"key": "loss", "value": 0.5, "timestamp": 1_000, "step": 3},
        {"key": "acc", "value": 0.1, "timestamp": 2_000},  # no step: 0
        {"key": "loss", "value": 0.9, "timestamp": 3_000, "step": 3},  # a repeat: dropped
        {"key": "loss", "value": 0.4, "timestamp": 4_000, "step": 4},
    ]
    batch = _plain_metric_points(items)
    assert batch is not None
    assert batch.names == ("loss", "acc")
    assert batch.key_index.tolist() == [0, 1, 0]
    assert batch.steps.tolist() == [3, 0, 4]
    assert batch.values.tolist() == [0.5, 0.1, 0.4]
    np.testing.assert_array_equal(batch.times, [1.0, 2.0, 4.0])


@pytest.mark.parametrize(
    "odd",
    [
        {"key": "loss", "value": "NaN", "timestamp": 1},  # MLflow's NaN spelling
        {"key": "loss", "value": 1, "timestamp": 1},  # an integer value
        {"key": "loss", "value": 1.0, "timestamp": 1, "step": -1},
        {"key": "loss", "value": 1.0, "timestamp": 1, "step": MAX_STEP + 1},
        {"key": "loss", "value": 1.0, "timestamp": 1, "step": 2**63},
        {"key": "loss", "value": 1.0, "timestamp": MAX_TIMESTAMP_MS + 1},
        {"key": "loss", "value": 1.0, "timestamp": 1, "step": True},
        {"key": "bad key!", "value": 1.0, "timestamp": 1},
        {"key": "loss", "value": 1.0},
    ],
)
def test_anything_but_plain_numbers_and_valid_keys_goes_the_checked_way(odd):
    plain = {"key": "loss", "value": 0.5, "timestamp": 1, "step": 0}
    assert _plain_metric_points([plain, odd]) is None
