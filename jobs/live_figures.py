"""The job page's live figures: every text of its progress and stats cards that moves as
the job trains, and the progress bar's attributes.

Written once, here. The page's partials (templates/jobs/_job_progress.html and
_job_stats.html) render these texts into elements marked `data-figure="<name>"`; a poll with
news sends the same dict as JSON (metrics.views.poll), and static/trainmon/job-figures.js puts
each text into its element, so no figure is formatted in the browser. An empty text hides
its element (a line that does not apply, such as "at step …" before the first loss).

What changes only with the status (the header, "Started"/"Finished") is not here: a status
change re-sends the partials whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.dashboard_rows import loss_text, progress_bar_attrs, rate_text
from jobs.display import (
    EMPTY,
    approx_duration_text,
    duration_text,
    job_progress,
    percent_text,
    sci_text,
)

if TYPE_CHECKING:
    from datetime import timedelta

    from jobs.models import TrainingJob


def job_live_texts(job: TrainingJob) -> dict[str, str]:
    """The texts by `data-figure` name; "" hides the element."""
    elapsed = job.elapsed  # read once: both cards show the same elapsed time
    return {**_progress_texts(job, elapsed), **_stats_texts(job, elapsed)}


def job_live_figures(job: TrainingJob) -> dict[str, Any]:
    """What a poll with news sends for the page's cards: the texts, the bar's and its
    fill's attributes, and the ingest position they show (#job-progress[data-ingest-seq])."""
    bar, fill = progress_bar_attrs(job)
    return {"ingest_seq": job.ingest_seq, "texts": job_live_texts(job), "bar": bar, "fill": fill}


def _progress_texts(job: TrainingJob, elapsed: timedelta | None) -> dict[str, str]:
    p = job_progress(job)
    if p.known:
        steps = p.steps_text
    else:
        rate = job.steps_per_second
        shown_rate = "" if rate is None else f"{rate_text(rate)} steps/s · "
        steps = f"{shown_rate}{duration_text(elapsed)} elapsed"
    return {"progress_label": p.label, "progress_steps": steps, "progress_eta": _eta_phrase(job)}


def _eta_phrase(job: TrainingJob) -> str:
    """What the progress card says about the end. A running job past its declared length,
    or without one, has no ETA: it ends when its script says so."""
    if job.status == job.Status.RUNNING:
        if job.eta is not None:
            return f"{approx_duration_text(job.eta)} left"
        p = job_progress(job)
        return "running" if p.past or not p.known else "estimating…"
    if job.status == job.Status.COMPLETED:
        return "done"
    return str(job.get_status_display()).lower()


def _stats_texts(job: TrainingJob, elapsed: timedelta | None) -> dict[str, str]:
    declared = job.total_epochs is not None
    open_ended = job.total_steps is None and elapsed is not None
    return {
        "epoch": str(job.current_epoch) if declared else EMPTY,
        "epoch_of": f"/ {job.total_epochs}" if declared else "",
        "epoch_note": "" if declared else "no declared length",
        "last_loss": loss_text(job.last_loss),
        # current_step is the last step + 1.
        "last_loss_step": "" if job.last_loss is None else f"at step {job.current_step - 1:,}",
        "best_loss": loss_text(job.best_loss),
        "best_loss_step": ("" if job.best_loss_step is None else f"at step {job.best_loss_step:,}"),
        "accuracy": percent_text(job.last_accuracy),
        "learning_rate": sci_text(job.last_learning_rate),
        "throughput": rate_text(job.steps_per_second),
        "throughput_unit": "" if job.steps_per_second is None else "steps/s",
        "eta": "done" if job.status == job.Status.COMPLETED else approx_duration_text(job.eta),
        "eta_note": f"{duration_text(elapsed)} elapsed" if open_ended else "",
    }
