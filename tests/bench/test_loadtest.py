"""The load test, short: 20 browsers polling live jobs for 8 s on gunicorn + PostgreSQL.

`make loadtest` is the full run (100 pollers, 60 s). Here only zero errors are asserted, not
latency: timings depend on the machine. The tool makes (and drops) its own database next to
the test database and runs its own gunicorn and engine, so this test needs no test database.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bench.loadtest import BenchError, loadtest_database_url, main
from bench.support import BASE_DIR

RUN_TIMEOUT_SECONDS = 240


@pytest.mark.postgres
def test_a_short_load_run_has_no_errors():
    env = dict(os.environ)  # DATABASE_URL: the tool uses NAME_loadtest on that server
    command = [sys.executable, "-m", "bench.loadtest", "--pollers", "20", "--duration", "8"]
    command += ["--jobs", "5", "--dashboard-every", "2", "--engine", "simulate"]
    result = subprocess.run(
        command,
        check=False,
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^errors: 0$", result.stdout, re.M), output
    assert re.search(r"requests: \d+ in [\d.]+ s = [\d.]+ requests/s", result.stdout), output
    assert re.search(r"dashboard \d+", result.stdout), output
    steps = int(re.search(r"engine: (\d+) steps", result.stdout)[1])
    points = int(re.search(r"pollers received (\d+) new points", result.stdout)[1])
    assert steps > 0  # the engine ticked during the run...
    assert points > 0  # ...and the pollers saw its points arrive


def test_it_refuses_sqlite_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///var/trainmon.sqlite3")
    assert main(["--duration", "1"]) == 2
    assert "needs PostgreSQL" in capsys.readouterr().err
    with pytest.raises(BenchError):
        loadtest_database_url("")


def test_its_own_database_sits_next_to_the_given_one():
    url, name, admin = loadtest_database_url("postgres://u:p@db:5433/trainmon")
    assert (url, name) == ("postgres://u:p@db:5433/trainmon_loadtest", "trainmon_loadtest")
    assert admin == "postgresql://u:p@db:5433/postgres"


@pytest.mark.parametrize(
    "argv", [["--pollers", "0"], ["--pollers", "5000"], ["--duration", "1e9"], ["--jobs", "x"]]
)
def test_it_is_bounded(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert re.search("must be from|not a number", capsys.readouterr().err)
