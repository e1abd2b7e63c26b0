from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np

# A loss beyond this magnitude counts as diverged, like NaN or Infinity. The summary adds up
# to 262,144 losses per bucket; this bound keeps every such sum (and every mean) finite.
MAX_LOSS_MAGNITUDE = 1e100


def diverged_losses(losses: np.ndarray) -> np.ndarray:
    """A mask of the losses that are NaN, infinite or beyond MAX_LOSS_MAGNITUDE."""
    diverged: np.ndarray = ~(np.abs(losses) <= MAX_LOSS_MAGNITUDE)
    return diverged


_DTYPES = {
    "steps": np.int64,
    "epochs": np.int64,
    "losses": np.float64,
    "accuracies": np.float64,
    "learning_rates": np.float64,
}


# Steps are stored as signed 64-bit integers, and a job's progress keeps the step after its
# highest (current_step): a point's step leaves room for that.
MAX_STORED_STEP = 2**63 - 2


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
        bad = np.flatnonzero(diverged_losses(self.losses))
        return int(bad[0]) if bad.size else None

    def rows(self, start: int, stop: int) -> MetricBatch:
        """Rows start:stop, as views. A slice of a checked batch needs no checks."""
        return _unchecked(self, {name: getattr(self, name)[start:stop] for name in _DTYPES})


# A key name, by MLflow's rule: letters, digits, "_ - . / :" and space, 1 to 250 characters.
KEY_NAME_RE = r"^[A-Za-z0-9_\-./: ]{1,250}$"
_KEY_NAME = re.compile(KEY_NAME_RE)


def is_key_name(name: str) -> bool:
    return bool(_KEY_NAME.fullmatch(name))


@dataclass(frozen=True, eq=False)
class NamedBatch:
    """Column-oriented points of named series: point i is (names[key_index[i]], steps[i],
    values[i], times[i]). Values may be NaN or +-inf: stored, drawn as gaps."""

    names: tuple[str, ...]  # distinct key names in this batch
    key_index: np.ndarray  # int64 per point: index into names
    steps: np.ndarray  # int64 per point, >= 0
    values: np.ndarray  # float64 per point
    times: np.ndarray  # float64 per point: unix seconds (the client's wall clock)

    def __post_init__(self) -> None:
        lengths = set()
        for name, dtype in _NAMED_DTYPES.items():
            column = np.asarray(getattr(self, name), dtype=dtype)
            if column.ndim != 1:
                raise ValueError(f"NamedBatch.{name} must be 1-D, got shape {column.shape}")
            object.__setattr__(self, name, column)
            lengths.add(len(column))
        if len(lengths) > 1:
            raise ValueError(f"NamedBatch columns differ in length: {sorted(lengths)}")
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if len(set(names)) != len(names):
            raise ValueError("NamedBatch.names must be distinct")
        bad = [name for name in names if not is_key_name(name)]
        if bad:
            raise ValueError(f"not a metric key name (see KEY_NAME_RE): {bad[0]!r}")
        if len(self.key_index) and (self.key_index.min() < 0 or self.key_index.max() >= len(names)):
            raise ValueError("NamedBatch.key_index points outside names")
        if len(self.steps) and not 0 <= self.steps.min() <= self.steps.max() <= MAX_STORED_STEP:
            raise ValueError(f"NamedBatch.steps must be >= 0 and <= {MAX_STORED_STEP}")

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def empty(cls) -> NamedBatch:
        return cls((), *(np.empty(0, dtype=dtype) for dtype in _NAMED_DTYPES.values()))

    @classmethod
    def from_points(cls, points: Iterable[tuple[str, int, float, float]]) -> NamedBatch:
        """From (name, step, value, unix time) tuples; names in order of first appearance."""
        index: dict[str, int] = {}
        key_index, steps, values, times = [], [], [], []
        for name, step, value, moment in points:
            key_index.append(index.setdefault(name, len(index)))
            steps.append(step)
            values.append(value)
            times.append(moment)
        return cls(tuple(index), key_index, steps, values, times)  # type: ignore[arg-type]

    def rows(self, start: int, stop: int) -> NamedBatch:
        """Rows start:stop, as views, with the same names. A slice of a checked batch needs
        no checks (a tick slices one per job: the checks would cost more than the slice)."""
        columns = {name: getattr(self, name)[start:stop] for name in _NAMED_DTYPES}
        return _unchecked(self, {"names": self.names, **columns})

    def take(self, rows: np.ndarray) -> NamedBatch:
        """The points at `rows` (indices or a boolean mask), with the same names."""
        return NamedBatch(
            self.names,
            self.key_index[rows],
            self.steps[rows],
            self.values[rows],
            self.times[rows],
        )


@dataclass(frozen=True, eq=False)
class JobsPoints:
    """Several jobs' headline and named points, job after job: job i's headline points are
    rows headline_ends[i-1]:headline_ends[i] of `headline` (0 for i = 0), its named points
    rows named_ends[i-1]:named_ends[i] of `named`.

    A tick simulates every job's points in one pass and writes them in this form
    (`jobs_points_write`): neither sliced per job nor concatenated back.
    """

    headline: MetricBatch
    headline_ends: list[int]
    named: NamedBatch
    named_ends: list[int]

    def __post_init__(self) -> None:
        if len(self.headline_ends) != len(self.named_ends):
            raise ValueError(
                f"{len(self.headline_ends)} headline ends for {len(self.named_ends)} named ends"
            )
        for kind, ends, batch in (
            ("headline", self.headline_ends, self.headline),
            ("named", self.named_ends, self.named),
        ):
            last = ends[-1] if ends else 0
            if last != len(batch) or np.any(np.diff(ends) < 0):
                raise ValueError(f"JobsPoints.{kind}_ends must rise to its batch's length")

    def __len__(self) -> int:
        """The number of jobs."""
        return len(self.headline_ends)

    def headline_of(self, job: int) -> MetricBatch:
        return self.headline.rows(_start(self.headline_ends, job), self.headline_ends[job])

    def named_of(self, job: int) -> NamedBatch:
        return self.named.rows(_start(self.named_ends, job), self.named_ends[job])


def lengths_of(ends: list[int]) -> np.ndarray:
    """Each job's number of rows, from the ends of its rows (see `JobsPoints`)."""
    return np.diff(np.asarray(ends, dtype=np.int64), prepend=0)


def _start(ends: list[int], job: int) -> int:
    return ends[job - 1] if job else 0


_NAMED_DTYPES = {
    "key_index": np.int64,
    "steps": np.int64,
    "values": np.float64,
    "times": np.float64,
}


_Batch = TypeVar("_Batch", MetricBatch, NamedBatch)


def _unchecked(like: _Batch, columns: dict[str, object]) -> _Batch:
    # A frozen dataclass built without __post_init__: for slices of one already checked.
    batch = object.__new__(type(like))
    batch.__dict__.update(columns)
    return batch
