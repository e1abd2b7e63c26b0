"""Writing metric points: the one path the simulation tick and the HTTP API share."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from jobs.models import TrainingJob
from jobs.services import BatchSummary, job_fail, jobs_record_progress
from metrics import pgcopy
from metrics.models import IngestLog, MetricKey, NamedMetric, TrainingMetric
from metrics.points import JobsPoints, MetricBatch, NamedBatch, diverged_losses, lengths_of
from metrics.simulator import (
    NEVER_DIVERGES,
    UINT64_MASK,
    SimulatedRuns,
    TrainingSimulator,
    simulated_batches,
)
from metrics.staging import json_columns, staged_rows
from metrics.summary import key_points_add, summary_add
from trainmon.bulk import InArray, json_rows, only_ids

logger = logging.getLogger(__name__)

# The named key a job without headline loss shows on the dashboard, if it logs one.
PRIMARY_METRIC_DEFAULT = "loss"
# A failed job's reason quotes this much of the error: enough to recognise it.
SIMULATION_ERROR_CHARS = 200


class WriteResult(NamedTuple):
    """What one job's write stored. A tuple, not a frozen dataclass: a tick builds one per
    job, and a frozen dataclass's __init__ cost more than the rest of that loop."""

    created: int
    duplicates: int
    named_created: int = 0
    named_duplicates: int = 0


class KeyLimitExceeded(ValueError):
    """A write would give `job` more than `limit` named keys; nothing was written."""

    def __init__(self, job: TrainingJob, limit: int, new_names: Sequence[str]) -> None:
        self.job = job
        self.limit = limit
        self.new_names = list(new_names)
        super().__init__(
            f"job {job.pk} may have at most {limit} metric keys;"
            f" this batch adds {len(self.new_names)} new ones"
        )


def simulator_for(job: TrainingJob) -> TrainingSimulator:
    return TrainingSimulator(
        job.initial_loss,
        job.final_loss,
        job.decay_rate,
        seed=job.seed,
        base_learning_rate=job.base_learning_rate,
        warmup_steps=job.warmup_steps,
        diverge_at_step=job.diverge_at_step,
    )


def metric_batches_write(
    batches: Sequence[tuple[TrainingJob, MetricBatch]],
    *,
    named: Mapping[int, NamedBatch] | None = None,
    now: datetime | None = None,
    tick: int | None = None,
) -> list[WriteResult]:
    """Store each job's batch and named points and bring the jobs' progress up to date,
    atomically.

    One batch per job (it may be empty) and, in `named`, the job's named points by job id.
    Points at steps a job (or key) already has are ignored and counted as duplicates, so a
    retried batch changes nothing. Headline points from the first non-finite loss on are not
    stored: that step fails the job; a non-finite named value is stored and never does. A
    batch that would take a job past TRAINMON_MAX_KEYS_PER_JOB keys raises
    `KeyLimitExceeded` before anything is written. The jobs must be locked by the caller
    (`jobs_lock`) inside `transaction.atomic()`. A fixed number of statements, however many
    jobs, keys and points: the key summary, key stats, ingest log and progress go with the
    points. `tick` (a scheduled simulation tick) is recorded as every job's `last_tick`.
    """
    jobs = [job for job, _ in batches]
    return _write(
        jobs,
        _HeadlineIn.of_batches(batches),
        _NamedIn.of_batches(jobs, named or {}),
        now or timezone.now(),
        tick,
    )


def jobs_points_write(
    jobs: Sequence[TrainingJob],
    points: JobsPoints,
    *,
    now: datetime | None = None,
    tick: int | None = None,
) -> list[WriteResult]:
    """`metric_batches_write` of jobs[i]'s points, job i's of `points`, as they came: one
    set of columns for all the jobs (a tick's), never a batch per job."""
    if len(points) != len(jobs):
        raise ValueError(f"points of {len(points)} jobs for {len(jobs)} jobs")
    return _write(
        jobs,
        _HeadlineIn.of_columns(jobs, points.headline, points.headline_ends),
        _NamedIn.of_jobs_points(jobs, points),
        now or timezone.now(),
        tick,
    )


def _write(
    jobs: Sequence[TrainingJob],
    headline: _HeadlineIn,
    named: _NamedIn | None,
    now: datetime,
    tick: int | None,
) -> list[WriteResult]:
    # The caller's transaction (it holds the jobs' locks) is the unit of all or nothing: a
    # savepoint of our own would cost two round trips a write and undo nothing it does not.
    with transaction.atomic(savepoint=False):
        named_points = _named_points(jobs, named, now) if named else None
        created = _insert_points(headline.columns, now)
        named_created = _insert_named(named_points, now) if named_points else None
        named_steps = {} if named_created is None else named_created.max_step_by_job()
        _ingest_log_write(jobs, created, named_created, now)
        # Progress follows what was stored: a retried batch's duplicates may carry other
        # values, and the stored ones win.
        extremes = _created_extremes(created)
        first_keys = {} if named is None else named.first_keys
        steps_before = [job.current_step for job in jobs]
        jobs_record_progress(
            [
                _summary(
                    job,
                    extremes.get(job.pk),
                    headline.diverged_steps.get(job.pk),
                    named_steps.get(job.pk),
                    first_keys.get(job.pk),
                )
                for job in jobs
            ],
            now=now,
            tick=tick,
        )
        # After the progress: which summary levels a job keeps follows its current_step.
        summary_add(
            created.columns(),
            {
                job.pk: (before, job.current_step)
                for job, before in zip(jobs, steps_before, strict=True)
            },
        )
    created_by_job = created.counts()
    named_by_job: Counter[int] = Counter()
    if named_created is not None:
        # Counted in numpy: a tick creates ~100,000 named points.
        owners, counts = np.unique(named_created.points.job_ids, return_counts=True)
        named_by_job.update(dict(zip(owners.tolist(), counts.tolist(), strict=True)))
    named_given = {} if named is None else named.counts
    return [
        WriteResult(
            created=created_by_job[job.pk],
            duplicates=given - created_by_job[job.pk],
            named_created=named_by_job[job.pk],
            named_duplicates=named_given.get(job.pk, 0) - named_by_job[job.pk],
        )
        for job, given in zip(jobs, headline.counts, strict=True)
    ]


@dataclass(frozen=True, eq=False)
class _HeadlineIn:
    """A write's headline points as columns (job id per point, then _BATCH_COLUMNS), job
    after job, each job's cut before its first diverged loss: from there on nothing is
    stored, and that step fails the job."""

    columns: list[np.ndarray]
    counts: list[int]  # per job, in the write's order: the points kept
    diverged_steps: dict[int, int]  # job id -> the step of its first diverged loss

    @classmethod
    def of_batches(cls, batches: Sequence[tuple[TrainingJob, MetricBatch]]) -> _HeadlineIn:
        """From a batch per job: the same columns, cut the same way, as a tick's."""
        jobs = [job for job, _ in batches]
        if not batches:
            return cls.of_columns(jobs, MetricBatch.empty(), [])
        headline = MetricBatch(
            **{
                name: np.concatenate([getattr(b, name) for _, b in batches])
                for name in _BATCH_COLUMNS
            }
        )
        ends = np.cumsum([len(batch) for _, batch in batches]).tolist()
        return cls.of_columns(jobs, headline, ends)

    @classmethod
    def of_columns(
        cls, jobs: Sequence[TrainingJob], headline: MetricBatch, ends: list[int]
    ) -> _HeadlineIn:
        """jobs[i]'s points being rows ends[i-1]:ends[i] of `headline` (see `JobsPoints`)."""
        lengths = lengths_of(ends)
        job_ids = np.array([job.pk for job in jobs], dtype=np.int64)
        job_of_row = np.repeat(np.arange(len(jobs)), lengths)
        columns = [job_ids[job_of_row]] + [getattr(headline, name) for name in _BATCH_COLUMNS]
        diverged_rows = np.flatnonzero(diverged_losses(headline.losses))
        if not diverged_rows.size:
            return cls(columns, lengths.tolist(), {})
        # The rows are in order within each job: its first diverged row is where it is cut.
        diverged_jobs, first = np.unique(job_of_row[diverged_rows], return_index=True)
        cuts = np.full(len(jobs), len(headline))
        cuts[diverged_jobs] = diverged_rows[first]
        kept = np.arange(len(headline)) < cuts[job_of_row]
        diverged_steps = zip(
            job_ids[diverged_jobs].tolist(),
            headline.steps[diverged_rows[first]].tolist(),
            strict=True,
        )
        return cls(
            [column[kept] for column in columns],
            np.bincount(job_of_row[kept], minlength=len(jobs)).tolist(),
            dict(diverged_steps),
        )


def _first_key(names: Sequence[str]) -> str:
    # A job's primary metric, once it logs named keys: "loss" if it logs one, else its first.
    return PRIMARY_METRIC_DEFAULT if PRIMARY_METRIC_DEFAULT in names else names[0]


class _Extremes(NamedTuple):
    """What a job's created headline points say about its progress: BatchSummary's fields
    after `job`, named and ordered as there."""

    max_step: int
    last_loss: float  # at max_step, as are the next two
    last_accuracy: float | None
    last_learning_rate: float | None
    min_loss: float  # the first lowest loss in the batch's order
    min_loss_step: int


@dataclass(frozen=True)
class _CreatedHeadline:
    """The headline points a write created, as columns over every job, job after job: built
    once, then read by the progress, the ingest log and the summary (per job, slicing and
    concatenating 10-point batches costs more in calls than in work)."""

    job_ids: np.ndarray  # per point
    epochs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray
    learning_rates: np.ndarray
    owners: np.ndarray  # the jobs with created points, in order
    starts: np.ndarray  # index of each owner's first point

    @classmethod
    def of(cls, columns: Sequence[np.ndarray], kept: np.ndarray | None = None) -> _CreatedHeadline:
        """From the write's columns (job_id, then _BATCH_COLUMNS), each job's rows together;
        `kept`, where some already existed, marks the rows created."""
        if kept is not None:
            columns = [column[kept] for column in columns]
        job_ids, epochs, steps, losses, accuracies, learning_rates = columns
        starts = np.flatnonzero(np.r_[len(job_ids) > 0, job_ids[1:] != job_ids[:-1]])
        return cls(
            job_ids, epochs, steps, losses, accuracies, learning_rates, job_ids[starts], starts
        )

    @classmethod
    def empty(cls) -> _CreatedHeadline:
        return cls.of([np.empty(0, dtype=np.int64)] * 3 + [np.empty(0)] * 3)

    def __len__(self) -> int:
        return len(self.job_ids)

    def counts(self) -> Counter[int]:
        lengths = np.diff(np.r_[self.starts, len(self)])
        return Counter(dict(zip(self.owners.tolist(), lengths.tolist(), strict=True)))

    def step_ranges(self) -> tuple[list[int], list[int], list[int]]:
        """The owners, with each one's lowest and highest created step."""
        if not len(self):
            return [], [], []
        return (
            self.owners.tolist(),
            np.minimum.reduceat(self.steps, self.starts).tolist(),
            np.maximum.reduceat(self.steps, self.starts).tolist(),
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The points as the summary takes them (`summary_add`)."""
        return {
            "job_id": self.job_ids,
            "step": self.steps,
            "loss": self.losses,
            "accuracy": self.accuracies,
            "learning_rate": self.learning_rates,
        }


def _created_extremes(created: _CreatedHeadline) -> dict[int, _Extremes]:
    """Each job's `_Extremes`, by job id, for the jobs with created points: a few numpy
    calls over all jobs' points at once (per job, argmax and argmin on a 10-point batch cost
    more in call overhead than in work)."""
    if not len(created):
        return {}
    starts = created.starts
    of_batch = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(created)]))
    steps, losses = created.steps, created.losses
    accuracies, rates = created.accuracies, created.learning_rates
    positions = np.arange(len(steps))
    beyond = len(steps)

    def first_at(values: np.ndarray, extreme: np.ndarray) -> np.ndarray:
        # Each batch's first position holding its extreme value (np.argmax/argmin's choice).
        return np.minimum.reduceat(np.where(values == extreme[of_batch], positions, beyond), starts)

    last = first_at(steps, np.maximum.reduceat(steps, starts))
    best = first_at(losses, np.minimum.reduceat(losses, starts))
    columns = zip(
        steps[last].tolist(),
        losses[last].tolist(),
        accuracies[last].tolist(),
        rates[last].tolist(),
        losses[best].tolist(),
        steps[best].tolist(),
        strict=True,
    )
    return {
        job_id: _Extremes(max_step, loss, _optional(accuracy), _optional(rate), low, low_step)
        for job_id, (max_step, loss, accuracy, rate, low, low_step) in zip(
            created.owners.tolist(), columns, strict=True
        )
    }


def _summary(
    job: TrainingJob,
    extremes: _Extremes | None,
    diverged_at_step: int | None,
    named_max_step: int | None,
    first_key: str | None,
) -> BatchSummary:
    # _Extremes' fields are BatchSummary's next after job, in order (positional: _asdict()
    # was a fortieth of a tick's Python); a job without created points has none of them.
    tail = {"diverged_at_step": diverged_at_step, "named_max_step": named_max_step}
    if extremes is None:
        return BatchSummary(job, **tail, first_key=first_key)
    return BatchSummary(job, *extremes, **tail, first_key=first_key)


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else value  # NaN: not reported


# PostgreSQL copies the points straight into the table when none of them exists yet: the
# table's own column types (binary COPY takes no casts). The bench's baselines copy into
# tables of these columns too.
POINT_COLUMNS = (
    ("job_id", "bigint"),
    ("epoch", "integer"),
    ("step", "bigint"),
    ("loss", "double precision"),
    ("accuracy", "double precision"),
    ("learning_rate", "double precision"),
    ("created_at", "timestamp with time zone"),
)
_COLUMNS = ", ".join(name for name, _ in POINT_COLUMNS)
# PostgreSQL stages the points by binary COPY (NaN, "not reported", travels as NULL).
_STAGED_POINTS = (
    ("job_id", "bigint"),
    ("epoch", "bigint"),
    ("step", "bigint"),
    ("loss", "double precision"),
    ("accuracy", "double precision"),
    ("learning_rate", "double precision"),
)
_POINTS_STAGING_TABLE = "trainmon_points_in"
_BATCH_COLUMNS = ("epochs", "steps", "losses", "accuracies", "learning_rates")


def _insert_points(columns: list[np.ndarray], now: datetime) -> _CreatedHeadline:
    """Store the headline points (`_HeadlineIn.columns`), ignoring steps their job already
    has; returns the points created (see `_insert_new`)."""
    job_ids = columns[0]
    if not len(job_ids):
        return _CreatedHeadline.empty()
    db_now = connection.ops.adapt_datetimefield_value(now)
    table = TrainingMetric._meta.db_table
    with connection.cursor() as cursor:
        micros = np.full(len(job_ids), pgcopy.timestamp_micros(now), dtype=np.int64)
        if _copied(cursor, table, POINT_COLUMNS, [*columns, micros]):
            return _CreatedHeadline.of(columns)
        source, params = staged_rows(cursor, _POINTS_STAGING_TABLE, _STAGED_POINTS, columns)
        created = _insert_new(
            cursor,
            table,
            _COLUMNS,
            f"SELECT job_id, epoch, step, loss, accuracy, learning_rate, %s {source}",
            [db_now, *params],
            owner="job_id",
            owners=job_ids,
            steps=columns[2],
            conflicts=connection.vendor == "postgresql",
        )
    return _CreatedHeadline.of(columns, created)


def _copied(
    cursor: CursorWrapper,
    table: str,
    columns: Sequence[tuple[str, str]],
    values: Sequence[np.ndarray],
) -> bool:
    """On PostgreSQL, binary COPY the rows straight into `table` if none of them is there
    yet; False (nothing written) if one is, or on SQLite.

    The common case, nothing stored yet, then costs one COPY: no staging table, no
    INSERT ... SELECT reading it back, no per-row conflict handling. A duplicate step
    aborts the COPY, which rolls back to its savepoint; the caller stages the rows and
    inserts them with ON CONFLICT instead.
    """
    if connection.vendor != "postgresql":
        return False
    types = [sql_type for _, sql_type in columns]
    if not pgcopy.fits(types, values):
        return False  # the staged INSERT refuses the value as PostgreSQL would (DataError)
    data = pgcopy.binary_copy_data(types, values)
    try:
        # psycopg's COPY errors reach us unwrapped: make a unique violation IntegrityError.
        with transaction.atomic(), connection.wrap_database_errors:
            pgcopy.copy_binary(cursor, table, [name for name, _ in columns], data)
    except IntegrityError as error:
        if getattr(error.__cause__, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise  # a CHECK constraint: the staged INSERT would fail the same way
        return False
    return True


_UNIQUE_VIOLATION = "23505"


def _insert_new(
    cursor: CursorWrapper,
    table: str,
    columns: str,
    select: str,
    params: list[Any],
    *,
    owner: str,
    owners: np.ndarray,
    steps: np.ndarray,
    conflicts: bool = False,
) -> np.ndarray | None:
    """INSERT the rows `select` yields, ignoring (owner, step) pairs the table has; returns
    a mask of the rows created, or None for all of them.

    Unless `conflicts` says a step exists (a COPY of these rows just failed on one), the
    first try is one plain INSERT: no per-row conflict handling and no rows sent back. If
    a step exists, that INSERT rolls back to its savepoint and runs again with ON CONFLICT
    DO NOTHING RETURNING, which says which rows were created.
    """
    # "WHERE true" tells SQLite's parser that a following ON CONFLICT belongs to the INSERT.
    insert = f"INSERT INTO {table} ({columns}) {select} WHERE true"
    if not conflicts:
        try:
            with transaction.atomic():
                cursor.execute(insert, params)
        except IntegrityError:
            pass
        else:
            return None
    cursor.execute(
        f"{insert} ON CONFLICT ({owner}, step) DO NOTHING RETURNING {owner}, step", params
    )
    return _created_mask(owners, steps, set(cursor.fetchall()))


def _created_mask(
    owners: np.ndarray, steps: np.ndarray, created: set[tuple[int, int]]
) -> np.ndarray:
    # A step given twice in one write is stored once, from its first occurrence.
    keep = np.zeros(len(steps), dtype=bool)
    for index, pair in enumerate(zip(owners.tolist(), steps.tolist(), strict=True)):
        if pair in created:
            keep[index] = True
            created.discard(pair)
    return keep


# --- named points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _NamedPoints:
    """Named points of a write, one row per point, with their key ids resolved."""

    job_ids: np.ndarray
    key_ids: np.ndarray
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray

    def take(self, rows: np.ndarray) -> _NamedPoints:
        return _NamedPoints(
            self.job_ids[rows],
            self.key_ids[rows],
            self.steps[rows],
            self.values[rows],
            self.times[rows],
        )


_KEY_COLUMNS = (("job_id", "bigint"), ("name", "text"))
_STAGED_NAMED = (
    ("key_id", "bigint"),
    ("step", "bigint"),
    ("value", "double precision"),
    ("reported_at", "double precision"),  # unix seconds
)
_NAMED_STAGING_TABLE = "trainmon_named_in"


@dataclass(frozen=True, eq=False)
class _NamedIn:
    """A write's named points as columns, whichever form they came in: every (job, name)
    pair the jobs' batches name, and per point its pair's index, job, step, value, time."""

    pairs: list[tuple[int, str]]
    pair_of_point: np.ndarray
    job_ids: np.ndarray
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray
    counts: dict[int, int]  # points given, per job with any
    first_keys: dict[int, str]  # the primary metric each job with points would take

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def of_batches(
        cls, jobs: Sequence[TrainingJob], named: Mapping[int, NamedBatch]
    ) -> _NamedIn | None:
        """The named points of `jobs` (others' are not this write's), None if there are
        none."""
        with_points = [
            (job.pk, named[job.pk]) for job in jobs if job.pk in named and len(named[job.pk])
        ]
        if not with_points:
            return None
        # Every batch's key indexes point into one array of all (job, name) pairs: a few
        # numpy calls for the whole write, not a handful per job.
        lengths = [len(batch) for _, batch in with_points]
        first_pair = np.cumsum([0] + [len(batch.names) for _, batch in with_points[:-1]])
        key_index = np.concatenate([batch.key_index for _, batch in with_points])
        return cls(
            pairs=[(job_id, name) for job_id, batch in with_points for name in batch.names],
            pair_of_point=key_index + np.repeat(first_pair, lengths),
            job_ids=np.repeat(np.array([job_id for job_id, _ in with_points]), lengths),
            steps=np.concatenate([batch.steps for _, batch in with_points]),
            values=np.concatenate([batch.values for _, batch in with_points]),
            times=np.concatenate([batch.times for _, batch in with_points]),
            counts={
                job_id: length for (job_id, _), length in zip(with_points, lengths, strict=True)
            },
            first_keys={job_id: _first_key(batch.names) for job_id, batch in with_points},
        )

    @classmethod
    def of_jobs_points(cls, jobs: Sequence[TrainingJob], points: JobsPoints) -> _NamedIn | None:
        """jobs[i]'s named points being job i's of `points` (one set of names for all)."""
        batch = points.named
        if not len(batch):
            return None
        job_ids = [job.pk for job in jobs]
        lengths = lengths_of(points.named_ends)
        counts = {
            job_id: length
            for job_id, length in zip(job_ids, lengths.tolist(), strict=True)
            if length
        }
        return cls(
            pairs=[(job_id, name) for job_id in job_ids for name in batch.names],
            pair_of_point=batch.key_index
            + np.repeat(np.arange(len(jobs), dtype=np.int64) * len(batch.names), lengths),
            job_ids=np.repeat(np.array(job_ids, dtype=np.int64), lengths),
            steps=batch.steps,
            values=batch.values,
            times=batch.times,
            counts=counts,
            first_keys=dict.fromkeys(counts, _first_key(batch.names)),
        )


def _named_points(jobs: Sequence[TrainingJob], named: _NamedIn, now: datetime) -> _NamedPoints:
    """The named points of these jobs with their keys' ids, creating the keys they lack.

    Two statements: one reads the keys that exist (and each job's key count), one inserts
    the missing ones. A job that would pass the key limit raises `KeyLimitExceeded` between
    them, before anything is written.
    """
    # Only names with points get a key: a tick's batches name the validation keys, which
    # hold points only at an epoch's end (two thirds of its key lookups, otherwise).
    with_values = np.zeros(len(named.pairs), dtype=bool)
    with_values[named.pair_of_point] = True
    wanted = [pair for pair, used in zip(named.pairs, with_values.tolist(), strict=True) if used]
    ids = _key_ids(jobs, wanted, now)
    key_of = np.array([ids.get(pair, -1) for pair in named.pairs], dtype=np.int64)
    points = _NamedPoints(
        named.job_ids, key_of[named.pair_of_point], named.steps, named.values, named.times
    )
    if _in_key_step_order(points):
        return points  # so no (key, step) repeats: a tick's points come this way
    # A (key, step) given twice in one write is stored once, from its first occurrence
    # (lexsort is stable, so the first occurrence leads its run).
    order = np.lexsort((points.steps, points.key_ids))
    repeated = (np.diff(points.key_ids[order]) == 0) & (np.diff(points.steps[order]) == 0)
    if repeated.any():
        keep = np.ones(len(order), dtype=bool)
        keep[order[1:][repeated]] = False
        points = points.take(keep)
    return points


def _in_key_step_order(points: _NamedPoints) -> bool:
    """Whether the points are in strictly increasing (key, step) order: one pass, where
    sorting 100,000 points costs ~10 ms."""
    key_step = np.diff(points.key_ids)
    return bool(np.all((key_step > 0) | ((key_step == 0) & (np.diff(points.steps) > 0))))


def _key_ids(
    jobs: Sequence[TrainingJob], wanted: Sequence[tuple[int, str]], now: datetime
) -> dict[tuple[int, str], int]:
    table = MetricKey._meta.db_table
    source, params = json_rows(_KEY_COLUMNS, wanted)
    # Without the job ids, every key in the table was read and hashed (see only_ids).
    these_jobs, jobs_params = only_ids("k.job_id", sorted({job_id for job_id, _ in wanted}))
    with connection.cursor() as cursor:
        # A job's key count only matters when it gains keys: counted for the missing names
        # alone, so a write to existing keys (every tick after a job's first) counts nothing.
        cursor.execute(
            f"SELECT w.job_id, w.name, k.id,"
            f" CASE WHEN k.id IS NULL THEN"
            f" (SELECT COUNT(*) FROM {table} c WHERE c.job_id = w.job_id) END"
            f" FROM {source} AS w LEFT JOIN {table} k"
            f" ON k.job_id = w.job_id AND k.name = w.name{these_jobs}",
            [*params, *jobs_params],
        )
        rows = cursor.fetchall()
        ids = {(job_id, name): key_id for job_id, name, key_id, _ in rows if key_id is not None}
        # In the batch's order (the join's is the plan's), so errors name keys as sent.
        missing = [pair for pair in wanted if pair not in ids]
        limit = settings.TRAINMON_MAX_KEYS_PER_JOB
        counts = {job_id: count for job_id, _, key_id, count in rows if key_id is None}
        new_by_job: dict[int, list[str]] = {}
        for job_id, name in missing:
            new_by_job.setdefault(job_id, []).append(name)
        for job in jobs:
            new = new_by_job.get(job.pk, [])
            if new and counts[job.pk] + len(new) > limit:
                raise KeyLimitExceeded(job, limit, new)
        if not missing:
            return ids  # every write after a key's first: one round trip saved
        # The jobs are locked, so no other write creates their keys meanwhile.
        source, params = _rows_at(_KEY_COLUMNS, missing, now)
        cursor.execute(
            f"INSERT INTO {table} (created_at, job_id, name, count)"
            f" SELECT %s, job_id, name, 0 FROM {source} AS m WHERE true"
            f" RETURNING job_id, name, id",
            params,
        )
        ids.update({(job_id, name): key_id for job_id, name, key_id in cursor.fetchall()})
    return ids


@dataclass(frozen=True)
class _KeyRuns:
    """Created named points in (key, step) order, cut into one run per key."""

    points: _NamedPoints
    starts: np.ndarray  # index of each key's first (lowest-step) point
    lasts: np.ndarray  # index of each key's last (highest-step) point

    @classmethod
    def of(cls, points: _NamedPoints) -> _KeyRuns:
        if not _in_key_step_order(points):
            points = points.take(np.lexsort((points.steps, points.key_ids)))
        key_ids = points.key_ids
        starts = np.flatnonzero(np.r_[len(key_ids) > 0, key_ids[1:] != key_ids[:-1]])
        return cls(points, starts, np.r_[starts[1:], len(key_ids)][: len(starts)] - 1)

    def __len__(self) -> int:
        return len(self.starts)

    def first(self, column: str) -> list[Any]:
        return list(getattr(self.points, column)[self.starts].tolist())

    def last(self, column: str) -> list[Any]:
        return list(getattr(self.points, column)[self.lasts].tolist())

    def max_step_by_job(self) -> dict[int, int]:
        """The highest named step each job got."""
        highest: dict[int, int] = {}
        for job_id, step in zip(self.first("job_ids"), self.last("steps"), strict=True):
            highest[job_id] = max(step, highest.get(job_id, step))
        return highest


def _insert_named(points: _NamedPoints, now: datetime) -> _KeyRuns:
    """Store the named points, their keys' summaries and stats; returns the points created."""
    table = NamedMetric._meta.db_table
    with connection.cursor() as cursor:
        micros = _timestamp_micros(points.times)
        if micros is not None and _copied(
            cursor,
            table,
            NAMED_POINT_COLUMNS,
            [points.key_ids, points.steps, points.values, micros],
        ):
            created = None
        else:
            source, params = staged_rows(
                cursor,
                _NAMED_STAGING_TABLE,
                _STAGED_NAMED,
                [points.key_ids, points.steps, points.values, points.times],
            )
            created = _insert_new(
                cursor,
                table,
                "key_id, step, value, reported_at",
                f"SELECT key_id, step, value, {_from_unix_seconds('reported_at')} {source}",
                params,
                owner="key_id",
                owners=points.key_ids,
                steps=points.steps,
                conflicts=connection.vendor == "postgresql",
            )
    runs = _KeyRuns.of(points if created is None else points.take(created))
    counts = _key_stats_update(runs, now)
    created_points = runs.points
    key_points_add(
        {
            "key_id": created_points.key_ids,
            "step": created_points.steps,
            "value": created_points.values,
        },
        counts,
    )
    return runs


# The named points' table columns, for the direct COPY (see `_copied`) and the bench.
NAMED_POINT_COLUMNS = (
    ("key_id", "bigint"),
    ("step", "bigint"),
    ("value", "double precision"),
    ("reported_at", "timestamp with time zone"),
)
# Unix seconds of 2000-01-01 UTC, PostgreSQL's timestamp epoch.
_PG_EPOCH_UNIX = 946_684_800


def _timestamp_micros(unix_seconds: np.ndarray) -> np.ndarray | None:
    """Unix seconds as binary timestamptz, computed as PostgreSQL's to_timestamp() does;
    None if one is not finite (to_timestamp() then says what is wrong)."""
    if not np.isfinite(unix_seconds).all():
        return None
    return np.rint((unix_seconds - _PG_EPOCH_UNIX) * 1e6).astype(np.int64)


def _from_unix_seconds(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"to_timestamp({column})"
    # Django's SQLite datetime text, in UTC.
    return f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', {column}, 'unixepoch')"


def _rows_at(
    columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], now: datetime
) -> tuple[str, list[Any]]:
    """`json_rows`' SELECT and the statement's parameters: the time `now`, then the rows."""
    source, params = json_rows(columns, rows)
    return source, [connection.ops.adapt_datetimefield_value(now), *params]


_KEY_STATS_COLUMNS = (
    ("id", "bigint"),
    ("count", "bigint"),
    ("first_step", "bigint"),
    ("last_step", "bigint"),
    ("last_value", "double precision"),
    ("min_value", "double precision"),
    ("max_value", "double precision"),
)
_KEY_STATS_STAGING_TABLE = "trainmon_key_stats_in"


def _key_stats_update(runs: _KeyRuns, now: datetime) -> np.ndarray:
    """Fold the created points into their keys' running stats: one UPDATE for all keys.
    Returns each run's key's point count after it (whether the key is summarised follows).

    The stats travel as numpy columns (staged rows, NaN as NULL): a tick has thousands of
    keys, and a Python tuple and a JSON value a stat cost more than the UPDATE itself.
    """
    if not len(runs):
        return np.empty(0, dtype=np.int64)
    points, starts, lasts = runs.points, runs.starts, runs.lasts
    finite = np.isfinite(points.values)
    any_finite = np.logical_or.reduceat(finite, starts)
    lowest = np.minimum.reduceat(np.where(finite, points.values, np.inf), starts)
    highest = np.maximum.reduceat(np.where(finite, points.values, -np.inf), starts)
    columns = [
        points.key_ids[starts],
        lasts - starts + 1,
        points.steps[starts],
        points.steps[lasts],
        points.values[lasts],  # NaN, stored as NULL; +-inf stays
        np.where(any_finite, lowest, np.nan),  # no finite value: NULL
        np.where(any_finite, highest, np.nan),
    ]
    table = MetricKey._meta.db_table
    later = f"u.last_step >= COALESCE({table}.last_step, -1)"
    db_now = connection.ops.adapt_datetimefield_value(now)
    # Without the ids, 10 ms a chunk at 36,000 keys (see only_ids).
    only_these, only_params = only_ids(f"{table}.id", columns[0].tolist())
    with connection.cursor() as cursor:
        source, params = staged_rows(cursor, _KEY_STATS_STAGING_TABLE, _KEY_STATS_COLUMNS, columns)
        cursor.execute(
            f"UPDATE {table} SET last_reported_at = %s, count = {table}.count + u.count,"
            f" first_step = CASE WHEN {table}.first_step IS NULL OR u.first_step <"
            f" {table}.first_step THEN u.first_step ELSE {table}.first_step END,"
            f" last_value = CASE WHEN {later} THEN u.last_value ELSE {table}.last_value END,"
            f" last_step = CASE WHEN {later} THEN u.last_step ELSE {table}.last_step END,"
            f" min_value = CASE WHEN {table}.min_value IS NULL OR u.min_value <"
            f" {table}.min_value THEN u.min_value ELSE {table}.min_value END,"
            f" max_value = CASE WHEN {table}.max_value IS NULL OR u.max_value >"
            f" {table}.max_value THEN u.max_value ELSE {table}.max_value END"
            f" {source} AS u WHERE {table}.id = u.id{only_these}"
            f" RETURNING {table}.id, {table}.count",
            [db_now, *params, *only_params],
        )
        counted = np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 2)
    # RETURNING's order is the database's: put the counts in the runs' (key id) order.
    counted = counted[np.argsort(counted[:, 0])]
    counts: np.ndarray = counted[np.searchsorted(counted[:, 0], columns[0]), 1]
    return counts


_LOG_COLUMNS = (
    ("created_at", "timestamp with time zone"),
    ("job_id", "bigint"),
    ("seq", "bigint"),
    # NULL for the headline series: given as floats, NaN for NULL (key ids are far below
    # 2**53, so exact).
    ("key_id", "bigint"),
    ("min_step", "bigint"),
    ("max_step", "bigint"),
)


def _ingest_log_write(
    jobs: Sequence[TrainingJob],
    headline: _CreatedHeadline,
    named: _KeyRuns | None,
    now: datetime,
) -> None:
    """One log row per series that got points in this write, at the job's next ingest_seq
    (`jobs_record_progress` moves the job there)."""
    seq = {job.pk: job.ingest_seq + 1 for job in jobs}
    job_ids, lows, highs = headline.step_ranges()
    key_ids = [math.nan] * len(job_ids)
    if named is not None and len(named):
        job_ids += named.first("job_ids")
        key_ids += named.first("key_ids")
        lows += named.first("steps")
        highs += named.last("steps")
    if not job_ids:
        return
    columns = [
        np.array(job_ids, dtype=np.int64),
        np.array([seq[job_id] for job_id in job_ids], dtype=np.int64),
        np.array(key_ids, dtype=np.float64),
        np.array(lows, dtype=np.int64),
        np.array(highs, dtype=np.int64),
    ]
    table = IngestLog._meta.db_table
    names = [name for name, _ in _LOG_COLUMNS]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # New rows under no constraint but the id's: COPY them straight in. Staged and
            # read back by an INSERT, they took 24 ms of a 1,000-job chunk of a 10-step
            # tick; COPYed, 14.
            types = [sql_type for _, sql_type in _LOG_COLUMNS]
            created_at = np.full(len(job_ids), pgcopy.timestamp_micros(now), dtype=np.int64)
            data = pgcopy.binary_copy_data(types, [created_at, *columns])
            pgcopy.copy_binary(cursor, table, names, data)
            return
        source, params = json_columns(_LOG_COLUMNS[1:], columns)
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(names)})"
            f" SELECT %s, job_id, seq, CAST(key_id AS bigint), min_step, max_step FROM {source}"
            " AS l",
            [connection.ops.adapt_datetimefield_value(now), *params],
        )


def ingest_log_prune(*, now: datetime | None = None) -> int:
    """Delete ingest log rows older than TRAINMON_INGEST_LOG_SECONDS; returns how many.

    A poll whose cursor is older than what is left gets a reload, so pruning loses nothing.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.TRAINMON_INGEST_LOG_SECONDS)
    deleted, _ = IngestLog.objects.filter(created_at__lt=cutoff).delete()
    return deleted


# --- the simulation tick ----------------------------------------------------------------------


@dataclass(frozen=True)
class TickResult:
    jobs_advanced: int = 0
    points_written: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    job_ids: tuple[int, ...] = ()  # the jobs this tick advanced, in id order


def tick_slot(moment: datetime) -> int:
    """The scheduled tick `moment` falls in: one slot per TRAINMON_TICK_SECONDS since the epoch.

    Beat sends ticks at least a period apart, so the slots of their send times never repeat.
    """
    return math.floor(moment.timestamp() / settings.TRAINMON_TICK_SECONDS)


def simulation_due_job_ids(*, tick: int | None = None, limit: int | None = None) -> list[int]:
    """Ids of the running simulated jobs that `tick` has yet to advance, in id order."""
    ids = _due_for_tick(tick).order_by("pk").values_list("pk", flat=True)
    return list(ids if limit is None else ids[:limit])


def simulation_advance(
    *,
    job_ids: Sequence[int] | None = None,
    now: datetime | None = None,
    tick: int | None = None,
) -> TickResult:
    """Advance every running simulated job (or only those in `job_ids`) by one tick.

    Each job gets its next `steps_per_tick` points (fewer at the end) in one transaction, with
    a fixed number of queries however many jobs run: one SELECT claims the jobs,
    `metric_batches_write` stores every point and every job's progress in bulk (completion,
    divergence and, for a scheduled tick, the job's `last_tick` go with the progress).

    `tick` names a scheduled tick (see `tick_slot`): a job it, or a later tick, already
    advanced is skipped, so a replayed or duplicated tick writes nothing. Without one the
    call is an ad-hoc tick (the `simulate` command, scripts) and always advances.

    On PostgreSQL a job locked by a concurrent tick is skipped, not waited for: that tick is
    advancing it. So a job moves at most once per tick; if tick k is still busy with it when
    tick k+1 claims, it sits k+1 out. Pause and cancel are status changes the next tick sees.
    """
    now = now or timezone.now()
    with transaction.atomic():
        claim = (
            _due_for_tick(tick)
            .select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
            .defer(*_TICK_UNUSED_FIELDS)
        )
        if job_ids is not None:
            job_ids = list(job_ids)
            # The id range too: given only the list, PostgreSQL scanned every running job
            # (or the whole table) and kept 500; a chunk's ids are dense, so its range
            # reads about as many index entries as it claims.
            bounds = (min(job_ids, default=0), max(job_ids, default=0))
            claim = claim.filter(InArray(F("pk"), job_ids), pk__range=bounds)
        jobs = list(claim.order_by("pk"))
        if not jobs:
            return TickResult()
        _commit_without_waiting_for_the_disk()
        results = _advance_each_alone_if_needed(jobs, now, tick)
    return TickResult(
        jobs_advanced=len(jobs),
        points_written=sum(result.created for result in results),
        jobs_completed=sum(job.status == TrainingJob.Status.COMPLETED for job in jobs),
        jobs_failed=sum(job.status == TrainingJob.Status.FAILED for job in jobs),
        job_ids=tuple(job.pk for job in jobs),
    )


def _commit_without_waiting_for_the_disk() -> None:
    """Let this transaction's COMMIT return before its WAL reaches the disk (PostgreSQL).

    A tick's points are a pure function of each job's seed and steps, and the job's progress
    commits with them: a crash loses at most the last few hundred milliseconds of ticks as a
    whole, jobs and points together, and the next ticks write the same points again. Waiting
    for the flush held each chunk's worker idle ~2 ms. Writes that carry a user's data (the
    API, MLflow) keep waiting.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


# Job fields a tick never reads: loading them (JSON, dates, text) was a third of the time
# Django took to build 1,000 claimed jobs. Read anyway (the failure path may), each costs
# one query.
_TICK_UNUSED_FIELDS = (
    "owner",
    "experiment",
    "name",
    "description",
    "model_name",
    "dataset",
    "hyperparameters",
    "tags",
    "inputs",
    "run_uuid",
    "lifecycle",
    "created_at",
    "started_at",
    "updated_at",
    "finished_at",
    "last_tick",
)


def _advance_each_alone_if_needed(
    jobs: list[TrainingJob], now: datetime, tick: int | None
) -> list[WriteResult]:
    """Advance the claimed jobs together; if that fails, alone, failing the jobs at fault.

    One bad job (parameters from before today's bounds, a bug it alone hits) must not stop
    every user's jobs, so a write that fails for a reason of its own (bad data, not a lost
    connection or a busy database, which the task's retry handles) is retried job by job,
    each in its own savepoint: the jobs that fail again are marked failed with the error as
    their reason, the others advance. The healthy path stays one bulk write.
    """
    try:
        with transaction.atomic():
            return _advance(jobs, now, tick)
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.warning("tick: bulk write failed, advancing %d jobs one by one", len(jobs))
    results = []
    for job in jobs:
        job.refresh_from_db()  # the failed write changed the instances, not the rows
        try:
            with transaction.atomic():
                [result] = _advance([job], now, tick)
        except (OperationalError, InterfaceError):
            raise
        except Exception as error:
            logger.exception("tick: job %s failed to advance", job.pk)
            job_fail(job=job, reason=_simulation_failure(job, error))
            result = WriteResult(created=0, duplicates=0)
        results.append(result)
    return results


def _advance(jobs: list[TrainingJob], now: datetime, tick: int | None) -> list[WriteResult]:
    """Write each job's next headline points and the named points at their steps, and mark
    the jobs advanced by `tick`."""
    # Every job's points in one numpy pass, written as such: per job, numpy's call overhead
    # outweighs the work for 10 or 100 steps.
    return jobs_points_write(
        jobs, simulated_batches(_simulated_runs(jobs), now.timestamp()), now=now, tick=tick
    )


def _simulated_runs(jobs: Sequence[TrainingJob]) -> SimulatedRuns:
    # A running job already at its last step gets an empty batch, which completes it.
    lengths = np.array([job.simulation_length for job in jobs], dtype=np.int64).reshape(-1, 2)
    total_steps, steps_per_epoch = lengths[:, 0], lengths[:, 1]
    start_steps = np.array([job.current_step for job in jobs], dtype=np.int64)
    steps_per_tick = np.array([job.steps_per_tick for job in jobs], dtype=np.int64)
    return SimulatedRuns(
        initial_losses=np.array([job.initial_loss for job in jobs], dtype=np.float64),
        final_losses=np.array([job.final_loss for job in jobs], dtype=np.float64),
        decay_rates=np.array([job.decay_rate for job in jobs], dtype=np.float64),
        seeds=np.array([job.seed & UINT64_MASK for job in jobs], dtype=np.uint64),
        base_learning_rates=np.array([job.base_learning_rate for job in jobs], dtype=np.float64),
        warmup_steps=np.array([job.warmup_steps for job in jobs], dtype=np.int64),
        diverge_at_steps=np.array(
            [
                NEVER_DIVERGES if job.diverge_at_step is None else job.diverge_at_step
                for job in jobs
            ],
            dtype=np.int64,
        ),
        start_steps=start_steps,
        counts=np.maximum(0, np.minimum(steps_per_tick, total_steps - start_steps)),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )


def _simulation_failure(job: TrainingJob, error: Exception) -> str:
    detail = str(error).strip().splitlines()[0][:SIMULATION_ERROR_CHARS] if str(error) else ""
    return f"simulation error at step {job.current_step}: {type(error).__name__}" + (
        f": {detail}" if detail else ""
    )


def _due_for_tick(tick: int | None) -> QuerySet[TrainingJob]:
    jobs = TrainingJob.objects.filter(
        status=TrainingJob.Status.RUNNING, source=TrainingJob.Source.SIMULATED
    )
    if tick is not None:
        jobs = jobs.filter(Q(last_tick__isnull=True) | Q(last_tick__lt=tick))
    return jobs
