from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# A loss beyond this magnitude counts as diverged, like NaN or Infinity. The summary adds up
# to 262,144 losses per bucket; this bound keeps every such sum (and every mean) finite.
MAX_LOSS_MAGNITUDE = 1e100

_DTYPES = {
    "steps": np.int64,
    "epochs": np.int64,
    "losses": np.float64,
    "accuracies": np.float64,
    "learning_rates": np.float64,
}


# eq=False: the generated __eq__ would compare arrays element-wise and then
# fail on truth-testing the result.
@dataclass(frozen=True, eq=False)
class MetricBatch:
    """Column-oriented metric points; NaN accuracy / learning rate means "not reported"."""

    steps: np.ndarray
    epochs: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray
    learning_rates: np.ndarray

    def __post_init__(self) -> None:
        lengths = set()
        for f in fields(self):
            column = np.asarray(getattr(self, f.name))
            if column.ndim != 1:
                raise ValueError(f"MetricBatch.{f.name} must be 1-D, got shape {column.shape}")
            object.__setattr__(self, f.name, column)
            lengths.add(len(column))
        if len(lengths) > 1:
            sizes = {f.name: len(getattr(self, f.name)) for f in fields(self)}
            raise ValueError(f"MetricBatch columns differ in length: {sizes}")

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def empty(cls) -> MetricBatch:
        return cls(**{name: np.empty(0, dtype=dtype) for name, dtype in _DTYPES.items()})

    def first_diverged_loss(self) -> int | None:
        """The index of the first loss that is NaN, infinite or beyond MAX_LOSS_MAGNITUDE."""
        bad = np.flatnonzero(~(np.abs(self.losses) <= MAX_LOSS_MAGNITUDE))
        return int(bad[0]) if bad.size else None

    def head(self, n: int) -> MetricBatch:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return MetricBatch(**{f.name: getattr(self, f.name)[:n] for f in fields(self)})
