"""Production defaults, local mode, and the generated secret key, each in a fresh process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PROBE = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps({k: getattr(settings, k) for k in ("
    "'DEBUG', 'SECURE_SSL_REDIRECT', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
    "'SECURE_HSTS_SECONDS', 'SECRET_KEY')}))"
)


def run_django(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TRAINMON_"))}
    clean.update(DJANGO_SETTINGS_MODULE="trainmon.settings", TRAINMON_VAR_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_in(tmp_path: Path, **env: str) -> dict:
    result = run_django(["-c", SETTINGS_PROBE], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = run_django(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        tmp_path,
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="x" * 20 + "a-long-random-production-secret-key-value",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_is_the_default_and_secure(tmp_path):
    values = settings_in(tmp_path)
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_HSTS_SECONDS"] >= 31_536_000


def test_local_mode_serves_plain_http_without_debug(tmp_path):
    values = settings_in(tmp_path, TRAINMON_LOCAL="1")
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SESSION_COOKIE_SECURE"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0


@pytest.mark.parametrize(
    ("variable", "setting", "expected"),
    [
        ("DJANGO_SECURE_SSL_REDIRECT", "SECURE_SSL_REDIRECT", False),
        ("DJANGO_SESSION_COOKIE_SECURE", "SESSION_COOKIE_SECURE", False),
        ("DJANGO_CSRF_COOKIE_SECURE", "CSRF_COOKIE_SECURE", False),
        ("DJANGO_SECURE_HSTS_SECONDS", "SECURE_HSTS_SECONDS", 0),
    ],
)
def test_each_production_default_can_be_switched_off_for_a_proxy(
    tmp_path, variable, setting, expected
):
    assert settings_in(tmp_path, **{variable: "0"})[setting] == expected


def test_the_generated_secret_key_is_private_and_stable(tmp_path):
    first = settings_in(tmp_path)["SECRET_KEY"]
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) >= 50
    assert settings_in(tmp_path)["SECRET_KEY"] == first
    assert settings_in(tmp_path / "other")["SECRET_KEY"] != first


def test_a_process_that_loses_the_race_for_the_secret_key_reads_the_winners(tmp_path, monkeypatch):
    """Web, worker and beat start together: each must end with the one key on disk."""
    from trainmon import settings as module

    winner = "the-other-process-key"
    token_urlsafe = module.secrets.token_urlsafe

    def another_process_writes_first(size: int) -> str:
        (tmp_path / "secret_key").write_text(winner)
        return token_urlsafe(size)

    monkeypatch.setattr(module.secrets, "token_urlsafe", another_process_writes_first)
    assert module.generated_secret_key(tmp_path) == winner
    assert [path.name for path in tmp_path.iterdir()] == ["secret_key"]  # nothing left aside


def test_processes_starting_together_agree_on_one_secret_key(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TRAINMON_"))}
    clean.update(DJANGO_SETTINGS_MODULE="trainmon.settings", TRAINMON_VAR_DIR=str(tmp_path))
    probe = "from django.conf import settings; print(settings.SECRET_KEY)"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", probe], cwd=ROOT, env=clean, stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert [process.returncode for process in processes] == [0] * 8
    assert keys == {(tmp_path / "secret_key").read_text()}
