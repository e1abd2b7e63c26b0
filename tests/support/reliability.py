"""What the reliability tests check after attacking the engine: the points tell the truth.

A simulated job's stored history must be exactly what one uninterrupted run would have
written: steps 0..current_step-1, each once, with the simulator's values for that step,
progress fields that agree with the points, and a chart summary equal to an aggregate of the
points. Duplicates are impossible (UniqueConstraint), so gaps, overshoots, stale progress,
shifted values and a summary that counted a point twice or not at all are what a fault could
leave behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import numpy as np
from django.db import connection

from bench.processes import wait_until
from jobs.models import TrainingJob
from metrics.models import MetricSummary, TrainingMetric
from metrics.services import simulator_for, tick_slot
from metrics.summary import rebuild_sql

# Values travel through float8 columns unchanged; the tolerance only absorbs last-bit noise.
VALUE_TOLERANCE = 1e-12
# pg_stat_activity states of a connection inside a transaction (a tick writing).
IN_TRANSACTION = {"active", "idle in transaction"}
AIM_POLL_SECONDS = 0.005
# Summation order differs between the maintained summary and a fresh aggregate.
SUM_TOLERANCE = 1e-9
_EXPECTED_SUMMARY = "reliability_expected_summary"


def history_problems(jobs: Iterable[TrainingJob]) -> list[str]:
    """All that is wrong with these simulated jobs' points, progress and chart summary."""
    problems: list[str] = []
    ids = [job.pk for job in jobs]
    for job in TrainingJob.objects.filter(pk__in=ids).order_by("pk"):
        problems += _job_problems(job)
    return problems + summary_problems(ids)


def summary_problems(job_ids: list[int]) -> list[str]:
    """Summary buckets (what charts show) that differ from an aggregate of the stored points."""
    summary = MetricSummary._meta.db_table
    columns = [f.column for f in MetricSummary._meta.concrete_fields if not f.primary_key]
    key = ("job_id", "width", "bucket")
    exact = [c for c in columns if c not in key and c != "sum_loss"]  # a float sum: see below
    differs = " OR ".join(f"e.{column} IS DISTINCT FROM s.{column}" for column in exact)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE {_EXPECTED_SUMMARY} AS"
            f" SELECT {', '.join(columns)} FROM {summary} WITH NO DATA"
        )
        try:
            where = "WHERE m.job_id = ANY(%s)"
            metrics = TrainingMetric._meta.db_table
            cursor.execute(rebuild_sql(_EXPECTED_SUMMARY, metrics, where), [job_ids])
            cursor.execute(
                f"SELECT coalesce(e.job_id, s.job_id), coalesce(e.width, s.width),"
                f" coalesce(e.bucket, s.bucket), e.count, s.count"
                f" FROM {_EXPECTED_SUMMARY} e FULL JOIN"
                f" (SELECT * FROM {summary} WHERE job_id = ANY(%s)) s"
                f" ON {' AND '.join(f'e.{column} = s.{column}' for column in key)}"
                f" WHERE e.job_id IS NULL OR s.job_id IS NULL OR {differs}"
                f" OR abs(e.sum_loss - s.sum_loss) > %s * greatest(1, abs(e.sum_loss))",
                [job_ids, SUM_TOLERANCE],
            )
            wrong = cursor.fetchall()
        finally:
            cursor.execute(f"DROP TABLE {_EXPECTED_SUMMARY}")
    return [
        f"job {job_id}: summary bucket {bucket} of width {width} holds {got} points, not {want}"
        f" (or other values than its points)"
        for job_id, width, bucket, want, got in wrong
    ]


def _job_problems(job: TrainingJob) -> list[str]:
    rows = list(
        TrainingMetric.objects.filter(job=job)
        .order_by("step")
        .values_list("step", "epoch", "loss", "accuracy", "learning_rate")
    )
    name = f"job {job.pk} ({job.status}, current_step {job.current_step}/{job.total_steps})"
    steps = [row[0] for row in rows]
    if steps != list(range(job.current_step)):
        missing = sorted(set(range(job.current_step)) - set(steps))
        extra = sorted(set(steps) - set(range(job.current_step)))
        return [
            f"{name}: {len(steps)} points, missing steps {missing[:10]}, "
            f"steps past current_step {extra[:10]}"
        ]
    problems = []
    if job.current_step > job.total_steps:
        problems.append(f"{name}: past its total steps")
    finished = job.current_step == job.total_steps
    if finished != (job.status == TrainingJob.Status.COMPLETED):
        problems.append(f"{name}: completed status does not match its step count")
    if job.status == TrainingJob.Status.COMPLETED and job.finished_at is None:
        problems.append(f"{name}: completed without finished_at")
    if not rows:
        return problems
    expected = simulator_for(job).generate_metrics_batch(
        0, job.current_step, job.total_steps, job.steps_per_epoch
    )
    stored = np.array(rows, dtype=np.float64)  # NULL accuracy / learning rate become NaN
    for column, values in enumerate(
        (
            expected.steps,
            expected.epochs,
            expected.losses,
            expected.accuracies,
            expected.learning_rates,
        )
    ):
        if not np.allclose(stored[:, column], values, rtol=0, atol=VALUE_TOLERANCE, equal_nan=True):
            bad = int(np.flatnonzero(~np.isclose(stored[:, column], values, equal_nan=True))[0])
            problems.append(f"{name}: step {bad} is not the simulator's value (column {column})")
            break
    last, best = stored[-1], stored[:, 2].min()
    if job.last_loss != last[2]:
        problems.append(f"{name}: last_loss {job.last_loss} is not step {int(last[0])}'s")
    if job.best_loss != best:
        problems.append(f"{name}: best_loss {job.best_loss} is not the lowest, {best}")
    return problems


def steps_of(jobs: Iterable[TrainingJob]) -> dict[int, int]:
    return dict(
        TrainingJob.objects.filter(pk__in=[job.pk for job in jobs]).values_list(
            "pk", "current_step"
        )
    )


def wait_for_ticks_after(
    jobs: Iterable[TrainingJob], moment_slot: int, *, timeout: float, what: str
) -> None:
    """Wait (bounded) until every job was advanced by a tick sent after slot `moment_slot`."""
    ids = [job.pk for job in jobs]

    def all_advanced() -> bool:
        behind = TrainingJob.objects.filter(pk__in=ids).exclude(last_tick__gt=moment_slot)
        return not behind.exists()

    wait_until(all_advanced, timeout=timeout, what=what, poll=0.2)


def current_slot() -> int:
    from django.utils import timezone

    return tick_slot(timezone.now())


def backends_of(application_name: str) -> list[tuple[int, str, int | None]]:
    """(pid, state, client port) of the test database's connections tagged `application_name`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, client_port FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s"
            " AND pid <> pg_backend_pid()",
            [application_name],
        )
        return cursor.fetchall()


def in_transaction_client_port(application_name: str, *, timeout: float) -> int | None:
    """Wait (bounded) until a connection tagged `application_name` is inside a transaction.

    Returns its client's TCP port (see `pid_of_client_port`), or None if none was seen.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, state, port in backends_of(application_name):
            if state in IN_TRANSACTION:
                return port
        time.sleep(AIM_POLL_SECONDS)
    return None


def pid_of_client_port(port: int, candidates: Iterable[int]) -> int | None:
    """Which of the `candidates` processes holds the local TCP socket on `port` (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in candidates:
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return None
