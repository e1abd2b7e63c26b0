"""Starting, watching and stopping trainmon's programs (gunicorn, Celery, redis-server).

The one process helper of the benchmark tools (`make bench`, `make loadtest`) and of the tests
that run real processes (`tests/support/processes.py`). Each process runs in a process group
of its own, so stopping it also stops what it forked (gunicorn's workers, a Celery worker's
pool and embedded beat), and nothing it started outlives the stop. Standard library only: the
apps never import this module, the tools and the tests do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import IO

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 60.0
# Time to exit cleanly on SIGTERM before the group gets SIGKILL (gunicorn finishes requests).
STOP_GRACE_SECONDS = 15.0
# Orphaned group members are reparented, not reaped by us; they go within this time.
GROUP_EXIT_SECONDS = 10.0
POLL_SECONDS = 0.05
LOG_TAIL_CHARS = 4000


class ProcessError(RuntimeError):
    """A process exited while something waited for it; str() carries its log's tail."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]  # (host, port) for AF_INET
        return port


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], object], *, timeout: float, what: str, poll: float = POLL_SECONDS
) -> None:
    """Return as soon as `condition()` is true; raise TimeoutError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class Process:
    """One program, started in its own process group, its output appended to `log_path`.

    Without a `log_path` the output goes where this process's goes. It may be started again
    after a stop or a kill; each start marks the log, so `wait_for_log` reads only the current
    run. As a context manager it is started on entry and stopped on exit.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path | None = None,
        cwd: Path = PROJECT_DIR,
        stop_grace: float = STOP_GRACE_SECONDS,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.stop_grace = stop_grace
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Process:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        if self.log_path is None:
            self.popen = self._popen(None)
        else:
            with self.log_path.open("ab") as log:
                log.write(f"\n--- start {self.starts + 1}: {' '.join(self.args)}\n".encode())
                log.flush()
                self.popen = self._popen(log)
        self.starts += 1
        return self

    def _popen(self, log: IO[bytes] | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,  # its own process group: killpg reaches its children
        )

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def children(self) -> list[int]:
        """Pids of the processes it forked (a worker's pool processes, its embedded beat)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in text.split()]

    def log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return f"--- {self.name} ({self.log_path}) ---\n{self.log()[-chars:]}"

    def wait_for(
        self,
        condition: Callable[[], object],
        *,
        what: str,
        timeout: float = START_TIMEOUT_SECONDS,
        poll: float = POLL_SECONDS,
    ) -> None:
        """Wait until `condition()` is true while the process stays up.

        Raises ProcessError (with the log's tail) if it exits first, TimeoutError after
        `timeout` seconds.
        """

        def up_and_true() -> bool:
            if not self.alive:
                raise ProcessError(
                    f"{self.name} exited (status {self.returncode}) while waiting for {what}:"
                    f"\n{self.log_tail()}"
                )
            return bool(condition())

        wait_until(up_and_true, timeout=timeout, what=what, poll=poll)

    def wait_for_log(self, text: str, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until the log of the current run contains `text` (the process must stay up)."""
        marker = f"--- start {self.starts}:"
        self.wait_for(
            lambda: text in self.log().rpartition(marker)[2],
            what=f"{self.name} to log {text!r}",
            timeout=timeout,
        )

    def wait_for_port(self, port: int, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until something listens on the loopback `port` (the process must stay up)."""
        self.wait_for(
            lambda: port_open(port), what=f"{self.name} to listen on port {port}", timeout=timeout
        )

    def signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process and everything it forked, as a crash or the OOM killer would."""
        self.signal_group(signal.SIGKILL)
        self._reap()

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL whatever is left of the group after `grace` seconds (by
        default the `stop_grace` it was made with); return once the whole group is gone."""
        if self.popen is None:
            return
        if self.alive:
            self.signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(self.stop_grace if grace is None else grace)
        self.signal_group(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        assert self.popen is not None
        self.popen.wait(START_TIMEOUT_SECONDS)
        wait_until(
            lambda: not _group_exists(self.pid),
            timeout=GROUP_EXIT_SECONDS,
            what=f"{self.name}'s group to exit",
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
