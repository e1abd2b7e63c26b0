from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from jobs.models import TrainingJob
from jobs.services import job_cancel, job_pause, job_resume
from metrics.models import MetricKey, NamedMetric, TrainingMetric
from metrics.points import JobsPoints
from metrics.services import (
    TickResult,
    simulation_advance,
    simulation_due_job_ids,
    simulator_for,
    tick_slot,
)
from metrics.simulator import GRAD_NORM_KEY, VAL_ACCURACY_KEY, VAL_LOSS_KEY, SimulatedRuns
from tests.support.factories import TrainingJobFactory, reload
from tests.support.metric_points import batches_write, metric_batch

Status = TrainingJob.Status
Source = TrainingJob.Source
pytestmark = pytest.mark.django_db

# Generous: a tick that skips locked jobs returns in milliseconds; one that waits never does.
LOCK_WAIT_SECONDS = 10


def steps_of(job: TrainingJob) -> list[int]:
    return list(job.metrics.order_by("step").values_list("step", flat=True))


def named_of(job: TrainingJob, name: str) -> dict[int, float]:
    return dict(
        NamedMetric.objects.filter(key__job=job, key__name=name).values_list("step", "value")
    )


class TestAdvance:
    def test_ticks_write_contiguous_steps_inside_the_job(self, user):
        job = TrainingJobFactory(owner=user, total_epochs=3, steps_per_epoch=20, steps_per_tick=7)
        for _ in range(4):
            simulation_advance()
        reload(job)
        assert job.current_step == 28
        assert steps_of(job) == list(range(28))
        epochs = dict(job.metrics.values_list("step", "epoch"))
        assert all(epochs[step] == step // 20 + 1 for step in epochs)
        assert max(epochs.values()) <= job.total_epochs
        assert job.status == Status.RUNNING

    def test_points_are_the_simulators_whatever_the_tick_size(self, user):
        fast = TrainingJobFactory(owner=user, steps_per_tick=25, seed=7)
        slow = TrainingJobFactory(owner=user, steps_per_tick=4, seed=7)
        simulation_advance(job_ids=[fast.pk])
        for _ in range(7):
            simulation_advance(job_ids=[slow.pk])
        losses = [
            np.array(job.metrics.order_by("step").values_list("loss", flat=True)[:25])
            for job in (fast, slow)
        ]
        np.testing.assert_array_equal(losses[0], losses[1])

    def test_a_tick_over_many_jobs_stores_each_jobs_own_simulator_points(self, user):
        # The tick generates every job at once; each job must still get exactly the points
        # its own simulator gives, headline and named, whatever jobs sit beside it.
        jobs = [
            TrainingJobFactory(owner=user, warmup_steps=0, seed=2**63 - 1),
            TrainingJobFactory(owner=user, total_epochs=20, steps_per_epoch=1, steps_per_tick=7),
            TrainingJobFactory(owner=user, diverge_at_step=25, steps_per_tick=30),
            TrainingJobFactory(owner=user, warmup_steps=40, steps_per_tick=13, decay_rate=0.3),
        ]
        simulation_advance()
        moment = None
        for job in jobs:
            reload(job)
            total_steps, steps_per_epoch = job.simulation_length
            simulator = simulator_for(job)
            expected = simulator.generate_metrics_batch(
                0, job.steps_per_tick, *job.simulation_length
            )
            stored = list(
                job.metrics.order_by("step").values_list(
                    "step", "epoch", "loss", "accuracy", "learning_rate"
                )
            )
            finite = expected.rows(0, expected.first_diverged_loss() or len(expected))
            assert stored == list(
                zip(
                    finite.steps.tolist(),
                    finite.epochs.tolist(),
                    finite.losses.tolist(),
                    finite.accuracies.tolist(),
                    finite.learning_rates.tolist(),
                    strict=True,
                )
            )
            moment = moment or NamedMetric.objects.filter(key__job=job).first().reported_at
            named = simulator.generate_named_batch(
                expected, total_steps, steps_per_epoch, moment.timestamp()
            )
            for index, name in enumerate(named.names):
                rows = named.key_index == index
                assert named_of(job, name) == dict(
                    zip(named.steps[rows].tolist(), named.values[rows].tolist(), strict=True)
                )

    def test_ticks_write_validation_at_epoch_ends_and_grad_norm_every_step(self, user):
        job = TrainingJobFactory(owner=user, total_epochs=3, steps_per_epoch=20, steps_per_tick=7)
        for _ in range(7):
            simulation_advance()
        assert sorted(named_of(job, GRAD_NORM_KEY)) == list(range(49))
        assert sorted(named_of(job, VAL_LOSS_KEY)) == [19, 39]
        assert sorted(named_of(job, VAL_ACCURACY_KEY)) == [19, 39]
        job = reload(job)
        assert (job.current_step, job.ingest_seq) == (49, 7)
        key = MetricKey.objects.get(job=job, name=VAL_LOSS_KEY)
        assert (key.count, key.last_step) == (2, 39)

    def test_validation_keys_appear_with_the_first_epoch_end(self, user):
        # The tick's batches name all three keys; a key is created with its first point.
        job = TrainingJobFactory(owner=user, total_epochs=3, steps_per_epoch=20, steps_per_tick=7)
        simulation_advance()
        simulation_advance()
        assert set(MetricKey.objects.filter(job=job).values_list("name", flat=True)) == {
            GRAD_NORM_KEY
        }
        simulation_advance()  # steps 14-20: the first epoch ends at step 19
        assert set(MetricKey.objects.filter(job=job).values_list("name", flat=True)) == {
            GRAD_NORM_KEY,
            VAL_LOSS_KEY,
            VAL_ACCURACY_KEY,
        }
        assert sorted(named_of(job, VAL_LOSS_KEY)) == [19]

    def test_named_points_are_identical_however_ticks_split(self, user):
        fast = TrainingJobFactory(owner=user, steps_per_tick=25, seed=7, steps_per_epoch=10)
        slow = TrainingJobFactory(owner=user, steps_per_tick=3, seed=7, steps_per_epoch=10)
        simulation_advance(job_ids=[fast.pk])
        for _ in range(9):
            simulation_advance(job_ids=[slow.pk])
        for name in (GRAD_NORM_KEY, VAL_LOSS_KEY, VAL_ACCURACY_KEY):
            slow_points = {step: v for step, v in named_of(slow, name).items() if step < 25}
            assert named_of(fast, name) == slow_points
        assert sorted(named_of(fast, VAL_LOSS_KEY)) == [9, 19]

    def test_the_last_tick_is_short_and_completes_the_job(self, user):
        job = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=25, steps_per_tick=10)
        results = [simulation_advance() for _ in range(4)]
        assert [r.points_written for r in results] == [10, 10, 5, 0]
        assert [r.jobs_completed for r in results] == [0, 0, 1, 0]
        reload(job)
        assert job.status == Status.COMPLETED
        assert job.finished_at is not None
        assert job.current_step == job.total_steps
        assert steps_of(job) == list(range(25))
        assert not job.metrics.filter(step__gte=job.total_steps).exists()

    def test_a_diverging_job_fails_and_keeps_no_point_from_the_divergence_on(self, user):
        job = TrainingJobFactory(
            owner=user, total_epochs=5, steps_per_epoch=20, steps_per_tick=10, diverge_at_step=20
        )
        results = [simulation_advance() for _ in range(6)]
        reload(job)
        assert job.status == Status.FAILED
        assert job.finished_at is not None
        diverged = int(job.failure_reason.removeprefix("loss diverged at step "))
        assert job.failure_reason == f"loss diverged at step {diverged}"
        assert diverged > job.diverge_at_step  # the loss blows up before it turns NaN
        assert steps_of(job) == list(range(diverged))
        assert job.current_step == diverged
        assert sum(r.jobs_failed for r in results) == 1
        assert all(np.isfinite(job.metrics.values_list("loss", flat=True)))

    def test_progress_fields_follow_the_points(self, user):
        job = TrainingJobFactory(owner=user)
        now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        simulation_advance(now=now)
        reload(job)
        last = job.metrics.get(step=job.current_step - 1)
        assert job.last_loss == last.loss
        assert job.last_accuracy == last.accuracy
        assert job.last_reported_at == now
        assert set(job.metrics.values_list("created_at", flat=True)) == {now}
        assert job.best_loss == min(job.metrics.values_list("loss", flat=True))

    def test_only_the_given_jobs_advance(self, user):
        chosen, other = TrainingJobFactory.create_batch(2, owner=user)
        result = simulation_advance(job_ids=[chosen.pk])
        assert result == TickResult(
            jobs_advanced=1, points_written=10, job_ids=(chosen.pk,), jobs_completed=0
        )
        assert (reload(chosen).current_step, reload(other).current_step) == (10, 0)

    @pytest.mark.parametrize(
        ("status", "source"),
        [
            (Status.QUEUED, Source.SIMULATED),
            (Status.PAUSED, Source.SIMULATED),
            (Status.STALLED, Source.EXTERNAL),
            (Status.COMPLETED, Source.SIMULATED),
            (Status.FAILED, Source.SIMULATED),
            (Status.CANCELLED, Source.SIMULATED),
            (Status.RUNNING, Source.EXTERNAL),
        ],
    )
    def test_jobs_that_are_not_running_simulations_are_untouched(self, user, status, source):
        job = TrainingJobFactory(owner=user, status=status, source=source)
        before = TrainingJob.objects.filter(pk=job.pk).values().get()
        assert simulation_advance() == TickResult()
        assert simulation_advance(job_ids=[job.pk]) == TickResult()
        assert TrainingJob.objects.filter(pk=job.pk).values().get() == before
        assert not job.metrics.exists()


class TestUserActions:
    def test_pause_holds_the_job_and_resume_continues_where_it_stopped(self, job):
        simulation_advance()
        job_pause(job=job)
        simulation_advance()
        assert reload(job).current_step == 10
        job_resume(job=job)
        simulation_advance()
        assert reload(job).current_step == 20
        assert steps_of(job) == list(range(20))

    def test_a_cancelled_job_never_gets_another_point(self, job):
        simulation_advance()
        job_cancel(job=job)
        for _ in range(3):
            simulation_advance()
        assert reload(job).status == Status.CANCELLED
        assert job.current_step == 10
        assert steps_of(job) == list(range(10))


class TestExactlyOncePerTick:
    def test_a_replayed_tick_writes_nothing_new(self, job):
        first = simulation_advance(tick=100)
        snapshot = list(TrainingMetric.objects.values_list("job_id", "step", "loss"))
        replay = simulation_advance(tick=100)
        assert first.points_written == 10
        assert replay == TickResult()
        assert list(TrainingMetric.objects.values_list("job_id", "step", "loss")) == snapshot
        assert reload(job).current_step == 10
        assert job.last_tick == 100

    def test_an_older_tick_delivered_late_writes_nothing(self, job):
        simulation_advance(tick=100)
        simulation_advance(tick=101)
        assert simulation_advance(tick=100) == TickResult()
        assert reload(job).current_step == 20

    def test_the_next_tick_advances_again(self, job):
        simulation_advance(tick=100)
        assert simulation_advance(tick=101).points_written == 10
        assert reload(job).last_tick == 101

    def test_a_job_started_mid_run_joins_at_the_next_tick(self, user, job):
        simulation_advance(tick=100)
        late = TrainingJobFactory(owner=user)
        assert simulation_advance(tick=100).job_ids == (late.pk,)
        assert simulation_due_job_ids(tick=101) == [job.pk, late.pk]

    def test_ad_hoc_ticks_always_advance_and_leave_the_tick_mark_alone(self, job):
        simulation_advance(tick=100)
        simulation_advance()
        simulation_advance()
        assert reload(job).current_step == 30
        assert job.last_tick == 100

    @override_settings(TRAINMON_TICK_SECONDS=2.5)
    def test_tick_slots_count_periods_since_the_epoch(self):
        moment = datetime(2030, 1, 1, tzinfo=UTC)
        assert tick_slot(moment) == int(moment.timestamp() // 2.5)
        assert tick_slot(moment + timedelta(seconds=2.4)) == tick_slot(moment)
        assert tick_slot(moment + timedelta(seconds=2.5)) == tick_slot(moment) + 1


class TestQueryCount:
    def test_a_tick_costs_the_same_queries_for_1_or_200_jobs(self, user, django_assert_num_queries):
        TrainingJobFactory(owner=user)
        with CaptureQueriesContext(connection) as one_job:
            assert simulation_advance(tick=1).points_written == 10
        TrainingJobFactory.create_batch(199, owner=user)
        with django_assert_num_queries(len(one_job)):
            result = simulation_advance(tick=2)
        assert result.jobs_advanced == 200
        assert result.points_written == 2000
        assert TrainingMetric.objects.count() == 2010
        # With every job's named series: grad_norm at each step. A key exists once it has a
        # point: the validation keys only where an epoch ended.
        assert NamedMetric.objects.filter(key__name=GRAD_NORM_KEY).count() == 2010
        assert MetricKey.objects.filter(name=GRAD_NORM_KEY).count() == 200
        assert set(
            MetricKey.objects.exclude(name=GRAD_NORM_KEY).values_list("pk", flat=True)
        ) == set(NamedMetric.objects.exclude(key__name=GRAD_NORM_KEY).values_list("key", flat=True))

    def test_a_tick_costs_the_same_queries_for_any_number_of_named_points(self, user):
        # Ticks that write validation points (epoch ends) and ticks that do not.
        TrainingJobFactory(owner=user, steps_per_epoch=10, steps_per_tick=10)
        simulation_advance(tick=1)
        with CaptureQueriesContext(connection) as first:
            simulation_advance(tick=2)
        TrainingJobFactory.create_batch(
            20, owner=user, total_epochs=30, steps_per_epoch=3, steps_per_tick=50
        )
        with CaptureQueriesContext(connection) as creating_keys:
            simulation_advance(tick=3)
        with CaptureQueriesContext(connection) as many:
            simulation_advance(tick=4)
        assert len(many) == len(first)
        # The new jobs' keys cost one INSERT, once; later writes to them skip it.
        assert len(creating_keys) == len(first) + 1
        assert NamedMetric.objects.filter(key__name=VAL_LOSS_KEY).count() > 300


def run_in_thread(target, *args, **kwargs) -> threading.Thread:
    """Run `target` on its own database connection, closing it afterwards."""

    def body() -> None:
        try:
            target(*args, **kwargs)
        finally:
            connection.close()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestConcurrentTicksOnPostgres:
    def test_a_tick_skips_jobs_another_tick_holds_instead_of_waiting(self, user):
        jobs = TrainingJobFactory.create_batch(5, owner=user)
        claimed, done = threading.Event(), threading.Event()
        results: dict[str, object] = {}

        def holder() -> None:
            with transaction.atomic():
                results["holder"] = simulation_advance(tick=1)
                claimed.set()
                # Hold the row locks until the other tick is done; a tick that waited for
                # them instead of skipping would never be done, and this times out.
                results["other_done_while_locked"] = done.wait(timeout=LOCK_WAIT_SECONDS)

        def other() -> None:
            claimed.wait(timeout=30)
            results["other"] = simulation_advance(tick=1)
            done.set()

        threads = [run_in_thread(holder), run_in_thread(other)]
        for thread in threads:
            thread.join(timeout=60)
        assert results["other_done_while_locked"], "the tick waited for the locks"
        assert results["holder"].jobs_advanced == 5
        assert results["other"] == TickResult()
        for job in jobs:
            assert steps_of(job) == list(range(10))

    def test_two_tick_runners_advance_each_job_exactly_once_per_tick(self, user):
        jobs = TrainingJobFactory.create_batch(
            60, owner=user, total_epochs=10, steps_per_epoch=100, steps_per_tick=5
        )
        all_ids = sorted(job.pk for job in jobs)
        # One runner claims every job at once, the other in small chunks from the other end,
        # so within a tick some chunks meet locked rows and some meet rows already advanced.
        whole = [all_ids]
        chunked = [all_ids[start : start + 7] for start in range(0, len(all_ids), 7)][::-1]
        ticks = 8
        barrier = threading.Barrier(2, timeout=30)
        advanced: dict[int, list[int]] = {tick: [] for tick in range(1, ticks + 1)}
        errors: list[BaseException] = []

        def runner(chunks: list[list[int]]) -> None:
            try:
                for tick in range(1, ticks + 1):
                    barrier.wait()  # both runners work on the same tick at the same time
                    for chunk in chunks:
                        advanced[tick].extend(simulation_advance(job_ids=chunk, tick=tick).job_ids)
            except BaseException as error:
                errors.append(error)
                barrier.abort()

        threads = [run_in_thread(runner, whole), run_in_thread(runner, chunked)]
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        for tick, job_ids in advanced.items():
            assert sorted(job_ids) == all_ids, f"tick {tick}"
        for job in jobs:
            reload(job)
            assert job.current_step == ticks * 5
            assert job.last_tick == ticks
            assert steps_of(job) == list(range(ticks * 5))


class TestOneBadJob:
    """One user's job must never stop the tick for everyone (issue 15)."""

    def test_a_job_whose_learning_rate_overflows_fails_alone(self, user, other_user):
        # Parameters from before today's bounds: warm-up multiplies 1e308 past the float range,
        # and an infinite learning rate is not storable.
        poison = TrainingJobFactory(owner=user, base_learning_rate=1e308, warmup_steps=10)
        healthy = [TrainingJobFactory(owner=other_user) for _ in range(3)]
        for _ in range(2):
            result = simulation_advance()
        reload(poison)
        assert poison.status == Status.FAILED
        assert poison.failure_reason.startswith("simulation error at step 0: ")
        assert poison.current_step == 0 and steps_of(poison) == []
        assert not poison.metric_summaries.exists()
        for job in healthy:
            reload(job)
            assert (job.status, job.current_step) == (Status.RUNNING, 20)
            assert steps_of(job) == list(range(20))
        assert result.jobs_advanced == 3  # the failed job is no longer claimed

    def test_a_job_whose_points_the_database_refuses_fails_alone(self, user, monkeypatch):
        from metrics import services

        jobs = [TrainingJobFactory(owner=user) for _ in range(3)]
        poison = jobs[1]
        generate = services.simulated_batches

        def epoch_zero_for_poison(runs: SimulatedRuns, time: float) -> JobsPoints:
            tick = generate(runs, time)
            # An epoch of 0 breaks the points table's check constraint: a real refusal.
            for index in np.flatnonzero(runs.seeds == poison.seed):
                tick.headline_of(index).epochs[:] = 0  # a view into the tick's points
            return tick

        monkeypatch.setattr(services, "simulated_batches", epoch_zero_for_poison)
        result = simulation_advance()

        assert (result.jobs_advanced, result.jobs_failed, result.points_written) == (3, 1, 20)
        reload(poison)
        assert poison.status == Status.FAILED
        assert "IntegrityError" in poison.failure_reason
        assert steps_of(poison) == []
        assert not MetricKey.objects.filter(job=poison).exists()
        assert reload(poison).ingest_seq == 0
        for job in (jobs[0], jobs[2]):
            assert steps_of(reload(job)) == list(range(10))
            assert job.metric_summaries.filter(width=64).get().count == 10
            assert sorted(named_of(job, GRAD_NORM_KEY)) == list(range(10))

    def test_a_loss_beyond_the_bound_fails_the_job_as_diverged(self, user, other_user):
        poison = TrainingJobFactory(owner=user, initial_loss=1.7e308, final_loss=0.3)
        healthy = TrainingJobFactory(owner=other_user)
        simulation_advance()
        reload(poison)
        assert (poison.status, poison.failure_reason) == (
            Status.FAILED,
            "loss diverged at step 0",
        )
        assert steps_of(reload(healthy)) == list(range(10))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_tick_commits_without_waiting_for_the_disk_and_reported_points_still_wait(user):
    # A tick can be replayed from its seeds; a user's reported points cannot.
    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    TrainingJobFactory(owner=user)
    with transaction.atomic():
        assert simulation_advance().points_written == 10
        assert synchronous_commit() == "off"
    assert synchronous_commit() == "on"
    external = TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL)
    with transaction.atomic():
        batches_write((external, metric_batch([0, 1], steps_per_epoch=10)))
        assert synchronous_commit() == "on"
