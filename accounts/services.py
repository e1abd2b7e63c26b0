"""API tokens: creation, revocation and authentication.

A token is `tm_` followed by 43 URL-safe characters (256 random bits). The database keeps
its SHA-256 only, so a leaked database does not leak usable tokens; the plaintext exists once,
in the value returned by `api_token_create`.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import ApiToken

TOKEN_PREFIX = "tm_"
TOKEN_BYTES = 32
PREFIX_LENGTH = len(TOKEN_PREFIX) + 6  # "tm_" and six characters, shown in lists
_name_max_length = ApiToken._meta.get_field("name").max_length
assert _name_max_length is not None  # a CharField always has one; narrows int | None
NAME_MAX_LENGTH: int = _name_max_length
# Far longer than any real token: bounds the work an oversized header can cause.
RAW_TOKEN_MAX_LENGTH = 200
# last_used_at is for people ("used 3 minutes ago"); one write a minute per token is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@sensitive_variables("raw")
def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token for `user`; returns it and its plaintext, which is never stored."""
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise ValidationError({"name": "Give the token a name."})
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError({"name": f"Keep the name under {NAME_MAX_LENGTH} characters."})
    if "\x00" in name:
        # PostgreSQL cannot store NUL in text: refuse it here rather than fail in the INSERT.
        raise ValidationError({"name": "The name cannot contain NUL characters."})
    raw = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = ApiToken.objects.create(
        user=user, name=name, key_hash=token_hash(raw), prefix=raw[:PREFIX_LENGTH]
    )
    return token, raw


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke `token` (again: no change). Requests bearing it fail from now on."""
    if token.revoked_at is None:
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        token.refresh_from_db(fields=["revoked_at"])
    return token


@sensitive_variables("raw")
def api_token_authenticate(*, raw: str) -> User | None:
    """The active user owning the live token `raw`, or None.

    The lookup is by the token's hash, never by the token: timing differences in the index
    search reveal nothing about a valid token, so no constant-time compare is needed.
    """
    if not isinstance(raw, str) or not raw or len(raw) > RAW_TOKEN_MAX_LENGTH:
        return None
    now = timezone.now()
    # Every API and MLflow request starts here. As one raw query (the user's row, the token's
    # id and whether its last_used_at is stale) it costs ~0.5 ms less than the ORM's join,
    # which it spent compiling: a tenth of an MLflow log-batch's budget.
    users = list(
        User.objects.raw(
            _TOKEN_USER_SQL,
            [
                connection.ops.adapt_datetimefield_value(now - LAST_USED_RESOLUTION),
                token_hash(raw),
                True,
            ],
        )
    )
    if not users:
        return None
    user = users[0]
    # raw() sets the query's extra columns on the user as attributes.
    token_id: int = user.token_id  # type: ignore[attr-defined]
    if user.token_stale:  # type: ignore[attr-defined]
        ApiToken.objects.filter(pk=token_id).update(last_used_at=now)
    return user


_TOKEN_USER_SQL = (
    f"SELECT u.*, t.id AS token_id,"
    f" (t.last_used_at IS NULL OR t.last_used_at <= %s) AS token_stale"
    f" FROM {User._meta.db_table} u JOIN {ApiToken._meta.db_table} t ON t.user_id = u.id"
    f" WHERE t.key_hash = %s AND t.revoked_at IS NULL AND u.is_active = %s"
)
