"""Log-in throttling: too many failed log-ins lock an account out from one address for a while.

Failures are rows (accounts.LoginFailure), so every web process sees the same count. An
account is locked from an address after TRAINMON_LOGIN_FAILURES_PER_ACCOUNT failures within
TRAINMON_LOGIN_THROTTLE_SECONDS, and an address after TRAINMON_LOGIN_FAILURES_PER_ADDRESS
failures for any accounts (password spraying). Usernames are counted whether or not they
exist, so the lock-out says nothing about which accounts do. A successful log-in clears its
account's failures from that address.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import LoginFailure

USERNAME_MAX_LENGTH = LoginFailure._meta.get_field("username").max_length


def client_address(request: HttpRequest) -> str:
    """The address a request came from: the proxy's last hop when behind one (the address
    the trusted proxy saw), else the socket's peer."""
    if settings.TRAINMON_BEHIND_PROXY:
        forwarded: str = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if hops := [hop.strip() for hop in forwarded.split(",") if hop.strip()]:
            return hops[-1]
    peer: str = request.META.get("REMOTE_ADDR") or "0.0.0.0"
    return peer


def login_wait_seconds(*, username: str, ip_address: str, now: datetime | None = None) -> int:
    """How long log-ins as `username` from `ip_address` are refused for: 0 if they are not."""
    now = now or timezone.now()
    window = timedelta(seconds=settings.TRAINMON_LOGIN_THROTTLE_SECONDS)
    recent = LoginFailure.objects.filter(ip_address=ip_address, created_at__gt=now - window)
    waits = [
        _wait(recent, settings.TRAINMON_LOGIN_FAILURES_PER_ADDRESS, now, window),
        _wait(
            recent.filter(username=_key(username)),
            settings.TRAINMON_LOGIN_FAILURES_PER_ACCOUNT,
            now,
            window,
        ),
    ]
    return max(waits)


def _wait(failures: QuerySet[LoginFailure], limit: int, now: datetime, window: timedelta) -> int:
    # Locked while `limit` failures lie inside the window: until the oldest of the newest
    # `limit` of them leaves it.
    times = list(failures.order_by("-created_at").values_list("created_at", flat=True)[:limit])
    if len(times) < limit:
        return 0
    return max(1, math.ceil((times[-1] + window - now).total_seconds()))


def login_failure_record(*, username: str, ip_address: str) -> None:
    LoginFailure.objects.create(username=_key(username), ip_address=ip_address)
    # Rows past the window count for nothing: drop them as new ones arrive.
    window = timedelta(seconds=settings.TRAINMON_LOGIN_THROTTLE_SECONDS)
    LoginFailure.objects.filter(created_at__lt=timezone.now() - window).delete()


def login_failures_clear(*, username: str, ip_address: str) -> None:
    LoginFailure.objects.filter(username=_key(username), ip_address=ip_address).delete()


def _key(username: str) -> str:
    return username[:USERNAME_MAX_LENGTH].replace("\x00", "")
