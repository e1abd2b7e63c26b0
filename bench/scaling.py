"""Issue 14's scale-out figure: the Celery tick over 10,000 running jobs, 1 worker vs 2.

Real processes, as the README's "Running on PostgreSQL and Redis" starts them: one `celery
beat` (the tick every TRAINMON_TICK_SECONDS, 1 s) and `celery worker --concurrency 1`
processes on a Redis database of the bench's own (flushed before and after), all on the
bench's PostgreSQL database. "2 workers" means two worker processes, each with one pool
process: two tasks at a time, as two machines would run them. Beat's log says when it sent
each tick, the workers' logs when each chunk of it committed and how many jobs it advanced; a
thread in this process also polls the jobs' `last_tick` (a cross-check, late by up to its
interval). The baseline is the same tick in this process (`simulation_advance`), with no
Celery.

Importable without Django set up (the bench imports it before `django.setup()`); everything
that needs Django is imported inside the functions.
"""

from __future__ import annotations

import math
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.processes import Process
from bench.support import Figure, percentile

FIGURE_NAME = "tick_scaling_10k"
TARGET_EFFICIENCY = 0.7
# The saturated window's beat runs this many times as often as TRAINMON_TICK_SECONDS.
SATURATING_SPEEDUP = 2
TARGET = f"efficiency >= {TARGET_EFFICIENCY}, each tick < 1 s"
# A Redis database the figure has to itself: it is flushed before and after each run.
REDIS_URL = os.environ.get("TRAINMON_BENCH_SCALING_REDIS", "redis://127.0.0.1:6379/9")
# The resolution of "when did this tick's last write land". Each poll scans the jobs' rows
# (25-65 ms under this machine's load; its backend's CPU is reported apart, not as the
# tick's): every 0.2 s that was a sixth of a core, crowding the workers it measures.
POLL_SECONDS = 0.5
CPU_SAMPLE_SECONDS = 1.0
WORKER_READY_SECONDS = 60.0
# A tick still unfinished this long after the window closed counts as not finished.
DRAIN_SECONDS = 5.0
BEAT_SEND = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/MainProcess\] "
    r"Scheduler: Sending due task simulate-tick ",
    re.M,
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScalingPlan:
    """How much the figure measures; --quick shrinks the window, not the 10,000 jobs."""

    jobs: int = 10_000
    steps_per_tick: int = 10
    window_seconds: float = 60.0
    warm_up_seconds: float = 3.0
    worker_counts: tuple[int, ...] = (1, 2)
    in_process_repeats: int = 1

    @classmethod
    def quick(cls) -> ScalingPlan:
        return cls(window_seconds=15.0)

    @classmethod
    def for_run(cls, quick: bool) -> ScalingPlan:
        return cls.quick() if quick else cls()

    @property
    def job_steps(self) -> int:
        """Steps each job has: enough ticks for every window, the warm-ups and the baseline,
        several times over, so no job completes while measured."""
        windows = sum(self.window_seconds + self.warm_up_seconds for _ in self.worker_counts)
        ticks = windows + DRAIN_SECONDS * len(self.worker_counts) + 4 * self.in_process_repeats
        ticks *= 2  # and a saturated window: half as long, ticks twice as often
        return max(10_000, math.ceil(ticks * 4) * self.steps_per_tick)


# --- the arithmetic (pure) --------------------------------------------------------------------


def efficiency(points_per_s: dict[int, float]) -> float | None:
    """Scaling efficiency from one worker to the most: (rate with n) / (n x rate with 1)."""
    most = max(points_per_s)
    if most == 1 or not points_per_s.get(1):
        return None
    return points_per_s[most] / (most * points_per_s[1])


def tick_walls(
    sent_at: dict[int, float], polls: Sequence[tuple[float, int]]
) -> dict[int, float | None]:
    """Seconds from each tick's send to the moment its last write was visible, per tick slot.

    `polls` are (time the poll's statement started, the smallest `last_tick` over the jobs),
    in time order. A tick is done once no job is behind it: a READ COMMITTED statement sees
    what committed before it started, so the poll's start bounds the last commit from above.
    None: never done while polled.
    """
    walls: dict[int, float | None] = {}
    for tick, sent in sorted(sent_at.items()):
        done = next((at for at, oldest in polls if at >= sent and oldest >= tick), None)
        walls[tick] = None if done is None else done - sent
    return walls


def chunk_landings(log: str) -> list[tuple[int, float, int]]:
    """(tick slot, Unix time its commit was done, jobs it advanced) for each `advance_jobs`
    chunk in a `celery worker -l INFO` log written in UTC (TZ=UTC).

    Celery logs a task's success, with its return value, once the task has returned: after
    the chunk's transaction committed, to the millisecond of the log's clock.
    """
    landings = []
    for stamp, millis, _, tick, advanced in CHUNK_LANDED.findall(log):
        moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        landings.append((int(tick), moment.timestamp() + int(millis) / 1000, int(advanced)))
    return landings


def tick_walls_from_chunks(
    sent_at: dict[int, float], landings: Sequence[tuple[int, float, int]], jobs: int
) -> dict[int, float | None]:
    """Seconds from each tick's send to its last chunk's commit, per tick slot, for the ticks
    whose chunks advanced all `jobs`. None: a job sat the tick out (a chunk of an earlier
    tick still held it) or a chunk never ran while logged."""
    advanced: Counter[int] = Counter()
    last: dict[int, float] = {}
    for tick, at, count in landings:
        advanced[tick] += count
        last[tick] = max(at, last.get(tick, at))
    return {
        tick: last[tick] - sent if advanced[tick] >= jobs else None
        for tick, sent in sorted(sent_at.items())
    }


def share_inside(walls: dict[int, float | None], period: float) -> float | None:
    """The share of ticks whose writes all landed within the tick period of their send."""
    if not walls:
        return None
    return sum(wall is not None and wall < period for wall in walls.values()) / len(walls)


def beat_sends(log: str, period: float) -> dict[int, float]:
    """{tick slot: send time (Unix seconds)} from `celery beat -l INFO` output in UTC (TZ=UTC).

    The slot is the one `metrics.tasks._stamp_tick_slot` stamps, computed from the log's
    millisecond clock; the first send of a slot counts (beat sends at least a period apart).
    """
    sends: dict[int, float] = {}
    for stamp, millis in BEAT_SEND.findall(log):
        moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        at = moment.timestamp() + int(millis) / 1000
        sends.setdefault(math.floor(at / period), at)
    return sends


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (/proc), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def runqueue_wait_seconds(pid: int) -> float | None:
    """Seconds the process has been runnable but waiting for a CPU so far (/proc schedstat):
    on a shared machine, the time other programs took from it."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # without guest time, which user time already counts
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


class CpuMeter:
    """CPU seconds (or another per-process counter: `read`) per process over a window,
    keeping the last value of processes that exit (a worker's database connection is recycled
    after CONN_MAX_AGE) and counting processes that appear mid-window from zero."""

    def __init__(self, read: Callable[[int], float | None] = cpu_seconds) -> None:
        self.read = read
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.started = False

    def sample(self, pids: Sequence[int]) -> None:
        for pid in pids:
            seconds = self.read(pid)
            if seconds is None:
                continue
            self.first.setdefault(pid, seconds if not self.started else 0.0)
            self.last[pid] = seconds

    def start(self, pids: Sequence[int]) -> None:
        self.first.clear()
        self.last.clear()
        self.sample(pids)
        self.started = True

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


# --- processes --------------------------------------------------------------------------------


@contextmanager
def all_stopped() -> Iterator[list[Process]]:
    """Yield a list to start processes into; on exit, however it is left, stop every one of
    them (SIGTERM to all at once, then each waited for and SIGKILLed past its grace)."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            if process.alive:
                process.signal_group(signal.SIGTERM)  # workers take 5-7 s: all at once
        errors: list[BaseException] = []
        for process in started:
            try:
                process.stop()
            except Exception as error:  # stop the others anyway, then say so
                errors.append(error)
        if errors:
            raise errors[0]


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def celery_environment(env: dict[str, str]) -> dict[str, str]:
    # TZ=UTC: beat's log times, which `beat_sends` reads, are then Unix times.
    return {**env, "CELERY_BROKER_URL": REDIS_URL, "TZ": "UTC"}


def worker(env: dict[str, str], var_dir: Path, index: int) -> Process:
    command = [
        *(sys.executable, "-m", "celery", "--app", "trainmon", "worker"),
        *("--concurrency", "1", "--hostname", f"bench-scale-{index}@%h"),
        *("--loglevel", "INFO", "--without-gossip", "--without-mingle"),
    ]
    log = var_dir / f"scale-worker-{index}.log"
    return Process(f"worker {index}", command, env=celery_environment(env), log_path=log)


def beat(env: dict[str, str], var_dir: Path, run: int) -> Process:
    command = [
        *(sys.executable, "-m", "celery", "--app", "trainmon", "beat"),
        *("--schedule", str(var_dir / f"scale-beat-{run}"), "--loglevel", "INFO"),
    ]
    log = var_dir / f"scale-beat-{run}.log"
    return Process("beat", command, env=celery_environment(env), log_path=log)


def process_tree(process: Process) -> list[int]:
    return [process.pid, *process.children()] if process.alive else []


# --- the database side ------------------------------------------------------------------------


def create_jobs(plan: ScalingPlan) -> tuple[int, list[int]]:
    """(owner id, ids of `plan.jobs` running simulated jobs, `plan.steps_per_tick` each)."""
    from django.contrib.auth import get_user_model

    from bench.figures import running_simulated_jobs

    owner = get_user_model().objects.create_user("bench-scale", password=None)
    epochs = math.ceil(plan.job_steps / 100)
    job_ids = running_simulated_jobs(
        owner, plan.jobs, steps_per_tick=plan.steps_per_tick, epochs=epochs, name="bench-scale"
    )
    return owner.pk, job_ids


@contextmanager
def others_paused(owner_id: int) -> Iterator[int]:
    """Pause every other running simulated job (the other figures' data) while measuring, so
    the tick advances exactly the figure's jobs; resume them afterwards. A direct UPDATE, not
    `job_pause`: the bench puts its own data back as it was."""
    from jobs.models import TrainingJob

    others = TrainingJob.objects.filter(
        status=TrainingJob.Status.RUNNING, source=TrainingJob.Source.SIMULATED
    ).exclude(owner_id=owner_id)
    ids = list(others.values_list("pk", flat=True))
    TrainingJob.objects.filter(pk__in=ids).update(status=TrainingJob.Status.PAUSED)
    try:
        yield len(ids)
    finally:
        TrainingJob.objects.filter(pk__in=ids).update(status=TrainingJob.Status.RUNNING)


def points_stored(owner_id: int) -> tuple[int, int]:
    """(headline, named) points of the owner's jobs, in one statement (one snapshot)."""
    from django.db import connection

    from jobs.models import TrainingJob
    from metrics.models import MetricKey

    jobs, keys = TrainingJob._meta.db_table, MetricKey._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT coalesce(sum(current_step), 0) FROM {jobs} WHERE owner_id = %s),"
            f" (SELECT coalesce(sum(k.count), 0) FROM {keys} k JOIN {jobs} j ON j.id = k.job_id"
            f" WHERE j.owner_id = %s)",
            [owner_id, owner_id],
        )
        headline, named = cursor.fetchone()
    return int(headline), int(named)


def _backend_pids() -> list[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [pid for (pid,) in cursor.fetchall()]


def bytes_per_point() -> dict[str, float]:
    """On-disk bytes per stored point (table, indexes, TOAST, plus its series' summary rows),
    headline and named, over every point in the bench's database."""
    from django.db import connection

    from metrics.models import KeySummary, MetricSummary, NamedMetric, TrainingMetric

    sizes = {}
    with connection.cursor() as cursor:
        for label, points, summary in (
            ("headline", TrainingMetric, MetricSummary),
            ("named", NamedMetric, KeySummary),
        ):
            table, summary_table = points._meta.db_table, summary._meta.db_table
            cursor.execute(
                f"SELECT pg_total_relation_size('{table}'), "
                f"pg_total_relation_size('{summary_table}'), (SELECT count(*) FROM {table})"
            )
            size, summary_size, count = cursor.fetchone()
            if count:
                sizes[label] = (size + summary_size) / count
    return sizes


class TickPoller(threading.Thread):
    """Polls the owner's jobs every POLL_SECONDS on a connection of its own: (statement start,
    the smallest last_tick, NULL as -1); every CPU_SAMPLE_SECONDS also the CPU of the
    database's backends and of the given processes."""

    def __init__(self, database_url: str, owner_id: int, processes: Sequence[Process]) -> None:
        super().__init__(name="tick-poller", daemon=True)
        from jobs.models import TrainingJob

        self.database_url = database_url
        self.owner_id = owner_id
        self.processes = processes
        self.table = TrainingJob._meta.db_table
        self.polls: list[tuple[float, int]] = []
        self.newest_tick = -1
        self.backends = CpuMeter()
        self.backend_waits = CpuMeter(runqueue_wait_seconds)
        self.poller_cpu = CpuMeter()
        self.celery = CpuMeter()
        self.celery_waits = CpuMeter(runqueue_wait_seconds)
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.poll_seconds: list[float] = []
        self.own_backend = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.database_url, autocommit=True) as connection:
                self.own_backend = connection.info.backend_pid
                self._loop(connection)
        except BaseException as error:
            self.error = error

    def _loop(self, connection: Any) -> None:
        next_cpu = 0.0
        while not self.stopping.is_set():
            started = time.time()
            oldest, newest = connection.execute(
                f"SELECT min(coalesce(last_tick, -1)), max(coalesce(last_tick, -1)) "
                f"FROM {self.table} WHERE owner_id = %s",
                [self.owner_id],
            ).fetchone()
            self.poll_seconds.append(time.time() - started)
            self.polls.append((started, -1 if oldest is None else int(oldest)))
            self.newest_tick = -1 if newest is None else int(newest)
            if started >= next_cpu:
                backends = connection.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                ).fetchall()
                with self.lock:
                    tick_backends = [pid for (pid,) in backends if pid != self.own_backend]
                    self.backends.sample(tick_backends)
                    self.backend_waits.sample(tick_backends)
                    self.poller_cpu.sample([self.own_backend])
                    self.celery.sample(self._celery_pids())
                    self.celery_waits.sample(self._celery_pids())
                next_cpu = started + CPU_SAMPLE_SECONDS
            self.stopping.wait(POLL_SECONDS)

    def _celery_pids(self) -> list[int]:
        return [pid for process in self.processes for pid in process_tree(process)]

    def start_cpu_window(self) -> None:
        with self.lock:
            tick_backends = self._tick_backends()
            self.backends.start(tick_backends)
            self.backend_waits.start(tick_backends)
            self.celery.start(self._celery_pids())
            self.celery_waits.start(self._celery_pids())
            self.poller_cpu.start([self.own_backend])

    def cpu_window(self) -> tuple[float, float, float, float, float]:
        """(Celery processes', the database backends' but the poller's, the poller's backend's)
        CPU seconds since start_cpu_window, and the run-queue waits of the Celery processes
        and of those backends."""
        with self.lock:
            tick_backends = self._tick_backends()
            self.backends.sample(tick_backends)
            self.backend_waits.sample(tick_backends)
            self.celery.sample(self._celery_pids())
            self.celery_waits.sample(self._celery_pids())
            self.poller_cpu.sample([self.own_backend])
            return (
                self.celery.seconds,
                self.backends.seconds,
                self.poller_cpu.seconds,
                self.celery_waits.seconds,
                self.backend_waits.seconds,
            )

    def _tick_backends(self) -> list[int]:
        return [pid for pid in _backend_pids() if pid != self.own_backend]

    def oldest_tick(self) -> int:
        return self.polls[-1][1] if self.polls else -1

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


# --- one configuration ------------------------------------------------------------------------


@dataclass
class Run:
    """What one configuration (n workers + beat) did over the window."""

    workers: int
    seconds: float = 0.0
    headline: int = 0
    named: int = 0
    walls: dict[int, float | None] = field(default_factory=dict)  # from the workers' logs
    # The poller's view of the same ticks: an upper bound, late by up to its interval.
    polled_walls: dict[int, float | None] = field(default_factory=dict)
    worker_cpu: float = 0.0
    backend_cpu: float = 0.0
    poller_cpu: float = 0.0
    worker_waits: float = 0.0
    backend_waits: float = 0.0
    machine_busy: float = 0.0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    chunk_seconds: list[float] = field(default_factory=list)
    poll_ms: float = 0.0
    wal: dict[str, float] = field(default_factory=dict)  # server_counters() over the window

    @property
    def points_per_s(self) -> float:
        return (self.headline + self.named) / self.seconds if self.seconds else 0.0

    def pass_seconds(self, jobs: int, steps_per_tick: int) -> float | None:
        """Seconds to advance every job once at the rate sustained: a tick's wall time when
        ticks overrun and overlap (then no single tick is ever complete on its own)."""
        job_ticks_per_s = self.headline / steps_per_tick / self.seconds if self.seconds else 0
        return jobs / job_ticks_per_s if job_ticks_per_s else None

    def cpu_us_per_job(self, steps_per_tick: int) -> tuple[float | None, float | None]:
        """(Celery's, PostgreSQL's) CPU microseconds per job advanced once: what a tick costs
        per job whatever else the machine runs (wall times are not, on a shared machine)."""
        jobs = self.headline / steps_per_tick
        if not jobs:
            return None, None
        return self.worker_cpu / jobs * 1e6, self.backend_cpu / jobs * 1e6

    def finished(self) -> list[float]:
        return _landed(self.walls)

    def summary(self, period: float, steps_per_tick: int, jobs: int) -> dict[str, Any]:
        finished = self.finished()
        celery_us, postgres_us = self.cpu_us_per_job(steps_per_tick)
        return {
            "workers": self.workers,
            "seconds": round(self.seconds, 2),
            "points_per_s": self.points_per_s,
            "headline_points": self.headline,
            "named_points": self.named,
            "ticks_sent": len(self.walls),
            "ticks_finished": len(finished),
            "ticks_inside_period": share_inside(self.walls, period),
            "every_job_once_s": self.pass_seconds(jobs, steps_per_tick),
            "tick_wall_s_p50": statistics.median(finished) if finished else None,
            "tick_wall_s_p90": percentile(finished, 0.9) if finished else None,
            "tick_wall_s_max": max(finished) if finished else None,
            "polled_tick_wall_s_p50": _median_of(self.polled_walls),
            "polled_ticks_inside_period": share_inside(self.polled_walls, period),
            "chunk_s_p50": statistics.median(self.chunk_seconds) if self.chunk_seconds else None,
            "chunks": len(self.chunk_seconds),
            "celery_cpu_s": round(self.worker_cpu, 2),
            "celery_runqueue_wait_s": round(self.worker_waits, 2),
            # What is left of the pool processes' time: waiting on PostgreSQL (its CPU, its
            # run-queue and its disk: WAL flushes at each chunk's commit) or on Redis.
            "celery_blocked_s": round(
                max(0.0, self.workers * self.seconds - self.worker_cpu - self.worker_waits), 2
            ),
            "postgres_backend_runqueue_wait_s": round(self.backend_waits, 2),
            "postgres_backend_cpu_s": round(self.backend_cpu, 2),
            "poller_backend_cpu_s": round(self.poller_cpu, 2),
            "celery_cpu_us_per_job": celery_us,
            "postgres_cpu_us_per_job": postgres_us,
            "machine_busy_cores": round(self.machine_busy / self.seconds, 2) if self.seconds else 0,
            "load_average": self.load_average,
            "poll_ms_mean": round(self.poll_ms, 2),
        }


# An `advance_jobs` chunk's success line: when, how long, which tick, how many jobs.
CHUNK_LANDED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/[^\]]+\] Task "
    r"metrics\.tasks\.advance_jobs\[[^\]]+\] succeeded in ([\d.]+)s: "
    r"\{'tick': (\d+), 'jobs_advanced': (\d+)",
    re.M,
)


def measure(
    *,
    plan: ScalingPlan,
    env: dict[str, str],
    var_dir: Path,
    owner_id: int,
    workers: int,
    period: float,
) -> Run:
    """Run `workers` worker processes and beat over the jobs for the window; stop them all."""
    run = Run(workers)
    sends: dict[int, float] = {}
    flush_redis(REDIS_URL)
    processes = [worker(env, var_dir, index) for index in range(workers)]
    clock = beat(env, var_dir, workers)
    poller = TickPoller(env["DATABASE_URL"], owner_id, [*processes, clock])
    try:
        with all_stopped() as started:
            for process in processes:
                started.append(process.start())
            for process in processes:
                process.wait_for_log("ready.", timeout=WORKER_READY_SECONDS)
            started.append(clock.start())
            poller.start()
            first_tick = math.floor(time.time() / period) + 1
            try:
                clock.wait_for(
                    lambda: poller.newest_tick >= first_tick,
                    what="a tick's first chunk",
                    timeout=WORKER_READY_SECONDS,
                )
            except TimeoutError as error:
                tails = "\n".join(p.log_tail(1500) for p in [*processes, clock])
                raise TimeoutError(f"{error}\n{tails}") from error
            time.sleep(plan.warm_up_seconds)
            poller.start_cpu_window()
            busy_before, _ = machine_busy_seconds()
            wal_before = server_counters()
            started_at = time.time()
            headline_before, named_before = points_stored(owner_id)
            time.sleep(plan.window_seconds)
            headline_after, named_after = points_stored(owner_id)
            run.seconds = time.time() - started_at
            run.wal = counters_delta(wal_before, server_counters())
            run.load_average = os.getloadavg()
            (
                run.worker_cpu,
                run.backend_cpu,
                run.poller_cpu,
                run.worker_waits,
                run.backend_waits,
            ) = poller.cpu_window()
            run.machine_busy = machine_busy_seconds()[0] - busy_before
            run.headline = headline_after - headline_before
            run.named = named_after - named_before
            clock.stop()  # no new ticks; the sent ones may finish within DRAIN_SECONDS
            window_end = started_at + run.seconds
            sends = {
                tick: at
                for tick, at in beat_sends(clock.log(), period).items()
                if started_at <= at < window_end
            }
            last = max(sends, default=-1)
            # Overrunning ticks (every job more than a few ticks behind) cannot catch up in
            # DRAIN_SECONDS: waiting for them would only lengthen the bench.
            if poller.oldest_tick() >= last - DRAIN_SECONDS / period:
                with suppress(TimeoutError):
                    processes[0].wait_for(
                        lambda: poller.oldest_tick() >= last,
                        what="the last tick",
                        timeout=DRAIN_SECONDS,
                    )
    finally:
        poller.stop()
        flush_redis(REDIS_URL)
    if poller.error is not None:
        raise RuntimeError(f"the tick poller failed: {poller.error}") from poller.error
    run.polled_walls = tick_walls(sends, poller.polls)
    run.poll_ms = statistics.fmean(poller.poll_seconds) * 1000 if poller.poll_seconds else 0.0
    _read_worker_logs(run, processes, sends, plan.jobs)
    return run


def _read_worker_logs(
    run: Run, processes: Sequence[Process], sends: dict[int, float], jobs: int
) -> None:
    """Each chunk's duration, and each tick's wall time from its chunks' commits."""
    landings = []
    for process in processes:
        log = process.log()
        run.chunk_seconds += [float(line[2]) for line in CHUNK_LANDED.findall(log)]
        landings += chunk_landings(log)
    run.walls = tick_walls_from_chunks(sends, landings, jobs)


def server_counters() -> dict[str, float]:
    """The server's WAL and checkpoint counters (PostgreSQL 14 to 16; empty elsewhere): what
    the writes cost the disk beyond their rows. Server-wide, so other clients count too.
    Also the sessions opened on the bench's database: a backend that lives less than
    CPU_SAMPLE_SECONDS escapes the CPU figure, as every worker's did while Celery closed
    its connection after each task."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # not a transaction's old copy
            cursor.execute("SELECT wal_bytes, wal_fpi FROM pg_stat_wal")
            wal_bytes, full_page_images = cursor.fetchone()
            cursor.execute(
                "SELECT checkpoints_timed, checkpoints_req, buffers_backend FROM pg_stat_bgwriter"
            )
            timed, requested, backend_writes = cursor.fetchone()
            cursor.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
            (sessions,) = cursor.fetchone()
    except DatabaseError:
        return {}
    return {
        "wal_bytes": float(wal_bytes),
        "full_page_images": float(full_page_images),
        "checkpoints_timed": float(timed),
        "checkpoints_requested": float(requested),
        "backend_buffer_writes": float(backend_writes),
        "sessions": float(sessions),
    }


def counters_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before if name in after}


def server_settings() -> str:
    """The PostgreSQL settings that bound a write load, as 'name=value' pairs."""
    from django.db import connection

    names = ("shared_buffers", "max_wal_size", "checkpoint_timeout", "synchronous_commit")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)"
            " ORDER BY name",
            [list(names)],
        )
        return ", ".join(f"{name}={value}" for name, value in cursor.fetchall())


# --- the figure -------------------------------------------------------------------------------


@dataclass
class InProcess:
    """The baseline: ad-hoc ticks over every job in this process, no Celery."""

    whole_s: list[float] = field(default_factory=list)  # one simulation_advance, wall
    whole_cpu_s: list[float] = field(default_factory=list)  # this process's CPU of those
    chunked_s: list[float] = field(default_factory=list)  # TRAINMON_TICK_CHUNK_SIZE at a time


def in_process_ticks(plan: ScalingPlan, job_ids: list[int]) -> InProcess:
    """Ticks over every job as one `simulation_advance` (wall and this process's CPU), and
    once as chunks of TRAINMON_TICK_CHUNK_SIZE one after another; ad-hoc ticks, after one
    warm-up tick (which creates the jobs' metric keys)."""
    from django.conf import settings

    from metrics.services import simulation_advance

    size = max(settings.TRAINMON_TICK_CHUNK_SIZE, 1)
    chunks = [job_ids[start : start + size] for start in range(0, len(job_ids), size)]
    simulation_advance(job_ids=job_ids)
    baseline = InProcess()
    for repeat in range(plan.in_process_repeats):
        started, cpu = time.perf_counter(), time.process_time()
        simulation_advance(job_ids=job_ids)
        baseline.whole_s.append(time.perf_counter() - started)
        baseline.whole_cpu_s.append(time.process_time() - cpu)
        if repeat == 0:
            started = time.perf_counter()
            for chunk in chunks:
                simulation_advance(job_ids=chunk)
            baseline.chunked_s.append(time.perf_counter() - started)
    return baseline


def tick_scaling_figure(quick: bool, env: dict[str, str]) -> Figure:
    from django.conf import settings

    from jobs.models import TrainingJob

    plan = ScalingPlan.for_run(quick)
    period = float(settings.TRAINMON_TICK_SECONDS)
    figure = Figure(FIGURE_NAME, "points/s (2 workers)", TARGET)
    var_dir = Path(env["TRAINMON_VAR_DIR"])
    owner_id, job_ids = create_jobs(plan)
    per_tick = plan.jobs * plan.steps_per_tick
    headline_before, named_before = points_stored(owner_id)
    baseline = in_process_ticks(plan, job_ids)
    whole = baseline.whole_s
    headline_after, named_after = points_stored(owner_id)
    ticks_done = 1 + len(whole) + len(baseline.chunked_s)
    named_per_tick = (named_after - named_before) / ticks_done
    points_per_tick = per_tick + named_per_tick
    if headline_after - headline_before != per_tick * ticks_done:
        raise RuntimeError(
            f"in-process ticks wrote {headline_after - headline_before:,} headline points, "
            f"expected {per_tick * ticks_done:,}"
        )
    figure.baseline_samples = [points_per_tick / seconds for seconds in whole]
    runs: dict[int, Run] = {}
    with others_paused(owner_id) as paused:
        for workers in plan.worker_counts:
            print(f"bench:   {workers} worker(s), {plan.window_seconds:g} s ...", flush=True)
            runs[workers] = measure(
                plan=plan,
                env=env,
                var_dir=var_dir,
                owner_id=owner_id,
                workers=workers,
                period=period,
            )
        # At beat's period two workers may do all that is asked: their rate is then the
        # demand's, not what they can do. Their capacity needs more asked than done: ticks
        # twice as often, the same jobs and steps, over half the window (so the jobs stay
        # under the 2,000 points a key is summarised from). One worker needs no such window:
        # at beat's period it already falls behind.
        most = max(plan.worker_counts)
        saturating = replace(plan, window_seconds=plan.window_seconds / 2)
        print(
            f"bench:   {most} worker(s), saturated, {saturating.window_seconds:g} s ...",
            flush=True,
        )
        saturated = measure(
            plan=saturating,
            env={**env, "TRAINMON_TICK_SECONDS": f"{period / SATURATING_SPEEDUP:g}"},
            var_dir=var_dir,
            owner_id=owner_id,
            workers=most,
            period=period / SATURATING_SPEEDUP,
        )
    sizes = bytes_per_point()
    left_running = TrainingJob.objects.filter(
        owner_id=owner_id, status=TrainingJob.Status.RUNNING
    ).count()
    rates = {workers: run.points_per_s for workers, run in runs.items()}
    figure.samples = [rates[most]]
    # A configuration's capacity: the most it did, at beat's period or saturated (overrun
    # ticks cost some work of their own: expired chunks, twice the fan-outs).
    capacities = {**rates, most: max(rates[most], saturated.points_per_s)}
    scaling = efficiency(capacities)
    inside = {workers: share_inside(run.walls, period) for workers, run in runs.items()}
    demand = points_per_tick / period
    # "Each tick < 1 s" is asked of the scaled-out engine: one worker's capacity is below
    # the work asked (that is what the second is for), and its ticks are reported all the same.
    figure.met = scaling is not None and scaling >= TARGET_EFFICIENCY and inside.get(most) == 1.0
    figure.extra |= {
        "efficiency": scaling,
        "capacity_points_per_s": capacities,
        "saturated": saturated.summary(period / SATURATING_SPEEDUP, plan.steps_per_tick, plan.jobs),
        "points_per_tick": points_per_tick,
        "demand_points_per_s": demand,
        "in_process_tick_s": statistics.median(whole),
        "in_process_chunked_tick_s": statistics.median(baseline.chunked_s),
        "in_process_cpu_us_per_job": statistics.median(baseline.whole_cpu_s) / plan.jobs * 1e6,
        "in_process_cost_us_per_job": statistics.median(whole) / plan.jobs * 1e6,
        "in_process_cost_us_per_point": statistics.median(whole) / points_per_tick * 1e6,
        "chunk_size": settings.TRAINMON_TICK_CHUNK_SIZE,
        "bytes_per_point": sizes,
        "other_jobs_paused": paused,
        "jobs_still_running": left_running,
        "runs": {
            str(workers): run.summary(period, plan.steps_per_tick, plan.jobs)
            for workers, run in runs.items()
        },
        "load_average_end": os.getloadavg(),
        "plan": {
            "jobs": plan.jobs,
            "steps_per_tick": plan.steps_per_tick,
            "window_seconds": plan.window_seconds,
            "warm_up_seconds": plan.warm_up_seconds,
        },
    }
    figure.notes += _notes(plan, runs, figure, period)
    if left_running != plan.jobs:
        figure.notes.append(
            f"only {left_running:,} of the {plan.jobs:,} jobs were still running at the end: "
            "the others completed or failed while measured, so fewer jobs were asked for"
        )
    return figure


def _notes(plan: ScalingPlan, runs: dict[int, Run], figure: Figure, period: float) -> list[str]:
    extra = figure.extra
    notes = [
        f"{plan.jobs:,} running simulated jobs x {plan.steps_per_tick} steps per tick "
        f"(+ named series: {extra['points_per_tick']:,.0f} points per tick, "
        f"{extra['demand_points_per_s']:,.0f} points/s asked); celery beat at {period:g} s, "
        f"`celery worker --concurrency 1` x N on Redis, chunks of {extra['chunk_size']}; "
        f"{plan.window_seconds:g} s window after {plan.warm_up_seconds:g} s of warm-up",
        f"baseline: the same tick in process, one simulation_advance over every job: "
        f"{extra['in_process_tick_s']:.2f} s per tick "
        f"({extra['in_process_cost_us_per_job']:.0f} us per job, "
        f"{extra['in_process_cost_us_per_point']:.2f} us per point); as chunks one after "
        f"another: {extra['in_process_chunked_tick_s']:.2f} s; this process's CPU "
        f"{extra['in_process_cpu_us_per_job']:.0f} us per job",
    ]
    for workers, run in runs.items():
        s = run.summary(period, plan.steps_per_tick, plan.jobs)
        inside = s["ticks_inside_period"]
        notes.append(
            f"{workers} worker(s): {s['points_per_s']:,.0f} points/s sustained over "
            f"{s['seconds']:.0f} s ({s['headline_points'] // plan.steps_per_tick:,} job-ticks); "
            f"every job advanced once per {_seconds(s['every_job_once_s'])}; "
            f"tick wall p50 {_seconds(s['tick_wall_s_p50'])}, max "
            f"{_seconds(s['tick_wall_s_max'])}; {s['ticks_finished']}/{s['ticks_sent']} ticks "
            f"finished, {0 if inside is None else inside:.0%} inside their {period:g} s "
            f"(send to the last chunk's commit, from the workers' logs; the poller of "
            f"last_tick every {POLL_SECONDS:g} s, late by up to that: p50 "
            f"{_seconds(s['polled_tick_wall_s_p50'])}, "
            f"{s['polled_ticks_inside_period'] or 0:.0%} inside); chunk "
            f"p50 {_seconds(s['chunk_s_p50'])}; CPU over the window: celery "
            f"{s['celery_cpu_s']:.1f} s (and {s['celery_runqueue_wait_s']:.1f} s waiting for a "
            f"CPU, {s['celery_blocked_s']:.1f} s blocked), PostgreSQL backends "
            f"{s['postgres_backend_cpu_s']:.1f} "
            f"s (per job advanced: {_micros(s['celery_cpu_us_per_job'])} + "
            f"{_micros(s['postgres_cpu_us_per_job'])}; the backends waited "
            f"{s['postgres_backend_runqueue_wait_s']:.1f} s for a CPU), the poller's backend "
            f"{s['poller_backend_cpu_s']:.1f} s; machine {s['machine_busy_cores']:.2f} of "
            f"{os.cpu_count()} cores busy; load "
            f"{', '.join(f'{v:.2f}' for v in s['load_average'])}"
        )
    for workers, run in runs.items():
        if run.wal and run.seconds:
            wal = run.wal
            notes.append(
                f"{workers} worker(s), the server over the window: WAL "
                f"{wal['wal_bytes'] / run.seconds / 1e6:.1f} MB/s "
                f"({wal['wal_bytes'] / max(run.headline + run.named, 1):.0f} bytes per point "
                f"written), {wal['full_page_images']:,.0f} full-page images, checkpoints "
                f"{wal['checkpoints_timed'] + wal['checkpoints_requested']:.0f} "
                f"({wal['checkpoints_requested']:.0f} forced by WAL volume), "
                f"{wal['backend_buffer_writes']:,.0f} buffers written by backends themselves; "
                f"{wal.get('sessions', 0):,.0f} database sessions opened (each backend's CPU "
                f"is sampled every {CPU_SAMPLE_SECONDS:g} s: one shorter-lived escapes it)"
            )
    notes.append(f"PostgreSQL settings: {server_settings()}")
    notes.append(
        "on disk, with indexes and summaries: "
        + ", ".join(
            f"{label} {size:.0f} bytes per point"
            for label, size in extra["bytes_per_point"].items()
        )
    )
    most = max(runs)
    saturated = extra["saturated"]
    notes.append(
        f"{most} worker(s), saturated (beat every {period / SATURATING_SPEEDUP:g} s, the same "
        f"jobs and steps: more asked than done): {saturated['points_per_s']:,.0f} points/s "
        f"over {saturated['seconds']:.0f} s; per job advanced "
        f"{_micros(saturated['celery_cpu_us_per_job'])} + "
        f"{_micros(saturated['postgres_cpu_us_per_job'])}; machine "
        f"{saturated['machine_busy_cores']:.2f} of {os.cpu_count()} cores busy"
    )
    scaling = extra["efficiency"]
    capacity = extra["capacity_points_per_s"]
    notes.append(
        f"efficiency (capacity with {most}) / ({most} x capacity with 1), a configuration's "
        f"capacity being the most points/s it did, at beat's period or saturated: "
        f"{capacity[most]:,.0f} / ({most} x {capacity[1]:,.0f}) = "
        f"{'—' if scaling is None else f'{scaling:.2f}'}"
    )
    one = runs.get(1)
    if one is not None and share_inside(one.walls, period) == 1.0:
        notes.append(
            "1 worker already finished every tick inside its period: its points/s are the "
            "work asked, not its capacity, so the efficiency above overstates"
        )
    return notes


def _landed(walls: dict[int, float | None]) -> list[float]:
    return [wall for wall in walls.values() if wall is not None]


def _median_of(walls: dict[int, float | None]) -> float | None:
    landed = _landed(walls)
    return statistics.median(landed) if landed else None


def _micros(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} us"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"
