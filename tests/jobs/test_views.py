from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.views.defaults import permission_denied, server_error

from jobs.models import TrainingJob
from jobs.views import JOBS_PER_PAGE
from tests.support.factories import PASSWORD, TrainingJobFactory, UserFactory
from tests.support.pages import htmx_csrf_token

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
POLLING = 'hx-trigger="every 2s"'


def figure(html: str, name: str) -> str:
    """The text of the page's data-figure="name" element (jobs.live_figures)."""
    found = re.search(rf'data-figure="{name}"[^>]*>([^<]*)<', html)
    assert found, name
    return found.group(1)


def row_ids(response) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-job-id="(\d+)"', response.content.decode())]


def toast(response) -> dict:
    return json.loads(response["HX-Trigger"])["toast"]


class TestLogin:
    @pytest.mark.parametrize("path", ["/", "/jobs/new/", "/jobs/1/"])
    def test_anonymous_pages_redirect_to_login(self, client, path):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={path}"

    def test_anonymous_action_is_refused_and_changes_nothing(self, client, job):
        response = client.post(reverse("jobs:action", args=[job.pk, "pause"]))
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
        job.refresh_from_db()
        assert job.status == Status.RUNNING

    def test_login_page_renders_and_logs_in(self, client, user):
        page = client.get("/accounts/login/")
        assert page.status_code == 200
        assert 'name="username"' in page.content.decode()
        response = client.post(
            "/accounts/login/", {"username": user.username, "password": PASSWORD}
        )
        assert response.status_code == 302
        assert response["Location"] == "/"
        assert client.get("/").status_code == 200

    def test_wrong_password_shows_the_error(self, client, user):
        response = client.post("/accounts/login/", {"username": user.username, "password": "x"})
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()

    def test_header_has_the_user_menu_and_a_post_logout(self, user_client):
        html = user_client.get("/").content.decode()
        assert 'href="/accounts/tokens/"' in html
        assert re.search(r'<form method="post" action="/accounts/logout/">', html)
        assert 'href="/admin/"' not in html

    def test_staff_get_an_admin_link(self, client, staff_user):
        client.force_login(staff_user)
        assert 'href="/admin/"' in client.get("/").content.decode()


class TestDashboard:
    def test_lists_own_jobs_only(self, user_client, user, other_user):
        mine = TrainingJobFactory(owner=user)
        theirs = TrainingJobFactory(owner=other_user)
        response = user_client.get("/")
        assert response.status_code == 200
        assert row_ids(response) == [mine.pk]
        assert theirs.name not in response.content.decode()

    def test_staff_see_everyones_jobs_with_their_owner(self, client, staff_user, user):
        job = TrainingJobFactory(owner=user)
        client.force_login(staff_user)
        response = client.get("/")
        assert row_ids(response) == [job.pk]
        assert f"· {user.username}" in response.content.decode()

    def test_running_first_then_newest(self, user_client, user):
        now = timezone.now()
        old_running = TrainingJobFactory(owner=user, created_at=now - timedelta(days=2))
        new_done = TrainingJobFactory(owner=user, status=Status.COMPLETED, created_at=now)
        old_done = TrainingJobFactory(
            owner=user, status=Status.FAILED, created_at=now - timedelta(days=1)
        )
        new_running = TrainingJobFactory(owner=user, created_at=now - timedelta(hours=1))
        assert row_ids(user_client.get("/")) == [
            new_running.pk,
            old_running.pk,
            new_done.pk,
            old_done.pk,
        ]

    def test_query_count_does_not_grow_with_jobs(
        self, client, staff_user, user, other_user, django_assert_num_queries
    ):
        # Staff see other people's jobs, with the owner's name: the worst case for queries.
        client.force_login(staff_user)
        statuses = list(Status.values)
        for index in range(3):
            TrainingJobFactory(owner=[user, other_user][index % 2], status=statuses[index])
        with CaptureQueriesContext(connection) as few:
            assert len(row_ids(client.get("/"))) == 3
        for index in range(57):
            TrainingJobFactory(
                owner=UserFactory() if index % 3 else user,
                status=statuses[index % len(statuses)],
            )
        with django_assert_num_queries(len(few.captured_queries)):
            assert len(row_ids(client.get("/"))) == JOBS_PER_PAGE
        with django_assert_num_queries(len(few.captured_queries)):
            client.get("/", headers=HTMX)  # the 2-second refresh

    def test_polls_while_a_visible_job_is_active(self, user_client, user):
        TrainingJobFactory(owner=user, status=Status.COMPLETED)
        job = TrainingJobFactory(owner=user, status=Status.PAUSED)
        assert POLLING in user_client.get("/").content.decode()
        job.status = Status.CANCELLED
        job.save()
        # The refresh that sees no active job drops the trigger, so polling stops by itself.
        refresh = user_client.get("/", headers=HTMX).content.decode()
        assert 'id="job-table"' in refresh
        assert POLLING not in refresh
        assert POLLING not in user_client.get("/").content.decode()

    def test_no_polling_when_the_active_jobs_are_filtered_out(self, user_client, user):
        TrainingJobFactory(owner=user, status=Status.RUNNING)
        TrainingJobFactory(owner=user, status=Status.COMPLETED)
        assert POLLING not in user_client.get("/?status=completed").content.decode()

    def test_htmx_request_gets_the_table_and_the_counts_out_of_band(self, user_client, user):
        TrainingJobFactory(owner=user)
        response = user_client.get("/?status=running", headers=HTMX)
        html = response.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<div id="job-table"')
        assert re.search(r'id="status-summary"[^>]*hx-swap-oob="true"', html)
        # The refresh keeps the filters it was made with.
        assert 'hx-get="/?status=running"' in html
        assert "HX-Request" in response["Vary"]

    def test_history_restore_gets_the_whole_page(self, user_client, user):
        TrainingJobFactory(owner=user)
        response = user_client.get("/", headers=HTMX | {"HX-History-Restore-Request": "true"})
        assert "<html" in response.content.decode()

    def test_summary_counts_by_status_link_to_filters(self, user_client, user):
        TrainingJobFactory.create_batch(2, owner=user, status=Status.RUNNING)
        TrainingJobFactory(owner=user, status=Status.FAILED)
        html = user_client.get("/").content.decode()
        summary = html[
            html.index('id="status-summary"') : html.index(
                "</nav>", html.index('id="status-summary"')
            )
        ]
        assert re.search(r'href="/\?status=running">\s*<span class="summary-count num">2<', summary)
        assert re.search(r'href="/\?status=failed">\s*<span class="summary-count num">1<', summary)
        assert "status=paused" not in summary  # zero counts are left out

    def test_status_filter(self, user_client, user):
        running = TrainingJobFactory(owner=user)
        TrainingJobFactory(owner=user, status=Status.COMPLETED)
        assert row_ids(user_client.get("/?status=running")) == [running.pk]

    def test_unknown_status_is_ignored(self, user_client, user):
        TrainingJobFactory.create_batch(2, owner=user)
        assert len(row_ids(user_client.get("/?status=bogus"))) == 2

    def test_search_matches_name_model_and_dataset(self, user_client, user):
        bert = TrainingJobFactory(owner=user, name="BERT sweep", model_name="bert-base")
        vit = TrainingJobFactory(owner=user, name="vision", model_name="vit", dataset="imagenet")
        assert row_ids(user_client.get("/?q=bert")) == [bert.pk]
        assert row_ids(user_client.get("/?q=IMAGENET")) == [vit.pk]
        assert row_ids(user_client.get("/?q=nothing-like-it")) == []

    def test_no_match_says_so(self, user_client, user):
        TrainingJobFactory(owner=user)
        html = user_client.get("/?q=zzz").content.decode()
        assert "No jobs match “zzz”" in html
        assert "Clear filters" in html

    def test_empty_state_offers_a_job_and_the_api_docs(self, user_client):
        html = user_client.get("/").content.decode()
        assert (
            "No jobs yet — start a simulated run or send metrics from your training script" in html
        )
        assert 'href="/api/v1/docs"' in html
        assert f'href="{reverse("jobs:new")}"' in html
        assert POLLING not in html

    def test_pagination_at_fifty(self, user_client, user):
        TrainingJobFactory.create_batch(JOBS_PER_PAGE + 5, owner=user, status=Status.COMPLETED)
        first = user_client.get("/")
        assert len(row_ids(first)) == JOBS_PER_PAGE
        assert "1\N{EN DASH}50 of 55" in first.content.decode()
        second = user_client.get("/?page=2")
        assert len(row_ids(second)) == 5
        assert not set(row_ids(first)) & set(row_ids(second))
        assert len(row_ids(user_client.get("/?page=99"))) == 5  # past the end: the last page

    @pytest.mark.parametrize(
        ("query", "shown"), [("?status=completed", 55), ("?q=match", 54), ("?status=running", 2)]
    )
    def test_pagination_counts_what_the_filters_keep(self, user_client, user, query, shown):
        # Without a search the status counts give the length; with one, a COUNT does.
        TrainingJobFactory.create_batch(54, owner=user, status=Status.COMPLETED, name="a match")
        TrainingJobFactory(owner=user, status=Status.COMPLETED, name="other")
        TrainingJobFactory.create_batch(2, owner=user, status=Status.RUNNING, name="other")
        html = user_client.get(f"/{query}").content.decode()
        if shown > JOBS_PER_PAGE:
            assert f"1\N{EN DASH}50 of {shown}" in html
        else:
            assert "pagination-info" not in html

    def test_compare_form_wraps_the_checkboxes(self, user_client, user):
        job = TrainingJobFactory(owner=user)
        html = user_client.get("/").content.decode()
        assert '<form id="compare-form" method="get" action="/compare/">' in html
        assert f'name="jobs" value="{job.pk}"' in html

    def test_row_shows_progress_and_figures(self, user_client, user):
        TrainingJobFactory(
            owner=user,
            current_step=30,
            last_loss=0.51234,
            best_loss=0.5,
            steps_per_second=10.0,
            total_epochs=3,
            steps_per_epoch=20,
        )
        html = user_client.get("/").content.decode()
        assert 'role="progressbar"' in html
        assert 'aria-valuenow="30"' in html
        assert 'aria-valuemax="60"' in html
        assert "50.0% · step 30 / 60" in html
        assert "0.5123" in html
        assert "~3 s" in html  # 30 steps left at 10 steps/s
        assert "2 / 3" in html

    def test_job_names_are_escaped(self, user_client, user):
        TrainingJobFactory(owner=user, name="<script>alert(1)</script>")
        html = user_client.get("/").content.decode()
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    def test_every_text_in_a_row_is_escaped(self, client, staff_user):
        # The rows are built in Python (jobs.dashboard_rows): each value escaped by hand.
        evil = '"><b>x</b>'
        owner = UserFactory(username="o<b>wner")
        TrainingJobFactory(
            owner=owner,
            name=f"name{evil}",
            model_name=f"model{evil}",
            dataset=f"data{evil}",
            primary_metric=f"m{evil}",
            last_loss=None,
            best_loss=None,
        )
        client.force_login(staff_user)
        html = client.get("/").content.decode()
        row = html[html.index('<tr class="job-row"') :]
        row = row[: row.index("</tr>")]
        assert "<b>" not in row
        assert 'aria-label="Select name&quot;&gt;&lt;b&gt;x&lt;/b&gt; to compare"' in row
        assert "model&quot;&gt;&lt;b&gt;x&lt;/b&gt; · data&quot;" in row
        assert " · o&lt;b&gt;wner</span>" in row


class TestDashboardRefresh:
    def test_polls_at_the_configured_interval(self, user_client, user, settings):
        TrainingJobFactory(owner=user)
        settings.TRAINMON_POLL_SECONDS = 5
        assert 'hx-trigger="every 5s"' in user_client.get("/").content.decode()

    def test_focusable_parts_keep_their_ids_across_refreshes(self, user_client, user):
        # htmx gives focus back to the element with the focused one's id after a swap.
        job = TrainingJobFactory(owner=user)
        pages = [user_client.get("/"), user_client.get("/", headers=HTMX)]
        for html in (page.content.decode() for page in pages):
            assert f'id="job-link-{job.pk}"' in html
            assert f'id="compare-{job.pk}"' in html
            assert 'id="summary-all"' in html and 'id="summary-running"' in html


class TestErrorPages:
    def test_404_is_our_page(self, user_client):
        response = user_client.get("/jobs/999999/")
        assert response.status_code == 404
        html = response.content.decode()
        assert 'class="card error-panel"' in html and "Page not found" in html
        assert 'class="topbar"' in html  # the base layout, with the user's menu
        assert "app.css" in html

    def test_403_is_our_page(self, rf, user):
        request = rf.get("/")
        request.user = user
        response = permission_denied(request, PermissionDenied())
        assert response.status_code == 403
        html = response.content.decode()
        assert 'class="card error-panel"' in html and "Not allowed" in html

    def test_500_needs_no_request_context_and_no_database(self, rf, django_assert_num_queries):
        with django_assert_num_queries(0):
            response = server_error(rf.get("/"))
        assert response.status_code == 500
        html = response.content.decode()
        assert 'class="card error-panel"' in html and "Something went wrong" in html
        assert "app.css" in html and 'href="/"' in html

    def test_a_csrf_failure_is_our_page_and_needs_no_inline_style(self, user):
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        response = client.post("/jobs/new/", {"name": "x"})
        assert response.status_code == 403
        html = response.content.decode()
        assert 'class="card error-panel"' in html and "This form has expired" in html
        assert "<style" not in html


class TestNewJob:
    def test_form_renders_essentials_then_advanced(self, user_client):
        html = user_client.get("/jobs/new/").content.decode()
        assert html.index('name="name"') < html.index('<details class="advanced"')
        assert html.index('<details class="advanced"') < html.index('name="seed"')
        assert '<details class="advanced" open' not in html

    def test_creates_a_running_job_and_redirects_to_it(self, user_client, user):
        response = user_client.post(
            "/jobs/new/",
            {
                "name": "bert-base",
                "total_epochs": "2",
                "steps_per_epoch": "50",
                "steps_per_tick": "5",
                "start": "on",
                "initial_loss": "2.5",
                "final_loss": "0.3",
                "base_learning_rate": "0.001",
                "hyperparameters": '{"batch_size": 32}',
            },
            follow=True,
        )
        job = TrainingJob.objects.get()
        assert job.owner == user
        assert job.status == Status.RUNNING
        assert job.hyperparameters == {"batch_size": 32}
        assert response.redirect_chain == [(job.get_absolute_url(), 302)]
        html = response.content.decode()
        assert 'class="toast" data-level="success">Started “bert-base”.' in html

    def test_errors_are_shown_inline_and_values_kept(self, user_client):
        response = user_client.post(
            "/jobs/new/",
            {
                "name": "kept-name",
                "total_epochs": "0",
                "steps_per_epoch": "50",
                "steps_per_tick": "5",
                "initial_loss": "0.2",
                "final_loss": "0.3",
                "base_learning_rate": "0.001",
            },
        )
        assert response.status_code == 400
        html = response.content.decode()
        assert 'value="kept-name"' in html
        assert 'value="0.2"' in html
        errors = r'id="id_total_epochs_errors"><li>Total epochs must be a positive integer\.'
        assert re.search(errors, html)
        assert not TrainingJob.objects.exists()

    def test_service_errors_land_on_their_field_and_open_advanced(self, user_client):
        response = user_client.post(
            "/jobs/new/",
            {
                "name": "x",
                "total_epochs": "2",
                "steps_per_epoch": "50",
                "steps_per_tick": "5",
                "initial_loss": "0.2",
                "final_loss": "0.3",
                "base_learning_rate": "0.001",
            },
        )
        assert response.status_code == 400
        html = response.content.decode()
        assert '<details class="advanced" open>' in html
        assert re.search(r'id="id_final_loss_errors"><li>The final loss must be lower', html)
        assert not TrainingJob.objects.exists()


class TestJobPage:
    def test_shows_the_job(self, user_client, user):
        job = TrainingJobFactory(
            owner=user, hyperparameters={"batch_size": 128, "optimizer": "adamw"}
        )
        response = user_client.get(job.get_absolute_url())
        assert response.status_code == 200
        html = response.content.decode()
        for element_id in ("job-header", "job-actions", "job-progress", "job-stats", "charts"):
            assert f'id="{element_id}"' in html
        assert "hx-swap-oob" not in html.split('id="charts"')[0]
        assert '<th scope="row">batch_size</th><td><code>128</code>' in html
        assert "resnet18 · cifar10" in html
        assert "created by you" in html

    def test_failure_reason_in_a_red_panel(self, user_client, user):
        job = TrainingJobFactory(
            owner=user, status=Status.FAILED, failure_reason="loss diverged at step 12"
        )
        html = user_client.get(job.get_absolute_url()).content.decode()
        assert re.search(
            r'class="panel panel-error job-failure" role="alert">\s*<strong>Failed', html
        )
        assert "loss diverged at step 12" in html

    def test_only_legal_actions_are_offered(self, user_client, user):
        running = TrainingJobFactory(owner=user)
        html = user_client.get(running.get_absolute_url()).content.decode()
        assert set(re.findall(r'data-action="(\w+)"', html)) == {"pause", "cancel", "delete"}
        done = TrainingJobFactory(owner=user, status=Status.COMPLETED)
        html = user_client.get(done.get_absolute_url()).content.decode()
        assert re.findall(r'data-action="(\w+)"', html) == ["delete"]

    def test_destructive_actions_ask_first(self, user_client, user):
        job = TrainingJobFactory(owner=user)
        html = user_client.get(job.get_absolute_url()).content.decode()
        assert re.search(r'data-action="cancel"[^>]*hx-confirm="Cancel', html, re.S)
        assert re.search(r'data-action="delete"[^>]*hx-confirm="Delete', html, re.S)

    def test_another_users_job_is_404(self, user_client, other_user):
        job = TrainingJobFactory(owner=other_user)
        assert user_client.get(job.get_absolute_url()).status_code == 404

    def test_missing_job_is_404(self, user_client):
        assert user_client.get("/jobs/999999/").status_code == 404

    def test_staff_see_anyones_job(self, client, staff_user, user):
        job = TrainingJobFactory(owner=user)
        client.force_login(staff_user)
        response = client.get(job.get_absolute_url())
        assert response.status_code == 200
        assert f"created by {user.username}" in response.content.decode()

    def test_name_is_escaped(self, user_client, user):
        job = TrainingJobFactory(owner=user, name='"><img src=x onerror=alert(1)>')
        html = user_client.get(job.get_absolute_url()).content.decode()
        assert "<img src=x" not in html
        assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


class TestActions:
    def url(self, job, action):
        return reverse("jobs:action", args=[job.pk, action])

    def test_pause_answers_with_the_header_the_partials_and_a_toast(self, user_client, job):
        response = user_client.post(self.url(job, "pause"), headers=HTMX)
        assert response.status_code == 200
        job.refresh_from_db()
        assert job.status == Status.PAUSED
        html = response.content.decode()
        assert html.lstrip().startswith('<header id="job-header"')
        assert 'id="job-header" class="job-header" data-status="paused">' in html
        assert re.search(r'id="job-progress"[^>]*hx-swap-oob="true"', html)
        assert re.search(r'id="job-stats"[^>]*hx-swap-oob="true"', html)
        assert 'data-action="resume"' in html
        assert toast(response) == {"message": f"Paused “{job.name}”.", "level": "info"}

    @pytest.mark.parametrize(
        ("status", "action", "expected"),
        [
            (Status.QUEUED, "start", Status.RUNNING),
            (Status.PAUSED, "resume", Status.RUNNING),
            (Status.STALLED, "cancel", Status.CANCELLED),
        ],
    )
    def test_actions_change_status(self, user_client, user, status, action, expected):
        job = TrainingJobFactory(owner=user, status=status)
        assert user_client.post(self.url(job, action), headers=HTMX).status_code == 200
        job.refresh_from_db()
        assert job.status == expected

    def test_illegal_transition_is_409_and_changes_nothing(self, user_client, user):
        job = TrainingJobFactory(owner=user, status=Status.COMPLETED)
        response = user_client.post(self.url(job, "resume"), headers=HTMX)
        assert response.status_code == 409
        job.refresh_from_db()
        assert job.status == Status.COMPLETED
        message = toast(response)
        assert message["level"] == "error"
        assert "Cannot resume" in message["message"]
        # The current header comes back so the buttons catch up with the real status.
        assert 'data-status="completed"' in response.content.decode()

    def test_illegal_transition_without_htmx_renders_the_page_with_409(self, user_client, user):
        job = TrainingJobFactory(owner=user, status=Status.CANCELLED)
        response = user_client.post(self.url(job, "start"))
        assert response.status_code == 409
        assert 'data-level="error">Cannot start' in response.content.decode()

    def test_plain_post_redirects_to_the_job(self, user_client, job):
        response = user_client.post(self.url(job, "cancel"))
        assert response.status_code == 302
        assert response["Location"] == job.get_absolute_url()
        job.refresh_from_db()
        assert job.status == Status.CANCELLED

    @pytest.mark.parametrize("action", ["complete", "fail", "explode"])
    def test_other_actions_are_404(self, user_client, job, action):
        response = user_client.post(f"/jobs/{job.pk}/{action}/", headers=HTMX)
        assert response.status_code == 404
        job.refresh_from_db()
        assert job.status == Status.RUNNING

    def test_get_is_not_allowed(self, user_client, job):
        assert user_client.get(self.url(job, "pause")).status_code == 405
        job.refresh_from_db()
        assert job.status == Status.RUNNING

    def test_another_users_job_is_404_and_unchanged(self, user_client, other_user):
        job = TrainingJobFactory(owner=other_user)
        assert user_client.post(self.url(job, "pause"), headers=HTMX).status_code == 404
        job.refresh_from_db()
        assert job.status == Status.RUNNING

    def test_staff_may_act_on_anyones_job(self, client, staff_user, job):
        client.force_login(staff_user)
        assert client.post(self.url(job, "pause"), headers=HTMX).status_code == 200
        job.refresh_from_db()
        assert job.status == Status.PAUSED


class TestDelete:
    def test_htmx_delete_redirects_to_the_dashboard_with_a_message(self, user_client, job):
        response = user_client.post(reverse("jobs:delete", args=[job.pk]), headers=HTMX)
        assert response.status_code == 200
        assert response["HX-Redirect"] == "/"
        assert not TrainingJob.objects.filter(pk=job.pk).exists()
        assert f"Deleted “{job.name}”." in user_client.get("/").content.decode()

    def test_plain_delete_redirects(self, user_client, job):
        response = user_client.post(reverse("jobs:delete", args=[job.pk]))
        assert response.status_code == 302
        assert response["Location"] == "/"
        assert not TrainingJob.objects.filter(pk=job.pk).exists()

    def test_another_users_job_is_404_and_kept(self, user_client, other_user):
        job = TrainingJobFactory(owner=other_user)
        response = user_client.post(reverse("jobs:delete", args=[job.pk]), headers=HTMX)
        assert response.status_code == 404
        assert TrainingJob.objects.filter(pk=job.pk).exists()

    def test_get_is_not_allowed(self, user_client, job):
        assert user_client.get(reverse("jobs:delete", args=[job.pk])).status_code == 405
        assert TrainingJob.objects.filter(pk=job.pk).exists()


class TestCsrf:
    @pytest.fixture
    def csrf_client(self, user):
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    def test_post_without_token_is_refused(self, csrf_client, job):
        response = csrf_client.post(reverse("jobs:action", args=[job.pk, "pause"]), headers=HTMX)
        assert response.status_code == 403
        job.refresh_from_db()
        assert job.status == Status.RUNNING
        response = csrf_client.post(reverse("jobs:delete", args=[job.pk]), headers=HTMX)
        assert response.status_code == 403
        assert TrainingJob.objects.filter(pk=job.pk).exists()

    def test_the_token_in_body_hx_headers_is_accepted(self, csrf_client, job):
        token = htmx_csrf_token(csrf_client, job.get_absolute_url())
        response = csrf_client.post(
            reverse("jobs:action", args=[job.pk, "pause"]),
            headers=HTMX | {"X-CSRFToken": token},
        )
        assert response.status_code == 200
        job.refresh_from_db()
        assert job.status == Status.PAUSED

    def test_new_job_form_needs_the_token(self, csrf_client):
        response = csrf_client.post(
            "/jobs/new/", {"name": "x", "total_epochs": 1, "steps_per_epoch": 1}
        )
        assert response.status_code == 403
        assert not TrainingJob.objects.exists()


def test_every_user_action_has_a_view_and_only_those_route():
    from django.urls import NoReverseMatch

    from jobs.services import USER_ACTIONS

    assert USER_ACTIONS == ("start", "pause", "resume", "cancel")
    for action in USER_ACTIONS:
        reverse("jobs:action", args=[1, action])
    with pytest.raises(NoReverseMatch):
        reverse("jobs:action", args=[1, "complete"])


class TestOpenEndedJobs:
    """Issue 12: jobs without a declared length, or past it, on the dashboard and job page."""

    @staticmethod
    def open_ended(user, **fields):
        return TrainingJobFactory(
            owner=user,
            source=TrainingJob.Source.EXTERNAL,
            total_epochs=None,
            steps_per_epoch=None,
            current_step=1_234,
            steps_per_second=12.5,
            started_at=timezone.now() - timedelta(minutes=5),
            **fields,
        )

    @staticmethod
    def progress_bar(html: str, job) -> str:
        return re.search(
            rf'<div class="progress[^"]*"[^>]*aria-label="Progress of {job.name}"[^>]*>', html
        ).group(0)

    def test_the_dashboard_shows_steps_rate_and_elapsed_with_an_indeterminate_bar(
        self, user_client, user
    ):
        job = self.open_ended(user)
        html = user_client.get("/").content.decode()
        bar = self.progress_bar(html, job)
        assert "progress-indeterminate" in bar
        assert 'role="progressbar"' in bar
        assert "aria-valuenow" not in bar  # ARIA's indeterminate progress bar
        assert 'aria-valuetext="1,234 steps done, no declared length"' in bar
        assert "1,234 steps · 5 min elapsed" in html
        row = re.search(
            rf'<tr class="job-row"[^>]*data-job-id="{job.pk}">.*?</tr>', html, re.S
        ).group(0)
        assert re.search(r'data-label="Epoch">—</td>', row)
        assert re.search(r'data-label="ETA">—</td>', row)
        assert re.search(r'data-label="Steps/s">12.5</td>', row)
        assert "%" not in row

    def test_the_dashboard_shows_a_run_past_its_declared_length(self, user_client, user):
        job = TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL, current_step=90)
        html = user_client.get("/").content.decode()
        bar = self.progress_bar(html, job)
        assert "progress-past" in bar
        assert 'aria-valuenow="60"' in bar and 'aria-valuemax="60"' in bar
        assert 'data-width="100.00%"' in html
        assert "step 90 of 60 declared, past it" in html
        assert "100%" not in re.search(r'<span class="progress-text">[^<]*</span>', html).group(0)

    def test_a_job_without_headline_loss_shows_its_primary_metric(
        self, user_client, user, metric_key
    ):
        job = self.open_ended(user, primary_metric="val_loss", last_loss=None, best_loss=None)
        metric_key(job, "val_loss", last=0.41, low=0.3875)
        with_loss = TrainingJobFactory(owner=user, last_loss=1.5, best_loss=1.25)
        metric_key(with_loss, "loss", last=9.0, low=9.0)
        html = user_client.get("/").content.decode()
        assert re.search(
            r'data-label="Last"><span class="metric-name">val_loss</span> 0.4100</td>', html
        )
        assert re.search(
            r'data-label="Best"><span class="metric-name">val_loss</span> 0.3875</td>', html
        )
        assert 'data-label="Loss">1.5000</td>' in html  # the headline loss wins where there is one
        assert 'data-label="Best">1.2500</td>' in html

    def test_the_dashboard_costs_the_same_queries_with_the_primary_metric(
        self, user_client, user, metric_key, django_assert_num_queries
    ):
        job = self.open_ended(user, primary_metric="val_loss", last_loss=None)
        metric_key(job, "val_loss", last=0.4, low=0.3)
        user_client.get("/")  # the keys' table is looked for once per process
        with CaptureQueriesContext(connection) as few:
            user_client.get("/")
        for _ in range(20):
            other = self.open_ended(user, primary_metric="val_loss", last_loss=None)
            metric_key(other, "val_loss", last=0.5, low=0.2)
        with django_assert_num_queries(len(few.captured_queries)):
            user_client.get("/")

    def test_the_job_page_shows_steps_rate_and_elapsed(self, user_client, user):
        job = self.open_ended(user)
        html = user_client.get(job.get_absolute_url()).content.decode()
        progress = re.search(r'<section id="job-progress".*?</section>', html, re.S).group(0)
        assert figure(progress, "progress_label") == "1,234 steps"
        assert "12.5 steps/s · 5 min elapsed" in progress
        assert figure(progress, "progress_eta") == "running"
        assert "aria-valuenow" not in progress
        assert "%" not in progress
        stats = re.search(r'<dl id="job-stats".*?</dl>', html, re.S).group(0)
        assert "no declared length" in stats
        assert "5 min elapsed" in stats
        assert "not declared (open-ended run)" in html

    def test_the_job_page_of_a_finished_open_ended_run_fills_its_bar(self, user_client, user):
        job = self.open_ended(user, status=Status.COMPLETED, finished_at=timezone.now())
        html = user_client.get(job.get_absolute_url()).content.decode()
        assert 'data-width="100.00%"' in html
        assert figure(html, "progress_eta") == "done"

    def test_the_job_page_past_the_declared_length(self, user_client, user):
        job = TrainingJobFactory(
            owner=user, source=TrainingJob.Source.EXTERNAL, current_step=90, steps_per_second=3.0
        )
        html = user_client.get(job.get_absolute_url()).content.decode()
        assert figure(html, "progress_label") == "past length"
        assert "step 90 of 60 declared, past it" in html
        assert figure(html, "progress_eta") == "running"  # no ETA past the length

    def test_the_compare_table_shows_steps_without_a_length(self, user_client, user):
        job = self.open_ended(user)
        bounded = TrainingJobFactory(owner=user, current_step=30)
        html = user_client.get(f"/compare/?jobs={job.pk},{bounded.pk}").content.decode()
        assert '<td class="num">1,234</td>' in html
        assert '<td class="num">30 / 60</td>' in html

    def test_the_json_export_header_leaves_the_length_empty(self, user_client, user):
        job = self.open_ended(user)
        body = b"".join(user_client.get(f"/jobs/{job.pk}/metrics.json").streaming_content)
        header = json.loads(body)["job"]
        assert (header["total_epochs"], header["steps_per_epoch"]) == (None, None)
