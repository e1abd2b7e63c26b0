"""gunicorn.conf.py: the HTTPS decision follows DJANGO_BEHIND_PROXY, as gunicorn really runs."""

from __future__ import annotations

import gc
import http.client
import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

START_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_with_forwarded_https(port: int) -> http.client.HTTPResponse:
    deadline = time.monotonic() + START_SECONDS
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/accounts/login/", headers={"X-Forwarded-Proto": "https"})
            return connection.getresponse()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize(("behind_proxy", "status"), [("0", 301), ("1", 200)])
def test_forwarded_https_is_trusted_only_behind_a_proxy(tmp_path: Path, behind_proxy, status):
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",  # no collectstatic needed
        "TRAINMON_LOCAL": "0",  # production: plain HTTP is redirected to HTTPS
        "DJANGO_BEHIND_PROXY": behind_proxy,
        "DJANGO_SECRET_KEY": "test-only-" + "x" * 50,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "TRAINMON_VAR_DIR": str(tmp_path),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "trainmon.wsgi:application", f"--bind=127.0.0.1:{port}"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        response = get_with_forwarded_https(port)
        assert response.status == status
        if status == 301:
            # A loopback client's header alone does not make the request secure.
            assert response.getheader("Location") == f"https://127.0.0.1:{port}/accounts/login/"
    finally:
        server.terminate()
        server.wait(15)


def test_a_worker_freezes_what_it_loaded_at_start():
    config = runpy.run_path(str(settings.BASE_DIR / "gunicorn.conf.py"))
    try:
        config["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
