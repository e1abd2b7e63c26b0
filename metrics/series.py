"""The shape every chart and API read of a job's points comes back in, and its limits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

# A chart is at most a few thousand pixels wide: more points than this add nothing visible.
SERIES_MAX_POINTS = 2000
# A poll answers with at most this many points; a client further behind gets a catch-up.
POLL_MAX_POINTS = 2000
# A downsampled bucket keeps its lowest loss, its highest loss and its last step, and the
# series keeps its first step: max_points = POINTS_PER_BUCKET * buckets + 1.
POINTS_PER_BUCKET = 3
MIN_DOWNSAMPLED_POINTS = POINTS_PER_BUCKET + 1


# Steps are stored as 64-bit integers: a step parameter past this matches nothing.
MAX_STEP = 2**63 - 1


def step_param(step: int) -> int:
    """`step` as an SQL parameter: clamped into int64, which both databases can bind."""
    return max(-MAX_STEP, min(step, MAX_STEP))


def check_max_points(max_points: int) -> None:
    if max_points < MIN_DOWNSAMPLED_POINTS:
        raise ValueError(f"max_points must be at least {MIN_DOWNSAMPLED_POINTS}, got {max_points}")


def epoch_seconds_sql(column: str) -> str:
    """SQL for a timestamp column as unix seconds (float); NULL stays NULL."""
    if connection.vendor == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM {column}) AS double precision)"
    # Django stores SQLite datetimes as UTC text; julianday reads them to the millisecond.
    return f"((julianday({column}) - 2440587.5) * 86400.0)"


class _StepColumns:
    """What every series shape says about itself; subclasses hold `steps` and `total`."""

    steps: list[int]
    total: int

    @property
    def shown(self) -> int:
        return len(self.steps)

    @property
    def downsampled(self) -> bool:
        return self.shown < self.total

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None


@dataclass(frozen=True)
class Series(_StepColumns):
    """Column lists of metric points in step order; None where accuracy / lr was not reported.

    `total` is how many points are stored in the range asked for and `shown` how many these
    lists hold; `shown < total` means the range was downsampled.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)
    learning_rate: list[float | None] = field(default_factory=list)
    total: int = 0
    times: list[float] = field(default_factory=list)  # created_at as unix seconds

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, ...]], total: int | None = None) -> Series:
        """From (step, loss, accuracy, learning_rate, unix time) rows in step order."""
        if not rows:
            return cls(total=total or 0)
        steps, loss, accuracy, learning_rate, times = (
            list(column) for column in zip(*rows, strict=True)
        )
        total = len(rows) if total is None else total
        return cls(steps, loss, accuracy, learning_rate, total=total, times=times)

    def columns(self) -> dict[str, Any]:
        """The columns as JSON-ready lists, with the total and the last step shown.

        `times` is left out: today's responses keep their shape; a caller that wants the
        wall-time axis adds `"times": series.times`.
        """
        return {
            "steps": self.steps,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "learning_rate": self.learning_rate,
            "total": self.total,
            "last_step": self.last_step,
        }


@dataclass(frozen=True)
class NamedSeries(_StepColumns):
    """Column lists of one named key's points in step order. A value of None is a gap: the
    point was NaN or infinite (JSON has neither). `total` and `shown` as in `Series`."""

    steps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # the client's wall clock, unix seconds
    total: int = 0

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, ...]], total: int | None = None) -> NamedSeries:
        """From (step, value, unix time) rows in step order; non-finite values become None."""
        if not rows:
            return cls(total=total or 0)
        steps, values, times = (list(column) for column in zip(*rows, strict=True))
        gaps = [None if value is None or not math.isfinite(value) else value for value in values]
        return cls(steps, gaps, times, total=len(rows) if total is None else total)

    def columns(self) -> dict[str, Any]:
        """The columns as JSON-ready lists, with the total and the last step shown."""
        return {
            "steps": self.steps,
            "values": self.values,
            "times": self.times,
            "total": self.total,
            "shown": self.shown,
            "last_step": self.last_step,
        }
