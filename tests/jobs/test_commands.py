from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import BaseCommand, CommandError

from jobs.models import TrainingJob
from tests.support.commands import command_outputs
from tests.support.factories import TrainingJobFactory, UserFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


run = command_outputs


@pytest.fixture
def superuser(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


class TestCreateJob:
    def test_prints_only_the_new_id(self, superuser):
        stdout, stderr = run(
            "createjob", "bert-base", "--epochs", "3", "--steps-per-epoch", "100", "--seed", "42"
        )
        job = TrainingJob.objects.get()
        assert stdout == f"{job.pk}\n"
        assert "bert-base" in stderr
        assert job.name == "bert-base"
        assert (job.total_epochs, job.steps_per_epoch, job.steps_per_tick) == (3, 100, 10)
        assert job.seed == 42
        assert job.owner == superuser
        assert job.status == Status.RUNNING
        assert job.source == TrainingJob.Source.SIMULATED

    def test_quiet_prints_the_id_alone(self, superuser):
        stdout, stderr = run(
            "createjob", "x", "--epochs", "1", "--steps-per-epoch", "5", "--verbosity", "0"
        )
        assert stdout.strip().isdigit()
        assert stderr == ""

    def test_optional_labels_and_divergence(self, superuser, user):
        run(
            "createjob", "vit", "--epochs", "2", "--steps-per-epoch", "50",
            "--steps-per-tick", "25", "--owner", user.username, "--model-name", "vit-small",
            "--dataset", "cifar100", "--diverge-at-step", "30",
        )  # fmt: skip
        job = TrainingJob.objects.get()
        assert job.owner == user
        assert (job.model_name, job.dataset) == ("vit-small", "cifar100")
        assert (job.steps_per_tick, job.diverge_at_step) == (25, 30)

    def test_paused_job_waits_until_resumed(self, superuser):
        stdout, _ = run(
            "createjob", "later", "--epochs", "1", "--steps-per-epoch", "10", "--paused"
        )
        job = TrainingJob.objects.get(pk=int(stdout))
        assert job.status == Status.PAUSED
        assert job.started_at is None

        run("resumejob", str(job.pk))
        job.refresh_from_db()
        assert job.status == Status.RUNNING
        assert job.started_at is not None

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--epochs", "0"], "Total epochs must be a positive integer."),
            (["--steps-per-tick", "0"], "Steps per tick must be a positive integer."),
            (["--seed", "-1"], "The seed must be an integer from 0"),
            (["--diverge-at-step", "-5"], "The divergence step must be an integer >= 0."),
            (["--owner", "nobody"], "No user 'nobody'"),
        ],
    )
    def test_bad_input_is_one_clear_error_and_writes_nothing(self, superuser, args, message):
        base = {"--epochs": "2", "--steps-per-epoch": "10"}
        for flag, value in zip(args[::2], args[1::2], strict=True):
            base[flag] = value
        argv = [item for pair in base.items() for item in pair]
        with pytest.raises(CommandError, match=re.escape(message)) as error:
            run("createjob", "job", *argv)
        assert "\n" not in str(error.value)
        assert not TrainingJob.objects.exists()

    def test_blank_name_is_refused(self, superuser):
        with pytest.raises(CommandError, match=re.escape("Give the job a name.")):
            run("createjob", "   ", "--epochs", "1", "--steps-per-epoch", "1")
        assert not TrainingJob.objects.exists()

    def test_missing_required_option(self, superuser):
        with pytest.raises(CommandError, match="--steps-per-epoch"):
            run("createjob", "job", "--epochs", "1")

    def test_owner_is_required_without_a_single_superuser(self, user):
        with pytest.raises(CommandError, match="No superuser exists: pass --owner USER"):
            run("createjob", "job", "--epochs", "1", "--steps-per-epoch", "1")
        UserFactory(is_superuser=True)
        UserFactory(is_superuser=True)
        with pytest.raises(CommandError, match="several superusers: choose one with --owner"):
            run("createjob", "job", "--epochs", "1", "--steps-per-epoch", "1")
        assert not TrainingJob.objects.exists()


class TestJobsTable:
    def test_lists_jobs_with_progress_and_loss(self, user):
        running = TrainingJobFactory(owner=user, name="alpha", current_step=15, last_loss=0.123456)
        queued = TrainingJobFactory(owner=user, name="beta", status=Status.QUEUED)
        stdout, _ = run("jobs")
        header, *lines = stdout.splitlines()
        assert header.split() == ["ID", "NAME", "STATUS", "PROGRESS", "LAST", "LOSS", "UPDATED"]
        rows = {line.split()[0]: line.split() for line in lines}
        assert rows[str(running.pk)][1:6] == ["alpha", "running", "25.0%", "0.1235", "just"]
        assert rows[str(queued.pk)][1:5] == ["beta", "queued", "0%", "-"]

    def test_progress_and_age_read_as_on_the_pages(self, user):
        from datetime import timedelta

        from django.utils import timezone

        TrainingJobFactory(
            owner=user,
            name="almost",
            total_epochs=1,
            steps_per_epoch=10_000,
            current_step=9_996,
            updated_at=timezone.now() - timedelta(minutes=3, seconds=5),
        )
        stdout, _ = run("jobs")
        assert stdout.splitlines()[1].split()[3:] == ["99.9%", "-", "3", "min", "ago"]

    def test_status_filter(self, user):
        TrainingJobFactory(owner=user, name="alpha")
        TrainingJobFactory(owner=user, name="beta", status=Status.FAILED)
        stdout, _ = run("jobs", "--status", "failed")
        assert "beta" in stdout
        assert "alpha" not in stdout

    def test_limit(self, user):
        TrainingJobFactory.create_batch(3, owner=user)
        stdout, _ = run("jobs", "--limit", "2")
        assert len(stdout.splitlines()) == 3  # header and two jobs

    def test_unknown_status_lists_the_valid_ones(self):
        with pytest.raises(CommandError, match="Unknown status 'done'; choose one of: queued, "):
            run("jobs", "--status", "done")

    def test_no_jobs(self, db):
        stdout, stderr = run("jobs")
        assert stdout == ""
        assert stderr == "No jobs.\n"


class TestTransitionCommands:
    def test_pause_resume_cancel(self, user):
        job = TrainingJobFactory(owner=user, name="alpha")
        stdout, _ = run("pausejob", str(job.pk))
        assert stdout == f"Paused job {job.pk} ('alpha').\n"
        job.refresh_from_db()
        assert job.status == Status.PAUSED

        run("resumejob", str(job.pk))
        job.refresh_from_db()
        assert job.status == Status.RUNNING

        stdout, _ = run("canceljob", str(job.pk))
        assert stdout == f"Cancelled job {job.pk} ('alpha').\n"
        job.refresh_from_db()
        assert job.status == Status.CANCELLED
        assert job.finished_at is not None

    def test_several_ids(self, user):
        jobs = TrainingJobFactory.create_batch(3, owner=user)
        stdout, _ = run("pausejob", *(str(job.pk) for job in jobs))
        assert len(stdout.splitlines()) == 3
        assert set(TrainingJob.objects.values_list("status", flat=True)) == {Status.PAUSED}

    def test_unknown_id_changes_nothing(self, user):
        job = TrainingJobFactory(owner=user)
        with pytest.raises(CommandError, match=f"No job with id {job.pk + 1}; nothing changed."):
            run("canceljob", str(job.pk), str(job.pk + 1))
        job.refresh_from_db()
        assert job.status == Status.RUNNING

    def test_illegal_transition_is_reported_and_the_rest_applied(self, user):
        done = TrainingJobFactory(owner=user, status=Status.COMPLETED, name="done")
        running = TrainingJobFactory(owner=user)
        stdout, stderr = StringIO(), StringIO()
        with pytest.raises(CommandError, match="1 of 2 jobs could not be paused"):
            call_command("pausejob", str(done.pk), str(running.pk), stdout=stdout, stderr=stderr)
        assert f"Cannot pause job {done.pk} ('done'): it is completed." in stderr.getvalue()
        assert stdout.getvalue() == f"Paused job {running.pk} ({running.name!r}).\n"
        done.refresh_from_db()
        running.refresh_from_db()
        assert (done.status, running.status) == (Status.COMPLETED, Status.PAUSED)

    def test_resume_only_from_paused(self, user):
        job = TrainingJobFactory(owner=user)
        with pytest.raises(CommandError, match="could not be resumed"):
            run("resumejob", str(job.pk))


PROJECT_APPS = ("jobs", "metrics", "accounts")


def project_commands() -> list[tuple[str, str]]:
    from django.core.management import get_commands

    return sorted((app, name) for name, app in get_commands().items() if app in PROJECT_APPS)


@pytest.mark.parametrize(("app", "name"), project_commands())
def test_every_option_has_help(app, name):
    command = load_command_class(app, name)
    parser = command.create_parser("manage.py", name)
    base = {action.dest for action in BaseCommand().create_parser("manage.py", "x")._actions}
    own = [action for action in parser._actions if action.dest not in base]
    assert own or name == "setup_local"  # the one command without options
    assert all(action.help for action in own), [a.dest for a in own if not a.help]
    assert command.help


class TestJobsOpenEnded:
    def test_lists_a_run_without_length_and_one_past_it(self, db):
        TrainingJobFactory(
            name="open",
            source=TrainingJob.Source.EXTERNAL,
            total_epochs=None,
            steps_per_epoch=None,
            current_step=1234,
        )
        TrainingJobFactory(name="over", source=TrainingJob.Source.EXTERNAL, current_step=90)
        TrainingJobFactory(name="within", current_step=30)
        out, _ = run("jobs")
        rows = {line.split()[1]: line for line in out.splitlines()[1:]}
        assert "1,234 steps" in rows["open"]
        assert "past length" in rows["over"]
        assert "50.0%" in rows["within"]
