"""The HTTP API under /api/v1/: training scripts create jobs and report their points.

One NinjaAPI, a router per app: jobs/api.py (create, read, finish a job), metrics/api.py
(write and read points); authentication is accounts/api.py (`Authorization: Bearer <token>`,
a token reaches its own user's jobs only, staff included), and every error is JSON
`{"error": "...", "details": ...}` (trainmon/api_errors.py). The OpenAPI document is at
/api/v1/openapi.json, its docs at /api/v1/docs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, URLResolver, re_path, reverse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI, Swagger
from ninja.openapi.schema import OpenAPISchema

from accounts.api import BearerToken
from jobs.api import router as jobs_router
from metrics.api import router as metrics_router
from trainmon import api_bodies, api_errors
from trainmon.api_errors import HTTP_METHOD_NOT_ALLOWED, HTTP_NOT_FOUND, error_response


class TrainmonAPI(NinjaAPI):
    @property
    def urls(self) -> tuple[list[URLResolver | URLPattern], str, str]:
        """Ninja's URL patterns, open to token-only clients, with JSON for every error.

        LoginRequiredMiddleware would send an anonymous API request to the login page: the
        API's views are exempt and authenticate by token. A catch-all answers unknown paths
        under /api/v1/ with a JSON 404 instead of the site's HTML page.
        """
        patterns, app_name, namespace = super().urls
        wrapped: list[URLResolver | URLPattern] = []
        for pattern in patterns:
            if not isinstance(pattern, URLPattern):
                raise TypeError(f"Unexpected nested URL conf in the API: {pattern!r}")
            view = login_not_required(_json_errors(pattern.callback))
            wrapped.append(URLPattern(pattern.pattern, view, pattern.default_args, pattern.name))
        wrapped.append(re_path(r"", _unknown_endpoint, name="unknown"))
        return wrapped, app_name, namespace

    def get_openapi_schema(
        self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None
    ) -> OpenAPISchema:
        """Ninja's document, with the bodies the views validate themselves (api_bodies.py)."""
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        schema["components"]["schemas"].update(api_bodies.documented_schemas())
        return schema


def _json_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    # Ninja answers a wrong method with a plain-text 405, and its API-root view raises Http404
    # outside the exception handlers.
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            docs = reverse("api:openapi-view")
            return error_response(HTTP_NOT_FOUND, f"No API endpoint at {request.path}; see {docs}.")
        if response.status_code == HTTP_METHOD_NOT_ALLOWED and not response.get(
            "Content-Type", ""
        ).startswith("application/json"):
            allowed = response.get("Allow", "")
            reply = error_response(
                HTTP_METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use {allowed}."
            )
            reply["Allow"] = allowed
            return reply
        return response

    return wrapper


@login_not_required
@csrf_exempt
def _unknown_endpoint(request: HttpRequest) -> JsonResponse:
    hint = "" if request.path.endswith("/") else " (API paths end with a slash)"
    return error_response(HTTP_NOT_FOUND, f"No API endpoint at {request.path}{hint}.")


api = TrainmonAPI(
    title="trainmon API",
    version="1",
    description=(
        "Report training metrics to trainmon. Authenticate with `Authorization: Bearer "
        "<token>` (create tokens on the API tokens page or with `manage.py createapitoken`). "
        'Errors are JSON: `{"error": "...", "details": ...}`.'
    ),
    urls_namespace="api",
    auth=BearerToken(),
    # Swagger UI and its CSS are served from django-ninja's bundled static files; the
    # validator badge would call an outside service, so it is off.
    docs=Swagger(settings={"validatorUrl": None}),
)
api_errors.install(api)
api.add_router("", jobs_router)
api.add_router("", metrics_router)
