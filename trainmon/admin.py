from __future__ import annotations

from http import HTTPStatus
from typing import Any

from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache

from accounts.forms import ThrottledAdminAuthenticationForm, is_throttled


class TrainmonAdminSite(admin.AdminSite):
    """The admin, whose own log-in form is throttled like the site's (accounts.throttling)."""

    login_form = ThrottledAdminAuthenticationForm

    @method_decorator(never_cache)
    @method_decorator(login_not_required)
    def login(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().login(request, extra_context)
        form = getattr(response, "context_data", {}).get("form")
        if form is not None and is_throttled(form):
            response.status_code = HTTPStatus.TOO_MANY_REQUESTS
        return response
