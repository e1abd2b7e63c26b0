from __future__ import annotations

from django.urls import path

from metrics import views

app_name = "metrics"

urlpatterns = [
    path("jobs/<int:job_id>/series/", views.series, name="series"),
    path("jobs/<int:job_id>/keys/", views.keys, name="keys"),
    path("jobs/<int:job_id>/poll/", views.poll, name="poll"),
    path("jobs/<int:job_id>/metrics.csv", views.export_csv, name="export_csv"),
    path("jobs/<int:job_id>/metrics.json", views.export_json, name="export_json"),
    path("jobs/<int:job_id>/keys.csv", views.export_keys_csv, name="export_keys_csv"),
    path("jobs/<int:job_id>/keys.json", views.export_keys_json, name="export_keys_json"),
    path("compare/", views.compare, name="compare"),
]
