"""The metrics API as the tests call it."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client


class Api:
    """The Django test client speaking JSON with a bearer token."""

    def __init__(self, token: str | None, client: Client | None = None) -> None:
        self.client = client or Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params: Any):
        return self.client.get(f"/api/v1{path}", params, headers=self.headers)

    def post(self, path: str, body: Any = None, *, raw: str | bytes | None = None):
        data = raw if raw is not None else json.dumps(body)
        return self.client.post(
            f"/api/v1{path}", data, content_type="application/json", headers=self.headers
        )
