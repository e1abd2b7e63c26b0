"""examples/train_mlflow.py, run as a user runs it, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.services import api_token_create
from jobs.models import TrainingJob
from metrics.models import NamedMetric

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_mlflow.py"


@pytest.mark.django_db(transaction=True)
def test_the_mlflow_example_trains_and_reports_every_step(live_server, user):
    token = api_token_create(user=user, name="example")[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": live_server.url,
        "MLFLOW_TRACKING_TOKEN": token,
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "3", "--batch-size", "128", "--name", "ex"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    job = TrainingJob.objects.get(owner=user)
    assert (job.name, job.status) == ("ex", TrainingJob.Status.COMPLETED)
    assert job.experiment.name == "numpy-mlp"
    assert job.hyperparameters["batch_size"] == "128"
    assert job.tags["example"] == "yes"
    steps = 3 * 8  # 900 points in batches of 128
    assert job.current_step == steps
    assert job.metrics.count() == steps  # the headline, from loss / accuracy / lr
    assert not job.metrics.filter(accuracy__isnull=True).exists()
    first, last = job.metrics.order_by("step")[0], job.metrics.order_by("-step")[0]
    assert last.loss < first.loss
    assert NamedMetric.objects.filter(key__job=job, key__name="train/full_accuracy").count() == 3
