"""The job page's live figures: one text per data-figure element, for the page and the poll."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.dashboard_rows import progress_bar, progress_bar_attrs
from jobs.live_figures import job_live_figures, job_live_texts
from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory

Status = TrainingJob.Status


def build(**fields) -> TrainingJob:
    return TrainingJobFactory.build(pk=7, **fields)


def test_a_running_job_with_a_declared_length():
    job = build(
        current_step=15,
        last_loss=0.5,
        best_loss=0.25,
        best_loss_step=9,
        last_accuracy=0.875,
        last_learning_rate=3e-4,
        steps_per_second=2.5,
    )
    assert job_live_texts(job) == {
        "progress_label": "25.0%",
        "progress_steps": "step 15 / 60",
        "progress_eta": "~18 s left",
        "epoch": "1",
        "epoch_of": "/ 3",
        "epoch_note": "",
        "last_loss": "0.5000",
        "last_loss_step": "at step 14",
        "best_loss": "0.2500",
        "best_loss_step": "at step 9",
        "accuracy": "87.5%",
        "learning_rate": "3.0e-4",
        "throughput": "2.5",
        "throughput_unit": "steps/s",
        "eta": "~18 s",
        "eta_note": "",
    }


def test_lines_that_do_not_apply_yet_are_empty():
    texts = job_live_texts(build(current_step=0))
    assert texts["last_loss"] == texts["best_loss"] == texts["throughput"] == "—"
    assert texts["last_loss_step"] == texts["best_loss_step"] == texts["throughput_unit"] == ""
    assert texts["progress_eta"] == "estimating…"


def test_an_open_ended_run_counts_steps_and_time():
    job = build(
        source=TrainingJob.Source.EXTERNAL,
        total_epochs=None,
        steps_per_epoch=None,
        current_step=1234,
        steps_per_second=12.5,
        started_at=timezone.now() - timedelta(minutes=5),
    )
    texts = job_live_texts(job)
    assert texts["progress_label"] == "1,234 steps"
    assert texts["progress_steps"] == "12.5 steps/s · 5 min elapsed"
    assert texts["progress_eta"] == "running"
    assert (texts["epoch"], texts["epoch_of"], texts["epoch_note"]) == (
        "—",
        "",
        "no declared length",
    )
    assert texts["eta_note"] == "5 min elapsed"
    bar, fill = progress_bar_attrs(job)
    assert bar["aria-valuenow"] is None and fill["data-width"] is None  # indeterminate


@pytest.mark.parametrize(
    ("status", "phrase", "eta"),
    [(Status.COMPLETED, "done", "done"), (Status.PAUSED, "paused", "—")],
)
def test_a_job_not_running_says_so(status, phrase, eta):
    texts = job_live_texts(build(status=status, current_step=30, steps_per_second=2.0))
    assert (texts["progress_eta"], texts["eta"]) == (phrase, eta)


def test_the_bar_markup_is_its_attributes():
    job = build(current_step=15)
    bar, fill = progress_bar_attrs(job)
    html = progress_bar(job)
    for attributes in (bar, fill):
        for name, value in attributes.items():
            assert (f' {name}="{value}"' in html) is (value is not None), name
    assert fill["data-width"] == "25.00%"


def test_the_polls_figures_carry_the_ingest_position():
    job = build(current_step=15, ingest_seq=42)
    figures = job_live_figures(job)
    assert figures["ingest_seq"] == 42
    assert figures["texts"] == job_live_texts(job)
    assert (figures["bar"], figures["fill"]) == progress_bar_attrs(job)
