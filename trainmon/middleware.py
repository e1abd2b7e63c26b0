from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlsplit

from csp.constants import UNSAFE_HASHES
from csp.middleware import CSPMiddleware, PolicyParts
from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django_htmx.http import HttpResponseClientRedirect

# The only inline styles the admin writes: the job list's progress column (jobs/admin.py).
# A new or changed one shows up as a failing test (tests/test_trainmon_middleware.py), not as
# a silently unstyled admin.
ADMIN_INLINE_STYLES = ("white-space: nowrap", "width: 5em")


def csp_hash(text: str) -> str:
    """The CSP source expression that allows exactly this inline script or style."""
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode("ascii")
    return f"'sha256-{digest}'"


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware (settings.CONTENT_SECURITY_POLICY) with one view-specific
    addition: the admin's pages also allow ADMIN_INLINE_STYLES, by hash. 'unsafe-hashes' lets
    a hash match a style attribute; unlike 'unsafe-inline' it allows nothing else."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.app_name == "admin":
            admin_styles = [UNSAFE_HASHES, *(csp_hash(style) for style in ADMIN_INLINE_STYLES)]
            update = dict(parts.update or {})
            update["style-src"] = [*update.get("style-src", []), *admin_styles]
            parts.update = update
        return parts


class HtmxLoginRequiredMiddleware(LoginRequiredMiddleware):
    """LoginRequiredMiddleware that sends an htmx request (a poll, a search) to the login page
    as a whole, instead of a 302 that htmx would follow and swap the login page into a table."""

    # The stubs narrow the return to Django's HttpResponseRedirect; any response will do.
    def handle_no_permission(  # type: ignore[override]
        self, request: Any, view_func: Any
    ) -> HttpResponse:
        if not getattr(request, "htmx", False):
            return super().handle_no_permission(request, view_func)
        # Come back to the page the user was on, not to the partial that was polled.
        current = urlsplit(request.htmx.current_url or "")
        back = current.path + (f"?{current.query}" if current.query else "") or "/"
        login = redirect_to_login(
            back, self.get_login_url(view_func), self.get_redirect_field_name(view_func)
        )
        return HttpResponseClientRedirect(login["Location"])
