"""The scale-out figure's arithmetic, plan and process clean-up (no Celery, no timings)."""

from __future__ import annotations

import math
import sys

import pytest

from bench.processes import Process
from bench.scaling import (
    CpuMeter,
    Run,
    ScalingPlan,
    all_stopped,
    beat_sends,
    chunk_landings,
    counters_delta,
    cpu_seconds,
    efficiency,
    runqueue_wait_seconds,
    server_counters,
    share_inside,
    tick_walls,
    tick_walls_from_chunks,
)

BEAT_LOG = """\
[2026-12-01 04:41:45,766: INFO/MainProcess] Scheduler: Sending due task simulate-tick (metrics.tasks.simulate_tick)
[2026-12-01 04:41:46,766: INFO/MainProcess] Scheduler: Sending due task simulate-tick (metrics.tasks.simulate_tick)
[2026-12-01 04:41:46,900: INFO/MainProcess] Scheduler: Sending due task mark-stalled (jobs.tasks.mark_stalled)
[2026-12-01 04:41:47,767: INFO/MainProcess] Scheduler: Sending due task simulate-tick (metrics.tasks.simulate_tick)
"""  # noqa: E501
FIRST_SEND = 1796100105.766  # 2026-12-01 04:41:45.766 UTC

WORKER_LOG = """\
[2026-12-01 04:41:45,801: INFO/MainProcess] Task metrics.tasks.advance_jobs[5b0c7e1a-9f0e-4c55-a5b2-8c1f0d6f3e11] received
[2026-12-01 04:41:46,212: INFO/ForkPoolWorker-1] Task metrics.tasks.advance_jobs[5b0c7e1a-9f0e-4c55-a5b2-8c1f0d6f3e11] succeeded in 0.071s: {'tick': 1796100105, 'jobs_advanced': 500, 'points_written': 10000, 'jobs_completed': 0, 'jobs_failed': 0}
[2026-12-01 04:41:46,250: INFO/ForkPoolWorker-1] Task metrics.tasks.simulate_tick[0d9e] succeeded in 0.02s: {'tick': 1796100106, 'jobs_due': 1000, 'subtasks': 2}
[2026-12-01 04:41:46,731: INFO/ForkPoolWorker-1] Task metrics.tasks.advance_jobs[c1d2] succeeded in 0.069s: {'tick': 1796100105, 'jobs_advanced': 499, 'points_written': 9980, 'jobs_completed': 0, 'jobs_failed': 0}
"""  # noqa: E501


def test_efficiency_is_the_rate_with_n_over_n_times_the_rate_with_one():
    assert efficiency({1: 100.0, 2: 150.0}) == pytest.approx(0.75)
    assert efficiency({1: 100.0, 2: 200.0}) == pytest.approx(1.0)
    assert efficiency({1: 100.0}) is None
    assert efficiency({1: 0.0, 2: 50.0}) is None


def test_a_tick_is_done_at_the_first_poll_where_no_job_is_behind_it():
    sent = {10: 100.2, 11: 101.2, 12: 102.2}
    polls = [(100.0, 9), (100.5, 9), (100.9, 10), (101.5, 10), (102.6, 10), (103.1, 12)]

    walls = tick_walls(sent, polls)

    assert walls[10] == pytest.approx(0.7)
    assert walls[11] == pytest.approx(1.9)  # jobs skipped tick 11: done once 12 covered them
    assert walls[12] == pytest.approx(0.9)
    assert share_inside(walls, 1.0) == pytest.approx(2 / 3)


def test_a_poll_from_before_the_send_does_not_finish_the_tick():
    assert tick_walls({5: 10.0}, [(9.5, 5)]) == {5: None}
    assert tick_walls({5: 10.0}, [(9.5, 5), (10.2, 5)])[5] == pytest.approx(0.2)


def test_ticks_never_done_count_as_outside_their_second():
    walls = tick_walls({1: 0.0, 2: 1.0}, [(0.5, 1)])
    assert walls == {1: 0.5, 2: None}
    assert share_inside(walls, 1.0) == 0.5
    assert share_inside({}, 1.0) is None


def test_chunk_landings_read_each_chunk_s_tick_commit_time_and_jobs_from_a_worker_log():
    assert chunk_landings(WORKER_LOG) == [
        (1796100105, pytest.approx(FIRST_SEND + 0.446), 500),
        (1796100105, pytest.approx(FIRST_SEND + 0.965), 499),
    ]


def test_a_tick_lands_with_its_last_chunk_once_its_chunks_advanced_every_job():
    landings = [(10, 100.5, 500), (11, 101.4, 500), (10, 100.9, 500), (11, 102.3, 499)]

    walls = tick_walls_from_chunks({10: 100.2, 11: 101.2, 12: 102.2}, landings, jobs=1000)

    assert walls[10] == pytest.approx(0.7)
    assert walls[11] is None  # a job sat tick 11 out
    assert walls[12] is None  # no chunk logged
    assert share_inside(walls, 1.0) == pytest.approx(1 / 3)


def test_beat_sends_reads_the_tick_sends_in_utc_and_their_slots():
    sends = beat_sends(BEAT_LOG, 1.0)

    assert list(sends) == [math.floor(FIRST_SEND), math.floor(FIRST_SEND) + 1, 1796100107]
    assert sends[math.floor(FIRST_SEND)] == pytest.approx(FIRST_SEND)


def test_a_run_rates_points_and_cpu_per_job():
    run = Run(workers=2, seconds=10.0, headline=50_000, named=51_000)
    run.worker_cpu, run.backend_cpu = 2.5, 1.0

    assert run.points_per_s == pytest.approx(10_100)
    assert run.cpu_us_per_job(10) == (pytest.approx(500), pytest.approx(200))
    assert Run(workers=1).cpu_us_per_job(10) == (None, None)
    assert Run(workers=1).points_per_s == 0.0
    assert run.pass_seconds(10_000, 10) == pytest.approx(20.0)  # 500 job-ticks/s
    assert Run(workers=1).pass_seconds(10_000, 10) is None


def test_the_plan_keeps_the_jobs_and_shrinks_the_window_when_quick():
    full, quick = ScalingPlan(), ScalingPlan.quick()

    assert (full.jobs, full.steps_per_tick, full.window_seconds) == (10_000, 10, 60.0)
    assert full.worker_counts == (1, 2)
    assert quick.jobs == full.jobs and quick.window_seconds < full.window_seconds
    assert ScalingPlan.for_run(True) == quick and ScalingPlan.for_run(False) == full
    # No job may complete while measured: far more steps than the ticks of every window.
    ticks = sum(full.window_seconds + full.warm_up_seconds for _ in full.worker_counts)
    assert full.job_steps > 2 * ticks * full.steps_per_tick


def test_cpu_meter_counts_from_the_window_start_and_keeps_exited_processes():
    meter = CpuMeter()
    meter.first, meter.last = {1: 5.0}, {1: 5.0}
    meter.started = True
    meter.last[1] = 7.0  # as a later sample of a process that has since exited leaves it
    assert meter.seconds == pytest.approx(2.0)
    assert cpu_seconds(-1) is None
    assert runqueue_wait_seconds(-1) is None


def test_all_stopped_stops_every_process_even_when_the_body_fails(tmp_path):
    sleepers = [
        Process(f"sleeper {i}", [sys.executable, "-c", "import time; time.sleep(60)"], env={})
        for i in range(2)
    ]

    with pytest.raises(RuntimeError, match="measuring failed"), all_stopped() as started:
        for sleeper in sleepers:
            started.append(sleeper.start())
        raise RuntimeError("measuring failed")

    assert all(not sleeper.alive for sleeper in sleepers)
    assert all(sleeper.returncode is not None for sleeper in sleepers)


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_server_counters_count_the_sessions_opened_on_the_database():
    import time

    import psycopg

    from tests.support.processes import shared_database_url

    before = server_counters()
    for _ in range(3):
        psycopg.connect(shared_database_url()).close()
    deadline = time.monotonic() + 10
    while (opened := counters_delta(before, server_counters())["sessions"]) < 3:
        assert time.monotonic() < deadline, f"{opened} sessions counted"
        time.sleep(0.1)
