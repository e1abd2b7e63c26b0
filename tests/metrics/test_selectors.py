from __future__ import annotations

import numpy as np
import pytest

from metrics.models import TrainingMetric
from metrics.selectors import metrics_after, series_downsampled
from metrics.series import MIN_DOWNSAMPLED_POINTS, Series
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory
from tests.support.metric_points import points_write

pytestmark = pytest.mark.django_db


@pytest.fixture
def big_job(user):
    """Room for 100,000 steps; stays running while points arrive."""
    return TrainingJobFactory(owner=user, total_epochs=100, steps_per_epoch=1000)


def stored(job) -> dict[int, tuple]:
    rows = TrainingMetric.objects.filter(job=job).values_list(
        "step", "loss", "accuracy", "learning_rate"
    )
    return {row[0]: row[1:] for row in rows}


def assert_subset_of_stored(series: Series, job) -> None:
    points = stored(job)
    for step, loss, accuracy, rate in zip(
        series.steps, series.loss, series.accuracy, series.learning_rate, strict=True
    ):
        assert points[step] == (loss, accuracy, rate)


# --- metrics_after ----------------------------------------------------------------------------


def test_after_returns_only_later_points_in_step_order(big_job):
    # Written out of order, so insertion order and step order differ.
    job = points_write(big_job, [5, 3, 9, 0, 1, 7], losses=[5, 3, 9, 0.5, 1, 7])
    series = metrics_after(job, 3, limit=100)
    assert series.steps == [5, 7, 9]
    assert series.loss == [5.0, 7.0, 9.0]
    assert (series.total, series.shown, series.downsampled) == (3, 3, False)
    assert series.last_step == 9


def test_after_minus_one_is_everything_and_past_the_end_is_nothing(big_job):
    job = points_write(big_job, range(20))
    assert metrics_after(job, -1, limit=100).steps == list(range(20))
    nothing = metrics_after(job, 19, limit=100)
    assert (nothing.steps, nothing.total, nothing.last_step) == ([], 0, None)


def test_missing_accuracy_and_learning_rate_come_back_as_none(big_job):
    job = points_write(big_job, [0, 1], accuracies=[np.nan, 0.5], learning_rates=[np.nan, 0.1])
    series = metrics_after(job, -1, limit=10)
    assert series.accuracy == [None, 0.5]
    assert series.learning_rate == [None, 0.1]


def test_exactly_limit_new_points_are_sent_whole(big_job):
    job = points_write(big_job, range(50))
    series = metrics_after(job, 9, limit=40)
    assert series.steps == list(range(10, 50))
    assert not series.downsampled


def test_a_client_far_behind_gets_a_downsampled_catch_up(big_job):
    losses = np.linspace(3, 1, 500)
    losses[321] = 40.0  # a spike the catch-up must keep
    job = points_write(big_job, range(500), losses=losses)
    series = metrics_after(job, 99, limit=40)
    assert series.downsampled
    assert series.total == 400
    assert 0 < series.shown <= 40
    assert series.steps[0] == 100
    assert series.steps[-1] == series.last_step == 499
    assert 321 in series.steps
    assert series.steps == sorted(set(series.steps))
    assert_subset_of_stored(series, job)


def test_catch_up_is_found_even_when_the_job_row_lags_behind_its_points(big_job):
    # Points stored without the job's progress (current_step stays 0): the bound still holds.
    TrainingMetricFactory.create_batch(30, job=big_job)
    big_job.refresh_from_db()
    assert big_job.current_step == 0
    series = metrics_after(big_job, -1, limit=10)
    assert series.downsampled
    assert series.total == 30
    assert series.shown <= 10


@pytest.mark.parametrize(("points", "after"), [(10, -1), (5000, 4989), (5000, -1)])
def test_metrics_after_is_one_query(big_job, django_assert_num_queries, points, after):
    job = points_write(big_job, range(points))
    with django_assert_num_queries(1):
        series = metrics_after(job, after, limit=2000)
    assert series.steps[-1] == points - 1


# --- series_downsampled -----------------------------------------------------------------------


def test_a_small_series_is_returned_whole(big_job):
    job = points_write(
        big_job, range(30), accuracies=np.linspace(0, 1, 30), learning_rates=[1e-3] * 30
    )
    series = series_downsampled(job, max_points=30)
    assert series.steps == list(range(30))
    assert (series.total, series.shown, series.downsampled) == (30, 30, False)
    assert_subset_of_stored(series, job)


def test_an_empty_job_gives_an_empty_series(big_job):
    series = series_downsampled(big_job)
    assert series == Series()
    assert (series.total, series.shown, series.last_step) == (0, 0, None)


def test_downsampling_keeps_the_global_spike_and_dip_and_both_ends(big_job):
    n = 10_000
    losses = 2.0 * np.exp(-np.arange(n) / 2000) + 0.3
    losses[4321] = 50.0
    losses[7777] = 0.001
    job = points_write(big_job, range(n), losses=losses)
    series = series_downsampled(job, max_points=100)
    assert series.total == n
    assert 50 <= series.shown <= 100
    assert series.steps[0] == 0 and series.steps[-1] == n - 1
    assert 4321 in series.steps and 7777 in series.steps
    assert max(series.loss) == 50.0 and min(series.loss) == 0.001
    assert series.steps == sorted(set(series.steps))
    assert_subset_of_stored(series, job)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_spike_survives_wherever_it_is(big_job, seed):
    rng = np.random.default_rng(seed)
    n = 3000
    losses = 1.0 + 0.01 * rng.standard_normal(n)
    spikes = sorted(rng.choice(np.arange(1, n - 1), size=5, replace=False).tolist())
    # Spikes far apart in step (buckets are ~90 steps wide here) each survive.
    spikes = [s for i, s in enumerate(spikes) if i == 0 or s - spikes[i - 1] > 200]
    losses[spikes] = 10.0
    job = points_write(big_job, range(n), losses=losses)
    series = series_downsampled(job, max_points=100)
    assert set(spikes) <= set(series.steps)
    assert series.shown <= 100


def test_downsampling_is_deterministic_even_with_ties(big_job):
    job = points_write(big_job, range(2000), losses=[1.0] * 2000)
    first = series_downsampled(job, max_points=50)
    assert first == series_downsampled(job, max_points=50)
    assert first.shown <= 50
    assert first.steps[0] == 0 and first.steps[-1] == 1999


def test_steps_with_gaps_are_bucketed_by_step(big_job):
    steps = np.arange(0, 50_000, 10)  # an external job that reports every 10th step
    job = points_write(big_job, steps)
    series = series_downsampled(job, max_points=200)
    assert series.total == len(steps)
    assert series.shown <= 200
    assert (series.steps[0], series.steps[-1]) == (0, 49_990)


def test_series_is_one_query(big_job, django_assert_num_queries):
    job = points_write(big_job, range(5000))
    with django_assert_num_queries(1):
        series_downsampled(job, max_points=100)


def test_too_few_points_to_downsample_into_is_refused(big_job):
    with pytest.raises(ValueError, match="at least"):
        series_downsampled(big_job, max_points=MIN_DOWNSAMPLED_POINTS - 1)
    with pytest.raises(ValueError, match="at least"):
        metrics_after(big_job, -1, limit=MIN_DOWNSAMPLED_POINTS - 1)


def test_other_jobs_points_never_leak_in(user):
    mine = TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=100)
    other = TrainingJobFactory(total_epochs=10, steps_per_epoch=100)
    points_write(other, range(100), losses=[99.0] * 100)
    mine = points_write(mine, range(5))
    assert series_downsampled(mine).steps == list(range(5))
    assert 99.0 not in metrics_after(mine, -1, limit=4).loss
