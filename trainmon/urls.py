from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.views import ThrottledLoginView
from tracking.urls import fallback_patterns as tracking_fallback
from trainmon.api import api
from trainmon.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    # Django's auth URLs without password reset: trainmon sends no mail, and a reset page
    # that says "we've emailed you" when nothing is sent is worse than none (ask an admin).
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("accounts/", include("accounts.urls")),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", api.urls),
    # MLflow's tracking protocol (tracking/urls.py); 3.0 serves only a JSON 404 (server-info).
    path("api/2.0/mlflow/", include("tracking.urls")),
    path("api/2.0/mlflow/", include((tracking_fallback, "tracking_fallback"))),
    path("api/3.0/mlflow/", include((tracking_fallback, "tracking_3"))),
    path("api/2.0/mlflow-artifacts/", include("tracking.urls_artifacts")),
    path("", include("tracking.urls_pages")),
    path("", include("metrics.urls")),
    path("", include("jobs.urls")),
]
