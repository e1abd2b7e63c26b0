"""Figures of reading points through the API (issue 14), against the raw GROUP BY baseline."""

from __future__ import annotations

import json
import statistics
from typing import TYPE_CHECKING

from bench.figures import _http_p50, group_by_baseline
from bench.support import Figure, Http, percentile
from jobs.models import TrainingJob

if TYPE_CHECKING:
    from bench.figures import Data, Plan

API_OVERVIEW_RATIO = 0.1


def api_overview_figure(plan: Plan, data: Data, port: int) -> Figure:
    """GET /api/v1/jobs/<id>/metrics/?max_points=2000 of the million-point job over HTTP,
    against a GROUP BY over the job's raw rows into the same buckets."""
    from accounts.services import api_token_create

    figure = Figure("api_overview_ms_1m", "ms (p50)", f"ratio <= {API_OVERVIEW_RATIO}")
    job = TrainingJob.objects.get(pk=data.big_job.pk)
    max_points = plan.chart_points
    _, token = api_token_create(user=data.big_user, name="bench-read")
    # As clients/trainmon_client.py asks (urllib: no Accept-Encoding); gzip is measured too.
    client = Http(port, {"Authorization": f"Bearer {token}"})
    path = f"/api/v1/jobs/{job.pk}/metrics/?max_points={max_points}"
    # The requests and the baseline take turns, so a busy machine weighs on both alike.
    rounds = max(plan.raw_chart_repeats, 1)
    body, width = b"", 0
    for _ in range(rounds):
        samples, body = _http_p50(client, path, max(plan.poll_requests // rounds, 1))
        figure.samples += samples
        client.close()  # the baseline may outlast gunicorn's keep-alive
        width, baseline = group_by_baseline(job, max_points, 1)
        figure.baseline_samples += baseline
    # From the middle on: the summary and one cut bucket of raw rows.
    middle = f"{path}&after={job.current_step // 2 + 123}"
    after_samples, _ = _http_p50(client, middle, plan.poll_requests)
    client.close()
    gzipped = Http(port, {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"})
    gzip_samples, _ = _http_p50(gzipped, path, plan.poll_requests)
    gzipped.close()
    answer = json.loads(body)
    figure.met = figure.ratio is not None and figure.ratio <= API_OVERVIEW_RATIO
    shown = len(answer["steps"])
    figure.extra |= {
        "p90": percentile(figure.samples, 0.9),
        "shown": shown,
        "downsampled": answer["downsampled"],
        "after_half_ms": statistics.median(after_samples),
        "gzip_ms": statistics.median(gzip_samples),
    }
    figure.notes += [
        f"GET {path} over HTTP (Bearer token, as trainmon_client sends it), p50 of "
        f"{plan.poll_requests}: {shown:,} of {job.current_step:,} points, from the summary",
        f"with Accept-Encoding: gzip: {statistics.median(gzip_samples):.1f} ms p50 (GZipMiddleware "
        f"compressing {len(body) / 1e3:.0f} kB of JSON)",
        f"from the middle (&after={job.current_step // 2 + 123}): "
        f"{statistics.median(after_samples):.1f} ms p50",
        f"baseline: GROUP BY step / {width} (min, max, count, last) over all the job's rows, "
        f"in process (the chart_ms_1m baseline), {rounds} times between the requests",
    ]
    if not answer["downsampled"] or shown > max_points:
        figure.met = False
        figure.notes.append("the answer was not downsampled to max_points")
    return figure
