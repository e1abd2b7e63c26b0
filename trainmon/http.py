from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class AuthenticatedHttpRequest(HttpRequest):
    """A request past LoginRequiredMiddleware: any view not marked login_not_required."""

    user: User


class HtmxHttpRequest(AuthenticatedHttpRequest):
    """A request that went through django-htmx's middleware (see settings.MIDDLEWARE)."""

    htmx: HtmxDetails


class ApiRequest(HttpRequest):
    """A request to an API endpoint, past ninja's bearer-token authentication."""

    auth: User
