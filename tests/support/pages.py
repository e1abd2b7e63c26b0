"""Reading what a rendered page hands the browser, as the browser would."""

from __future__ import annotations

import json
import re

from django.test import Client

FORM_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
BODY_HX_HEADERS = re.compile(r"<body hx-headers='([^']+)'>")


def form_csrf_token(client: Client, url: str) -> str:
    """The CSRF token in the form of the page at `url`, as a browser would post it."""
    page = client.get(url).content.decode()
    match = FORM_TOKEN.search(page)
    assert match, f"no CSRF token in a form of {url}"
    return match.group(1)


def htmx_csrf_token(client: Client, url: str) -> str:
    """The CSRF token the page at `url` gives htmx (`<body hx-headers>`) for its requests."""
    page = client.get(url).content.decode()
    match = BODY_HX_HEADERS.search(page)
    assert match, f"no CSRF token in <body hx-headers> of {url}"
    return json.loads(match.group(1))["x-csrftoken"]
