"""trainmon settings, read from the environment (see README "Configuration")."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

import dj_database_url
import django_stubs_ext
from csp.constants import NONE, SELF

from trainmon.env import env_bool, env_int, env_list

# Lets annotations subscript Django's generic classes at runtime (`admin.ModelAdmin[Job]`).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TRAINMON_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def generated_secret_key(var_dir: Path) -> str:
    """The key in var_dir/secret_key, made on first use: readable by its owner only, never
    committed. Processes starting together (web, worker, beat) agree on one: the file is
    written aside and linked into place, so it appears whole or not at all, and a process
    that loses the race reads the winner's."""
    path = var_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    fd, written = tempfile.mkstemp(dir=var_dir, prefix=".secret_key.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        os.link(written, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        os.unlink(written)
    return key


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or generated_secret_key(VAR_DIR)

# Local mode (`make run`, the test suite) serves plain HTTP on loopback. It is opt-in, so a
# deployment that forgets a variable gets the secure defaults, not the convenient ones.
LOCAL_MODE = env_bool("TRAINMON_LOCAL", False)
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

SECURE_DEFAULT = not (DEBUG or LOCAL_MODE)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", SECURE_DEFAULT)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", SECURE_DEFAULT)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", SECURE_DEFAULT)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if SECURE_DEFAULT else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_DEFAULT)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", SECURE_DEFAULT)
TRAINMON_BEHIND_PROXY = env_bool("DJANGO_BEHIND_PROXY", False)
if TRAINMON_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): our own files only, and no inline script or style and
# no eval anywhere, so injected markup cannot run. Pages keep their data in data- attributes
# and application/json elements; the admin adds a few hashed inline styles (see
# trainmon.middleware.ContentSecurityPolicyMiddleware).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}

INSTALLED_APPS = [
    "trainmon.apps.TrainmonAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "ninja",
    "accounts",
    "jobs",
    "metrics",
    "tracking",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "trainmon.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.gzip.GZipMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "trainmon.middleware.HtmxLoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "trainmon.urls"
WSGI_APPLICATION = "trainmon.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "trainmon.context_processors.live_updates",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'trainmon.sqlite3'}",
        conn_max_age=env_int("DJANGO_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the worker writes; IMMEDIATE takes the write lock
    # up front so two writers queue on the busy timeout instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # trainmon.prepared: PostgreSQL runs the generic plan of a statement it prepares, not a
    # new one per run. Only that module's statements are prepared (and PostgreSQL's own
    # foreign-key checks, lookups by key either way).
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["options"] = (
        f"{_options.get('options', '')} -c plan_cache_mode=force_generic_plan".strip()
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "jobs:dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every start until collectstatic ran
# MLflow artifacts (tracking/artifacts.py): files under var/artifacts by default; any Django
# storage backend by naming it (e.g. django-storages' "storages.backends.s3.S3Storage") with
# its options as a JSON object (e.g. {"bucket_name": "ml", "location": "artifacts"}).
ARTIFACTS_DIR = VAR_DIR / "artifacts"
TRAINMON_ARTIFACTS_STORAGE = os.environ.get("TRAINMON_ARTIFACTS_STORAGE", "")
TRAINMON_ARTIFACTS_STORAGE_OPTIONS = json.loads(
    os.environ.get("TRAINMON_ARTIFACTS_STORAGE_OPTIONS", "") or "{}"
)
if not TRAINMON_ARTIFACTS_STORAGE:
    TRAINMON_ARTIFACTS_STORAGE = "django.core.files.storage.FileSystemStorage"
    TRAINMON_ARTIFACTS_STORAGE_OPTIONS = {
        "location": str(ARTIFACTS_DIR),
        "allow_overwrite": True,
        **TRAINMON_ARTIFACTS_STORAGE_OPTIONS,
    }
# Per-file upload limit; past it the MLflow client gets a 413.
TRAINMON_ARTIFACT_MAX_BYTES = env_int("TRAINMON_ARTIFACT_MAX_BYTES", 1024**3)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    "artifacts": {
        "BACKEND": TRAINMON_ARTIFACTS_STORAGE,
        "OPTIONS": TRAINMON_ARTIFACTS_STORAGE_OPTIONS,
    },
}

# Error pages and reports hide passwords, tokens and secret settings, even with DEBUG on.
DEFAULT_EXCEPTION_REPORTER_FILTER = "trainmon.error_reports.SecretsHiddenFilter"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("TRAINMON_LOG_LEVEL", "INFO")},
    # At DEBUG, Django logs every SQL statement with its parameters (session keys, password
    # hashes) and every unresolved template variable with the whole template context (a new
    # API token, a form's password). Never, whatever TRAINMON_LOG_LEVEL says.
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django.template": {"level": "INFO"},
    },
}

# --- Celery -------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for folder in ("queue", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A lost broker is retried forever, once a second (Celery would give up and exit after 100
# tries, ~45 min, and back off to 30 s between tries): the engine resumes a tick or two after
# the broker is back, however long it was away.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CONSUMER = "trainmon.celery_worker:SteadyRetryConsumer"
# While the broker is away, beat logs each unsendable tick as one warning line.
CELERY_BEAT_SCHEDULER = "trainmon.celery_beat:SteadyScheduler"
# Safe with idempotent ticks, and the default from Celery 6 on: a task whose broker
# connection is lost is cancelled and re-delivered rather than finished unacknowledged.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# At-least-once: a task is acknowledged after it ran, and re-delivered if its worker died.
# Every task is idempotent (see metrics/tasks.py), so a re-delivery costs nothing.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Unless this is set, Celery's Django fix-up closes the database connection before and after
# every task, so each 500-job tick chunk paid for a new PostgreSQL backend: its start, its
# catalog caches, its staging tables created anew. Set, the fix-up closes it only every this
# many tasks, and trainmon.celery closes it by Django's own rule (CONN_MAX_AGE, errors), as
# after a request.
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE

# --- trainmon -----------------------------------------------------------------------------
TRAINMON_TICK_SECONDS = float(os.environ.get("TRAINMON_TICK_SECONDS", "1"))
# How often the dashboard and a job page ask for news while something on them is running.
TRAINMON_POLL_SECONDS = env_int("TRAINMON_POLL_SECONDS", 2)
TRAINMON_STALL_SECONDS = float(os.environ.get("TRAINMON_STALL_SECONDS", "300"))
# Past this many running jobs, a tick fans out `advance_jobs` subtasks of this size. Each
# subtask has a fixed cost (Celery's messages and its pool's hand-offs, a transaction of ~26
# statements): at 500 jobs it was an eighth of a job's CPU in the scale-out bench. Lower it
# when more than 10 workers share 10,000 jobs.
TRAINMON_TICK_CHUNK_SIZE = env_int("TRAINMON_TICK_CHUNK_SIZE", 1000)
TRAINMON_API_MAX_POINTS = env_int("TRAINMON_API_MAX_POINTS", 10_000)
# Named metric keys one job may have; a batch that would pass it is refused whole.
TRAINMON_MAX_KEYS_PER_JOB = env_int("TRAINMON_MAX_KEYS_PER_JOB", 1000)
# How long the ingest log keeps a write's step ranges: a page whose poll cursor is older
# reloads its series instead of catching up.
TRAINMON_INGEST_LOG_SECONDS = env_int("TRAINMON_INGEST_LOG_SECONDS", 3600)
# Log-in throttling (accounts.throttling): failures allowed within the window, per account
# from one address and per address over all accounts.
TRAINMON_LOGIN_THROTTLE_SECONDS = env_int("TRAINMON_LOGIN_THROTTLE_SECONDS", 900)
TRAINMON_LOGIN_FAILURES_PER_ACCOUNT = env_int("TRAINMON_LOGIN_FAILURES_PER_ACCOUNT", 5)
TRAINMON_LOGIN_FAILURES_PER_ADDRESS = env_int("TRAINMON_LOGIN_FAILURES_PER_ADDRESS", 50)
# Hyperparameters of one job, as compact JSON: lists and the compare page read the column.
TRAINMON_HYPERPARAMETERS_MAX_BYTES = env_int("TRAINMON_HYPERPARAMETERS_MAX_BYTES", 64 * 1024)
# A 10,000-point batch is ~1 MB of JSON; leave headroom, refuse anything far larger.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("TRAINMON_MAX_BODY_BYTES", 5 * 1024 * 1024)

# A tick (or its subtasks) still queued this long after it was sent is superseded by later
# ticks; dropping it costs nothing, running it would only find its jobs already advanced.
TRAINMON_TICK_EXPIRES_SECONDS = max(TRAINMON_TICK_SECONDS * 5, 5)
CELERY_BEAT_SCHEDULE = {
    "simulate-tick": {
        "task": "metrics.tasks.simulate_tick",
        "schedule": TRAINMON_TICK_SECONDS,
        "options": {"expires": TRAINMON_TICK_EXPIRES_SECONDS},
    },
    "mark-stalled": {
        "task": "jobs.tasks.mark_stalled",
        "schedule": 10.0,
        "options": {"expires": 30},
    },
    "prune-ingest-log": {
        "task": "metrics.tasks.prune_ingest_log",
        "schedule": 60.0,
        "options": {"expires": 120},
    },
}
