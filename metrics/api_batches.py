"""A batch of POST .../metrics/ as the write path takes it: a MetricBatch and a NamedBatch.

Both shapes of the body (metrics/api_schemas.py) come here with the same rules and the same
messages; only the problems' `field` differs: `points[7].loss` for a row, `columns.loss[7]`
for a column, with `index` 7 either way. Columns become arrays with a few numpy calls, not a
Python object per point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jobs.models import TrainingJob
from metrics.api_schemas import MAX_EPOCH, PointColumnsIn, PointIn, non_finite
from metrics.points import MetricBatch, NamedBatch
from trainmon.api_errors import HTTP_BAD_REQUEST, ApiError, bounded

HEADLINE_ONLY = (
    "Accuracy and learning rate belong to the headline point: send a loss too, or send them "
    "in metrics."
)
NEEDS_A_VALUE = "A point needs a loss or metrics."
# An epoch column's placeholder for "left out": real epochs start at 1.
NO_EPOCH = 0

Problem = dict[str, Any]
# (point index, message) -> a problem at that point's step; (index, key name, message) -> at
# that point's value of the key. Each shape locates them its own way.
StepProblem = Callable[[Any, str], Problem]
KeyProblem = Callable[[Any, str, str], Problem]


# --- rows ---------------------------------------------------------------------------------


def batches_from_points(
    job: TrainingJob, points: Sequence[PointIn]
) -> tuple[MetricBatch, NamedBatch]:
    """The headline points as a MetricBatch sorted by step, and the named values as a
    NamedBatch; or ApiError 400 naming the bad points."""
    count = len(points)
    steps = np.fromiter((p.step for p in points), dtype=np.int64, count=count)
    given = (NO_EPOCH if p.epoch is None else p.epoch for p in points)
    epochs = epochs_or_derived(job, steps, np.fromiter(given, dtype=np.int64, count=count))
    headline = np.fromiter((p.loss is not None for p in points), dtype=bool, count=count)
    # No check against the job's declared length: it is a hint, never a limit (a script
    # numbering steps from 1, or one that trains longer than it said, loses nothing).
    problems: list[Problem] = []
    for position, point in enumerate(points):
        if point.loss is None:
            if point.accuracy is not None or point.learning_rate is not None:
                field = "accuracy" if point.accuracy is not None else "learning_rate"
                problems.append(_point_problem(position, field, HEADLINE_ONLY))
            elif not point.metrics:
                problems.append(_point_problem(position, "loss", NEEDS_A_VALUE))
    order = _by_step(np.flatnonzero(headline), steps)
    problems += _repeated_steps(order, steps, lambda i, m: _point_problem(i, "step", m))
    named, owners = _named_from_points(points)
    problems += _repeated_keys(
        named, owners, lambda i, name, m: _point_problem(i, f"metrics.{name}", m)
    )
    _refuse(problems)
    nan = float("nan")
    kept = [points[index] for index in order]
    return MetricBatch(
        steps=steps[order],
        epochs=epochs[order],
        losses=np.fromiter(
            (non_finite(p.loss) for p in kept if p.loss is not None), np.float64, len(kept)
        ),
        accuracies=np.fromiter(
            (nan if p.accuracy is None else p.accuracy for p in kept), np.float64, len(kept)
        ),
        learning_rates=np.fromiter(
            (nan if p.learning_rate is None else p.learning_rate for p in kept),
            np.float64,
            len(kept),
        ),
    ), named


def _named_from_points(points: Sequence[PointIn]) -> tuple[NamedBatch, np.ndarray]:
    """The points' named values, and the index of the point each came from."""
    index_of: dict[str, int] = {}
    key_index: list[int] = []
    steps: list[int] = []
    values: list[float] = []
    times: list[float] = []
    owners: list[int] = []
    now = time.time()
    for position, point in enumerate(points):
        if not point.metrics:
            continue
        when = now if point.timestamp is None else point.timestamp
        for name, value in point.metrics.items():
            key_index.append(index_of.setdefault(name, len(index_of)))
            steps.append(point.step)
            values.append(non_finite(value))
            times.append(when)
            owners.append(position)
    batch = NamedBatch(
        names=tuple(index_of),
        key_index=np.asarray(key_index, dtype=np.int64),
        steps=np.asarray(steps, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        times=np.asarray(times, dtype=np.float64),
    )
    return batch, np.asarray(owners, dtype=np.int64)


def _point_problem(index: int | np.integer[Any], field: str, message: str) -> Problem:
    return {"field": f"points[{index}].{field}", "index": int(index), "message": message}


# --- columns ------------------------------------------------------------------------------


def batches_from_columns(
    job: TrainingJob, columns: PointColumnsIn
) -> tuple[MetricBatch, NamedBatch]:
    """As batches_from_points, for the same points sent as columns."""
    _refuse_ragged(columns)
    count = len(columns.step)
    steps = np.array(columns.step, dtype=np.int64)
    losses, has_loss = _float_column(columns.loss, count)
    accuracies, has_accuracy = _float_column(columns.accuracy, count)
    rates, has_rate = _float_column(columns.learning_rate, count)
    epochs = epochs_or_derived(job, steps, _epoch_column(columns.epoch, count))
    times = _times(columns.timestamp, count)
    named, owners = _named_from_columns(columns.metrics, steps, times)
    has_named = np.zeros(count, dtype=bool)
    has_named[owners] = True

    problems: list[Problem] = []
    stray = ~has_loss & (has_accuracy | has_rate)
    for index in np.flatnonzero(stray):
        field = "accuracy" if has_accuracy[index] else "learning_rate"
        problems.append(_column_problem(index, field, HEADLINE_ONLY))
    for index in np.flatnonzero(~has_loss & ~stray & ~has_named):
        problems.append(_column_problem(index, "loss", NEEDS_A_VALUE))
    order = _by_step(np.flatnonzero(has_loss), steps)
    problems += _repeated_steps(order, steps, lambda i, m: _column_problem(i, "step", m))
    problems += _repeated_keys(
        named, owners, lambda i, name, m: _column_problem(i, f"metrics.{name}", m)
    )
    _refuse(problems)
    batch = MetricBatch(
        steps=steps[order],
        epochs=epochs[order],
        losses=losses[order],
        accuracies=accuracies[order],
        learning_rates=rates[order],
    )
    return batch, named


def _refuse_ragged(columns: PointColumnsIn) -> None:
    """ApiError 400 naming every column whose length is not the step column's."""
    count = len(columns.step)
    lengths = {
        name: len(values)
        for name in ("epoch", "loss", "accuracy", "learning_rate", "timestamp")
        if (values := getattr(columns, name)) is not None
    }
    lengths |= {f"metrics.{name}": len(values) for name, values in (columns.metrics or {}).items()}
    problems = [
        {
            "field": f"columns.{name}",
            "message": f"{length:,} values, but {count:,} steps: every column needs one value "
            "per step (null for none).",
        }
        for name, length in lengths.items()
        if length != count
    ]
    if problems:
        raise ApiError(
            HTTP_BAD_REQUEST,
            f"{len(problems)} column(s) not as long as step: nothing was stored.",
            bounded(problems),
        )


def _float_column(
    values: Sequence[float | str | None] | None, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """A validated column as float64 (NaN where null; "NaN" and the infinities as floats),
    and a mask of the points that have a value."""
    if values is None:
        return np.full(count, np.nan), np.zeros(count, dtype=bool)
    # numpy reads None as NaN and parses the strings "NaN", "Infinity", "-Infinity".
    array = np.array(values, dtype=np.float64)
    if not np.isnan(array).any():
        return array, np.ones(count, dtype=bool)
    # Only now tell a null (no value) from a "NaN" (a value): one pass in Python.
    return array, np.fromiter((value is not None for value in values), dtype=bool, count=count)


def _epoch_column(values: Sequence[int | None] | None, count: int) -> np.ndarray:
    if values is None:
        return np.full(count, NO_EPOCH, dtype=np.int64)
    if None not in values:
        return np.array(values, dtype=np.int64)
    return np.array([NO_EPOCH if value is None else value for value in values], dtype=np.int64)


def _times(values: Sequence[float | None] | None, count: int) -> np.ndarray:
    """Unix seconds per point; a point without a timestamp arrived now."""
    times, has_time = _float_column(values, count)
    return np.where(has_time, times, time.time())


def _named_from_columns(
    metrics: dict[str, list[float | str | None]] | None, steps: np.ndarray, times: np.ndarray
) -> tuple[NamedBatch, np.ndarray]:
    """The named columns' values, and the index of the point each came from."""
    owners_of: dict[str, np.ndarray] = {}
    values_of: dict[str, np.ndarray] = {}
    for name, column in (metrics or {}).items():
        values, present = _float_column(column, len(steps))
        owners = np.flatnonzero(present)
        if len(owners):  # a column of nulls names no key, as a name no point carries
            owners_of[name], values_of[name] = owners, values[owners]
    if not owners_of:
        return NamedBatch.empty(), np.empty(0, dtype=np.int64)
    # Names in the order the row shape meets them (by first point; as listed at the same
    # point): the job's primary metric is the first key of its first batch. sorted() is
    # stable, and the dict keeps the listed order.
    names = tuple(sorted(owners_of, key=lambda name: int(owners_of[name][0])))
    owners = np.concatenate([owners_of[name] for name in names])
    batch = NamedBatch(
        names=names,
        key_index=np.repeat(
            np.arange(len(names), dtype=np.int64), [len(owners_of[name]) for name in names]
        ),
        steps=steps[owners],
        values=np.concatenate([values_of[name] for name in names]),
        times=times[owners],
    )
    return batch, owners


def _column_problem(index: int | np.integer[Any], field: str, message: str) -> Problem:
    return {"field": f"columns.{field}[{index}]", "index": int(index), "message": message}


# --- both ---------------------------------------------------------------------------------


def epochs_or_derived(job: TrainingJob, steps: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The given epochs, NO_EPOCH ones derived from the step where the job has a length.

    An open-ended job's points without an epoch count as epoch 1: the stored column needs
    one, and the step is what the charts show.
    """
    missing = given == NO_EPOCH
    if not missing.any():
        return given
    if job.steps_per_epoch:
        # Capped before adding 1: a step near 2**63 must not overflow int64.
        derived = np.minimum(steps // job.steps_per_epoch, MAX_EPOCH - 1) + 1
    else:
        derived = np.ones_like(steps)
    return np.where(missing, derived, given)


def _by_step(indices: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """`indices` in step order; equal steps keep the order they came in."""
    return indices[np.argsort(steps[indices], kind="stable")]


def _repeated_steps(order: np.ndarray, steps: np.ndarray, problem: StepProblem) -> list[Problem]:
    """A problem for each headline point whose step an earlier one has."""
    repeated = order[1:][steps[order][1:] == steps[order][:-1]]
    return [
        problem(index, f"Step {steps[index]} appears twice in the batch.")
        for index in np.sort(repeated)
    ]


def _repeated_keys(named: NamedBatch, owners: np.ndarray, problem: KeyProblem) -> list[Problem]:
    """A problem for each named value whose (key, step) an earlier one has."""
    if len(named) < 2:
        return []
    order = np.lexsort((named.steps, named.key_index))
    same = (named.key_index[order][1:] == named.key_index[order][:-1]) & (
        named.steps[order][1:] == named.steps[order][:-1]
    )
    problems = []
    for entry in np.sort(order[1:][same]):
        name = named.names[named.key_index[entry]]
        message = f"Key {name!r} has step {named.steps[entry]} twice in the batch."
        problems.append(problem(owners[entry], name, message))
    return problems


def _refuse(problems: list[Problem]) -> None:
    """ApiError 400 listing the problems by point, if there are any."""
    if not problems:
        return
    problems.sort(key=lambda problem: problem["index"])
    bad = len({problem["index"] for problem in problems})
    raise ApiError(
        HTTP_BAD_REQUEST, f"{bad} invalid point(s): nothing was stored.", bounded(problems)
    )
