"""Playwright against pytest-django's live server, with Debian's Chromium.

Plain playwright.sync_api fixtures (not pytest-playwright's, whose base_url fixture warns
under pytest 9). The sync API runs an event loop in the test's thread, so Django's ORM in
that thread needs DJANGO_ALLOW_ASYNC_UNSAFE.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from tests.browser.support import (
    DESKTOP,
    LAUNCH_ARGS,
    TICK_INTERVAL_SECONDS,
    WAIT_MS,
)
from tests.support.services import CHROMIUM_PATH, chromium_available, missing_service

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


@pytest.fixture(scope="session")
def chromium():
    if not chromium_available():
        missing_service("chromium", f"needs Chromium at {CHROMIUM_PATH} and playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=LAUNCH_ARGS)
        yield browser
        browser.close()


# Reports every Content-Security-Policy violation of every document the page loads (init
# scripts run before the page's own and are not subject to its CSP).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(
    `${event.effectiveDirective} blocked ${event.blockedURI || "inline"} ` +
      `in ${event.documentURI} (${event.sourceFile}:${event.lineNumber}) ${event.sample}`
  );
});
"""


@dataclass
class BrowserErrors:
    """JavaScript errors, console errors and CSP violations seen by a page; a test ends with
    none. `csp_violations` holds the `securitypolicyviolation` events alone (Chromium also
    logs each one to the console as an error)."""

    messages: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on(
            "console",
            lambda message: message.type == "error" and self.messages.append(message.text),
        )
        page.on("pageerror", lambda error: self.messages.append(f"pageerror: {error}"))
        page.expose_function("reportCspViolation", self._csp_violation)
        page.add_init_script(REPORT_CSP_VIOLATIONS)

    def _csp_violation(self, text: str) -> None:
        self.csp_violations.append(text)
        self.messages.append(f"CSP violation: {text}")


@pytest.fixture
def browser_errors() -> BrowserErrors:
    return BrowserErrors()


@pytest.fixture
def open_page(chromium, live_server, browser_errors) -> Iterator[Callable]:
    """open_page(user=None, viewport=DESKTOP, color_scheme="light") -> a page, logged in as
    `user` (by session cookie) when given. Dialogs (hx-confirm) are accepted."""
    contexts = []

    def open_(user=None, *, viewport=DESKTOP, color_scheme="light"):
        context = chromium.new_context(
            viewport=viewport, color_scheme=color_scheme, base_url=live_server.url
        )
        contexts.append(context)
        if user is not None:
            client = Client()
            client.force_login(user)
            cookie = client.cookies[settings.SESSION_COOKIE_NAME]
            context.add_cookies(
                [{"name": cookie.key, "value": cookie.value, "url": live_server.url}]
            )
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        browser_errors.watch(page)
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    yield open_
    for context in contexts:
        context.close()


class Ticker(threading.Thread):
    """Runs simulation ticks every TICK_INTERVAL_SECONDS, as the Celery beat would, until
    no job advances any more (all done) or stop() is called. `ticks` counts the ticks that
    advanced something; wait_for_ticks() lets a test wait for the engine instead of a clock."""

    def __init__(self, job_ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.job_ids = job_ids
        self.ticks = 0
        self.error: BaseException | None = None
        self.finished = False
        self._stop_event = threading.Event()
        self._ticked = threading.Condition()
        # An in-memory SQLite test database lives in one connection: share it, as the live
        # server does. PostgreSQL gives this thread its own connection.
        main = connections["default"]
        self._shared = main if main.vendor == "sqlite" and main.is_in_memory_db() else None

    def run(self) -> None:
        from metrics.services import simulation_advance

        if self._shared is not None:
            self._shared.inc_thread_sharing()
            connections["default"] = self._shared
        try:
            while not self._stop_event.is_set():
                result = simulation_advance(job_ids=self.job_ids)
                with self._ticked:
                    if result.jobs_advanced:
                        self.ticks += 1
                    self._ticked.notify_all()
                if not result.jobs_advanced:
                    break
                self._stop_event.wait(TICK_INTERVAL_SECONDS)
        except BaseException as error:  # reported by the test through check()
            self.error = error
        finally:
            if self._shared is None:
                connection.close()
            else:
                self._shared.dec_thread_sharing()
            with self._ticked:
                self.finished = True
                self._ticked.notify_all()

    def wait_for_ticks(self, count: int, timeout: float = WAIT_MS / 1000) -> None:
        deadline = time.monotonic() + timeout
        with self._ticked:
            while self.ticks < count and not self.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {self.ticks} of {count} ticks ran")
                self._ticked.wait(remaining)
        self.check()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


@pytest.fixture
def ticker() -> Iterator[Callable[[list[int]], Ticker]]:
    started: list[Ticker] = []

    def start(job_ids: list[int]) -> Ticker:
        thread = Ticker(job_ids)
        started.append(thread)
        thread.start()
        return thread

    yield start
    for thread in started:
        thread.stop()
