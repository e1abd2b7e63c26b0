"""Hostile input on every form and API endpoint: never a 5xx, never a partial write, a clear 4xx.

Run it on PostgreSQL too: PostgreSQL refuses NUL characters in text and jsonb, and its integer
columns overflow where SQLite's do not, so some bugs only show there.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import ApiToken
from accounts.services import api_token_create
from jobs.models import TrainingJob
from metrics.models import TrainingMetric
from tests.support.factories import PASSWORD, TrainingJobFactory, TrainingMetricFactory

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
JSON = "application/json"
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HUGE_DIGITS = "9" * 5000  # past Python's 4300-digit int() limit
# Strings chosen to break parsers, databases and templates.
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c.exe",  # right-to-left override
    "שלום עולם",
    "😀🚀" * 20,
    "e\u0301\u0301\u0301",
    "\ufeff",
    "x" * 10_000,
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "{{ 7|add:7 }}",
    "1e308",
    "1e309",
    "-1e309",
    "-1",
    "0",
    str(10**30),
    str(-(10**30)),
    HUGE_DIGITS,
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "²",  # str.isdigit() is true, int() refuses it
    "١٢",  # Arabic-Indic digits: int() takes them
    "0x10",
    "1_000",
    " 5 ",
    "5.0",
    "true",
    "null",
    "[]",
    "{}",
    "[" * 2000 + "]" * 2000,
    '{"a": "\\u0000"}',
    '{"a": NaN}',
    '{"a": Infinity}',
    '{"a": 1e999}',
    '{"\\ud800": 1}',
    '{"a": "\\udfff"}',
    '{"a": ' + HUGE_DIGITS + "}",
    '{"a": ' + "[" * 1500 + "]" * 1500 + "}",
    '{"a": ' + "[" * 40 + "]" * 40 + "}",
    '{"big": 100000000000000000000000000000}',
]
nasty_text = st.sampled_from(NASTY_STRINGS) | st.text(max_size=200)

# JSON values that are legal JSON (or Python's extensions of it) but hostile to a database.
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.sampled_from([10**30, 2**63, -(2**63) - 1, 1e308, -0.0])
    | st.sampled_from(NASTY_STRINGS[:12])
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4)
    ),
    max_leaves=15,
)

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
DEEP_JSON = "[" * 10_000 + "]" * 10_000
TEN_MB = 10 * 1024 * 1024


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def rolled_back() -> Iterator[None]:
    """One hypothesis example in a savepoint that is undone afterwards, whatever happened:
    examples start from the same rows, and a database error cannot poison the next one."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def row_counts() -> dict[str, int]:
    return {
        "jobs": TrainingJob.objects.count(),
        "metrics": TrainingMetric.objects.count(),
        "tokens": ApiToken.objects.count(),
    }


def job_state(job: TrainingJob) -> tuple:
    job.refresh_from_db()
    return (job.status, job.current_step, job.last_reported_at, job.failure_reason, job.name)


def assert_clear_4xx_page(response) -> None:
    assert 400 <= response.status_code < 500, response.status_code
    text = response.content.decode()
    assert re.search(r'class="(field-errors|panel panel-error|errorlist)', text) or (
        response["Content-Type"].startswith("text/plain") and text.strip()
    ), text[:2000]


def assert_clear_4xx_json(response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error", "details"}
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


def as_form_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@pytest.fixture
def token(user) -> str:
    return api_token_create(user=user, name="hostile")[1]


def api_post(token: str, path: str, body: str | bytes, content_type: str = JSON):
    return Client().post(
        f"/api/v1{path}",
        body,
        content_type=content_type,
        headers={"Authorization": f"Bearer {token}"},
    )


def api_get(token: str, path: str, params: dict[str, str]):
    return Client().get(f"/api/v1{path}", params, headers={"Authorization": f"Bearer {token}"})


# --- the new-job form -------------------------------------------------------------------------

VALID_JOB_FORM = {
    "name": "fine",
    "total_epochs": "2",
    "steps_per_epoch": "10",
    "steps_per_tick": "5",
    "start": "on",
    "initial_loss": "2.5",
    "final_loss": "0.3",
    "decay_rate": "",
    "seed": "",
    "base_learning_rate": "0.001",
    "warmup_steps": "",
    "diverge_at_step": "",
    "model_name": "",
    "dataset": "",
    "description": "",
    "hyperparameters": "",
}


def assert_job_renders_everywhere(client: Client, job: TrainingJob) -> None:
    """Whatever was stored can be shown: every page and partial that shows a job answers 200."""
    assert client.get(reverse("jobs:detail", args=[job.pk])).status_code == 200
    assert client.get(reverse("jobs:dashboard")).status_code == 200
    assert client.get(reverse("jobs:dashboard"), headers=HTMX).status_code == 200
    assert client.get(reverse("metrics:poll", args=[job.pk]), {"after": -1}).status_code in {
        200,
        286,
    }
    assert client.get(reverse("metrics:series", args=[job.pk])).status_code == 200
    assert client.get(reverse("metrics:compare"), {"jobs": job.pk}).status_code == 200
    for name in ("metrics:export_csv", "metrics:export_json"):
        response = client.get(reverse(name, args=[job.pk]))
        assert response.status_code == 200
        b"".join(response.streaming_content)


@EXAMPLES
@given(overrides=st.dictionaries(st.sampled_from(sorted(VALID_JOB_FORM)), nasty_text, min_size=1))
def test_new_job_form_takes_any_input_without_a_5xx(user_client, overrides):
    with rolled_back():
        before = row_counts()
        response = user_client.post(reverse("jobs:new"), {**VALID_JOB_FORM, **overrides})
        if response.status_code == 302:
            assert row_counts() == {**before, "jobs": before["jobs"] + 1}
            job = TrainingJob.objects.latest("pk")
            assert response["Location"] == job.get_absolute_url()
            assert_job_renders_everywhere(user_client, job)
        else:
            assert_clear_4xx_page(response)
            assert row_counts() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a\x00b"),
        ("description", "a\x00b"),
        ("model_name", "\x00"),
        ("hyperparameters", '{"a": "b\\u0000"}'),
        ("hyperparameters", '{"a\\u0000": 1}'),
        ("hyperparameters", '{"a": NaN}'),
        ("hyperparameters", '{"a": -Infinity}'),
        ("hyperparameters", '{"a": 1e999}'),
        ("hyperparameters", '{"a": "\\ud800"}'),
        ("hyperparameters", '{"a": ' + HUGE_DIGITS + "}"),
        ("hyperparameters", '{"a": ' + DEEP_JSON + "}"),
        ("hyperparameters", '{"a": ' + "[" * 100 + "]" * 100 + "}"),
        ("hyperparameters", "[1, 2]"),
        ("total_epochs", str(10**30)),
        ("total_epochs", "-1"),
        ("total_epochs", "1e308"),
        ("steps_per_epoch", "NaN"),
        ("initial_loss", "1e309"),
        ("initial_loss", "NaN"),
        ("final_loss", "-Infinity"),
        ("decay_rate", "-1"),
        ("seed", str(10**30)),
        ("warmup_steps", str(10**30)),
        ("diverge_at_step", str(2**63)),
        ("base_learning_rate", "-1"),
    ],
)
def test_new_job_form_refuses_what_no_database_stores(user_client, field, value):
    before = row_counts()
    response = user_client.post(reverse("jobs:new"), {**VALID_JOB_FORM, field: value})
    assert_clear_4xx_page(response)
    assert response.status_code == 400
    assert row_counts() == before


def test_new_job_form_keeps_big_but_storable_json(user_client):
    hyperparameters = {"big": 10**30, "tiny": 5e-324, "neg": -(2**63) - 1, "rtl": "\u202eabc"}
    response = user_client.post(
        reverse("jobs:new"), {**VALID_JOB_FORM, "hyperparameters": json.dumps(hyperparameters)}
    )
    assert response.status_code == 302
    job = TrainingJob.objects.get()
    assert job.hyperparameters == hyperparameters
    assert_job_renders_everywhere(user_client, job)


# --- actions and delete -----------------------------------------------------------------------


@EXAMPLES
@given(
    action=st.sampled_from(["start", "pause", "resume", "cancel", "delete"]),
    body=st.dictionaries(nasty_text, nasty_text, max_size=4),
    htmx=st.booleans(),
)
def test_actions_ignore_any_body(user_client, user, action, body, htmx):
    with rolled_back():
        job = TrainingJobFactory(owner=user)
        path = (
            reverse("jobs:delete", args=[job.pk])
            if action == "delete"
            else reverse("jobs:action", args=[job.pk, action])
        )
        response = user_client.post(path, body, headers=HTMX if htmx else {})
        assert response.status_code in {200, 302, 409}, response.status_code


@pytest.mark.parametrize(
    "path",
    [
        f"/jobs/{10**30}/",
        f"/jobs/{2**63}/pause/",
        f"/jobs/{2**64}/delete/",
        f"/jobs/{HUGE_DIGITS}/cancel/",
        "/jobs/-1/pause/",
        "/jobs/0/pause/",
        "/jobs/1/explode/",
        f"/jobs/{10**30}/poll/?after=0",
        f"/jobs/{2**63}/series/",
        f"/jobs/{2**63}/metrics.csv",
        f"/jobs/{HUGE_DIGITS}/metrics.json",
        f"/accounts/tokens/{2**63}/revoke/",
    ],
)
def test_out_of_range_ids_in_paths_are_404(user_client, path):
    response = (
        user_client.post(path)
        if path.endswith(("pause/", "cancel/", "delete/", "revoke/", "explode/"))
        else user_client.get(path)
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/jobs/{10**30}/",
        f"/api/v1/jobs/{2**63}/metrics/",
        f"/api/v1/jobs/{HUGE_DIGITS}/",
        "/api/v1/jobs/-1/",
    ],
)
def test_out_of_range_ids_in_api_paths_are_json_404(token, path):
    response = Client().get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404
    assert_clear_4xx_json(response)


# --- query strings ----------------------------------------------------------------------------

QUERY_KEYS = ["after", "status", "max_points", "jobs", "q", "page"]


@EXAMPLES
@given(params=st.dictionaries(st.sampled_from(QUERY_KEYS), nasty_text, min_size=1))
def test_query_strings_never_cause_a_5xx(user_client, user, params):
    with rolled_back():
        job = TrainingJobFactory(owner=user, name="<b>q</b>")
        TrainingMetricFactory.create_batch(3, job=job)
        for path in (
            reverse("jobs:dashboard"),
            reverse("metrics:poll", args=[job.pk]),
            reverse("metrics:series", args=[job.pk]),
            reverse("metrics:compare"),
            reverse("metrics:export_csv", args=[job.pk]),
        ):
            for headers in ({}, HTMX):
                response = user_client.get(path, params, headers=headers)
                assert response.status_code < 500, (path, response.status_code)
                if response.status_code >= 400:
                    assert response.status_code in {400, 404}
                    assert response.content.strip()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("metrics:poll", {"after": "1e308"}),
        ("metrics:poll", {"after": "-2"}),
        ("metrics:poll", {"after": HUGE_DIGITS}),
        ("metrics:poll", {"after": "NaN"}),
        ("metrics:poll", {"after": "0", "status": "\x00"}),
        ("metrics:series", {"max_points": "1e308"}),
        ("metrics:series", {"max_points": HUGE_DIGITS}),
        ("metrics:compare", {"jobs": "²"}),
        ("metrics:compare", {"jobs": "1,x"}),
        ("metrics:compare", {"jobs": ",".join(str(n) for n in range(1, 20))}),
        ("metrics:compare", {"jobs": ""}),
        ("jobs:dashboard", {"q": "\x00"}),
        ("jobs:dashboard", {"q": "a\x00b"}),
    ],
)
def test_bad_query_parameters_are_a_clear_400(user_client, job, path, params):
    args = [] if path in {"metrics:compare", "jobs:dashboard"} else [job.pk]
    response = user_client.get(reverse(path, args=args), params)
    assert_clear_4xx_page(response) if path != "metrics:series" else assert_clear_series(response)
    assert response.status_code == 400


def assert_clear_series(response) -> None:
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"after": str(10**30)},
        {"after": str(2**63)},
        {"after": "١٢"},
        {"max_points": str(10**30)},
        {"max_points": "-5"},
        {"q": "%"},
        {"q": "_"},
        {"q": "x" * 10_000},
        {"page": str(10**30)},
        {"page": "-1"},
        {"page": "\x00"},
        {"status": "\x00"},
        {"jobs": str(10**30)},
        {"jobs": str(2**63)},
    ],
)
def test_extreme_query_values_answer_without_error(user_client, job, params):
    for path in (
        reverse("jobs:dashboard"),
        reverse("metrics:poll", args=[job.pk]),
        reverse("metrics:series", args=[job.pk]),
    ):
        response = user_client.get(path, params)
        assert response.status_code in {200, 400}, (path, response.status_code)
    response = user_client.get(reverse("metrics:compare"), params)
    assert response.status_code in {200, 400, 404}


# --- tokens and login -------------------------------------------------------------------------


@EXAMPLES
@given(name=nasty_text)
def test_token_form_takes_any_name_without_a_5xx(user_client, user, name):
    with rolled_back():
        before = ApiToken.objects.count()
        response = user_client.post(reverse("accounts:token_create"), {"name": name})
        if response.status_code == 200:
            token = ApiToken.objects.get(user=user, name=name.strip())
            assert token.prefix in response.content.decode()
            assert user_client.get(reverse("accounts:tokens")).status_code == 200
        else:
            assert_clear_4xx_page(response)
            assert ApiToken.objects.count() == before


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "x" * 101, "   "])
def test_token_form_refuses_unstorable_names(user_client, name):
    response = user_client.post(reverse("accounts:token_create"), {"name": name})
    assert response.status_code == 400
    assert_clear_4xx_page(response)
    assert not ApiToken.objects.exists()


_ADDRESSES = itertools.count(1)


@EXAMPLES
@given(username=nasty_text, password=nasty_text, next_url=nasty_text)
def test_login_form_takes_any_input_without_a_5xx(user, username, password, next_url):
    # Each example comes from a new address: log-in throttling has tests of its own.
    number = next(_ADDRESSES)
    response = Client(REMOTE_ADDR=f"10.9.{number // 256 % 256}.{number % 256}").post(
        reverse("login"), {"username": username, "password": password, "next": next_url}
    )
    assert response.status_code == 200  # the form again, with its error
    assert "_auth_user_id" not in response.client.session


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "\x00",
        "https:evil.example",
    ],
)
def test_login_never_redirects_off_site(user, next_url):
    response = Client().post(
        reverse("login"), {"username": user.username, "password": PASSWORD, "next": next_url}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:dashboard")


# --- bodies no form or API endpoint should choke on ------------------------------------------

RAW_BODIES = [
    pytest.param(DEEP_JSON.encode(), JSON, id="deep-json"),
    pytest.param(b'{"a": ' + HUGE_DIGITS.encode() + b"}", JSON, id="huge-int"),
    pytest.param(b"\xff\xfe\x00garbage", JSON, id="invalid-utf8"),
    pytest.param(b'{"name": "\xed\xa0\x80"}', JSON, id="utf8-surrogate"),
    pytest.param(b"", JSON, id="empty"),
    pytest.param(b"null", JSON, id="null"),
    pytest.param(b"NaN", JSON, id="nan"),
    pytest.param(b"1e999", JSON, id="inf"),
    pytest.param(b"[]", JSON, id="list"),
    pytest.param(b"name=x&total_epochs=1", "application/x-www-form-urlencoded", id="form-body"),
    pytest.param(b"<xml/>", "application/xml", id="xml"),
    pytest.param(b"x" * TEN_MB, JSON, id="10MB"),
    pytest.param(b"name=" + b"x" * TEN_MB, "application/x-www-form-urlencoded", id="10MB-form"),
]


@pytest.mark.parametrize(("body", "content_type"), RAW_BODIES)
def test_api_endpoints_answer_raw_bodies_with_json_4xx(token, user, body, content_type):
    job = TrainingJobFactory(owner=user, source="external")
    before, state = row_counts(), job_state(job)
    for path in ("/jobs/", f"/jobs/{job.pk}/finish/", f"/jobs/{job.pk}/metrics/"):
        response = api_post(token, path, body, content_type)
        body_json = assert_clear_4xx_json(response)
        if len(body) > django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            assert response.status_code == 413, body_json
    assert row_counts() == before
    assert job_state(job) == state


@pytest.mark.parametrize(
    ("body", "content_type"), [body for body in RAW_BODIES if body.id != "form-body"]
)
def test_browser_forms_answer_raw_bodies_with_4xx(user_client, user, body, content_type):
    job = TrainingJobFactory(owner=user)
    before, state = row_counts(), job_state(job)
    for path in (
        reverse("jobs:new"),
        reverse("accounts:token_create"),
        reverse("login"),
    ):
        response = user_client.post(path, body, content_type=content_type)
        assert response.status_code < 500, (path, response.status_code)
        if path != reverse("login"):
            assert response.status_code == 400
    assert row_counts() == before
    assert job_state(job) == state


def test_too_many_form_fields_is_a_400(user_client):
    fields = "&".join(f"f{i}=1" for i in range(django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = user_client.post(
        reverse("jobs:new"), fields, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400
    assert not TrainingJob.objects.exists()


# --- the API, field by field ------------------------------------------------------------------

JOB_FIELDS = [
    "name",
    "total_epochs",
    "steps_per_epoch",
    "model_name",
    "dataset",
    "description",
    "hyperparameters",
]
VALID_JOB = {"name": "ext", "total_epochs": 2, "steps_per_epoch": 10}


@EXAMPLES
@given(overrides=st.dictionaries(st.sampled_from(JOB_FIELDS) | nasty_text, json_values, min_size=1))
def test_api_create_job_takes_any_body_without_a_5xx(token, overrides):
    with rolled_back():
        before = row_counts()
        response = api_post(token, "/jobs/", json.dumps({**VALID_JOB, **overrides}))
        if response.status_code == 201:
            assert row_counts() == {**before, "jobs": before["jobs"] + 1}
            job = TrainingJob.objects.get(pk=response.json()["id"])
            assert api_get(token, f"/jobs/{job.pk}/", {}).status_code == 200
            client = Client()
            client.force_login(job.owner)
            assert_job_renders_everywhere(client, job)
        else:
            assert_clear_4xx_json(response)
            assert row_counts() == before


@EXAMPLES
@given(body=json_values | st.dictionaries(st.sampled_from(["status", "reason"]), json_values))
def test_api_finish_takes_any_body_without_a_5xx(token, user, body):
    with rolled_back():
        job = TrainingJobFactory(owner=user, source="external")
        state = job_state(job)
        response = api_post(token, f"/jobs/{job.pk}/finish/", json.dumps(body))
        if response.status_code == 200:
            assert job_state(job)[0] in {"completed", "failed"}
        else:
            assert_clear_4xx_json(response)
            assert job_state(job) == state


@pytest.mark.parametrize(
    "reason", ["a\x00b", "x" * 2001, "\ud800"], ids=["nul", "too-long", "lone-surrogate"]
)
def test_api_finish_refuses_unstorable_reasons(token, user, reason):
    job = TrainingJobFactory(owner=user, source="external")
    state = job_state(job)
    body = json.dumps({"status": "failed", "reason": reason})  # \ud800 goes out escaped
    assert_clear_4xx_json(api_post(token, f"/jobs/{job.pk}/finish/", body))
    assert job_state(job) == state


hostile_point = st.fixed_dictionaries(
    {
        "step": st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**63, 1e308]),
        "epoch": st.integers(-(2**40), 2**40) | json_leaf,
        "loss": st.floats() | json_leaf,
    },
    optional={"accuracy": st.floats() | json_leaf, "learning_rate": st.floats() | json_leaf},
)


@EXAMPLES
@given(points=st.lists(hostile_point | json_values, max_size=6))
def test_api_metrics_take_any_points_without_a_5xx(token, user, points):
    with rolled_back():
        job = TrainingJobFactory(owner=user, source="external", total_epochs=2, steps_per_epoch=50)
        state = job_state(job)
        response = api_post(token, f"/jobs/{job.pk}/metrics/", json.dumps({"points": points}))
        stored = job.metrics.count()
        if response.status_code == 200:
            assert stored == response.json()["created"]
        else:
            assert_clear_4xx_json(response)
            assert stored == 0
            assert job_state(job) == state


@EXAMPLES
@given(params=st.dictionaries(st.sampled_from(["after", "max_points"]) | nasty_text, nasty_text))
def test_api_metrics_read_takes_any_query_without_a_5xx(token, user, params):
    with rolled_back():
        job = TrainingJobFactory(owner=user, source="external")
        TrainingMetricFactory.create_batch(3, job=job)
        response = api_get(token, f"/jobs/{job.pk}/metrics/", params)
        if response.status_code != 200:
            assert response.status_code == 400
            assert_clear_4xx_json(response)


def test_an_oversized_authorization_header_is_a_401(user):
    response = Client().get("/api/v1/jobs/1/", headers={"Authorization": "Bearer " + "x" * 100_000})
    assert_clear_4xx_json(response)
    assert response.status_code == 401
    response = Client().post(
        "/api/v1/jobs/",
        json.dumps(VALID_JOB),
        content_type=JSON,
        headers={"Authorization": "Bearer tm_\x00" + "é" * 50},
    )
    assert_clear_4xx_json(response)
    assert response.status_code == 401


# --- HTML and script in names render as text --------------------------------------------------


@pytest.fixture
def xss_jobs(user) -> list[TrainingJob]:
    jobs = [
        TrainingJobFactory(
            owner=user,
            name=payload,
            model_name=payload,
            dataset=payload,
            description=payload,
            hyperparameters={payload: payload},
            failure_reason=payload,
            status="failed",
        )
        for payload in XSS
    ]
    jobs.append(TrainingJobFactory(owner=user, name=XSS[0] + XSS[1], status="running"))
    return jobs


ESCAPED = ["&lt;script&gt;alert(1)&lt;/script&gt;", "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"]


def assert_escaped(html: str) -> None:
    for payload in XSS:
        assert payload not in html
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert any(escaped in html for escaped in ESCAPED)


def test_names_with_markup_render_escaped_on_every_page(user_client, staff_user, xss_jobs):
    ids = ",".join(str(job.pk) for job in xss_jobs)
    pages = [
        user_client.get(reverse("jobs:dashboard")),
        user_client.get(reverse("jobs:dashboard"), {"q": "script"}, headers=HTMX),
        user_client.get(reverse("metrics:compare"), {"jobs": ids}),
    ]
    for job in xss_jobs:
        pages += [
            user_client.get(reverse("jobs:detail", args=[job.pk])),
            user_client.get(reverse("metrics:poll", args=[job.pk]), {"after": -1}, headers=HTMX),
        ]
    admin = Client()
    admin.force_login(staff_user)
    pages.append(admin.get(reverse("admin:jobs_trainingjob_changelist")))
    pages += [
        admin.get(reverse("admin:jobs_trainingjob_change", args=[job.pk])) for job in xss_jobs
    ]
    for response in pages:
        assert response.status_code in {200, 286}, response.status_code
        assert_escaped(response.content.decode())


def test_names_with_markup_in_toasts_are_json_text(user_client, user):
    job = TrainingJobFactory(owner=user, name=XSS[1])
    response = user_client.post(reverse("jobs:action", args=[job.pk, "pause"]), headers=HTMX)
    assert response.status_code == 200
    assert XSS[1] not in response.content.decode()
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in response.content.decode()
    toast = json.loads(response["HX-Trigger"])["toast"]
    assert XSS[1] in toast["message"]  # JSON text; toasts.js inserts it as text, see below
    # The poll's status-change toast carries the name the same way.
    response = user_client.get(
        reverse("metrics:poll", args=[job.pk]), {"after": -1, "status": "running"}, headers=HTMX
    )
    assert XSS[1] in json.loads(response["HX-Trigger"])["toast"]["message"]
    # Django messages (the no-JavaScript path) render escaped in the toast region.
    response = user_client.post(reverse("jobs:action", args=[job.pk, "resume"]), follow=True)
    html = response.content.decode()
    assert XSS[1] not in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


HTML_SINKS = re.compile(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write")


def test_our_scripts_insert_text_never_html():
    # Toasts, chart legends and the compare page show job names: text nodes only.
    scripts = sorted((Path(django_settings.BASE_DIR) / "static" / "trainmon").glob("*.js"))
    assert scripts
    for script in scripts:
        source = script.read_text()
        assert not HTML_SINKS.search(source), f"{script.name} writes HTML from a string"
    toasts = (Path(django_settings.BASE_DIR) / "static" / "trainmon" / "toasts.js").read_text()
    assert "textContent = text" in toasts


@pytest.mark.parametrize("name", ["😀 run \u202eevil", "שלום", "a\r\nSet-Cookie: x=1", "é" * 200])
def test_any_name_travels_in_the_toast_header_as_ascii_json(user_client, user, name):
    job = TrainingJobFactory(owner=user, name=name)
    response = user_client.post(reverse("jobs:action", args=[job.pk, "pause"]), headers=HTMX)
    assert response.status_code == 200
    header = response["HX-Trigger"]
    assert header.isascii()
    assert "\r" not in header
    assert "\n" not in header
    assert name in json.loads(header)["toast"]["message"]
