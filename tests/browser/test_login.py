from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.support.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_log_in_and_out(open_page, browser_errors):
    UserFactory(username="ada")
    page = open_page()
    page.goto("/")
    assert page.url.endswith("/accounts/login/?next=/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    # Not a "**/" glob: the login page's own URL (…/login/?next=/) ends in a slash too.
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    assert page.locator("h1").inner_text() == "Jobs"
    assert page.locator(".user-menu summary").inner_text().strip().endswith("ada")
    page.click(".user-menu summary")
    page.click("text=Log out")
    page.wait_for_url("**/accounts/login/")
    page.goto("/")
    assert page.url.endswith("/accounts/login/?next=/")
    assert browser_errors.messages == []


def test_wrong_password_says_so(open_page, browser_errors):
    UserFactory(username="ada")
    page = open_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", "not-it")
    page.click("button[type=submit]")
    assert "correct username and password" in page.locator(".panel-error").inner_text()
    assert browser_errors.messages == []
