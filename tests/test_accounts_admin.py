from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.services import api_token_authenticate, api_token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, staff_user):
    client.force_login(staff_user)
    return client


def test_tokens_are_listed_and_shown_read_only(admin_client, user):
    token, _ = api_token_create(user=user, name="ci runner")
    listing = admin_client.get(reverse("admin:accounts_apitoken_changelist"))
    assert listing.status_code == 200
    assert "ci runner" in listing.content.decode()
    page = admin_client.get(reverse("admin:accounts_apitoken_change", args=[token.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert token.key_hash in html
    assert 'name="key_hash"' not in html  # shown, not editable


def test_tokens_cannot_be_added_in_the_admin(admin_client):
    assert admin_client.get(reverse("admin:accounts_apitoken_add")).status_code == 403


def test_the_revoke_action(admin_client, user):
    token, raw = api_token_create(user=user, name="t")
    response = admin_client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
        follow=True,
    )
    assert "Revoked 1 token(s)." in response.content.decode()
    assert api_token_authenticate(raw) is None
