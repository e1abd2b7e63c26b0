"""The API's authentication: `Authorization: Bearer <token>` (accounts.ApiToken).

A token reaches its own user's jobs only, staff included; see accounts/services.py.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from accounts.services import api_token_authenticate


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return api_token_authenticate(raw=token)
