from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from accounts.models import LoginFailure
from accounts.throttling import client_address
from tests.support.factories import PASSWORD

pytestmark = pytest.mark.django_db

LIMIT = 5


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.TRAINMON_LOGIN_FAILURES_PER_ACCOUNT = LIMIT
    settings.TRAINMON_LOGIN_FAILURES_PER_ADDRESS = 50
    settings.TRAINMON_LOGIN_THROTTLE_SECONDS = 900


def log_in(username: str, password: str, *, address: str = "10.0.0.1", url: str = "login"):
    client = Client(REMOTE_ADDR=address)
    return client.post(reverse(url), {"username": username, "password": password})


def logged_in(response) -> bool:
    return "_auth_user_id" in response.client.session


def fail(username: str, times: int, *, address: str = "10.0.0.1") -> None:
    for _ in range(times):
        response = log_in(username, "wrong", address=address)
        assert response.status_code == 200 and not logged_in(response)


def test_repeated_failures_lock_the_account_out_from_that_address(user):
    fail(user.username, LIMIT)
    response = log_in(user.username, PASSWORD)  # even the right password is refused now
    assert response.status_code == 429
    assert not logged_in(response)
    assert "Too many failed log-ins" in response.content.decode()
    assert "try again in 15 minutes" in response.content.decode()


def test_fewer_failures_than_the_limit_still_let_the_owner_in(user):
    fail(user.username, LIMIT - 1)
    response = log_in(user.username, PASSWORD)
    assert response.status_code == 302 and logged_in(response)
    # Success cleared the count: the limit starts again.
    fail(user.username, LIMIT - 1)
    assert logged_in(log_in(user.username, PASSWORD))


def test_the_lock_out_is_per_address_and_per_account(user, other_user):
    fail(user.username, LIMIT)
    assert logged_in(log_in(user.username, PASSWORD, address="10.0.0.2"))
    assert logged_in(log_in(other_user.username, PASSWORD))


def test_the_lock_out_ends_when_the_failures_leave_the_window(user):
    fail(user.username, LIMIT)
    assert log_in(user.username, PASSWORD).status_code == 429
    oldest = LoginFailure.objects.order_by("created_at").first()
    LoginFailure.objects.filter(pk=oldest.pk).update(
        created_at=oldest.created_at - timedelta(seconds=901)
    )
    assert logged_in(log_in(user.username, PASSWORD))


def test_unknown_usernames_lock_out_the_same_way(user):
    # Otherwise the lock-out itself would tell which accounts exist.
    fail("nobody-by-this-name", LIMIT)
    response = log_in("nobody-by-this-name", PASSWORD)
    assert response.status_code == 429


def test_an_address_spraying_many_accounts_is_locked_out(settings, user):
    settings.TRAINMON_LOGIN_FAILURES_PER_ADDRESS = 12
    for index in range(12):
        fail(f"guess-{index}", 1)
    assert log_in(user.username, PASSWORD).status_code == 429
    assert logged_in(log_in(user.username, PASSWORD, address="10.0.0.9"))


def test_the_admin_log_in_is_throttled_too(staff_user):
    for _ in range(LIMIT):
        response = log_in(staff_user.username, "wrong", url="admin:login")
        assert response.status_code == 200
    response = log_in(staff_user.username, PASSWORD, url="admin:login")
    assert response.status_code == 429
    assert "Too many failed log-ins" in response.content.decode()
    assert not logged_in(response)


def test_failures_are_shared_by_the_site_and_the_admin_log_in(staff_user):
    fail(staff_user.username, LIMIT)
    assert log_in(staff_user.username, PASSWORD, url="admin:login").status_code == 429
    response = log_in(staff_user.username, PASSWORD, address="10.0.0.3", url="admin:login")
    assert response.status_code == 302 and logged_in(response)


def test_failures_outside_the_window_are_dropped_as_new_ones_arrive(user):
    fail(user.username, 2)
    LoginFailure.objects.update(
        created_at=LoginFailure.objects.first().created_at - timedelta(days=1)
    )
    fail(user.username, 1)
    assert LoginFailure.objects.count() == 1


def test_the_address_is_the_peer_unless_behind_a_proxy():
    request = RequestFactory().get(
        "/", REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7"
    )
    assert client_address(request) == "10.1.1.1"
    with override_settings(TRAINMON_BEHIND_PROXY=True):
        # The last hop is the one the trusted proxy added; earlier ones are the client's word.
        assert client_address(request) == "203.0.113.7"
