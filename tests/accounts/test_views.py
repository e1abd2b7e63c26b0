from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import ApiToken
from accounts.services import api_token_authenticate, api_token_create
from tests.support.pages import form_csrf_token

pytestmark = pytest.mark.django_db

TOKENS = "/accounts/tokens/"


def new_token_on(page: str) -> str:
    match = re.search(r'<code id="new-token">([^<]+)</code>', page)
    assert match, "no new token shown"
    return match.group(1)


def test_the_urls_are_where_the_contract_says():
    assert reverse("accounts:tokens") == TOKENS


def test_anonymous_users_are_sent_to_log_in(client):
    response = client.get(TOKENS)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert client.post(reverse("accounts:token_create"), {"name": "x"}).status_code == 302
    assert not ApiToken.objects.exists()


def test_the_page_lists_only_my_tokens(user_client, user, other_user):
    mine, _ = api_token_create(user=user, name="my laptop")
    theirs, _ = api_token_create(user=other_user, name="their cluster")
    page = user_client.get(TOKENS).content.decode()
    assert "my laptop" in page
    assert f"{mine.prefix}…" in page
    assert "their cluster" not in page
    assert theirs.prefix not in page
    assert "never" in page  # last used


def test_creating_shows_the_token_once(user_client, user):
    response = user_client.post(reverse("accounts:token_create"), {"name": "gpu-1"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = new_token_on(response.content.decode())
    assert api_token_authenticate(raw=raw) == user
    assert ApiToken.objects.get(user=user).name == "gpu-1"
    # Never again: not on the list page, not in the database.
    assert raw not in user_client.get(TOKENS).content.decode()
    assert not ApiToken.objects.filter(key_hash=raw).exists()


def test_a_blank_name_is_refused_and_nothing_is_created(user_client):
    response = user_client.post(reverse("accounts:token_create"), {"name": "  "})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Give the token a name." in page
    assert 'id="new-token"' not in page
    assert not ApiToken.objects.exists()


def test_revoke_my_token(user_client, user):
    token, raw = api_token_create(user=user, name="old")
    response = user_client.post(reverse("accounts:token_revoke", args=[token.pk]), follow=True)
    assert response.redirect_chain == [(TOKENS, 302)]
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert api_token_authenticate(raw=raw) is None
    page = response.content.decode()
    assert "Revoked the token" in page
    assert "revoked" in page


def test_another_users_token_cannot_be_revoked(user_client, other_user):
    token, raw = api_token_create(user=other_user, name="theirs")
    response = user_client.post(reverse("accounts:token_revoke", args=[token.pk]))
    assert response.status_code == 404
    assert api_token_authenticate(raw=raw) == other_user


def test_revoke_needs_post(user_client, user):
    token, _ = api_token_create(user=user, name="t")
    assert user_client.get(reverse("accounts:token_revoke", args=[token.pk])).status_code == 405
    token.refresh_from_db()
    assert token.revoked_at is None


def test_forms_are_csrf_protected(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token, _ = api_token_create(user=user, name="t")
    assert client.post(reverse("accounts:token_create"), {"name": "x"}).status_code == 403
    assert client.post(reverse("accounts:token_revoke", args=[token.pk])).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None
    assert ApiToken.objects.count() == 1
    # With the token from the page's form, both work.
    data = {"csrfmiddlewaretoken": form_csrf_token(client, TOKENS)}
    assert client.post(reverse("accounts:token_create"), {**data, "name": "x"}).status_code == 200
    assert client.post(reverse("accounts:token_revoke", args=[token.pk]), data).status_code == 302
