from django.contrib import admin
from django.urls import include, path

from trainmon.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("accounts/", include("accounts.urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("metrics.urls")),
    path("", include("jobs.urls")),
]
