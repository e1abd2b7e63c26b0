"""The job page's poll at the HTTP floor (issue 14, part 3): a poll against /healthz on the
same keep-alive connection, the two requests interleaved so the machine's load falls on both
alike."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from bench.support import Figure, Http, percentile
from jobs.models import TrainingJob

if TYPE_CHECKING:
    from bench.figures import Data, Plan

WARM_UP_ROUNDS = 5
# /healthz: no view-side session or job work, one SELECT 1. It still goes through every
# middleware, and with the poll's session cookie LoginRequiredMiddleware loads the session and
# the user before it sees that /healthz needs no login: the same as any authenticated request.
FLOOR_PATH = "/healthz"
IDLE_POLL_TARGET = 1.2
NEWS_POLL_TARGET = 1.5


def http_p50_against_floor(
    client: Http, path: str, count: int, *, expect: tuple[int, ...] = (200,)
) -> tuple[list[float], list[float], bytes, int]:
    """`count` requests of `path` and of FLOOR_PATH, alternating on one connection: the
    samples of each, the last body of `path` and its status."""
    for _ in range(WARM_UP_ROUNDS):
        client.request("GET", path)
        client.request("GET", FLOOR_PATH)
    samples: list[float] = []
    floor: list[float] = []
    status, body = 0, b""
    for _ in range(count):
        started = time.perf_counter()
        status, _, body = client.request("GET", path)
        samples.append((time.perf_counter() - started) * 1000)
        if status not in expect:
            raise RuntimeError(f"GET {path} answered {status}, expected {expect}: {body[:200]!r}")
        started = time.perf_counter()
        floor_status, _, floor_body = client.request("GET", FLOOR_PATH)
        floor.append((time.perf_counter() - started) * 1000)
        if floor_status != 200:
            raise RuntimeError(f"GET {FLOOR_PATH} answered {floor_status}: {floor_body[:200]!r}")
    return samples, floor, body, status


def idle_poll_figure(plan: Plan, data: Data, port: int) -> Figure:
    """A poll of the million-point job with nothing new, as charts.js sends it (its cursor is
    the job's ingest position, its status the one the page shows), against /healthz."""
    from bench.figures import _session_cookie

    figure = Figure("poll_idle_ms_1m", "ms (p50)", f"ratio <= {IDLE_POLL_TARGET} (vs /healthz)")
    job = TrainingJob.objects.get(pk=data.big_job.pk)
    count = plan.poll_requests
    cookie = _session_cookie(data.big_user)
    client = Http(port, {"Cookie": cookie, "Accept-Encoding": "gzip", "HX-Request": "true"})
    path = f"/jobs/{job.pk}/poll/?cursor={job.ingest_seq}&keys=&status={job.status}"
    try:
        samples, floor, body, status = http_p50_against_floor(client, path, count, expect=(204,))
    finally:
        client.close()
    figure.samples, figure.baseline_samples = samples, floor
    figure.met = figure.ratio is not None and figure.ratio <= IDLE_POLL_TARGET
    figure.extra |= _extra(samples, floor, body, status)
    figure.notes += [
        f"GET /jobs/{job.pk}/poll/?cursor=<ingest position>&keys=&status=S over HTTP (gunicorn "
        f"as in the Procfile, session cookie, gzip accepted) on a {job.current_step:,}-point "
        f"job with nothing new: answered {status} with {len(body)} bytes; p50 of {count}",
        "baseline: GET /healthz on the same connection, alternating with the poll, p50 "
        "(with the cookie, it loads the session and user as the poll does, then one SELECT 1)",
    ]
    return figure


def _extra(samples: list[float], floor: list[float], body: bytes, status: int) -> dict[str, Any]:
    return {
        "p90": percentile(samples, 0.9),
        "healthz_ms": statistics.median(floor),
        "response_bytes": len(body),
        "response_status": status,
    }
