"""What the benchmark needs around the figures: its own database, a web server, a table."""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.processes import PROJECT_DIR, Process, ProcessError, free_port

BASE_DIR = PROJECT_DIR


class BenchError(Exception):
    """Something the benchmark cannot run with; str() is the message for the user."""


# --- the database -----------------------------------------------------------------------------


def own_database_url(database_url: str, suffix: str, why: str) -> tuple[str, str, str]:
    """(URL of a tool's own database NAME_suffix, its name, URL of the maintenance database).

    Refuses anything but PostgreSQL, saying `why`: the figures are about the production
    database, and the tools create and drop their own database next to NAME.
    """
    parts = urlsplit(database_url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql", "postgis"}:
        raise BenchError(
            f"this needs PostgreSQL: set DATABASE_URL=postgres://USER@HOST:PORT/NAME (got "
            f"{parts.scheme or 'no'} database URL). {why} It creates and drops its own "
            f"database NAME_{suffix} on that server."
        )
    name = f"{parts.path.lstrip('/') or 'trainmon'}_{suffix}"
    own_url = urlunsplit(parts._replace(path=f"/{name}"))
    admin_url = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    return own_url, name, admin_url


def bench_database_url(database_url: str) -> tuple[str, str, str]:
    return own_database_url(database_url, "bench", "SQLite is not benchmarked.")


@contextmanager
def own_database(admin_url: str, name: str) -> Iterator[None]:
    """Create the database `name` (dropping a leftover of a crashed run), drop it afterwards."""
    import psycopg

    def run(sql: str) -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(sql)

    try:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        run(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        raise BenchError(f"cannot create the database {name}: {error}") from error
    try:
        yield
    finally:
        from django.db import connections

        connections.close_all()
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the environment -------------------------------------------------------------------------


def tool_environment(database_url: str, var_dir: Path) -> dict[str, str]:
    """The environment of a tool and of the processes it starts, also applied to os.environ so
    Django inside the tool reads the same: the production settings in local mode on
    `database_url`, a fresh secret key, warnings-only logs, files under `var_dir`."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "trainmon.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "0",
        "TRAINMON_LOCAL": "1",
        "TRAINMON_VAR_DIR": str(var_dir),
        "TRAINMON_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BASE_DIR), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)
    return env


# --- the web server ---------------------------------------------------------------------------


def procfile_web_options() -> list[str]:
    """The Procfile's gunicorn options (workers, threads, keep-alive), so the tools measure the
    server `make run` starts; --bind and the access log are each tool's own."""
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            words = shlex.split(line.removeprefix("web:"))
            options = words[words.index("trainmon.wsgi:application") + 1 :]
            kept = []
            while options:
                option = options.pop(0)
                if option in {"--bind", "--access-logfile"}:
                    options.pop(0)
                else:
                    kept.append(option)
            return kept
    raise BenchError("the Procfile has no web: line")


@contextmanager
def gunicorn(
    env: Mapping[str, str], *options: str, log_path: Path | None = None
) -> Iterator[tuple[int, Process]]:
    """Serve trainmon with gunicorn as the Procfile does, plus `options`, on a free loopback
    port; yields (port, process) once /healthz answers; stops it and its workers afterwards.
    Its output goes to `log_path`, or to the terminal without one."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "trainmon.wsgi:application",
        *procfile_web_options(),
        f"--bind=127.0.0.1:{port}",
        "--log-level=warning",
        "--timeout=120",
        *options,
    ]
    server = Process("gunicorn", command, env=env, log_path=log_path)
    with server:
        try:
            server.wait_for(
                lambda: _healthy(port),
                what=f"gunicorn to answer on port {port}",
                poll=0.2,
            )
        except (ProcessError, TimeoutError) as error:
            raise BenchError(str(error)) from error
        yield port, server


def _healthy(port: int) -> bool:
    client = Http(port)
    try:
        return client.request("GET", "/healthz")[0] == 200
    except OSError:
        return False
    finally:
        client.close()


class Http:
    """A keep-alive HTTP/1.1 client for one loopback server, cookie and headers fixed."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = {"Host": "127.0.0.1", **(headers or {})}
        self._connection: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            self._connection.request(method, path, body, {**self.headers, **(headers or {})})
            response = self._connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except (http.client.HTTPException, OSError):
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# --- measuring --------------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Figure:
    """One line of the table. `ratio` = median / baseline median (None without a baseline)."""

    name: str
    unit: str
    target: str
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def baseline(self) -> float | None:
        return statistics.median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        if self.median is None or not self.baseline:
            return None
        return self.median / self.baseline

    def as_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "samples": self.samples,
            "baseline_samples": self.baseline_samples,
            "notes": self.notes,
            **({"error": self.error} if self.error else {}),
            **self.extra,
        }


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    header = ("name", "unit", "median", "min-max", "baseline", "ratio", "target", "met?")
    rows = [header]
    for f in figures:
        spread = f"{number(min(f.samples))}-{number(max(f.samples))}" if f.samples else "—"
        met = "error" if f.error else {True: "yes", False: "NO", None: "—"}[f.met]
        rows.append(
            (
                f.name,
                f.unit,
                number(f.median),
                spread,
                number(f.baseline),
                number(f.ratio),
                f.target,
                met,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(path: Path, figures: list[Figure], meta: dict[str, Any]) -> None:
    data = {"figures": {f.name: f.as_json() for f in figures}, **meta}
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
