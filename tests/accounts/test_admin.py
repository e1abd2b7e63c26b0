from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.services import api_token_authenticate, api_token_create

pytestmark = pytest.mark.django_db


def test_tokens_are_listed_and_shown_read_only(staff_client, user):
    token, _ = api_token_create(user=user, name="ci runner")
    listing = staff_client.get(reverse("admin:accounts_apitoken_changelist"))
    assert listing.status_code == 200
    assert "ci runner" in listing.content.decode()
    page = staff_client.get(reverse("admin:accounts_apitoken_change", args=[token.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert token.key_hash in html
    assert 'name="key_hash"' not in html  # shown, not editable


def test_tokens_cannot_be_added_in_the_admin(staff_client):
    assert staff_client.get(reverse("admin:accounts_apitoken_add")).status_code == 403


def test_the_revoke_action(staff_client, user):
    token, raw = api_token_create(user=user, name="t")
    response = staff_client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
        follow=True,
    )
    assert "Revoked 1 token(s)." in response.content.decode()
    assert api_token_authenticate(raw=raw) is None
