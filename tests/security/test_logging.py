"""No password, token, session key or secret setting in a log line or on an error page."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import reverse

from accounts.services import api_token_create, api_token_revoke
from tests.support.factories import UserFactory
from tests.support.pages import form_csrf_token

pytestmark = pytest.mark.django_db

PASSWORD = "Hunter2-Very-Secret-Passphrase"
WRONG_PASSWORD = "Hunter3-Almost-The-Passphrase"
BROKER_PASSWORD = "broker-pw-7d1f"
DB_PASSWORD = "db-pw-93ac"
LOGGERS = ("", "django", "django.request", "django.security", "django.server", "celery", "ninja")


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    """Every record of every logger, DEBUG and up."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """All that any handler could write: messages, arguments, tracebacks, extra fields."""
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        request = getattr(record, "request", None)
        if request is not None:
            parts.append(repr(request))
            parts.append(request.get_full_path())
    return "\n".join(parts)


def assert_absent(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        assert secret, "an empty secret proves nothing"
        for text in texts:
            assert secret not in text


@pytest.fixture
def owner(db):
    user = UserFactory(username="alice")
    user.set_password(PASSWORD)
    user.save()
    return user


def session_cookie(client: Client) -> str:
    return client.cookies[settings.SESSION_COOKIE_NAME].value


# --- log lines ------------------------------------------------------------------------------


def test_logins_log_no_password(logs, owner):
    client = Client(enforce_csrf_checks=True)
    token = form_csrf_token(client, reverse("login"))
    for password in (WRONG_PASSWORD, PASSWORD):
        response = client.post(
            reverse("login"),
            {"username": owner.username, "password": password, "csrfmiddlewaretoken": token},
        )
    assert response.status_code == 302
    # A CSRF failure is logged (django.security.csrf): with the path, not the form.
    Client(enforce_csrf_checks=True).post(
        reverse("login"), {"username": owner.username, "password": PASSWORD}
    )
    assert any(record.name == "django.security.csrf" for record in logs.records)
    assert_absent([PASSWORD, WRONG_PASSWORD, session_cookie(client), token], logged_text(logs))


def test_api_calls_log_no_token(logs, owner, monkeypatch):
    token, raw = api_token_create(user=owner, name="ci")
    headers = {"Authorization": f"Bearer {raw}"}
    client = Client()
    job = client.post(
        "/api/v1/jobs/",
        {"name": "run", "total_epochs": 1, "steps_per_epoch": 10},
        "application/json",
        headers=headers,
    ).json()
    points = {"points": [{"step": 0, "epoch": 1, "loss": 1.0}]}
    assert (
        client.post(
            f"/api/v1/jobs/{job['id']}/metrics/", points, "application/json", headers=headers
        ).status_code
        == 200
    )
    # An invalid token, and a 400, a 404 and a 500 with the valid one: all logged, none with it.
    wrong = raw[:-4] + "XXXX"
    wrong_headers = {"Authorization": f"Bearer {wrong}"}
    assert client.get(f"/api/v1/jobs/{job['id']}/", headers=wrong_headers).status_code == 401
    client.post("/api/v1/jobs/", "{", "application/json", headers=headers)
    client.get("/api/v1/jobs/999999/", headers=headers)

    def explode(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("metrics.api.metric_batches_write", explode)
    response = client.post(
        f"/api/v1/jobs/{job['id']}/metrics/",
        {"points": [{"step": 1, "epoch": 1, "loss": 1.0}]},
        "application/json",
        headers=headers,
    )
    assert response.status_code == 500
    assert any(record.exc_info for record in logs.records), "the 500 was not logged"
    api_token_revoke(token=token)
    assert client.get(f"/api/v1/jobs/{job['id']}/", headers=headers).status_code == 401
    assert_absent([raw, wrong, raw[len(token.prefix) :]], logged_text(logs), response.text)


def test_token_creation_shows_the_token_once_and_logs_nothing(logs, owner):
    client = Client()
    client.force_login(owner)
    response = client.post(reverse("accounts:token_create"), {"name": "laptop"})
    raw = re.search(r'<code id="new-token">([^<]+)</code>', response.content.decode()).group(1)
    assert response["Cache-Control"] == "no-store"
    assert_absent([raw], logged_text(logs), client.get(reverse("accounts:tokens")).text)


@pytest.mark.parametrize("param", ["token", "access_token", "api_key", "key", "auth"])
def test_the_api_never_takes_a_token_from_the_query_string(owner, param):
    # Query strings end up in access logs, proxies and browser history: headers only.
    raw = api_token_create(user=owner, name="q")[1]
    response = Client().get("/api/v1/jobs/1/", {param: raw})
    assert response.status_code == 401
    response = Client().get("/api/v1/jobs/1/", {param: f"Bearer {raw}"})
    assert response.status_code == 401


def test_the_access_log_format_keeps_headers_out():
    # Gunicorn's default access-log format has no request headers; keep it that way.
    procfile = (Path(settings.BASE_DIR) / "Procfile").read_text()
    assert "--access-logfile" in procfile
    assert not re.search(r"authorization|cookie|\{[^}]*\}i", procfile, re.I)


# --- error pages -----------------------------------------------------------------------------


@pytest.fixture
def crashing(monkeypatch) -> Iterator[None]:
    """Views that fail half-way, with secrets in their locals and their request."""

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("jobs.views.job_count_by_status", boom)  # the dashboard
    monkeypatch.setattr("accounts.views.render", boom)  # the tokens page, with a new token
    monkeypatch.setattr("django.contrib.auth.backends.ModelBackend.user_can_authenticate", boom)
    yield


def crash_everything(owner) -> tuple[list[str], list]:
    """Runs the crashing views; returns the secrets they were sent and their responses."""
    client = Client(raise_request_exception=False)
    token = form_csrf_token(client, reverse("login"))
    responses = [
        # The login crashes inside the backend, with the password in its frame's locals.
        client.post(
            reverse("login"),
            {"username": owner.username, "password": PASSWORD, "csrfmiddlewaretoken": token},
        )
    ]
    client.force_login(owner)
    raw = api_token_create(user=owner, name="existing")[1]
    headers = {
        "Authorization": f"Bearer {raw}",
        "X-CSRFToken": token,
    }
    responses.append(client.get(reverse("jobs:dashboard"), {"q": "x"}, headers=headers))
    responses.append(client.post(reverse("accounts:token_create"), {"name": "new"}))
    secrets = [PASSWORD, raw, token, session_cookie(client), settings.SECRET_KEY]
    return [*secrets, BROKER_PASSWORD, DB_PASSWORD], responses


SETTINGS_WITH_SECRETS = {
    "CELERY_BROKER_URL": f"redis://:{BROKER_PASSWORD}@127.0.0.1:6379/0",
    "TRAINMON_EXTRA_URLS": [f"postgres://app:{DB_PASSWORD}@db.internal:5432/trainmon"],
}


@override_settings(DEBUG=True, **SETTINGS_WITH_SECRETS)
def test_the_debug_error_page_shows_no_secret(owner, crashing, logs):
    secrets, responses = crash_everything(owner)
    for response in responses:
        assert response.status_code == 500
        html = response.content.decode()
        assert "RuntimeError" in html  # it is the technical page
        assert_absent(secrets, html)
        assert_absent(secrets, html.replace("&amp;", "&").replace("&#x27;", "'"))
    assert_absent(secrets, logged_text(logs))


def test_a_token_made_in_a_crashing_request_is_not_on_the_debug_page(owner, monkeypatch):
    made = []
    original = api_token_create

    def remember(**kwargs):
        token, raw = original(**kwargs)
        made.append(raw)
        return token, raw

    monkeypatch.setattr("accounts.views.api_token_create", remember)
    monkeypatch.setattr("accounts.views.render", lambda *a, **k: 1 / 0)
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    with override_settings(DEBUG=True):
        response = client.post(reverse("accounts:token_create"), {"name": "new"})
    assert response.status_code == 500
    assert "ZeroDivisionError" in response.content.decode()
    assert_absent(made, response.content.decode())


@override_settings(DEBUG=False, **SETTINGS_WITH_SECRETS)
def test_production_errors_log_no_secret_and_show_a_plain_page(owner, crashing, logs):
    secrets, responses = crash_everything(owner)
    for response in responses:
        assert response.status_code == 500
        assert "RuntimeError" not in response.content.decode()
    assert sum(record.name == "django.request" for record in logs.records) == len(responses)
    assert_absent(secrets, logged_text(logs))


def test_the_error_report_filter_is_configured():
    from django.views.debug import get_default_exception_reporter_filter

    reporter = get_default_exception_reporter_filter()
    safe = reporter.get_safe_settings()
    assert safe["SECRET_KEY"] == reporter.cleansed_substitute
    with override_settings(**SETTINGS_WITH_SECRETS):
        safe = reporter.get_safe_settings()
    assert BROKER_PASSWORD not in repr(safe["CELERY_BROKER_URL"])
    assert "127.0.0.1:6379" in safe["CELERY_BROKER_URL"]  # the rest stays readable
    assert DB_PASSWORD not in repr(safe["TRAINMON_EXTRA_URLS"])
