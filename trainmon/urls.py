from django.contrib import admin
from django.urls import include, path

from metrics.api import api
from trainmon.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("accounts/", include("accounts.urls")),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", api.urls),
    path("", include("metrics.urls")),
    path("", include("jobs.urls")),
]
