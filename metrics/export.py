"""Full-resolution exports of a job's points, streamed so memory stays flat.

Pages are read by keyset over the (job_id, step) unique index: each page is one short query
that starts where the last one ended, so a million-point export never holds more than a
page and never keeps a cursor open across the response. On PostgreSQL both exports stream
through COPY instead, which is many times faster and equally flat. Either way the text goes
out in chunks of about EXPORT_CHUNK_CHARS: one HTTP chunk per row made a million-point
export through gunicorn twenty times slower than the export itself.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils.text import slugify

from jobs.models import TrainingJob
from metrics.models import MetricKey, NamedMetric, TrainingMetric

EXPORT_PAGE_SIZE = 5000
EXPORT_CHUNK_CHARS = 256 * 1024
EXPORT_COLUMNS = ("step", "epoch", "loss", "accuracy", "learning_rate", "created_at")
FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
_FILENAME_SLUG_LENGTH = 60


def export_filename(job: TrainingJob, fmt: str, *, suffix: str = "") -> str:
    """A filename that is safe in any header or filesystem: ascii slug, no path parts."""
    slug = slugify(job.name)[:_FILENAME_SLUG_LENGTH].strip("-") or "metrics"
    tail = f"-{suffix}" if suffix else ""
    return f"trainmon-job-{job.pk}-{slug}{tail}.{fmt}"


def export_pages(
    job: TrainingJob, page_size: int = EXPORT_PAGE_SIZE
) -> Iterator[list[tuple[Any, ...]]]:
    """The job's points as lists of EXPORT_COLUMNS tuples, in step order, page by page."""
    after = -1
    while True:
        page = list(
            TrainingMetric.objects.filter(job_id=job.pk, step__gt=after)
            .order_by("step")
            .values_list(*EXPORT_COLUMNS)[:page_size]
        )
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = page[-1][0]


def export_csv_chunks(job: TrainingJob, page_size: int = EXPORT_PAGE_SIZE) -> Iterator[str]:
    """CSV text: a header row, then one row per point; empty cells where nothing was reported."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield _drain(buffer)
    if connection.vendor == "postgresql":
        yield from _in_chunks(_postgres_copy(job, _PG_CSV_ROW, "csv"))
        return
    for page in export_pages(job, page_size):
        writer.writerows(
            (step, epoch, loss, accuracy, rate, created.isoformat())
            for step, epoch, loss, accuracy, rate, created in page
        )
        yield _drain(buffer)


# Timestamps formatted as Python's isoformat() writes them, so both paths agree.
_PG_ISO_TIMESTAMP = (
    "to_char(created_at AT TIME ZONE 'UTC', "
    "CASE WHEN date_part('microseconds', created_at)::bigint % 1000000 = 0 "
    'THEN \'YYYY-MM-DD"T"HH24:MI:SS"+00:00"\' '
    'ELSE \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\' END)'
)
_PG_CSV_ROW = f"step, epoch, loss, accuracy, learning_rate, {_PG_ISO_TIMESTAMP}"


def _pg_json_number(column: str) -> str:
    # JSON has no NaN or Infinity: null, as dumps_finite writes them.
    return (
        f"CASE WHEN {column} IS NULL OR {column} IN ('NaN', 'Infinity', '-Infinity') "
        f"THEN 'null' ELSE {column}::text END"
    )


# One compact JSON object per point, keys in EXPORT_COLUMNS order; no value holds a
# backslash, so COPY's text format passes each object through unchanged.
_PG_JSON_ROW = (
    "'{\"step\":' || step || ',\"epoch\":' || epoch"
    f" || ',\"loss\":' || {_pg_json_number('loss')}"
    f" || ',\"accuracy\":' || {_pg_json_number('accuracy')}"
    f" || ',\"learning_rate\":' || {_pg_json_number('learning_rate')}"
    f" || ',\"created_at\":\"' || {_PG_ISO_TIMESTAMP} || '\"}}'"
)


def _postgres_copy(job: TrainingJob, row_sql: str, fmt: str) -> Iterator[str]:
    """The job's points, one text line per point in step order, streamed by COPY: ~20x
    faster than paging through the ORM."""
    table = TrainingMetric._meta.db_table
    return _copy_lines(
        f"COPY (SELECT {row_sql} FROM {table} WHERE job_id = {int(job.pk)} ORDER BY step) "
        f"TO STDOUT WITH (FORMAT {fmt})"
    )


def _copy_lines(sql: str) -> Iterator[str]:
    # Memory stays flat: the socket applies back-pressure.
    with connection.cursor() as cursor, cursor.copy(sql) as copy:
        for data in copy:
            yield bytes(data).decode()


def _in_chunks(lines: Iterable[str], separator: str = "") -> Iterator[str]:
    """The lines joined by `separator`, in pieces of at least EXPORT_CHUNK_CHARS."""
    pending: list[str] = []
    size = 0
    lead = ""  # the separator between two pieces
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= EXPORT_CHUNK_CHARS:
            yield lead + separator.join(pending)
            pending, size, lead = [], 0, separator
    if pending:
        yield lead + separator.join(pending)


def export_json_chunks(job: TrainingJob, page_size: int = EXPORT_PAGE_SIZE) -> Iterator[str]:
    """One JSON document: {"job": {...}, "points": [{"step": ..., ...}, ...]}.

    The points have the shape the API's POST /api/v1/jobs/<id>/metrics/ takes (plus
    created_at), so an export can be sent back to another trainmon.
    """
    header = {
        "id": job.pk,
        "name": job.name,
        "status": job.status,
        "source": job.source,
        "model_name": job.model_name,
        "dataset": job.dataset,
        "hyperparameters": job.hyperparameters,
        "total_epochs": job.total_epochs,
        "steps_per_epoch": job.steps_per_epoch,
    }
    yield '{"job":' + json.dumps(header, separators=(",", ":")) + ',"points":['
    if connection.vendor == "postgresql":
        objects = (line.rstrip("\n") for line in _postgres_copy(job, _PG_JSON_ROW, "text"))
        yield from _in_chunks(objects, separator=",")
        yield "]}\n"
        return
    separator = ""
    for page in export_pages(job, page_size):
        points = [
            {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "accuracy": accuracy,
                "learning_rate": rate,
                "created_at": created.isoformat(),
            }
            for step, epoch, loss, accuracy, rate, created in page
        ]
        yield separator + _json_list_items(points)
        separator = ","
    yield "]}\n"


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _json_list_items(points: list[dict[str, Any]]) -> str:
    return dumps_finite(points)[1:-1]


def dumps_finite(data: Any) -> str:
    """Compact JSON; JSON has no NaN, so a non-finite float (which no write path stores)
    becomes null rather than invalid JSON."""
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite_only(data), separators=(",", ":"))


def _finite_only(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite_only(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite_only(value) for value in data]
    return data


# --- named series -------------------------------------------------------------------------
# Long format: one row per point, (key, step, value, timestamp), keys by name, each key's
# points in step order. Key by key, each read walks the (key, step) unique index: no sort.

NAMED_EXPORT_COLUMNS = ("key", "step", "value", "timestamp")


def named_export_keys(job: TrainingJob, names: Collection[str] | None = None) -> list[MetricKey]:
    """The job's keys to export, by name: all of them, or those of `names` it has."""
    keys = MetricKey.objects.filter(job_id=job.pk).only("id", "name").order_by("name")
    if names is not None:
        keys = keys.filter(name__in=list(names))
    return list(keys)


def named_export_pages(
    key: MetricKey, page_size: int = EXPORT_PAGE_SIZE
) -> Iterator[list[tuple[int, float | None, datetime]]]:
    """One key's points as (step, value, reported_at) lists, in step order, page by page."""
    after = -1
    while True:
        page = list(
            NamedMetric.objects.filter(key_id=key.pk, step__gt=after)
            .order_by("step")
            .values_list("step", "value", "reported_at")[:page_size]
        )
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = page[-1][0]


def named_csv_chunks(
    job: TrainingJob, names: Collection[str] | None = None, page_size: int = EXPORT_PAGE_SIZE
) -> Iterator[str]:
    """CSV: key,step,value,timestamp; an empty value where it was NaN or infinite."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NAMED_EXPORT_COLUMNS)
    yield _drain(buffer)
    keys = named_export_keys(job, names)
    if connection.vendor == "postgresql":
        yield from _in_chunks(
            line for key in keys for line in _postgres_named_copy(key, _PG_NAMED_CSV_ROW, "csv")
        )
        return
    for key in keys:
        for page in named_export_pages(key, page_size):
            writer.writerows(
                (key.name, step, _finite(value), reported.isoformat())
                for step, value, reported in page
            )
            yield _drain(buffer)


def named_json_chunks(
    job: TrainingJob, names: Collection[str] | None = None, page_size: int = EXPORT_PAGE_SIZE
) -> Iterator[str]:
    """One JSON document: {"job": {...}, "keys": [...], "points": [{"key", "step", "value",
    "timestamp"}, ...]}; value null where it was NaN or infinite."""
    keys = named_export_keys(job, names)
    header = {"id": job.pk, "name": job.name, "status": job.status, "source": job.source}
    yield (
        '{"job":'
        + json.dumps(header, separators=(",", ":"))
        + ',"keys":'
        + json.dumps([key.name for key in keys], separators=(",", ":"))
        + ',"points":['
    )
    if connection.vendor == "postgresql":
        objects = (
            line.rstrip("\n")
            for key in keys
            for line in _postgres_named_copy(key, _PG_NAMED_JSON_ROW, "text")
        )
        yield from _in_chunks(objects, separator=",")
        yield "]}\n"
        return
    separator = ""
    for key in keys:
        for page in named_export_pages(key, page_size):
            points = [
                {
                    "key": key.name,
                    "step": step,
                    "value": _finite(value),
                    "timestamp": reported.isoformat(),
                }
                for step, value, reported in page
            ]
            yield separator + _json_list_items(points)
            separator = ","
    yield "]}\n"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


_PG_NAMED_TIMESTAMP = _PG_ISO_TIMESTAMP.replace("created_at", "p.reported_at")
_PG_NAMED_CSV_ROW = (
    "k.name, p.step, "
    "CASE WHEN p.value IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE p.value END, "
    f"{_PG_NAMED_TIMESTAMP}"
)
# Key names hold no quote or backslash (KEY_NAME_RE), so they go into JSON as they are.
_PG_NAMED_JSON_ROW = (
    '\'{"key":"\' || k.name || \'","step":\' || p.step'
    f" || ',\"value\":' || {_pg_json_number('p.value')}"
    f" || ',\"timestamp\":\"' || {_PG_NAMED_TIMESTAMP} || '\"}}'"
)


def _postgres_named_copy(key: MetricKey, row_sql: str, fmt: str) -> Iterator[str]:
    """One key's points, one text line each in step order, streamed by COPY."""
    points = NamedMetric._meta.db_table
    keys = MetricKey._meta.db_table
    return _copy_lines(
        f"COPY (SELECT {row_sql} FROM {points} p JOIN {keys} k ON k.id = p.key_id "
        f"WHERE p.key_id = {int(key.pk)} ORDER BY p.step) TO STDOUT WITH (FORMAT {fmt})"
    )
