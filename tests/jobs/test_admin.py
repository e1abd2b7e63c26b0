from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from jobs.admin import LATEST_POINTS, TrainingJobAdmin
from jobs.models import TrainingJob
from metrics.models import TrainingMetric
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory, UserFactory
from tests.support.job_bounds import BOUND_REFUSALS

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:jobs_trainingjob_changelist")
ADD = reverse("admin:jobs_trainingjob_add")
# session, user, filtered count, full count, the page of jobs with owners, owners for the filter
CHANGELIST_QUERIES = 6


def named_write(job: TrainingJob, series: dict[str, list[float]]) -> None:
    """Each key's values at steps 0, 1, ... through the write path."""
    from django.db import transaction

    from jobs.services import jobs_lock
    from metrics.points import MetricBatch, NamedBatch
    from metrics.services import metric_batches_write

    batch = NamedBatch.from_points(
        (name, step, value, 1.7e9)
        for name, values in series.items()
        for step, value in enumerate(values)
    )
    with transaction.atomic():
        [locked] = jobs_lock([job.pk])
        metric_batches_write([(locked, MetricBatch.empty())], named={locked.pk: batch})


def change_url(job: TrainingJob) -> str:
    return reverse("admin:jobs_trainingjob_change", args=[job.pk])


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


class TestAccess:
    def test_anonymous_is_sent_to_log_in(self, client, job):
        # LoginRequiredMiddleware answers before the admin does: the site's login page, which
        # comes back to the admin afterwards.
        response = client.get(CHANGELIST)
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={CHANGELIST}"

    def test_non_staff_user_is_refused(self, client, user, job):
        client.force_login(user)
        response = client.get(CHANGELIST)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
        assert client.get(change_url(job)).status_code == 302

    def test_staff_sees_the_list(self, staff_client, job):
        TrainingJobFactory(owner=job.owner, current_step=30, last_loss=0.4242)
        response = staff_client.get(CHANGELIST)
        assert response.status_code == 200
        html = response.content.decode()
        assert job.name in html
        assert '<progress value="50.0" max="100"' in html
        assert "0.4242" in html
        assert f'href="/jobs/{job.pk}/">View live</a>' in html


class TestChangelist:
    @pytest.mark.parametrize("jobs", [10, 500])
    def test_query_count_does_not_grow_with_jobs(
        self, staff_client, django_assert_num_queries, jobs
    ):
        owners = UserFactory.create_batch(5)
        TrainingJob.objects.bulk_create(
            TrainingJobFactory.build(owner=owners[i % len(owners)], current_step=i % 60)
            for i in range(jobs)
        )
        with django_assert_num_queries(CHANGELIST_QUERIES):
            response = staff_client.get(CHANGELIST)
        assert response.status_code == 200
        assert response.content.decode().count("<progress ") == min(jobs, 100)

    def test_filters_and_search(self, staff_client, user):
        TrainingJobFactory(owner=user, name="bert-large", status=Status.PAUSED)
        TrainingJobFactory(owner=user, name="gpt-small")
        TrainingJobFactory(owner=user, name="bert-tiny", source=TrainingJob.Source.EXTERNAL)
        paused = staff_client.get(CHANGELIST, {"status__exact": "paused"}).content.decode()
        assert "bert-large" in paused
        assert "gpt-small" not in paused
        found = staff_client.get(CHANGELIST, {"q": "bert"}).content.decode()
        assert "bert-large" in found and "bert-tiny" in found
        assert "gpt-small" not in found
        external = staff_client.get(CHANGELIST, {"source__exact": "external"}).content.decode()
        assert "bert-tiny" in external
        assert "bert-large" not in external
        mine = staff_client.get(CHANGELIST, {"owner__id__exact": user.pk})
        assert mine.status_code == 200
        assert "gpt-small" in mine.content.decode()

    @pytest.mark.parametrize("order", ["4", "-4", "5"])  # progress, descending, last loss
    def test_sortable_columns(self, staff_client, user, order):
        TrainingJobFactory(owner=user, current_step=10, last_loss=0.5)
        TrainingJobFactory(owner=user, current_step=50, last_loss=0.1)
        assert staff_client.get(CHANGELIST, {"o": order}).status_code == 200


class TestActions:
    def act(self, staff_client, action, *jobs):
        return staff_client.post(
            CHANGELIST,
            {"action": action, "_selected_action": [job.pk for job in jobs]},
            follow=True,
        )

    def test_pause_reports_changes_and_refusals(self, staff_client, user):
        running = TrainingJobFactory.create_batch(2, owner=user)
        done = TrainingJobFactory(owner=user, status=Status.COMPLETED, name="done")
        response = self.act(staff_client, "pause_jobs", *running, done)
        assert response.status_code == 200
        assert messages_of(response) == [
            "Paused 2 jobs.",
            f"1 job not paused: Cannot pause job {done.pk} ('done'): it is completed.",
        ]
        statuses = dict(TrainingJob.objects.values_list("pk", "status"))
        assert [statuses[job.pk] for job in running] == [Status.PAUSED, Status.PAUSED]
        assert statuses[done.pk] == Status.COMPLETED

    def test_resume_start_and_cancel(self, staff_client, user):
        paused = TrainingJobFactory(owner=user, status=Status.PAUSED)
        queued = TrainingJobFactory(owner=user, status=Status.QUEUED, started_at=None)
        assert messages_of(self.act(staff_client, "resume_jobs", paused)) == ["Resumed 1 job."]
        assert messages_of(self.act(staff_client, "start_jobs", queued)) == ["Started 1 job."]
        queued.refresh_from_db()
        assert queued.status == Status.RUNNING
        assert queued.started_at is not None
        assert messages_of(self.act(staff_client, "cancel_jobs", paused, queued)) == [
            "Cancelled 2 jobs."
        ]
        assert set(TrainingJob.objects.values_list("status", flat=True)) == {Status.CANCELLED}

    def test_view_only_staff_cannot_act(self, client, user):
        viewer = UserFactory(is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_trainingjob"))
        client.force_login(viewer)
        job = TrainingJobFactory(owner=user)
        assert client.get(CHANGELIST).status_code == 200
        self.act(client, "pause_jobs", job)
        job.refresh_from_db()
        assert job.status == Status.RUNNING

    def test_only_refusals(self, staff_client, user):
        cancelled = TrainingJobFactory.create_batch(7, owner=user, status=Status.CANCELLED)
        (message,) = messages_of(self.act(staff_client, "resume_jobs", *cancelled))
        assert message.startswith("7 jobs not resumed: Cannot resume job")
        assert message.endswith("(and 2 more)")
        assert message.count("Cannot resume") == 5


class TestChangePage:
    def test_shows_only_the_latest_points(self, staff_client, job):
        for step in range(100):
            TrainingMetricFactory(job=job, step=step, loss=0.75)
        response = staff_client.get(change_url(job))
        assert response.status_code == 200
        html = response.content.decode()
        steps = [int(step) for step in re.findall(r"<tr><td>([\d,]+)</td>", html)]
        assert steps == list(range(99, 99 - LATEST_POINTS, -1))
        assert "View live" in html
        assert f'href="/jobs/{job.pk}/"' in html

    def test_query_count_does_not_grow_with_points(self, staff_client):
        counts = []
        for points in (5, 200):
            job = TrainingJobFactory(total_epochs=10)
            TrainingMetricFactory.create_batch(points, job=job)
            with CaptureQueriesContext(connection) as captured:
                assert staff_client.get(change_url(job)).status_code == 200
            counts.append(len(captured))
        assert counts[0] == counts[1]

    def test_lists_the_jobs_keys_with_their_stats(self, staff_client, job):
        named_write(job, {"val/loss": [2.0, 0.5, 1.0], "grad_norm": [1.0, float("nan")]})
        html = staff_client.get(change_url(job)).content.decode()
        rows = re.findall(
            r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>"
            r"<td>([^<]+)</td><td>([^<]+)</td></tr>",
            html,
        )
        assert rows == [
            ("grad_norm", "2", "1", "-", "1", "1"),  # the last value was NaN
            ("val/loss", "3", "2", "1", "0.5", "2"),
        ]
        assert f'href="/jobs/{job.pk}/keys.csv"' in html  # every named point, exported

    def test_the_keys_cost_one_bounded_query(self, staff_client, monkeypatch):
        monkeypatch.setattr("jobs.admin.KEYS_SHOWN", 5)
        counts = []
        for keys in (1, 12):
            job = TrainingJobFactory(source="external")
            named_write(job, {f"k{index:02d}": [1.0] for index in range(keys)})
            with CaptureQueriesContext(connection) as captured:
                html = staff_client.get(change_url(job)).content.decode()
            counts.append(len(captured))
        assert counts[0] == counts[1]
        assert "k04" in html
        assert "k05" not in html
        assert "The first 5 keys by name." in html

    def test_no_points_yet(self, staff_client, job):
        html = staff_client.get(change_url(job)).content.decode()
        assert "No points yet." in html
        assert "No named metrics." in html

    def test_status_and_progress_are_read_only(self, staff_client, job):
        job.current_step = 40
        job.save()
        response = staff_client.post(
            change_url(job),
            {
                "name": "renamed",
                "owner": job.owner_id,
                "description": "new words",
                "model_name": "resnet50",
                "dataset": "imagenet",
                "hyperparameters": '{"lr": 0.1}',
                "steps_per_tick": 20,
                "status": Status.COMPLETED,
                "current_step": 0,
                "seed": 1,
            },
        )
        assert response.status_code == 302
        job.refresh_from_db()
        assert (job.name, job.description, job.hyperparameters) == (
            "renamed",
            "new words",
            {"lr": 0.1},
        )
        assert job.steps_per_tick == 20
        assert job.status == Status.RUNNING
        assert job.current_step == 40
        assert job.seed != 1

    def test_an_edit_never_writes_back_stale_progress(self, staff_client, job, monkeypatch):
        get_object = TrainingJobAdmin.get_object

        def read_then_tick(self, request, object_id, from_field=None):
            loaded = get_object(self, request, object_id, from_field)
            # A tick and a pause land between the admin's read and its save.
            TrainingJob.objects.filter(pk=job.pk).update(current_step=50, status=Status.PAUSED)
            return loaded

        monkeypatch.setattr(TrainingJobAdmin, "get_object", read_then_tick)
        response = staff_client.post(
            change_url(job),
            {
                "name": "renamed",
                "owner": job.owner_id,
                "hyperparameters": "{}",
                "steps_per_tick": 10,
            },
        )
        assert response.status_code == 302
        job.refresh_from_db()
        assert (job.name, job.current_step, job.status) == ("renamed", 50, Status.PAUSED)

    def test_descriptive_edit_validates(self, staff_client, job):
        response = staff_client.post(
            change_url(job),
            {"name": "", "owner": job.owner_id, "hyperparameters": "{}", "steps_per_tick": 0},
        )
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert set(errors) == {"name", "steps_per_tick"}
        job.refresh_from_db()
        assert job.name != ""


class TestAdd:
    def form_data(self, owner, **overrides):
        data = {
            "name": "from-admin",
            "owner": owner.pk,
            "start": "on",
            "description": "",
            "model_name": "mlp",
            "dataset": "mnist",
            "hyperparameters": '{"lr": 0.01}',
            "source": "simulated",
            "total_epochs": 2,
            "steps_per_epoch": 50,
            "steps_per_tick": 10,
            "initial_loss": 2.5,
            "final_loss": 0.3,
            "decay_rate": "",
            "seed": "",
            "base_learning_rate": 0.001,
            "warmup_steps": "",
            "diverge_at_step": "",
        }
        return data | overrides

    def test_creates_through_the_service(self, staff_client, user):
        response = staff_client.post(ADD, self.form_data(user))
        assert response.status_code == 302
        job = TrainingJob.objects.get()
        assert job.status == Status.RUNNING
        assert job.started_at is not None
        assert job.decay_rate == pytest.approx(5.0 / 100)  # the service's defaults
        assert job.warmup_steps == 5
        assert job.seed is not None
        assert (job.owner, job.hyperparameters) == (user, {"lr": 0.01})

    def test_unchecked_start_leaves_it_queued(self, staff_client, user):
        data = self.form_data(user)
        del data["start"]
        staff_client.post(ADD, data)
        assert TrainingJob.objects.get().status == Status.QUEUED

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"final_loss": 3.0}, "final_loss"),
            ({"total_epochs": 0}, "total_epochs"),
            ({"name": "  "}, "name"),
            # Only the service knows that hyperparameters are an object, not any JSON.
            ({"hyperparameters": "[1, 2]"}, "hyperparameters"),
        ],
    )
    def test_refuses_what_the_service_refuses(self, staff_client, user, overrides, field):
        response = staff_client.post(ADD, self.form_data(user, **overrides))
        assert response.status_code == 200
        assert field in response.context["adminform"].form.errors
        assert not TrainingJob.objects.exists()

    def test_add_page_loads(self, staff_client):
        response = staff_client.get(ADD)
        assert response.status_code == 200
        assert 'name="start"' in response.content.decode()


class TestDelete:
    def test_confirmation_counts_points_instead_of_listing_them(self, staff_client, job):
        TrainingMetricFactory.create_batch(150, job=job)
        response = staff_client.get(reverse("admin:jobs_trainingjob_delete", args=[job.pk]))
        html = response.content.decode()
        assert "150 metric points" in html
        assert "loss 1" not in html  # no line per point

        staff_client.post(reverse("admin:jobs_trainingjob_delete", args=[job.pk]), {"post": "yes"})
        assert not TrainingJob.objects.exists()
        assert not TrainingMetric.objects.exists()

    def test_bulk_delete(self, staff_client, user):
        jobs = TrainingJobFactory.create_batch(3, owner=user)
        TrainingMetricFactory.create_batch(10, job=jobs[0])
        response = staff_client.post(
            CHANGELIST,
            {"action": "delete_selected", "_selected_action": [job.pk for job in jobs]},
        )
        assert "10 metric points" in response.content.decode()
        staff_client.post(
            CHANGELIST,
            {
                "action": "delete_selected",
                "_selected_action": [job.pk for job in jobs],
                "post": "yes",
            },
        )
        assert not TrainingJob.objects.exists()
        assert not TrainingMetric.objects.exists()


@pytest.mark.parametrize(
    "url", ["admin:jobs_trainingjob_changelist", "admin:accounts_apitoken_changelist"]
)
def test_a_nul_in_the_admin_search_is_not_a_500(staff_client, staff_user, url):
    TrainingJobFactory(owner=staff_user, name="bert")
    response = staff_client.get(reverse(url) + "?q=ber%00t")
    assert response.status_code == 200


class TestServiceRules:
    """The admin refuses what the web form and the API refuse, with the same words."""

    @pytest.mark.parametrize(("field", "value", "message"), BOUND_REFUSALS)
    def test_add_refuses_each_bound_with_its_message(
        self, staff_client, user, field, value, message
    ):
        response = staff_client.post(ADD, TestAdd().form_data(user, **{field: value}))
        assert response.status_code == 200
        assert response.context["adminform"].form.errors[field] == [message]
        assert not TrainingJob.objects.exists()

    def test_the_add_form_shows_the_services_limits(self, staff_client):
        html = staff_client.get(ADD).content.decode()
        assert re.search(r'name="base_learning_rate"[^>]*max="10.0"', html)
        assert re.search(r'name="steps_per_tick"[^>]*max="10000"', html)

    def edit(self, staff_client, job, **changes):
        data = {"name": job.name, "owner": job.owner_id, "hyperparameters": "{}"}
        return staff_client.post(change_url(job), data | {"steps_per_tick": 10} | changes)

    def test_an_edit_cannot_pass_the_speed_limit(self, staff_client, job):
        response = self.edit(staff_client, job, steps_per_tick=10_001)
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert errors["steps_per_tick"] == ["Steps per tick can be at most 10,000."]
        job.refresh_from_db()
        assert job.steps_per_tick == 10

    def test_an_edit_is_checked_by_job_update(self, staff_client, job, monkeypatch):
        # The admin asks the service, so a rule added there reaches the admin untouched.
        def refuse(*, data):
            raise ValidationError({"name": "Refused by the service."})

        monkeypatch.setattr("jobs.admin.job_update_check", refuse)
        response = self.edit(staff_client, job, name="renamed")
        assert response.context["adminform"].form.errors["name"] == ["Refused by the service."]
        job.refresh_from_db()
        assert job.name != "renamed"

    def test_an_edit_cannot_store_oversized_hyperparameters(self, staff_client, job, settings):
        settings.TRAINMON_HYPERPARAMETERS_MAX_BYTES = 50
        response = self.edit(staff_client, job, hyperparameters=json.dumps({"x": "y" * 60}))
        assert response.context["adminform"].form.errors["hyperparameters"] == [
            "Hyperparameters can be at most 50 bytes of JSON; these are 68."
        ]
        job.refresh_from_db()
        assert job.hyperparameters == {}

    def test_the_changelist_never_loads_hyperparameters(self, staff_client, user):
        TrainingJobFactory(owner=user, hyperparameters={"big": "x" * 1000})
        with CaptureQueriesContext(connection) as captured:
            response = staff_client.get(CHANGELIST)
        assert response.status_code == 200
        job_queries = [q["sql"] for q in captured if 'FROM "jobs_trainingjob"' in q["sql"]]
        assert any('"jobs_trainingjob"."name"' in sql for sql in job_queries)
        assert not any("hyperparameters" in sql for sql in job_queries)

    def test_actions_act_on_the_deferred_list(self, staff_client, user):
        job = TrainingJobFactory(owner=user, hyperparameters={"lr": 0.1})
        response = staff_client.post(
            CHANGELIST, {"action": "pause_jobs", "_selected_action": [job.pk]}, follow=True
        )
        assert messages_of(response) == ["Paused 1 job."]
        job.refresh_from_db()
        assert (job.status, job.hyperparameters) == (Status.PAUSED, {"lr": 0.1})

    def test_one_action_per_user_action_with_the_tables_wording(self):
        from django.contrib.admin import site

        actions = TrainingJobAdmin(TrainingJob, site).actions
        assert [action.__name__ for action in actions] == [
            "start_jobs",
            "pause_jobs",
            "resume_jobs",
            "cancel_jobs",
        ]
        assert [action.short_description for action in actions] == [
            "Start selected jobs (queued)",
            "Pause selected jobs",
            "Resume selected jobs (paused)",
            "Cancel selected jobs",
        ]

    @pytest.mark.parametrize(
        ("step", "shown"), [(0, "0%"), (996, "99.6%"), (999, "99.9%"), (1000, "100%")]
    )
    def test_progress_is_rounded_down(self, staff_client, user, step, shown):
        TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=1000, current_step=step)
        html = staff_client.get(CHANGELIST).content.decode()
        assert re.search(rf"</progress> {re.escape(shown)}</span>", html)


class TestOpenEndedJobs:
    """Issue 12: external jobs without a declared length in the admin."""

    def test_the_list_shows_an_indeterminate_bar_and_the_steps(self, staff_client, user):
        TrainingJobFactory(
            owner=user,
            source=TrainingJob.Source.EXTERNAL,
            total_epochs=None,
            steps_per_epoch=None,
            current_step=1234,
        )
        TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL, current_step=90)
        html = staff_client.get(CHANGELIST).content.decode()
        assert re.search(r'<progress style="width: 5em"></progress> 1,234 steps</span>', html)
        assert re.search(r'title="step 90 of 60 declared, past it">', html)
        assert re.search(r"</progress> past length</span>", html)

    def test_the_change_page_of_a_job_without_length_loads(self, staff_client, user):
        job = TrainingJobFactory(
            owner=user, source=TrainingJob.Source.EXTERNAL, total_epochs=None, steps_per_epoch=None
        )
        response = staff_client.get(reverse("admin:jobs_trainingjob_change", args=[job.pk]))
        assert response.status_code == 200

    def test_add_an_external_job_without_length(self, staff_client, user):
        data = TestAdd().form_data(user, source="external", total_epochs="", steps_per_epoch="")
        response = staff_client.post(ADD, data)
        assert response.status_code == 302
        job = TrainingJob.objects.get()
        assert (job.source, job.total_steps) == ("external", None)

    @pytest.mark.parametrize(
        ("overrides", "field", "message"),
        [
            ({"total_epochs": ""}, "total_epochs", "A simulated job needs total epochs."),
            (
                {"source": "external", "steps_per_epoch": ""},
                "steps_per_epoch",
                "Give both total_epochs and steps_per_epoch, or neither",
            ),
        ],
    )
    def test_add_refuses_a_missing_or_half_length(
        self, staff_client, user, overrides, field, message
    ):
        response = staff_client.post(ADD, TestAdd().form_data(user, **overrides))
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors[field]
        assert any(message in error for error in errors)
        assert not TrainingJob.objects.exists()
