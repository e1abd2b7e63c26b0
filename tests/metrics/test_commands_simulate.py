from __future__ import annotations

from functools import partial

import pytest
from django.core.management import CommandError

from jobs.models import TrainingJob
from metrics.services import TickResult
from tests.support.commands import command_output
from tests.support.factories import TrainingJobFactory, reload

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


simulate = partial(command_output, "simulate")


def test_ticks_advance_every_running_simulated_job(user):
    first, second = TrainingJobFactory.create_batch(2, owner=user)
    output = simulate("--ticks", "3")
    assert output == (
        "3 ticks: 60 points written for 2 jobs; 0 completed, 0 failed, 2 still running.\n"
    )
    assert (reload(first).current_step, reload(second).current_step) == (30, 30)


def test_one_tick_by_default_and_only_for_the_jobs_named(user):
    chosen, other = TrainingJobFactory.create_batch(2, owner=user)
    output = simulate(str(chosen.pk))
    assert output.startswith("1 tick: 10 points written for 1 job;")
    assert (reload(chosen).current_step, reload(other).current_step) == (10, 0)


def test_until_done_runs_every_job_to_its_end(user):
    short = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=15, steps_per_tick=10)
    long = TrainingJobFactory(owner=user, total_epochs=2, steps_per_epoch=25, steps_per_tick=10)
    diverging = TrainingJobFactory(
        owner=user, total_epochs=4, steps_per_epoch=25, steps_per_tick=10, diverge_at_step=30
    )
    output = simulate("--until-done")
    assert output.endswith("2 completed, 1 failed, 0 still running.\n")
    assert reload(short).status == reload(long).status == Status.COMPLETED
    assert long.current_step == long.metrics.count() == 50
    assert reload(diverging).status == Status.FAILED


def test_until_done_stops_when_the_named_job_is_done(user):
    named = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=20, steps_per_tick=10)
    bystander = TrainingJobFactory(owner=user, total_epochs=50, steps_per_epoch=20)
    output = simulate(str(named.pk), "--until-done")
    assert output.startswith("2 ticks: 20 points written for 1 job; 1 completed")
    assert reload(named).status == Status.COMPLETED
    assert reload(bystander).current_step == 0


def test_until_done_with_nothing_running_says_so(user):
    TrainingJobFactory(owner=user, status=Status.PAUSED)
    assert simulate("--until-done") == "No running simulated jobs: nothing to do.\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ticks", "0"], "--ticks must be a positive integer, got '0'."),
        (["--ticks", "-2"], "--ticks must be a positive integer, got '-2'."),
        (["--ticks", "many"], "--ticks must be a positive integer, got 'many'."),
        (["--ticks", "2", "--until-done"], "Give either --ticks or --until-done, not both."),
        (["--interval", "-1"], "--interval must be a number of seconds >= 0, got '-1'."),
        (["abc"], "Job ids are integers, got 'abc'."),
        (["987654"], "No job with id 987654."),
    ],
)
def test_bad_arguments_are_one_line_errors_and_change_nothing(job, args, message):
    with pytest.raises(CommandError) as error:
        simulate(*args)
    assert str(error.value) == message
    assert not job.metrics.exists()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": Status.PAUSED}, "is paused; only running jobs can be simulated."),
        ({"status": Status.COMPLETED}, "is completed; only running jobs can be simulated."),
        ({"source": TrainingJob.Source.EXTERNAL}, "is external"),
    ],
)
def test_jobs_that_cannot_be_simulated_are_refused(user, job, fields, reason):
    refused = TrainingJobFactory(owner=user, name="held", **fields)
    with pytest.raises(CommandError, match=f"^Job {refused.pk} \\('held'\\) {reason}"):
        simulate(str(job.pk), str(refused.pk), "--ticks", "2")
    assert not job.metrics.exists()


def test_until_done_gives_up_instead_of_looping_forever(job, monkeypatch):
    # As if every tick found the job locked by another process and advanced nothing.
    monkeypatch.setattr(
        "metrics.management.commands.simulate.simulation_advance", lambda **_: TickResult()
    )
    with pytest.raises(CommandError, match=r"^Stopped after 7 ticks with jobs still running"):
        simulate("--until-done")
