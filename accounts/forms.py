from __future__ import annotations

from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.forms import Form

from accounts.throttling import (
    client_address,
    login_failure_record,
    login_failures_clear,
    login_wait_seconds,
)

THROTTLED = "throttled"


class LoginThrottleMixin:
    """Refuses a log-in while its account or address is locked out (accounts.throttling).

    Checked before the password, so a locked-out guess costs no password hash and tells
    nothing; failures are recorded and successes clear them.
    """

    throttle_message = (
        "Too many failed log-ins from your address. For your account's safety, log-ins are "
        "paused: try again in %(wait)s."
    )

    def clean(self) -> dict[str, Any]:
        form: Any = self
        username = form.cleaned_data.get("username")
        if not (username and form.cleaned_data.get("password")):
            # misc: a mixin's super() is object to mypy; the form class after it has clean().
            unchecked: dict[str, Any] = super().clean()  # type: ignore[misc]
            return unchecked
        address = client_address(form.request)
        if wait := login_wait_seconds(username=username, ip_address=address):
            raise ValidationError(
                self.throttle_message, code=THROTTLED, params={"wait": _minutes(wait)}
            )
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]  # as above
        except ValidationError as error:
            if error.code == "invalid_login":
                login_failure_record(username=username, ip_address=address)
            raise
        login_failures_clear(username=username, ip_address=address)
        return cleaned


def is_throttled(form: Form) -> bool:
    return form.has_error(NON_FIELD_ERRORS, THROTTLED)


def _minutes(seconds: int) -> str:
    minutes = -(-seconds // 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


class ThrottledAuthenticationForm(LoginThrottleMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(LoginThrottleMixin, AdminAuthenticationForm):
    pass
