"""`make loadtest` (`python -m bench.loadtest`): many browsers watching live jobs, on loopback.

Needs PostgreSQL in DATABASE_URL. Creates the database NAME_loadtest next to NAME (dropping a
leftover one), migrates it, creates a user and --jobs running simulated jobs, starts gunicorn
(2 workers, as in the Procfile) on a free 127.0.0.1 port and the engine (a Celery worker with
its beat if CELERY_BROKER_URL is Redis, else `manage.py simulate` ticking once a second), then
logs in --pollers browsers through the login form and has each poll a job page's
`/jobs/<id>/poll/?cursor=<ingest position>` every --interval seconds, as the page does, loading the
dashboard's table now and then, for --duration seconds. Prints requests/s, latency
percentiles and errors (any status but 200/204/286, or a failed connection), stops everything it
started, drops the database. Exit status 1 if there was any error, 2 if it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.processes import LOG_TAIL_CHARS, Process
from bench.support import (
    BenchError,
    gunicorn,
    own_database,
    own_database_url,
    percentile,
    procfile_web_options,
    tool_environment,
)

HOST = "127.0.0.1"  # loopback only: this tool never sends load anywhere else
USERNAME = "loadtest"
# 204: a poll with nothing new; 286: a finished job's last poll (htmx stops polling)
OK_STATUSES = {200, 204, 286}
# Bounds, so a typo cannot turn this into a denial of service of the machine it runs on.
MAX_POLLERS = 1000
MAX_DURATION_SECONDS = 600
MAX_JOBS = 500
# Long enough that no job finishes during the longest run: 100 x 100 steps at 10 per tick.
JOB_EPOCHS = 100
JOB_STEPS_PER_EPOCH = 100
JOB_STEPS_PER_TICK = 10
REQUEST_TIMEOUT_SECONDS = 60
# Logins hash a password (PBKDF2, ~0.3 s of CPU each): a few at a time, as people arrive.
CONCURRENT_LOGINS = 8
POLL_DATA = re.compile(r'<script type="application/json" id="poll-data"[^>]*>(.*?)</script>', re.S)
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


# --- a small HTTP/1.1 client ------------------------------------------------------------------


class HttpError(Exception):
    """A request that got no (complete) answer: connection refused, reset, cut, timed out."""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Browser:
    """One browser: one keep-alive connection and a cookie jar.

    A request on a reused connection that the server closed meanwhile (gunicorn drops idle
    keep-alive connections after 2 s, the poll interval) is sent again on a new connection
    before any answer was read, as browsers do; `reconnects` counts those.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.reconnects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reused = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> Response:
        body = urlencode(form).encode() if form is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if form is not None:
            lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        try:
            response = await asyncio.wait_for(self._exchange(raw), REQUEST_TIMEOUT_SECONDS)
        except TimeoutError as error:
            await self.close()
            raise HttpError(f"no answer within {REQUEST_TIMEOUT_SECONDS} s") from error
        for name, value in response.headers:
            if name == "set-cookie":
                cookie_name, _, rest = value.partition("=")
                self.cookies[cookie_name.strip()] = rest.split(";", 1)[0]
        return response

    async def _exchange(self, raw: bytes) -> Response:
        for attempt in range(2):
            reused = self._writer is not None and self._reused
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
                    self._reused = False
                self._writer.write(raw)
                await self._writer.drain()
                assert self._reader is not None  # opened with the writer
                status_line = await self._reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed before answering")
            except (ConnectionError, asyncio.IncompleteReadError) as error:
                await self.close()
                if reused and attempt == 0:
                    self.reconnects += 1
                    continue
                raise HttpError(f"{type(error).__name__}: {error}") from error
            try:
                response = await self._read_rest(status_line)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as error:
                await self.close()
                raise HttpError(f"cut answer: {type(error).__name__}: {error}") from error
            self._reused = True
            if (response.header("connection") or "").lower() == "close":
                await self.close()
            return response
        raise AssertionError("unreachable")

    async def _read_rest(self, status_line: bytes) -> Response:
        assert self._reader is not None
        status = int(status_line.split()[1])
        headers: list[tuple[str, str]] = []
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        fields = dict(headers)
        if fields.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await self._reader.readline()).split(b";")[0], 16):
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readline()
            await self._reader.readline()
            body = b"".join(chunks)
        elif "content-length" in fields:
            body = await self._reader.readexactly(int(fields["content-length"]))
        elif status in {204, 304}:
            body = b""
        else:
            body = await self._reader.read()
            await self.close()
        return Response(status, headers, body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


# --- the pollers ------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    points_seen: int = 0
    reconnects: int = 0

    def record(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {message}")

    @property
    def all_latencies(self) -> list[float]:
        return [value for values in self.latencies.values() for value in values]


async def timed(
    browser: Browser, stats: Stats, kind: str, method: str, path: str, **kwargs: Any
) -> Response | None:
    """One request, recorded: its latency if answered, an error unless the status is expected."""
    started = time.perf_counter()
    try:
        response = await browser.request(method, path, **kwargs)
    except HttpError as error:
        stats.error(kind, f"{method} {path}: {error}")
        return None
    stats.record(kind, time.perf_counter() - started)
    expected = {302} if kind == "login" else OK_STATUSES
    if response.status not in expected:
        stats.error(kind, f"{method} {path}: HTTP {response.status}")
        return None
    return response


async def log_in(browser: Browser, password: str, stats: Stats, gate: asyncio.Semaphore) -> bool:
    async with gate:
        page = await timed(browser, stats, "login-page", "GET", "/accounts/login/")
        if page is None or not (match := CSRF_INPUT.search(page.text)):
            if page is not None:
                stats.error("login-page", "no CSRF token in the login form")
            return False
        form = {"username": USERNAME, "password": password, "csrfmiddlewaretoken": match[1]}
        answer = await timed(browser, stats, "login", "POST", "/accounts/login/", form=form)
        if answer is not None and "sessionid" not in browser.cookies:
            stats.error("login", "no session cookie after logging in")
            return False
        return answer is not None


async def watch_job(
    browser: Browser, job_id: int, stats: Stats, *, deadline: float, interval: float, every: int
) -> None:
    """What a job page does: load, fetch the series, poll for new points until the deadline."""
    # People open their pages at different moments: spread the loads over one interval.
    await asyncio.sleep(random.uniform(0, interval))
    await timed(browser, stats, "page", "GET", f"/jobs/{job_id}/")
    series = await timed(browser, stats, "series", "GET", f"/jobs/{job_id}/series/")
    cursor, status = 0, "running"
    if series is not None:
        data = json.loads(series.body)
        cursor, status = data["cursor"], data["status"]
    progress_seq = cursor
    htmx = {"HX-Request": "true", "HX-Trigger": "poll", "HX-Current-URL": f"/jobs/{job_id}/"}
    cycle = 0
    # htmx polls every `interval` from the page load, until the deadline.
    next_poll = time.monotonic() + interval
    while next_poll < deadline:
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
        next_poll = max(next_poll + interval, time.monotonic())
        cycle += 1
        # As charts.js asks: news since the page's ingest cursor, for the headline (no named
        # charts on these jobs), with the status and progress position the page shows.
        query = urlencode(
            {"cursor": cursor, "keys": "", "status": status, "progress_seq": progress_seq}
        )
        poll = await timed(
            browser, stats, "poll", "GET", f"/jobs/{job_id}/poll/?{query}", headers=htmx
        )
        if (news := _poll_news(poll)) is not None:
            stats.points_seen += len(news["headline"]["steps"])
            cursor, status = news["cursor"], news["status"]
            progress_seq = news.get("figures", {}).get("ingest_seq", cursor)
        if every and cycle % every == 0:
            # Now and then the user looks at the dashboard, whose table refreshes by htmx.
            await timed(browser, stats, "dashboard", "GET", "/", headers={"HX-Request": "true"})


def _poll_news(poll: Response | None) -> dict[str, Any] | None:
    """A poll's news: its JSON, or after a status change the JSON in its #poll-data; None
    for no news (204) or a failed request."""
    if poll is None or poll.status == 204:
        return None
    if (poll.header("content-type") or "").startswith("application/json"):
        news: dict[str, Any] = json.loads(poll.body)
        return news
    match = POLL_DATA.search(poll.text)
    return None if match is None else json.loads(match[1])


async def run_pollers(
    port: int, password: str, job_ids: list[int], args: argparse.Namespace
) -> tuple[Stats, dict[str, Any]]:
    stats = Stats()
    browsers = [Browser(port) for _ in range(args.pollers)]
    gate = asyncio.Semaphore(CONCURRENT_LOGINS)
    started = time.monotonic()
    logged_in = await asyncio.gather(*(log_in(b, password, stats, gate) for b in browsers))
    login_seconds = time.monotonic() - started
    window_start, client_cpu = time.monotonic(), time.process_time()
    deadline = window_start + args.duration
    watchers = [
        watch_job(
            browser,
            job_ids[index % len(job_ids)],
            stats,
            deadline=deadline,
            interval=args.interval,
            every=args.dashboard_every,
        )
        for index, browser in enumerate(browsers)
        if logged_in[index]
    ]
    await asyncio.gather(*watchers)
    window = time.monotonic() - window_start
    client_cpu = time.process_time() - client_cpu
    for browser in browsers:
        stats.reconnects += browser.reconnects
        await browser.close()
    return stats, {
        "login_seconds": login_seconds,
        "window_seconds": window,
        "client_cpu_seconds": client_cpu,
    }


# --- processes --------------------------------------------------------------------------------


def loadtest_database_url(database_url: str) -> tuple[str, str, str]:
    return own_database_url(
        database_url,
        "loadtest",
        "SQLite takes one writer at a time, so 100 pollers and a ticking engine would "
        "measure its lock waits.",
    )


def engine_command(engine: str, job_ids: list[int], duration: float, var_dir: Path) -> list[str]:
    if engine == "celery":
        return [
            *(sys.executable, "-m", "celery", "--app", "trainmon", "worker", "--beat"),
            *("--schedule", str(var_dir / "celerybeat-schedule"), "--concurrency", "2"),
            *("--loglevel", "WARNING"),
        ]
    ticks = math.ceil(duration) + 120  # outlives the run; stopped when it ends
    return [
        *(sys.executable, "manage.py", "simulate", *map(str, job_ids)),
        *("--ticks", str(ticks), "--interval", "1"),
    ]


# --- the run ----------------------------------------------------------------------------------


def prepare(jobs: int) -> tuple[str, list[int]]:
    """Migrate, collect static files, create the user and its running jobs."""
    import django
    from django.core.management import call_command

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connections

    from jobs.services import job_create

    call_command("migrate", verbosity=0, interactive=False)
    call_command("collectstatic", verbosity=0, interactive=False)
    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.create_user(USERNAME, password=password)
    job_ids = [
        job_create(
            owner=user,
            name=f"load-{index:03d}",
            total_epochs=JOB_EPOCHS,
            steps_per_epoch=JOB_STEPS_PER_EPOCH,
            steps_per_tick=JOB_STEPS_PER_TICK,
            model_name="resnet18",
            dataset="cifar10",
        ).pk
        for index in range(jobs)
    ]
    connections.close_all()
    return password, job_ids


def steps_done(job_ids: list[int]) -> int:
    from django.db import connections
    from django.db.models import Sum

    from jobs.models import TrainingJob

    total = TrainingJob.objects.filter(pk__in=job_ids).aggregate(Sum("current_step"))
    connections.close_all()
    return total["current_step__sum"] or 0


def report(
    args: argparse.Namespace, engine: str, stats: Stats, timing: dict[str, Any], steps: int
) -> str:
    window = timing["window_seconds"]
    measured = {k: v for k, v in stats.latencies.items() if not k.startswith("login")}
    latencies = [value for values in measured.values() for value in values]
    count = len(latencies)
    lines = [
        f"loadtest: {args.pollers} pollers on {args.jobs} jobs, every {args.interval:g} s, "
        f"for {window:.1f} s; gunicorn {' '.join(procfile_web_options())}; engine: {engine}",
        f"logins: {len(stats.latencies.get('login', []))} in {timing['login_seconds']:.1f} s",
        f"requests: {count} in {window:.1f} s = {count / window:.1f} requests/s ("
        + ", ".join(f"{kind} {len(values)}" for kind, values in sorted(measured.items()))
        + ")",
    ]
    if latencies:
        p50, p90, p99 = (percentile(latencies, q) * 1000 for q in (0.5, 0.9, 0.99))
        lines.append(
            f"latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms"
        )
        for kind, values in sorted(measured.items()):
            lines.append(
                f"  {kind}: p50 {percentile(values, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(values, 0.99) * 1000:.1f} ms ({len(values)} requests)"
            )
    lines.append(
        f"engine: {steps} steps simulated across the jobs; pollers received "
        f"{stats.points_seen} new points (all pollers together); "
        f"{stats.reconnects} idle connections reopened"
    )
    lines.append(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        f"this client used {timing['client_cpu_seconds']:.1f} s of CPU in the window"
    )
    errors = sum(stats.errors.values())
    lines.append(
        f"errors: {errors}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(stats.errors.items()))})" if errors else "")
    )
    lines += [f"  e.g. {example}" for example in stats.error_examples]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadtest", description=__doc__.split("\n")[0]
    )

    def bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
        def parse(text: str) -> float:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
            return value

        return parse

    parser.add_argument("--pollers", type=bounded(int, 1, MAX_POLLERS), default=100)
    parser.add_argument(
        "--duration", type=bounded(float, 1, MAX_DURATION_SECONDS), default=60.0, help="seconds"
    )
    parser.add_argument("--jobs", type=bounded(int, 1, MAX_JOBS), default=20)
    parser.add_argument(
        "--interval", type=bounded(float, 0.1, 60), default=2.0, help="seconds between polls"
    )
    parser.add_argument(
        "--dashboard-every",
        type=bounded(int, 0, 1000),
        default=10,
        help="load the dashboard's table every N polls (0: never)",
    )
    parser.add_argument(
        "--engine",
        choices=["auto", "celery", "simulate"],
        default="auto",
        help="auto: a Celery worker --beat if CELERY_BROKER_URL is redis://, else "
        "`manage.py simulate`",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        own_url, name, admin_url = loadtest_database_url(os.environ.get("DATABASE_URL", ""))
    except BenchError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2
    broker = os.environ.get("CELERY_BROKER_URL", "")
    engine = args.engine
    if engine == "auto":
        engine = "celery" if broker.startswith(("redis://", "rediss://")) else "simulate"
    if engine == "celery" and not broker.startswith(("redis://", "rediss://")):
        print("loadtest: --engine celery needs CELERY_BROKER_URL=redis://...", file=sys.stderr)
        return 2
    var_dir = Path(tempfile.mkdtemp(prefix="trainmon-loadtest-"))
    env = tool_environment(own_url, var_dir)
    try:
        with own_database(admin_url, name):
            print(f"loadtest: preparing database {name} ...", flush=True)
            password, job_ids = prepare(args.jobs)
            stats, timing, steps = run(
                args, env, engine=engine, password=password, job_ids=job_ids, var_dir=var_dir
            )
    except BenchError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
    print(report(args, engine, stats, timing, steps))
    if steps == 0:
        print("loadtest: the engine advanced no job: the run proves nothing", file=sys.stderr)
        return 1
    return 1 if stats.errors else 0


def run(
    args: argparse.Namespace,
    env: dict[str, str],
    *,
    engine: str,
    password: str,
    job_ids: list[int],
    var_dir: Path,
) -> tuple[Stats, dict[str, Any], int]:
    ticker = Process(
        "engine",
        engine_command(engine, job_ids, args.duration, var_dir),
        env=env,
        log_path=var_dir / "engine.log",
    )
    access_log = ("--access-logfile", str(var_dir / "access.log"))
    with (
        gunicorn(env, *access_log, log_path=var_dir / "gunicorn.log") as (port, server),
        ticker,
    ):
        before = steps_done(job_ids)
        print(
            f"loadtest: gunicorn on {HOST}:{port}, engine {engine}; logging in "
            f"{args.pollers} pollers, then {args.duration:g} s of polling ...",
            flush=True,
        )
        stats, timing = asyncio.run(run_pollers(port, password, job_ids, args))
        steps = steps_done(job_ids) - before
        for process in (server, ticker):
            if not process.alive:
                stats.error(process.name, f"exited with status {process.returncode}")
                print(process.log_tail(LOG_TAIL_CHARS), file=sys.stderr)
        if stats.errors:
            print(server.log_tail(LOG_TAIL_CHARS), file=sys.stderr)
    return stats, timing, steps


if __name__ == "__main__":
    sys.exit(main())
