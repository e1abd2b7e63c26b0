"""MLflow's artifact routes (mounted at api/2.0/mlflow-artifacts/ by trainmon/urls.py)."""

from __future__ import annotations

from django.urls import path

from tracking import views_artifacts

app_name = "tracking_artifacts"

urlpatterns = [
    path("artifacts", views_artifacts.artifacts_list, name="list"),
    path("artifacts/<path:artifact_path>", views_artifacts.artifact, name="artifact"),
]
