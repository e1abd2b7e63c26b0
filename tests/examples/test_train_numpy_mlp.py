"""examples/train_numpy_mlp.py, run as a user runs it, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.services import api_token_create
from jobs.models import TrainingJob

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_numpy_mlp.py"
SCRIPT_TIMEOUT = 120


def run_script(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TRAINMON_TOKEN"}
    if token:
        env["TRAINMON_TOKEN"] = token
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        env=env,
        cwd="/",  # the script finds the client relative to itself, not to the working dir
        check=False,
    )


@pytest.mark.django_db(transaction=True)
def test_the_example_trains_and_reports_every_step(live_server, user):
    token = api_token_create(user=user, name="example")[1]
    result = run_script(
        "--url",
        live_server.url,
        "--epochs",
        "4",
        "--batch-size",
        "64",
        "--name",
        "ex",
        token=token,
    )
    assert result.returncode == 0, result.stderr
    job = TrainingJob.objects.get(owner=user)
    assert (job.name, job.source, job.status) == ("ex", "external", TrainingJob.Status.COMPLETED)
    assert job.steps_per_epoch == 15  # 900 points in batches of 64
    assert job.current_step == job.total_steps == 60
    assert job.metrics.count() == 60
    assert not job.metrics.filter(accuracy__isnull=True).exists()
    first, last = job.metrics.order_by("step")[0], job.metrics.order_by("-step")[0]
    assert last.loss < first.loss  # it learns
    assert job.best_loss < first.loss
    assert first.learning_rate < job.hyperparameters["peak_lr"]  # warm-up
    assert last.learning_rate < job.hyperparameters["peak_lr"]  # cosine decay
    assert f"/jobs/{job.pk}/" in result.stdout


def test_the_example_needs_a_token():
    result = run_script("--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "TRAINMON_TOKEN" in result.stderr
