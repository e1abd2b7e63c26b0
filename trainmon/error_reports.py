"""What error reports (the DEBUG page, error e-mails) may show: no secret, even in DEBUG."""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter

# user:password@ in a connection URL (redis://:pw@host, postgres://user:pw@host).
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@", re.I)


class SecretsHiddenFilter(SafeExceptionReporterFilter):
    """Django's filter, also active with DEBUG on, and stricter.

    Django's own filter does nothing to POST data or local variables while DEBUG is on, so a
    crash in the login view showed the password on the page. Here:
    - the filter is always active (a debug page gets pasted into tickets and chats);
    - settings and request headers named like a cookie, CSRF value or session are hidden too;
    - passwords inside connection URLs (CELERY_BROKER_URL, or DATABASE_URL in a runserver
      environ) are starred, the rest of the URL stays readable;
    - local variables named like a secret (password, token, key, ...) are hidden in every frame.
    """

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|COOKIE|CSRF|SESSION|CREDENTIAL", flags=re.I
    )

    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        return self._without_url_password(super().cleanse_setting(key, value))

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        return [
            (
                name,
                self.cleansed_substitute
                if self.hidden_settings.search(name)
                else self._without_url_password(value),
            )
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _without_url_password(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{self.cleansed_substitute}@", value)
