from __future__ import annotations

from django.urls import path, register_converter

from jobs import views
from jobs.services import USER_ACTIONS


class JobActionConverter:
    # Only the user's actions route; anything else under /jobs/<id>/ is someone else's or a 404.
    regex = "|".join(USER_ACTIONS)

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(JobActionConverter, "job_action")

app_name = "jobs"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("jobs/new/", views.job_new, name="new"),
    path("jobs/<int:pk>/", views.job_detail, name="detail"),
    path("jobs/<int:pk>/delete/", views.job_delete, name="delete"),
    path("jobs/<int:pk>/<job_action:action>/", views.job_action, name="action"),
]
