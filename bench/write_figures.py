"""Issue 14, part 4: the write figures' honest limit and where a write's time goes.

- The limit: a hand-encoded binary COPY of the same rows into tables with the same data
  columns *and the same unique index* as trainmon's ((job_id, step) for the headline rows,
  (key_id, step) for the named ones), + commit. The idempotency guarantee needs that index,
  so no write path that keeps it can beat this.
- The breakdown: one write timed statement by statement (`WriteProfile`), so the figure's
  notes say which part to cut next.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
from django.db import connection, connections, transaction

from bench.support import Figure
from metrics import pgcopy
from metrics.points import MetricBatch
from metrics.services import NAMED_POINT_COLUMNS, POINT_COLUMNS

INDEXED_TABLE = "bench_indexed_metric"
INDEXED_NAMED_TABLE = "bench_indexed_named"
# The data columns of metrics_trainingmetric and metrics_namedmetric, each table with the
# unique index the write path relies on and nothing else.
INDEXED_COLUMNS = POINT_COLUMNS
INDEXED_NAMED_COLUMNS = NAMED_POINT_COLUMNS
_INDEXES = ((INDEXED_TABLE, "job_id, step"), (INDEXED_NAMED_TABLE, "key_id, step"))

# The named rows of a write as (key id, step, value) columns.
NamedRows = tuple[np.ndarray, np.ndarray, np.ndarray]


def indexed_tables() -> None:
    """(Re)create the indexed baseline tables, empty."""
    with connection.cursor() as cursor:
        for (table, unique), columns in zip(
            _INDEXES, (INDEXED_COLUMNS, INDEXED_NAMED_COLUMNS), strict=True
        ):
            definition = ", ".join(f"{name} {sql_type}" for name, sql_type in columns)
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} ({definition}, UNIQUE ({unique}))")


def indexed_seed(job_ids: Sequence[int]) -> tuple[int, int]:
    """Give the baseline tables the rows trainmon holds for these jobs (untimed), so both
    indexes hold the same (owner, step) pairs when the same new rows arrive. Returns the
    headline and named row counts copied."""
    ids = [int(job_id) for job_id in job_ids]
    placeholders = ", ".join(["%s"] * len(ids))
    headline = ", ".join(name for name, _ in INDEXED_COLUMNS)
    named = ", ".join(name for name, _ in INDEXED_NAMED_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {INDEXED_TABLE}, {INDEXED_NAMED_TABLE}")
        cursor.execute(
            f"INSERT INTO {INDEXED_TABLE} ({headline}) SELECT {headline}"
            f" FROM metrics_trainingmetric WHERE job_id IN ({placeholders}) ORDER BY job_id, step",
            ids,
        )
        headline_rows = cursor.rowcount
        cursor.execute(
            f"INSERT INTO {INDEXED_NAMED_TABLE} ({named}) SELECT n.key_id, n.step, n.value,"
            f" n.reported_at FROM metrics_namedmetric n JOIN metrics_metrickey k"
            f" ON k.id = n.key_id WHERE k.job_id IN ({placeholders}) ORDER BY n.key_id, n.step",
            ids,
        )
        named_rows = cursor.rowcount
        cursor.execute(f"ANALYZE {INDEXED_TABLE}")
        cursor.execute(f"ANALYZE {INDEXED_NAMED_TABLE}")
    return headline_rows, named_rows


def copy_indexed_baseline(
    batches: Sequence[tuple[int, MetricBatch]], now: datetime, named: NamedRows | None = None
) -> float:
    """Seconds to encode the rows as binary COPY, COPY them into the indexed tables and
    commit."""
    return copy_binary_into((INDEXED_TABLE, INDEXED_NAMED_TABLE), batches, now, named)


def copy_binary_into(
    tables: tuple[str, str],
    batches: Sequence[tuple[int, MetricBatch]],
    now: datetime,
    named: NamedRows | None = None,
) -> float:
    """Seconds to encode the rows as binary COPY, COPY the headline rows into `tables[0]`
    and the named ones into `tables[1]` (both with the points tables' data columns), and
    commit. The encoding is timed too: trainmon starts from the same arrays."""
    started = time.perf_counter()
    micros = pgcopy.timestamp_micros(now)
    batches = [(job_id, b) for job_id, b in batches if len(b)]
    data = None
    if batches:
        job_ids = np.concatenate([np.full(len(b), job_id, dtype=np.int64) for job_id, b in batches])
        columns = [
            job_ids,
            np.concatenate([b.epochs for _, b in batches]),
            np.concatenate([b.steps for _, b in batches]),
            np.concatenate([b.losses for _, b in batches]),
            np.concatenate([b.accuracies for _, b in batches]),
            np.concatenate([b.learning_rates for _, b in batches]),
            np.full(len(job_ids), micros, dtype=np.int64),
        ]
        data = pgcopy.binary_copy_data([t for _, t in INDEXED_COLUMNS], columns)
    named_data = None
    if named is not None and len(named[0]):
        times = np.full(len(named[0]), micros, dtype=np.int64)
        named_data = pgcopy.binary_copy_data([t for _, t in INDEXED_NAMED_COLUMNS], [*named, times])
    headline_table, named_table = tables
    with transaction.atomic(), connection.cursor() as cursor:
        if data is not None:
            pgcopy.copy_binary(cursor, headline_table, [n for n, _ in INDEXED_COLUMNS], data)
        if named_data is not None:
            names = [n for n, _ in INDEXED_NAMED_COLUMNS]
            pgcopy.copy_binary(cursor, named_table, names, named_data)
    return time.perf_counter() - started


def use_indexed_baseline(figure: Figure, indexed_samples: list[float], target: float) -> None:
    """Make the indexed binary COPY the figure's baseline; the old one stays as a note."""
    old = figure.baseline
    old_ratio = figure.ratio
    figure.extra |= {"baseline_copy_rows": old, "ratio_vs_copy_rows": old_ratio}
    figure.baseline_samples = list(indexed_samples)
    figure.met = figure.ratio is not None and figure.ratio >= target
    figure.target = f"ratio >= {target} (vs indexed binary COPY)"
    figure.notes.append(
        "baseline (issue 14): a hand-encoded binary COPY of the same rows into tables with the "
        "same data columns and the same unique index ((job_id, step); (key_id, step) for named "
        "rows), no id or other index, holding the same (owner, step) pairs as trainmon's tables "
        "for these series before each write, + commit"
    )
    bare, indexed = figure.extra.get("baseline_binary_copy"), figure.baseline
    if bare and indexed:
        figure.notes.append(
            f"the unique index is {1e6 / indexed - 1e6 / bare:.2f} µs of the baseline's "
            f"{1e6 / indexed:.2f} µs per point (the same binary COPY into bare tables: "
            f"{1e6 / bare:.2f} µs)"
        )
    if old is not None:
        figure.notes.append(
            f"earlier baseline: psycopg 3 COPY (write_row) into bare tables: {old:,.0f}/s, "
            f"ratio {old_ratio or 0:.3f} against that"
        )


# --- where a write's time goes ----------------------------------------------------------------

# Statement text -> part of a write, first match wins.
_PARTS: tuple[tuple[str, str], ...] = (
    (r"FOR UPDATE", "lock jobs (SELECT ... FOR UPDATE)"),
    (r"^CREATE TEMPORARY TABLE", "staging: create/empty temp tables"),
    (r"^INSERT INTO metrics_trainingmetric\b", "headline: INSERT ... SELECT (+ unique index)"),
    (r"^INSERT INTO metrics_metricsummary\b", "headline: summary upsert (kept levels)"),
    (r"^SELECT s\.job_id, s\.width", "headline: levels reached, read from the one below"),
    (r"metrics_metrickey k ON|^INSERT INTO metrics_metrickey\b", "named: key ids"),
    (r"^INSERT INTO metrics_namedmetric\b", "named: INSERT ... SELECT (+ unique index)"),
    (r"^INSERT INTO metrics_keysummary\b", "named: summary upsert (kept levels)"),
    (r"^UPDATE metrics_metrickey\b", "named: key stats UPDATE"),
    (r"^UPDATE jobs_trainingjob\b", "progress UPDATE"),
    (r"^SAVEPOINT|^RELEASE SAVEPOINT|^ROLLBACK TO", "savepoints"),
)
_COPY_PARTS = {
    "trainmon_points_in": "staging: binary COPY headline",
    "trainmon_named_in": "staging: binary COPY named",
    "trainmon_summary_in": "staging: binary COPY headline summary rows",
    "trainmon_key_summary_in": "staging: binary COPY named summary rows",
    "trainmon_key_stats_in": "staging: binary COPY key stats rows",
    "metrics_ingestlog": "ingest log COPY",
}


class WriteProfile:
    """Wall time of each part of the writes made inside `with profile.measure():`.

    Statements are timed through Django's execute_wrapper, COPYs and their encoding by
    wrapping metrics.pgcopy, the commit by wrapping the connection's; `extra` wraps other
    functions (module, attribute, part name), such as point generation. What is left of
    the total is Python: arrays, summary levels in numpy, Django.
    """

    def __init__(self, extra: Sequence[tuple[Any, str, str]] = ()) -> None:
        self.extra = list(extra)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.totals: list[float] = []
        # Parts of the Python remainder timed on their own, outside the measured writes.
        self.within_python: dict[str, list[float]] = defaultdict(list)

    def _add(self, part: str, seconds: float) -> None:
        self._current[part] = self._current.get(part, 0.0) + seconds

    def _execute(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any
    ) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, ctx)
        finally:
            text = sql.strip()
            part = next(
                (name for pattern, name in _PARTS if re.search(pattern, text)),
                f"other: {text[:40]}",
            )
            self._add(part, time.perf_counter() - started)

    def _deferred_checks_first(self, wrapper: Any) -> None:
        # Django makes FK constraints DEFERRABLE INITIALLY DEFERRED, so their checks run in
        # COMMIT. Firing them just before it, straight on psycopg's connection (no Django
        # wrapper counts it), times them apart from the WAL flush; the work is the same.
        timed_commit = wrapper.commit

        def commit() -> None:
            if wrapper.connection is not None and wrapper.vendor == "postgresql":
                started = time.perf_counter()
                wrapper.connection.execute("SET CONSTRAINTS ALL IMMEDIATE")
                self._add("deferred FK checks (fired before commit)", time.perf_counter() - started)
            timed_commit()

        wrapper.commit = commit

    @contextmanager
    def measure(self) -> Iterator[None]:
        self._current: dict[str, float] = {}
        wrapper = connections["default"]
        originals: list[tuple[Any, str, Any]] = []

        def wrap(owner: Any, name: str, part: str | Callable[[tuple[Any, ...]], str]) -> None:
            original = getattr(owner, name)

            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    label = part(args) if callable(part) else part
                    self._add(label, time.perf_counter() - started)

            originals.append((owner, name, original))
            setattr(owner, name, timed)

        wrap(pgcopy, "binary_copy_data", "staging: encode binary COPY (numpy)")
        wrap(pgcopy, "copy_binary", lambda args: _COPY_PARTS.get(args[1], f"COPY {args[1]}"))
        wrap(wrapper, "commit", "commit (WAL flush)")
        self._deferred_checks_first(wrapper)
        for owner, name, part in self.extra:
            wrap(owner, name, part)
        started = time.perf_counter()
        try:
            with wrapper.execute_wrapper(self._execute):
                yield
        finally:
            total = time.perf_counter() - started
            for owner, name, original in reversed(originals):
                if owner is wrapper:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)
        self._current["python (arrays, summary levels in numpy, Django)"] = total - sum(
            self._current.values()
        )
        for part, seconds in self._current.items():
            self.seconds[part].append(seconds)
        self.totals.append(total)

    def lines(self, points: int) -> list[str]:
        """One line per part, largest first: median ms, share of the total, µs per point."""
        total = statistics.median(self.totals)
        parts = sorted(
            ((statistics.median(samples), part) for part, samples in self.seconds.items()),
            reverse=True,
        )
        return (
            [
                f"{part}: {seconds * 1000:.1f} ms ({seconds / total:.0%}, "
                f"{seconds / points * 1e6:.2f} µs/point)"
                for seconds, part in parts
                if seconds >= 0.0005 * total
            ]
            + [
                f"  of the python, {part} (timed alone): {statistics.median(samples) * 1000:.1f} ms"
                for part, samples in self.within_python.items()
            ]
            + [f"total: {total * 1000:.1f} ms for {points:,} points (median of {len(self.totals)})"]
        )

    def as_json(self) -> dict[str, float]:
        within = {
            f"python: {part}": statistics.median(samples)
            for part, samples in self.within_python.items()
        }
        return (
            {part: statistics.median(samples) for part, samples in self.seconds.items()}
            | within
            | {"total": statistics.median(self.totals)}
        )


# In-process POSTs api_profile times (after one warm-up).
PROFILE_REPEATS = 5


def point_rows(batch: MetricBatch) -> Iterator[tuple[Any, ...]]:
    """(step, epoch, loss, accuracy, learning_rate) per point, as Python values."""
    return zip(
        batch.steps.tolist(),
        batch.epochs.tolist(),
        batch.losses.tolist(),
        batch.accuracies.tolist(),
        batch.learning_rates.tolist(),
        strict=True,
    )


def api_body(batch: MetricBatch, shape: str) -> bytes:
    """A POST .../metrics/ body of the batch's points: "columns" as clients/trainmon_client.py
    sends them, or "points" (rows, the older shape)."""
    # The client's own encoding, so the figure measures what it sends. Imported by name:
    # mypy checks clients/trainmon_client.py as the top-level module users copy it as.
    client = importlib.import_module("clients.trainmon_client")
    points = [
        {"step": s, "epoch": e, "loss": lo, "accuracy": a, "learning_rate": r}
        for s, e, lo, a, r in point_rows(batch)
    ]
    body = {"columns": client._columns(points)} if shape == "columns" else {"points": points}
    return json.dumps(body, allow_nan=False).encode()


def api_profile(
    user: Any,
    job: Any,
    *,
    simulator: Any,
    first_step: int,
    size: int,
    shape: str = "columns",
    repeats: int = PROFILE_REPEATS,
) -> WriteProfile:
    """Where one API batch's time goes: `repeats` POSTs of `size` new points from
    `first_step` on, in `shape` (see api_body), through Django's test client in this process
    (the whole middleware and ninja stack, no HTTP), one part per statement, plus the
    request's own Python."""
    from django.conf import settings
    from django.test import Client

    from accounts.services import api_token_create
    from metrics import api
    from metrics.api_schemas import metrics_body_for

    _, token = api_token_create(user=user, name="bench-profile")
    client = Client(SERVER_NAME="localhost")
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/v1/jobs/{job.pk}/metrics/"
    # metrics/api.py calls these by its own names for them: wrapped there.
    profile = WriteProfile(
        [
            (api, "batches_from_columns", "request: columns to numpy arrays, checks"),
            (api, "batches_from_points", "request: points to numpy arrays, checks"),
        ]
    )
    for index in range(repeats + 1):
        # Past the job's declared length (a hint, never a limit), so the simulator is told
        # a longer run.
        _, steps_per_epoch = job.simulation_length
        last = first_step + (repeats + 1) * size
        batch = simulator.generate_metrics_batch(
            first_step + index * size, size, last, steps_per_epoch
        )
        body = api_body(batch, shape)
        if index == 0:
            client.post(path, body, content_type="application/json", headers=headers)
            continue  # warm-up
        with profile.measure():
            answer = client.post(path, body, content_type="application/json", headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.content!r}")
        # As the endpoint parses the body (trainmon/api_bodies.py json_body).
        started = time.perf_counter()
        metrics_body_for(settings.TRAINMON_API_MAX_POINTS).model_validate_json(body)
        profile.within_python["pydantic model_validate_json of the body"].append(
            time.perf_counter() - started
        )
    return profile
