from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django_htmx.http import HttpResponseClientRedirect


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
