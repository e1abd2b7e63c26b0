from __future__ import annotations

from http import HTTPStatus

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_POST

from accounts.forms import ThrottledAuthenticationForm, is_throttled
from accounts.models import ApiToken
from accounts.services import NAME_MAX_LENGTH, api_token_create, api_token_revoke
from trainmon.http import AuthenticatedHttpRequest


def _page(
    request: AuthenticatedHttpRequest,
    *,
    new_token: str | None = None,
    name: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    context = {
        "tokens": ApiToken.objects.filter(user=request.user),
        "new_token": new_token,
        "name": name,
        "error": error,
        "name_max_length": NAME_MAX_LENGTH,
        "api_base": request.build_absolute_uri(reverse("api:api-root")),
    }
    return render(request, "accounts/tokens.html", context, status=status)


@require_GET
def tokens(request: AuthenticatedHttpRequest) -> HttpResponse:
    return _page(request)


@require_POST
@sensitive_variables()  # every frame below, the template's context too, holds the plaintext
def token_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    # The page is rendered here rather than redirected to: the plaintext is shown in this
    # response only and is never stored, not even in the session.
    name = request.POST.get("name", "")
    try:
        _, raw = api_token_create(user=request.user, name=name)
    except ValidationError as error:
        return _page(request, name=name, error=" ".join(error.messages), status=400)
    response = _page(request, new_token=raw)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def token_revoke(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    was_live = not token.is_revoked
    api_token_revoke(token=token)
    if was_live:
        messages.success(request, f"Revoked the token “{token.name}” ({token.prefix}…).")
    return redirect("accounts:tokens")


class ThrottledLoginView(auth_views.LoginView):
    """Django's log-in page; a locked-out log-in answers 429 with the reason on the form."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if is_throttled(form):
            response.status_code = HTTPStatus.TOO_MANY_REQUESTS
        return response
