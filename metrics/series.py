"""The shape every chart and API read of a job's points comes back in, and its limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A chart is at most a few thousand pixels wide: more points than this add nothing visible.
SERIES_MAX_POINTS = 2000
# A poll answers with at most this many points; a client further behind gets a catch-up.
POLL_MAX_POINTS = 2000
# A downsampled bucket keeps its lowest loss, its highest loss and its last step, and the
# series keeps its first step: max_points = POINTS_PER_BUCKET * buckets + 1.
POINTS_PER_BUCKET = 3
MIN_DOWNSAMPLED_POINTS = POINTS_PER_BUCKET + 1


def check_max_points(max_points: int) -> None:
    if max_points < MIN_DOWNSAMPLED_POINTS:
        raise ValueError(f"max_points must be at least {MIN_DOWNSAMPLED_POINTS}, got {max_points}")


@dataclass(frozen=True)
class Series:
    """Column lists of metric points in step order; None where accuracy / lr was not reported.

    `total` is how many points are stored in the range asked for and `shown` how many these
    lists hold; `shown < total` means the range was downsampled.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)
    learning_rate: list[float | None] = field(default_factory=list)
    total: int = 0

    @property
    def shown(self) -> int:
        return len(self.steps)

    @property
    def downsampled(self) -> bool:
        return self.shown < self.total

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, ...]], total: int | None = None) -> Series:
        """From (step, loss, accuracy, learning_rate) rows in step order."""
        if not rows:
            return cls(total=total or 0)
        steps, loss, accuracy, learning_rate = (list(column) for column in zip(*rows, strict=True))
        total = len(rows) if total is None else total
        return cls(steps, loss, accuracy, learning_rate, total=total)

    def columns(self) -> dict[str, Any]:
        """The columns as JSON-ready lists, with the total and the last step shown."""
        return {
            "steps": self.steps,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "learning_rate": self.learning_rate,
            "total": self.total,
            "last_step": self.last_step,
        }
