from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import (
    LAST_USED_RESOLUTION,
    api_token_authenticate,
    api_token_create,
    api_token_revoke,
)

pytestmark = pytest.mark.django_db


def test_create_returns_a_plaintext_that_is_stored_only_as_its_hash(user):
    token, raw = api_token_create(user=user, name="  gpu box  ")
    assert raw.startswith("tm_")
    assert len(raw) >= 40
    token.refresh_from_db()
    assert token.name == "gpu box"
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[: len(token.prefix)]
    assert len(token.prefix) < len(raw) // 4
    assert raw not in str(list(ApiToken.objects.filter(pk=token.pk).values()))


def test_tokens_are_unique(user):
    raws = {api_token_create(user=user, name="t")[1] for _ in range(20)}
    assert len(raws) == 20


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, None])
def test_create_needs_a_reasonable_name(user, name):
    with pytest.raises(ValidationError) as error:
        api_token_create(user=user, name=name)
    assert "name" in error.value.message_dict
    assert not ApiToken.objects.exists()


def test_authenticate_finds_the_owner_and_notes_the_use(user):
    token, raw = api_token_create(user=user, name="t")
    assert api_token_authenticate(raw=raw) == user
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_last_used_is_written_at_most_once_a_minute(user):
    token, raw = api_token_create(user=user, name="t")
    recent = timezone.now() - LAST_USED_RESOLUTION / 2
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=recent)
    api_token_authenticate(raw=raw)
    token.refresh_from_db()
    assert token.last_used_at == recent
    old = timezone.now() - LAST_USED_RESOLUTION - timedelta(seconds=1)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=old)
    api_token_authenticate(raw=raw)
    token.refresh_from_db()
    assert token.last_used_at > old


@pytest.mark.parametrize("raw", ["", "tm_nope", "x" * 10_000, "\ud800", None, 5])
def test_unknown_or_malformed_tokens_fail(user, raw):
    api_token_create(user=user, name="t")
    assert api_token_authenticate(raw=raw) is None


def test_a_tokens_prefix_or_hash_is_not_a_token(user):
    token, raw = api_token_create(user=user, name="t")
    assert api_token_authenticate(raw=token.prefix) is None
    assert api_token_authenticate(raw=token.key_hash) is None
    assert api_token_authenticate(raw=raw + "x") is None
    assert api_token_authenticate(raw=raw.upper()) is None


def test_revoked_tokens_fail_and_revoking_twice_keeps_the_first_time(user):
    token, raw = api_token_create(user=user, name="t")
    api_token_revoke(token=token)
    first = token.revoked_at
    assert first is not None
    assert api_token_authenticate(raw=raw) is None
    api_token_revoke(token=token)
    token.refresh_from_db()
    assert token.revoked_at == first


def test_inactive_and_deleted_users_tokens_fail(user, other_user):
    _, inactive_raw = api_token_create(user=user, name="t")
    _, deleted_raw = api_token_create(user=other_user, name="t")
    user.is_active = False
    user.save()
    deleted_id = other_user.pk
    other_user.delete()
    assert api_token_authenticate(raw=inactive_raw) is None
    assert api_token_authenticate(raw=deleted_raw) is None
    assert not ApiToken.objects.filter(user_id=deleted_id).exists()
