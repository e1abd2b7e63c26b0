"""The real MLflow client (mlflow-skinny) against live_server, one user and token per test."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from accounts.services import api_token_create
from tests.support.factories import UserFactory


@dataclass
class Tracking:
    url: str
    user: Any
    token: str

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture
def tracking(live_server, monkeypatch, transactional_db) -> Iterator[Tracking]:
    import mlflow

    user = UserFactory()
    _, raw = api_token_create(user=user, name="mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", live_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", raw)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A broken server must fail a test quickly, not after seven retries with backoff.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # set_experiment exports the experiment's id; the next test must not inherit it.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    mlflow.set_tracking_uri(live_server.url)
    yield Tracking(url=live_server.url, user=user, token=raw)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    # The fluent API remembers the experiment it set; the next test starts from none.
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    # The client caches its HTTP sessions, whose keep-alive connections hold live_server's
    # request threads open, each with a database connection: with them, the test database
    # could not be dropped at the end ("being accessed by other users"). Dropping the cache
    # closes the sockets, and the threads close their connections.
    from mlflow.utils import request_utils

    request_utils._cached_get_request_session.cache_clear()
    gc.collect()  # a session's adapters and pools refer to each other: freed by the collector
