"""MLflow's REST routes (mounted at api/2.0/mlflow/ by trainmon/urls.py).

The experiment, run and metric routes are here; artifacts and logged models join from
views_artifacts and views_models. Unknown routes under the prefix answer MLflow's JSON
ENDPOINT_NOT_FOUND, never an HTML 404 (which breaks the client's set_experiment).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from tracking import views_experiments as experiments
from tracking import views_metrics as metrics
from tracking import views_models as models
from tracking import views_runs as runs
from tracking.protocol import ENDPOINT_NOT_FOUND, error_response

app_name = "tracking"


@login_not_required
@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return error_response(ENDPOINT_NOT_FOUND, f"No MLflow endpoint at {request.path}.")


urlpatterns = [
    path("experiments/create", experiments.create, name="experiments_create"),
    path("experiments/get", experiments.get, name="experiments_get"),
    path("experiments/get-by-name", experiments.get_by_name, name="experiments_get_by_name"),
    path("experiments/search", experiments.search, name="experiments_search"),
    path("experiments/update", experiments.update, name="experiments_update"),
    path("experiments/delete", experiments.delete, name="experiments_delete"),
    path("experiments/restore", experiments.restore, name="experiments_restore"),
    path("experiments/set-experiment-tag", experiments.set_tag, name="experiments_set_tag"),
    path("runs/create", runs.create, name="runs_create"),
    path("runs/get", runs.get, name="runs_get"),
    path("runs/update", runs.update, name="runs_update"),
    path("runs/delete", runs.delete, name="runs_delete"),
    path("runs/restore", runs.restore, name="runs_restore"),
    path("runs/search", runs.search, name="runs_search"),
    path("runs/log-batch", runs.log_batch, name="runs_log_batch"),
    path("runs/log-metric", runs.log_metric, name="runs_log_metric"),
    path("runs/log-parameter", runs.log_parameter, name="runs_log_parameter"),
    path("runs/set-tag", runs.set_tag, name="runs_set_tag"),
    path("runs/delete-tag", runs.delete_tag, name="runs_delete_tag"),
    path("runs/log-inputs", runs.log_inputs, name="runs_log_inputs"),
    path("runs/outputs", models.run_outputs, name="runs_outputs"),
    path("logged-models", models.logged_model_create, name="logged_models_create"),
    path("logged-models/search", models.logged_models_search, name="logged_models_search"),
    path("logged-models/<str:model_id>", models.logged_model, name="logged_model"),
    path("logged-models/<str:model_id>/tags", models.logged_model_tags, name="logged_model_tags"),
    path(
        "logged-models/<str:model_id>/tags/<path:tag_key>",
        models.logged_model_tag,
        name="logged_model_tag",
    ),
    path(
        "logged-models/<str:model_id>/params",
        models.logged_model_params,
        name="logged_model_params",
    ),
    path("metrics/get-history", metrics.get_history, name="metrics_get_history"),
    path(
        "metrics/get-history-bulk-interval",
        metrics.get_history_bulk_interval,
        name="metrics_get_history_bulk_interval",
    ),
]

# Kept last by trainmon/urls.py's include order: any other path under the prefix.
fallback_patterns = [re_path(r"^(?P<rest>.*)$", not_found, name="not_found")]
