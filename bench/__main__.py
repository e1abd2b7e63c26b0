"""`make bench` (`python -m bench`): trainmon's figures against same-run baselines.

Needs PostgreSQL in DATABASE_URL; creates the database NAME_bench next to NAME (dropping a
leftover one), migrates it, measures, prints the table, writes bench/results.json and drops
the database again. Starts gunicorn on a free loopback port for the HTTP figures and stops it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import scaling
from bench.support import (
    BenchError,
    Figure,
    bench_database_url,
    gunicorn,
    own_database,
    table,
    tool_environment,
    write_results,
)

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller smoke run (figures off)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="results JSON path")
    parser.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help="comma-separated figure names to measure (the shared data is seeded anyway)",
    )
    args = parser.parse_args(argv)
    only = frozenset(name for name in args.only.split(",") if name)
    try:
        bench_url, bench_name, admin_url = bench_database_url(os.environ.get("DATABASE_URL", ""))
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    var_dir = Path(tempfile.mkdtemp(prefix="trainmon-bench-"))
    env = tool_environment(bench_url, var_dir)
    started = time.monotonic()
    try:
        with own_database(admin_url, bench_name):
            figures, meta = _run(args.quick, env, only)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)
    meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(table(figures))
    print()
    for figure in figures:
        for note in figure.notes:
            print(f"{figure.name}: {note}")
    write_results(args.output, figures, meta)
    print(f"\nwrote {args.output} ({meta['seconds']:.0f} s)")
    return 1 if any(figure.error for figure in figures) else 0


def _run(  # noqa: PLR0915 -- one step() line per figure
    quick: bool, env: dict[str, str], only: frozenset[str] = frozenset()
) -> tuple[list[Figure], dict[str, Any]]:
    import django
    from django.core.management import call_command

    django.setup()
    from bench import figures as f
    from bench import poll_figures

    call_command("migrate", verbosity=0, interactive=False)
    call_command("collectstatic", verbosity=0, interactive=False)
    plan = f.Plan.quick() if quick else f.Plan()
    meta = _machine(quick)
    results: list[Figure] = []

    def step(label: str, name: str, unit: str, target: str, build: Callable[[], Any]) -> None:
        if only and name not in only:
            return
        print(f"bench: {label} ...", flush=True)
        results.extend(f.guarded(name, unit, target, build))

    step("simulator", "simulator_points_per_s", "points/s", "ratio >= 15",
         lambda: f.simulator_points_per_s(plan))  # fmt: skip
    data = f.Data(plan)
    print(f"bench: seeding a {plan.big_job_points:,}-point job ...", flush=True)
    seed = f.guarded("seed_points_per_s", "points/s", "—", data.seed_big_job)
    step("tick", "tick_points_per_s", "points/s", "ratio >= 0.5",
         lambda: f.tick_figures(plan, data))  # fmt: skip
    step("chart", "chart_ms_1m", "ms", "ratio <= 0.2", lambda: f.chart_figure(plan, data))
    step("named chart", "named_chart_ms_1m", "ms", "ratio <= 0.2",
         lambda: f.named_chart_figure(plan, data))  # fmt: skip
    named_page: f.NamedPage | None = None
    named_page_error = "not seeded: no figure asked for it"
    if not only or only & {"job_page_100_keys_ms", "poll_ms_20_keys"}:
        print(f"bench: seeding a job with {f.PAGE_KEYS} keys ...", flush=True)
        try:
            named_page = f.NamedPage(plan, data)
            named_page_error = ""
        except Exception as error:  # the page and poll figures say so below
            named_page_error = f"{type(error).__name__}: {error}"

    def with_page(build: Callable[[f.NamedPage], Any]) -> Callable[[], Any]:
        def run() -> Any:
            if named_page is None:
                raise RuntimeError(f"seeding the {f.PAGE_KEYS}-key job failed: {named_page_error}")
            return build(named_page)

        return run

    try:
        with gunicorn(env) as (port, _server):
            step("poll", "poll_ms_1m", "ms (p50)", "ratio <= 1.5 (vs /healthz)",
                 lambda: f.poll_figure(plan, data, port))  # fmt: skip
            step("idle poll", "poll_idle_ms_1m", "ms (p50)", "ratio <= 1.2 (vs /healthz)",
                 lambda: poll_figures.idle_poll_figure(plan, data, port))  # fmt: skip
            step("catch-up poll", "catch_up_poll_ms_1m", "ms (p50)", "ratio <= 1.5",
                 lambda: f.catch_up_figure(plan, data, port))  # fmt: skip
            step("export over HTTP", "export_csv_http_s_1m", "s", "ratio <= 5",
                 lambda: f.export_http_figure(plan, data, port))  # fmt: skip
            step("dashboard", "dashboard_ms_1k", "ms (p50)", "p50 <= 15 ms, equal queries",
                 lambda: f.dashboard_figure(plan, data, port))  # fmt: skip
            step("api overview", "api_overview_ms_1m", "ms (p50)", "ratio <= 0.1",
                 lambda: _api_overview(plan, data, port))  # fmt: skip
            step("api", "api_ingest_points_per_s", "points/s", "ratio >= 0.35",
                 lambda: f.api_figure(plan, data, port))  # fmt: skip
            step("named api", "named_ingest_values_per_s", "values/s", "ratio >= 0.3",
                 lambda: f.named_ingest_figure(plan, data, port))  # fmt: skip
            step("job page, 100 keys", "job_page_100_keys_ms", "ms (p50)", "p50 < 60 ms",
                 with_page(lambda page: f.job_page_figure(plan, page, port)))  # fmt: skip
            step("poll, 20 keys", "poll_ms_20_keys", "ms (p50)", "ratio <= 2 (vs /healthz)",
                 with_page(lambda page: f.named_poll_figure(plan, page, port)))  # fmt: skip
            if not only or only & {*MLFLOW_FIGURES, "mlflow_ingest_points_per_s_1000_keys"}:
                _mlflow_steps(step, plan, data, port)
    except BenchError as error:
        for name in (
            "poll_ms_1m",
            "poll_idle_ms_1m",
            "catch_up_poll_ms_1m",
            "export_csv_http_s_1m",
            "dashboard_ms_1k",
            "api_overview_ms_1m",
            "api_ingest_points_per_s",
            "named_ingest_values_per_s",
            "job_page_100_keys_ms",
            "poll_ms_20_keys",
            *MLFLOW_FIGURES,
            "mlflow_ingest_points_per_s_1000_keys",
        ):
            if not any(r.name == name for r in results):
                results.append(Figure(name, "", "", error=str(error)))
    step("export", "export_mb_1m", "MB (peak)", "< 100 MB",
         lambda: f.export_figure(plan, data, env))  # fmt: skip
    step("scale-out", scaling.FIGURE_NAME, "points/s", scaling.TARGET,
         lambda: scaling.tick_scaling_figure(quick, env))  # fmt: skip
    meta["load_average_after"] = os.getloadavg()
    return results + seed, meta


def _api_overview(plan: Any, data: Any, port: int) -> Any:
    from bench import read_figures  # needs Django set up

    return read_figures.api_overview_figure(plan, data, port)


MLFLOW_FIGURES = ("mlflow_ingest_points_per_s", "mlflow_history_ms_200k", "mlflow_overview_ms_200k")


def _mlflow_steps(step: Callable[..., None], plan: Any, data: Any, port: int) -> None:
    """Issue 13's figures: the real MlflowClient against the same gunicorn."""
    from bench import figures as f

    print("bench: seeding a 200,000-point MLflow run ...", flush=True)
    try:
        bench: f.MlflowBench | None = f.MlflowBench(plan, data, port)
        error = ""
    except Exception as failure:  # each figure says so below
        bench, error = None, f"{type(failure).__name__}: {failure}"

    def with_bench(build: Callable[[f.MlflowBench], Any]) -> Callable[[], Any]:
        def run() -> Any:
            if bench is None:
                raise RuntimeError(f"setting up the MLflow run failed: {error}")
            return build(bench)

        return run

    step("mlflow ingest", MLFLOW_FIGURES[0], "points/s", ">= 35,000",
         with_bench(lambda b: f.mlflow_ingest_figures(plan, b)))  # fmt: skip
    step("mlflow history", MLFLOW_FIGURES[1], "ms", "<= 2,000 ms",
         with_bench(lambda b: f.mlflow_history_figure(plan, b)))  # fmt: skip
    step("mlflow overview", MLFLOW_FIGURES[2], "ms (p50)", "<= 30 ms",
         with_bench(lambda b: f.mlflow_overview_figure(plan, b)))  # fmt: skip


def _machine(quick: bool) -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        (version,) = cursor.fetchone()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "python": platform.python_version(),
        "postgresql": version,
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }


if __name__ == "__main__":
    sys.exit(main())
