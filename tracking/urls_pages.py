"""Web pages' views of MLflow data (session users, not tokens)."""

from __future__ import annotations

from django.urls import path

from tracking import views_artifacts

app_name = "tracking_pages"

urlpatterns = [
    path("jobs/<int:pk>/artifacts/", views_artifacts.job_artifacts, name="job_artifacts"),
    path(
        "jobs/<int:pk>/artifacts/<path:artifact_path>",
        views_artifacts.job_artifact,
        name="job_artifact",
    ),
    path(
        "jobs/<int:pk>/models/<str:model_id>/<path:artifact_path>",
        views_artifacts.job_model_artifact,
        name="job_model_artifact",
    ),
]
