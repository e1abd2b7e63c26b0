"""gunicorn settings that follow trainmon's environment; the Procfile holds the rest.

gunicorn reads this file from its working directory, the repository root, however it is
started (honcho, the bench, the tests).
"""

import gc
from typing import Any

from trainmon.env import env_bool

# Whether X-Forwarded-Proto can make a request count as HTTPS is DJANGO_BEHIND_PROXY's call
# alone. gunicorn's default trusts it from any loopback client, which let a local process
# mark plain-HTTP requests secure even with the variable off.
forwarded_allow_ips = "*" if env_bool("DJANGO_BEHIND_PROXY", False) else ""


def post_worker_init(worker: Any) -> None:
    """Put what the worker loaded at start out of the garbage collector's reach (gc.freeze).

    A 10,000-point API batch keeps ~20,000 objects alive through its request, enough to set
    off a full collection every few batches, and a full collection walked the ~110,000
    objects of Django and the app each time: 15-25 ms per batch on average. Those objects
    live as long as the worker; frozen, they are no longer walked.
    """
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 (imports the URLconf and views before freezing)
    gc.freeze()
