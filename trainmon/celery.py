import gc
import os
from typing import Any

from celery import Celery, Task
from celery.signals import task_postrun, task_prerun, worker_process_init
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trainmon.settings")

app = Celery("trainmon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def freeze_loaded_objects(**_: Any) -> None:
    """Put what a pool process starts with (Django, the app) out of the garbage collector's
    reach, as gunicorn's workers do (gunicorn.conf.py): a tick chunk of 500 jobs allocates
    enough to set off a full collection every ~20 chunks, which walked those ~100,000
    objects for about 80 ms."""
    gc.freeze()


@task_prerun.connect
@task_postrun.connect
def close_old_database_connections(task: "Task[Any, Any] | None" = None, **_: Any) -> None:
    """Around each task, what Django does around each request: close a connection past
    CONN_MAX_AGE or left unusable by an error, keep the others (CELERY_DB_REUSE_MAX stops
    Celery from closing every one). A task run eagerly runs inside its caller's transaction:
    left alone."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
