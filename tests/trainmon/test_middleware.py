"""trainmon's middleware: an expired session meets htmx (the whole page goes to login, not a
fragment of it), and the Content-Security-Policy on every page."""

from __future__ import annotations

import html
import re

import pytest
from django.urls import reverse

from metrics.services import simulation_advance
from tests.support.factories import TrainingJobFactory
from trainmon.middleware import csp_hash

pytestmark = pytest.mark.django_db

# What a page may not contain under the policy: inline script (JSON data elements are not
# scripts), inline style elements and attributes, inline event handlers.
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>")
INLINE_STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.S)
STYLE_ATTRIBUTE = re.compile(r"""\sstyle=(["'])(.*?)\1""", re.S)
EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+=", re.I)


@pytest.mark.parametrize("path", ["/?q=bert", "/jobs/{pk}/poll/?after=-1"])
def test_an_anonymous_htmx_request_redirects_the_page_to_login(client, user, path):
    job = TrainingJobFactory(owner=user)
    response = client.get(
        path.format(pk=job.pk),
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver/jobs/{job.pk}/"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/accounts/login/?next=/jobs/{job.pk}/"
    assert b"<form" not in response.content


def test_a_plain_anonymous_request_still_gets_the_ordinary_redirect(client):
    response = client.get("/jobs/new/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/jobs/new/"


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


@pytest.fixture
def pages(user, staff_user):
    job = TrainingJobFactory(owner=user, hyperparameters={"lr": 0.1})
    other = TrainingJobFactory(owner=user)
    simulation_advance(job_ids=[job.pk])
    return {
        "dashboard": (user, "/"),
        "job": (user, job.get_absolute_url()),
        "new job": (user, reverse("jobs:new")),
        "compare": (user, f"{reverse('metrics:compare')}?jobs={job.pk},{other.pk}"),
        "tokens": (user, reverse("accounts:tokens")),
        "login": (None, reverse("login")),
        "API docs": (None, "/api/v1/docs"),
        "404": (user, "/no/such/page/"),
        "admin jobs": (staff_user, reverse("admin:jobs_trainingjob_changelist")),
        "admin job": (staff_user, reverse("admin:jobs_trainingjob_change", args=[job.pk])),
        "admin tokens": (staff_user, reverse("admin:accounts_apitoken_changelist")),
    }


def fetch(client, user, path):
    if user is not None:
        client.force_login(user)
    else:
        client.logout()
    return client.get(path)


def test_every_page_has_a_strict_policy(client, pages):
    for name, (user, path) in pages.items():
        response = fetch(client, user, path)
        assert response.status_code in (200, 404), name
        policy = directives(response)
        assert policy["default-src"] == ["'self'"], name
        assert policy["script-src"] == ["'self'"], name
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in response["Content-Security-Policy"], name
        assert "'unsafe-eval'" not in response["Content-Security-Policy"], name


def test_our_pages_have_nothing_inline_for_the_policy_to_refuse(client, pages):
    for name, (user, path) in pages.items():
        if name.startswith("admin") or name == "API docs":
            continue  # Django's and django-ninja's markup: see the tests below
        page = fetch(client, user, path).content.decode()
        assert INLINE_SCRIPT.findall(page) == [], name
        assert INLINE_STYLE.findall(page) == [], name
        assert STYLE_ATTRIBUTE.findall(page) == [], name
        assert EVENT_HANDLER.findall(page) == [], name
        assert directives(fetch(client, user, path))["style-src"] == ["'self'"], name


def test_the_admin_allows_exactly_its_own_inline_styles_by_hash(client, pages):
    for name, (user, path) in pages.items():
        if not name.startswith("admin"):
            continue
        response = fetch(client, user, path)
        page = response.content.decode()
        allowed = directives(response)["style-src"]
        assert "'unsafe-hashes'" in allowed
        styles = [html.unescape(value) for _, value in STYLE_ATTRIBUTE.findall(page)]
        styles += INLINE_STYLE.findall(page)
        for style in styles:
            assert csp_hash(style) in allowed, f"{name}: {style!r} is not allowed by hash"
        assert INLINE_SCRIPT.findall(page) == [], name
        assert EVENT_HANDLER.findall(page) == [], name
    # ... and nowhere else.
    user, path = pages["dashboard"]
    assert "'unsafe-hashes'" not in fetch(client, user, path)["Content-Security-Policy"]


def test_the_api_docs_load_only_files_of_ours(client):
    page = client.get("/api/v1/docs").content.decode()
    assert INLINE_SCRIPT.findall(page) == []
    assert re.findall(r'<script[^>]*src="(?!/static/)', page) == []
