from __future__ import annotations

import numpy as np
import pytest

from metrics.models import IngestLog, MetricKey, TrainingMetric
from metrics.points import MAX_STORED_STEP
from metrics.selectors import (
    Poll,
    job_poll,
    metric_key_list,
    metrics_after,
    named_series_downsampled,
    named_series_many,
    series_downsampled,
)
from metrics.series import MIN_DOWNSAMPLED_POINTS, Series
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory
from tests.support.metric_points import batches_write, metric_batch, named_write, points_write

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


# --- named series -----------------------------------------------------------------------------


def key_of(job, name):
    return MetricKey.objects.get(job=job, name=name)


def test_keys_are_listed_by_name_with_their_stats(big_job):
    named_write(big_job, {"val/loss": ([9], 0.5), "a": ([0, 1], [3.0, 2.0])})
    keys = metric_key_list(job=big_job)
    assert [key.name for key in keys] == ["a", "val/loss"]
    assert (keys[0].count, keys[0].last_value, keys[0].min_value) == (2, 2.0, 2.0)
    asked = metric_key_list(job=big_job, names=["val/loss", "missing"])
    assert [key.name for key in asked] == ["val/loss"]


def test_a_short_named_series_comes_back_whole_with_gaps_for_nan_and_inf(big_job):
    named_write(big_job, {"g": (range(5), [1.0, np.nan, np.inf, -np.inf, 2.0])})
    series = named_series_downsampled(key=key_of(big_job, "g"), max_points=100)
    assert series.steps == [0, 1, 2, 3, 4]
    assert series.values == [1.0, None, None, None, 2.0]
    assert series.times == [pytest.approx(1.8e9, abs=1e-3)] * 5
    assert (series.total, series.shown, series.downsampled, series.last_step) == (5, 5, False, 4)
    assert series.columns()["values"] == series.values


@pytest.mark.parametrize("length", [5_000, 200_000], ids=["raw rows", "summary"])
def test_a_downsampled_named_series_keeps_its_spikes(user, length):
    big_job = TrainingJobFactory(owner=user, total_epochs=1000, steps_per_epoch=1000)
    rng = np.random.default_rng(7)
    values = 1.0 + rng.random(length) * 0.1
    spikes = rng.choice(length, 5, replace=False)
    dip = int(rng.integers(length))
    values[rng.choice(length, 20, replace=False)] = np.nan  # gaps must not hide a spike
    values[spikes] = 50.0 + np.arange(5)
    values[dip] = -3.0
    values[0] = values[-1] = 1.0
    named_write(big_job, {"grad": (range(length), values)})
    key = key_of(big_job, "grad")
    series = named_series_downsampled(key=key, max_points=400)
    assert series.downsampled and series.shown <= 400
    assert series.total == length
    shown = dict(zip(series.steps, series.values, strict=True))
    for step in [*spikes.tolist(), dip]:
        assert shown[step] == values[step]
    assert series.steps[0] == 0 and series.steps[-1] == length - 1
    assert series.steps == sorted(series.steps)
    assert all(time == pytest.approx(1.8e9, abs=1e-3) for time in series.times)


def test_a_named_series_after_a_step(big_job):
    named_write(big_job, {"a": (range(10), np.arange(10.0))})
    series = named_series_downsampled(key=key_of(big_job, "a"), max_points=100, after_step=6)
    assert (series.steps, series.values, series.total) == ([7, 8, 9], [7.0, 8.0, 9.0], 3)


def test_many_keys_read_together_match_each_read_alone(user, django_assert_max_num_queries):
    """A screenful of keys in a fixed number of queries, each exactly as read alone: long
    keys from the summary (two levels), short ones whole, a key too short for the summary's
    reach and one mostly NaN (the summary holds too few points) from their raw rows."""
    job = TrainingJobFactory(owner=user, total_epochs=1000, steps_per_epoch=1000)
    rng = np.random.default_rng(3)
    mostly_nan = np.full(20_000, np.nan)
    mostly_nan[::100] = 1.0
    named_write(
        job,
        {
            "long/a": (range(20_000), rng.random(20_000)),
            "long/b": (range(0, 80_000, 2), rng.random(40_000)),
            "long/c": (range(20_000), rng.random(20_000)),
            "short": (range(0, 90, 3), [1.0, np.nan, 2.0] * 10),
            "mid": (range(5_000), rng.random(5_000)),
            "nan": (range(20_000), mostly_nan),
        },
    )
    keys = metric_key_list(job=job)
    for max_points in (451, 100):
        alone = {key.pk: named_series_downsampled(key=key, max_points=max_points) for key in keys}
        # the summary for the three long keys, the short key whole, "mid" and "nan" alone
        with django_assert_max_num_queries(4):
            together = named_series_many(keys, max_points)
        assert together == alone
        long_a = together[key_of(job, "long/a").pk]
        assert long_a.downsampled and long_a.shown <= max_points and long_a.total == 20_000
    assert named_series_many([], 451) == {}


# --- job_poll ---------------------------------------------------------------------------------


def poll(job, cursor, **kwargs):
    job.refresh_from_db()
    return job_poll(job=job, cursor=cursor, **kwargs)


def test_an_up_to_date_poll_costs_no_query(big_job, django_assert_num_queries):
    named_write(big_job, {"a": ([0], 1.0)})
    big_job.refresh_from_db()
    with django_assert_num_queries(0):
        result = job_poll(job=big_job, cursor=1, keys=None)
    assert (result.cursor, result.reload, result.named, result.new_keys) == (1, False, {}, [])


def test_a_poll_returns_late_points_written_after_the_cursor(big_job):
    points_write(big_job, range(100, 110))
    named_write(big_job, {"val/loss": ([99], 0.5)})
    cursor = poll(big_job, 0).cursor
    assert cursor == 2
    # A retried batch arrives late: its steps lie before everything the chart shows.
    points_write(big_job, [3, 4])
    named_write(big_job, {"val/loss": ([9, 19], [0.9, 0.8]), "train/grad": ([5], 2.0)})
    result = poll(big_job, cursor, keys=["val/loss"])
    assert result.cursor == 4 and not result.reload
    assert result.headline.steps == [3, 4]
    assert len(result.headline.times) == 2
    assert result.named.keys() == {"val/loss"}  # only the keys asked for
    assert result.named["val/loss"].steps == [9, 19]
    assert result.named["val/loss"].values == [0.9, 0.8]
    assert result.new_keys == ["train/grad"]
    # Every key when none are named; nothing new after that.
    assert poll(big_job, cursor).named.keys() == {"val/loss", "train/grad"}
    assert poll(big_job, 4) == Poll(cursor=4)


def test_new_keys_are_those_created_after_the_cursor(big_job):
    named_write(big_job, {"a": ([0], 1.0)})
    named_write(big_job, {"a": ([1], 1.0), "b": ([1], 1.0)})
    named_write(big_job, {"c": ([2], 1.0)})
    assert poll(big_job, 0).new_keys == ["a", "b", "c"]
    assert poll(big_job, 1).new_keys == ["b", "c"]
    assert poll(big_job, 2).new_keys == ["c"]


def test_a_poll_reloads_when_the_log_was_pruned(big_job):
    named_write(big_job, {"a": ([0], 1.0)})
    named_write(big_job, {"a": ([1], 1.0)})
    IngestLog.objects.filter(job=big_job, seq=1).delete()
    assert poll(big_job, 0) == Poll(cursor=2, reload=True)
    assert not poll(big_job, 1).reload
    # A cursor from the future (another database, a restore) reloads too.
    assert poll(big_job, 7).reload


def test_a_poll_reloads_when_a_range_is_too_big(big_job):
    points_write(big_job, range(0, 30))
    named_write(big_job, {"a": ([0, 1], 1.0)})
    assert poll(big_job, 0, limit=20).reload
    named_write(big_job, {"a": (range(2, 40), 1.0)})
    result = poll(big_job, 2, limit=20)
    assert result.reload and result.cursor == 3
    assert not poll(big_job, 2, limit=50).reload


def test_a_poll_is_one_statement_for_one_key_or_twenty(big_job, django_assert_num_queries):
    # The ingest log and the points of the ranges it names, headline and keys together.
    points_write(big_job, [0])
    named_write(big_job, {"k0": ([0], 1.0)})
    big_job.refresh_from_db()
    with django_assert_num_queries(1):
        poll_one = job_poll(job=big_job, cursor=0)
    assert poll_one.named.keys() == {"k0"}
    named_write(big_job, {f"k{n}": ([1, 2], 1.0) for n in range(20)})
    points_write(big_job, [1])
    big_job.refresh_from_db()
    with django_assert_num_queries(1):
        result = job_poll(job=big_job, cursor=2)
    assert len(result.named) == 20 and result.headline.steps == [1]


def test_a_step_past_int64_finds_nothing_instead_of_failing(big_job):
    named_write(big_job, {"a": ([0], 1.0)})
    points_write(big_job, [0])
    key = key_of(big_job, "a")
    assert named_series_downsampled(key=key, max_points=10, after_step=10**30).steps == []
    assert metrics_after(big_job, 2**63).steps == []
    assert series_downsampled(big_job, 10, after_step=10**30).steps == []


def test_series_at_the_top_of_the_step_range_are_read_from_the_summary(user):
    """Steps run to MAX_STORED_STEP: bucket arithmetic there must not overflow a bigint."""
    job = TrainingJobFactory(owner=user, source="external", total_epochs=None, steps_per_epoch=None)
    steps = MAX_STORED_STEP - 2_999 + np.arange(3_000)
    losses = np.linspace(2.0, 1.0, 3_000)
    batches_write((job, metric_batch(steps, steps_per_epoch=2**62, losses=losses)))
    named_write(job, {"val/loss": (steps, losses)})
    job.refresh_from_db()
    headline = series_downsampled(job, 100, times=False)
    named = named_series_downsampled(key=key_of(job, "val/loss"), max_points=100, times=False)
    for series in (headline, named):
        assert series.downsampled and series.total == 3_000
        assert series.steps[0] == MAX_STORED_STEP - 2_999
        assert series.steps[-1] == MAX_STORED_STEP
