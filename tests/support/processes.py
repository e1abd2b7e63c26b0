"""trainmon's real processes (Celery worker and beat, gunicorn, redis-server), for tests.

A test starts them against its PostgreSQL test database (mark it
`django_db(transaction=True)` so they see what it writes), with a redis-server of their own as
the broker, and gets them back as `Process` objects it may kill, restart or inspect. Each
process runs in a process group of its own, so stopping it also stops what it forked (the
worker's pool, its embedded beat); `running_processes` stops every one of them when the test
ends, passed or failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote, urlencode, urlunparse

from tests.support.services import missing_service

PROJECT_DIR = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
# The worker and beat run the project's own settings; the web server the test settings, which
# only swap the static storage (no collectstatic in tests) and the password hasher.
WORKER_SETTINGS = "trainmon.settings"
WEB_SETTINGS = "tests.settings"
# A Celery worker takes 5-7 s to exit on SIGTERM; tests do not wait for a clean exit.
STOP_GRACE_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.05
LOG_TAIL_CHARS = 4000
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], object], *, timeout: float, what: str, poll: float = POLL_SECONDS
) -> None:
    """Return as soon as `condition()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class Process:
    """One started program, in its own process group, logging to a file."""

    def __init__(
        self, name: str, args: Sequence[str], *, env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Process:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {self.starts + 1}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.log_path.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches its children
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def children(self) -> list[int]:
        """Pids of the processes it forked (a worker's pool processes, its embedded beat)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in text.split()]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until the log of the current run contains `text` (the process must stay up)."""
        marker = f"--- start {self.starts}:"

        def logged() -> bool:
            if not self.alive:
                raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
            return text in self.log().rpartition(marker)[2]

        wait_until(logged, timeout=timeout, what=f"{self.name} to log {text!r}")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return f"--- {self.name} ({self.log_path}) ---\n{self.log()[-chars:]}"

    def signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process and everything it forked, as a crash or the OOM killer would."""
        self.signal_group(signal.SIGKILL)
        self._reap()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL whatever is left of the group after `grace` seconds."""
        if self.popen is None:
            return
        if self.alive:
            self.signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        self.signal_group(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        assert self.popen is not None
        self.popen.wait(START_TIMEOUT_SECONDS)
        # Orphaned group members (a pool process) are reparented, not reaped by us: wait until
        # the group is empty so nothing outlives the test.
        wait_until(
            lambda: not _group_exists(self.pid), timeout=10, what=f"{self.name}'s group to exit"
        )


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies count as existing for killpg; a group of zombies only is gone for our purpose.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


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
        process = Process(name, args, env={**self.env, **(env or {})}, log_path=home / "log")
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
        wait_until(
            lambda: _alive_or_fail(process) and port_open(port),
            timeout=START_TIMEOUT_SECONDS,
            what=f"{name} to listen on port {port}",
        )
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
        wait_for_redis(process, port)
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


def wait_for_redis(process: Process, port: int) -> None:
    wait_until(
        lambda: _alive_or_fail(process) and port_open(port),
        timeout=START_TIMEOUT_SECONDS,
        what=f"redis-server on port {port}",
    )


def _alive_or_fail(process: Process) -> bool:
    if not process.alive:
        raise AssertionError(f"{process.name} exited early:\n{process.log_tail()}")
    return True


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
