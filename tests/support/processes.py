"""trainmon's real processes (Celery worker and beat, gunicorn, redis-server), for tests.

A test starts them against its PostgreSQL test database (mark it
`django_db(transaction=True)` so they see what it writes), with a redis-server of their own as
the broker, and gets them back as `Process` objects it may kill, restart or inspect. Each
process runs in a process group of its own, so stopping it also stops what it forked (the
worker's pool, its embedded beat); `running_processes` stops every one of them when the test
ends, passed or failed. Starting and stopping one process is `bench.processes`, shared with the
benchmark tools.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode, urlunparse

from bench.processes import PROJECT_DIR, Process, free_port
from tests.support.services import missing_service

BIN_DIR = Path(sys.executable).parent
# The worker and beat run the project's own settings; the web server the test settings, which
# only swap the static storage (no collectstatic in tests) and the password hasher.
WORKER_SETTINGS = "trainmon.settings"
WEB_SETTINGS = "tests.settings"
# A Celery worker takes 5-7 s to exit on SIGTERM; tests do not wait for a clean exit.
STOP_GRACE_SECONDS = 1.0
# The environment a test controls; anything else the test run has set is left out.
_CONTROLLED_ENV = (
    "DJANGO_SETTINGS_MODULE",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "TRAINMON_LOCAL",
    "TRAINMON_VAR_DIR",
    "TRAINMON_TICK_SECONDS",
    "TRAINMON_TICK_CHUNK_SIZE",
    "DJANGO_SECRET_KEY",
)


def shared_database_url(*, application_name: str | None = None) -> str:
    """The current (test) database as a DATABASE_URL for another process.

    `application_name` tags that process's connections in `pg_stat_activity`.
    """
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("other processes can only share a PostgreSQL test database")
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "127.0.0.1"
    netloc = f"{credentials}@{host}" + (f":{db['PORT']}" if db["PORT"] else "")
    query = urlencode({"application_name": application_name}) if application_name else ""
    return urlunparse(("postgres", netloc, "/" + quote(db["NAME"]), "", query, ""))


class Processes:
    """The processes of one test, sharing a directory, a database and a broker."""

    def __init__(
        self,
        directory: Path,
        *,
        broker_url: str,
        tick_seconds: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.broker_url = broker_url
        self.var_dir = directory / "var"
        self.var_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in _CONTROLLED_ENV}
        self.env = {
            **base,
            "PYTHONPATH": str(PROJECT_DIR),
            "PYTHONUNBUFFERED": "1",
            "TRAINMON_LOCAL": "1",
            "TRAINMON_VAR_DIR": str(self.var_dir),
            "DATABASE_URL": shared_database_url(),
            "CELERY_BROKER_URL": broker_url,
            "TRAINMON_TICK_SECONDS": str(tick_seconds),
            **(env or {}),
        }
        self.started: list[Process] = []
        self.redis: Process | None = None  # the private broker, see `running_processes`
        self.redis_port = 0

    def process(
        self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Process:
        """A process (not yet started) whose log is `<directory>/<name>/log`."""
        home = self.directory / name
        home.mkdir(exist_ok=True)
        process = Process(
            name,
            args,
            env={**self.env, **(env or {})},
            log_path=home / "log",
            cwd=home,
            stop_grace=STOP_GRACE_SECONDS,
        )
        self.started.append(process)
        return process

    def worker(
        self,
        name: str,
        *,
        beat: bool = True,
        concurrency: int = 2,
        application_name: str | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> Process:
        """A Celery worker as the Procfile runs it: with an embedded beat unless `beat=False`.

        Started, and ready (consuming) when this returns unless `wait=False` (then call
        `wait_for_worker`). Each beat keeps its own schedule file.
        """
        args = [
            str(BIN_DIR / "celery"),
            "--app",
            "trainmon",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
        ]
        if beat:
            args += ["--beat", "--schedule", str(self.directory / name / "celerybeat-schedule")]
        env = {"DJANGO_SETTINGS_MODULE": WORKER_SETTINGS, **(env or {})}
        if application_name:
            env["DATABASE_URL"] = shared_database_url(application_name=application_name)
        process = self.process(name, args, env=env).start()
        return wait_for_worker(process) if wait else process

    def beat(self, name: str) -> Process:
        """A stand-alone `celery beat` with its own schedule file; started when this returns."""
        schedule = self.directory / name / "celerybeat-schedule"
        args = [
            str(BIN_DIR / "celery"),
            "--app",
            "trainmon",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(schedule),
        ]
        process = self.process(name, args, env={"DJANGO_SETTINGS_MODULE": WORKER_SETTINGS})
        process.start()
        process.wait_for_log("beat: Starting...")
        return process

    def gunicorn(self, name: str, *, port: int, secret_key: str) -> Process:
        """gunicorn as the Procfile runs it, on `port`; answering when this returns.

        `secret_key` is the test process's, so sessions it creates are valid here.
        """
        args = [
            str(BIN_DIR / "gunicorn"),
            "trainmon.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
        ]
        env = {"DJANGO_SETTINGS_MODULE": WEB_SETTINGS, "DJANGO_SECRET_KEY": secret_key}
        process = self.process(name, args, env=env).start()
        process.wait_for_port(port)
        return process

    def redis_server(self, name: str, *, port: int) -> Process:
        """A private, non-persistent redis-server on `port`; answering when this returns."""
        home = self.directory / name
        home.mkdir(exist_ok=True)
        args = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(home),
        ]
        process = self.process(name, args).start()
        process.wait_for_port(port)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def log_tails(self) -> str:
        return "\n".join(process.log_tail() for process in self.started)


def wait_for_worker(process: Process) -> Process:
    """Wait until a worker's current run consumes from the broker."""
    process.wait_for_log(" ready.")
    return process


@contextmanager
def running_processes(
    directory: Path, *, tick_seconds: float, env: Mapping[str, str] | None = None
) -> Iterator[Processes]:
    """A `Processes` with a broker of its own, all stopped when the block ends, however it ends.

    The broker is a private redis-server (`processes.redis`): no other test run, and no message
    left over from one, can reach these processes, and a test may stop it. A failure inside the
    block gets the tail of every process's log attached.
    """
    if shutil.which("redis-server") is None:
        missing_service("redis", "needs the redis-server program (Debian package redis-server)")
    port = free_port()
    processes = Processes(
        directory, broker_url=f"redis://127.0.0.1:{port}/0", tick_seconds=tick_seconds, env=env
    )
    try:
        processes.redis, processes.redis_port = processes.redis_server("redis", port=port), port
        yield processes
    except BaseException as error:
        error.add_note(processes.log_tails())
        raise
    finally:
        processes.stop_all()
