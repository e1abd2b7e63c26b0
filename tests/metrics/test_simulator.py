from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.services import DECAY_SPAN
from metrics.points import MetricBatch
from metrics.simulator import (
    DIVERGENCE_BLOWUP_STEPS,
    GRAD_NORM_KEY,
    LOSS_FLOOR,
    SIMULATED_KEYS,
    VAL_ACCURACY_KEY,
    VAL_LOSS_GAP,
    VAL_LOSS_KEY,
    TrainingSimulator,
)

FIELDS = ("steps", "epochs", "losses", "accuracies", "learning_rates")


def assert_batches_equal(a: MetricBatch, b: MetricBatch) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=True), name


def concat(batches: list[MetricBatch]) -> MetricBatch:
    return MetricBatch(
        **{name: np.concatenate([getattr(b, name) for b in batches]) for name in FIELDS}
    )


def expected_loss(sim: TrainingSimulator, steps: np.ndarray) -> np.ndarray:
    return sim.final_loss + (sim.initial_loss - sim.final_loss) * np.exp(-sim.decay_rate * steps)


# --- loss -------------------------------------------------------------------


def test_defaults() -> None:
    sim = TrainingSimulator()
    assert (sim.initial_loss, sim.final_loss, sim.decay_rate) == (2.5, 0.3, 0.15)
    assert sim.diverge_at_step is None
    assert isinstance(sim.seed, int)
    # seed=None is drawn once: the instance must stay self-consistent.
    assert sim.generate_loss_point(3, 10) == sim.generate_loss_point(3, 10)


def test_loss_residuals_are_unbiased_with_shrinking_noise() -> None:
    # final_loss well above the floor so clipping does not bias residuals.
    sim = TrainingSimulator(initial_loss=3.0, final_loss=1.0, decay_rate=0.01, seed=7)
    total, window = 10_000_000, 20_000

    early = sim.generate_metrics_batch(0, window, total, 1000)
    early_res = early.losses - expected_loss(sim, early.steps)
    late = sim.generate_metrics_batch(total - window, window, total, 1000)
    late_res = late.losses - expected_loss(sim, late.steps)

    assert abs(early_res.mean()) < 0.005
    assert abs(late_res.mean()) < 0.001
    assert early_res.std() == pytest.approx(0.1, rel=0.05)
    assert late_res.std() == pytest.approx(0.02, rel=0.05)


def test_loss_is_floored() -> None:
    # With a zero asymptote about half the noisy values would be negative.
    sim = TrainingSimulator(initial_loss=1.0, final_loss=0.0, decay_rate=5.0, seed=3)
    batch = sim.generate_metrics_batch(0, 2000, 2000, 100)
    assert batch.losses.min() == LOSS_FLOOR
    assert (batch.losses[10:] == LOSS_FLOOR).mean() > 0.3


def test_loss_decreases_towards_final() -> None:
    sim = TrainingSimulator(seed=11)
    batch = sim.generate_metrics_batch(0, 200, 200, 50)
    assert batch.losses[0] == pytest.approx(2.5, abs=0.4)
    assert batch.losses[-50:].mean() == pytest.approx(0.3, abs=0.02)


def test_a_jobs_default_decay_spans_its_length() -> None:
    """job_create's default decay (DECAY_SPAN / total steps): the loss is still falling in the
    middle of the job and has settled on its floor by the end, not after a few dozen steps."""
    total = 5000
    sim = TrainingSimulator(decay_rate=DECAY_SPAN / total, seed=3)
    losses = sim.generate_metrics_batch(0, total, total, 100).losses
    tenth = total // 10
    first, middle, last = (
        losses[:tenth].mean(),
        losses[4 * tenth : 5 * tenth].mean(),
        losses[-tenth:].mean(),
    )
    assert first > middle + 0.5 > last + 0.5
    assert last == pytest.approx(sim.final_loss, abs=0.03)


# --- accuracy ---------------------------------------------------------------


def test_accuracy_tracks_loss_within_noise() -> None:
    sim = TrainingSimulator(seed=5)
    batch = sim.generate_metrics_batch(0, 5000, 5000, 100)
    residual = batch.accuracies - (1.0 - batch.losses / sim.initial_loss)
    assert np.all(np.abs(residual) <= 0.01 + 1e-12)
    # Real noise, spread over the whole band rather than a constant offset.
    assert residual.min() < -0.009 and residual.max() > 0.009
    assert abs(residual.mean()) < 0.001


def test_accuracy_is_clamped_to_unit_interval() -> None:
    sim = TrainingSimulator(seed=9)
    steps = range(500)
    perfect = np.array([sim.generate_accuracy(0.0, s) for s in steps])
    hopeless = np.array([sim.generate_accuracy(10.0, s) for s in steps])
    assert perfect.max() == 1.0 and perfect.min() >= 0.99
    assert (perfect == 1.0).mean() > 0.3
    assert np.all(hopeless == 0.0)
    assert sim.generate_accuracy(math.nan, 1) == 0.0
    assert sim.generate_accuracy(math.inf, 1) == 0.0


def test_scalar_wrappers_match_batch() -> None:
    sim = TrainingSimulator(seed=21, diverge_at_step=40)
    total = 60
    batch = sim.generate_metrics_batch(0, total, total, 10)
    for step in range(total):
        loss = sim.generate_loss_point(step, total)
        assert loss == batch.losses[step] or (math.isnan(loss) and math.isnan(batch.losses[step]))
        assert sim.generate_accuracy(batch.losses[step], step) == batch.accuracies[step]


# --- epochs -----------------------------------------------------------------


def test_epoch_numbering() -> None:
    spe, n_epochs = 25, 4
    batch = TrainingSimulator(seed=0).generate_metrics_batch(0, spe * n_epochs, spe * n_epochs, spe)
    assert batch.epochs[0] == 1
    assert batch.epochs[spe - 1] == 1
    assert batch.epochs[spe] == 2
    assert batch.epochs[-1] == n_epochs
    assert np.all(np.diff(batch.epochs) >= 0)
    assert np.array_equal(batch.steps, np.arange(spe * n_epochs))


# --- determinism and split invariance ---------------------------------------


def test_same_seed_is_identical_and_different_seed_differs() -> None:
    kwargs = {"seed": 1234, "warmup_steps": 10, "diverge_at_step": 300}
    a = TrainingSimulator(**kwargs).generate_metrics_batch(0, 400, 400, 50)
    b = TrainingSimulator(**kwargs).generate_metrics_batch(0, 400, 400, 50)
    assert_batches_equal(a, b)

    c = TrainingSimulator(seed=1235, warmup_steps=10, diverge_at_step=300)
    c_batch = c.generate_metrics_batch(0, 400, 400, 50)
    assert not np.array_equal(a.losses[:300], c_batch.losses[:300])
    assert not np.array_equal(a.accuracies[:300], c_batch.accuracies[:300])


def test_unseeded_instances_differ() -> None:
    a, b = TrainingSimulator(), TrainingSimulator()
    assert a.seed != b.seed
    assert not np.array_equal(
        a.generate_metrics_batch(0, 50, 50, 10).losses,
        b.generate_metrics_batch(0, 50, 50, 10).losses,
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=-(2**70), max_value=2**70),
    total=st.integers(min_value=1, max_value=600),
    cut_fractions=st.lists(st.floats(min_value=0, max_value=1), max_size=8),
    diverge=st.none() | st.integers(min_value=0, max_value=600),
    warmup=st.integers(min_value=0, max_value=100),
)
def test_any_split_gives_identical_values(
    seed: int, total: int, cut_fractions: list[float], diverge: int | None, warmup: int
) -> None:
    sim = TrainingSimulator(seed=seed, diverge_at_step=diverge, warmup_steps=warmup)
    whole = sim.generate_metrics_batch(0, total, total, 7)

    cuts = sorted({0, total, *(int(f * total) for f in cut_fractions)})
    pieces = [sim.generate_metrics_batch(a, b - a, total, 7) for a, b in itertools.pairwise(cuts)]
    assert_batches_equal(concat(pieces), whole)

    # A retried batch, even from a fresh instance, rewrites the same values.
    retry = TrainingSimulator(seed=seed, diverge_at_step=diverge, warmup_steps=warmup)
    assert_batches_equal(
        retry.generate_metrics_batch(cuts[0], cuts[1] - cuts[0], total, 7), pieces[0]
    )


# --- learning rate ----------------------------------------------------------


def test_learning_rate_schedule_with_warmup() -> None:
    base, warmup, total = 3e-4, 20, 200
    sim = TrainingSimulator(seed=0, base_learning_rate=base, warmup_steps=warmup)
    lr = sim.generate_metrics_batch(0, total, total, 10).learning_rates

    assert 0 < lr[0] < base / 2
    assert lr[0] == pytest.approx(base / warmup)
    assert np.all(np.diff(lr[:warmup]) > 0)
    assert lr[warmup - 1] == pytest.approx(base)
    assert lr.max() == pytest.approx(base)
    assert np.all(np.diff(lr[warmup:]) < 0)
    assert lr[-1] < base * 1e-3
    assert np.all(lr >= 0)


def test_learning_rate_without_warmup_starts_at_base() -> None:
    sim = TrainingSimulator(seed=0, base_learning_rate=1e-3)
    lr = sim.learning_rate(np.arange(100), 100)
    assert lr[0] == 1e-3
    assert lr[50] == pytest.approx(0.5e-3)
    assert np.all(np.diff(lr) < 0) and np.all(lr >= 0)


# --- divergence -------------------------------------------------------------


def test_divergence_spikes_then_goes_nan() -> None:
    d, total = 50, 100
    sim = TrainingSimulator(seed=2, diverge_at_step=d)
    batch = sim.generate_metrics_batch(0, total, total, 10)
    blowup = batch.losses[d : d + DIVERGENCE_BLOWUP_STEPS]

    assert np.all(np.isfinite(batch.losses[:d]))
    assert np.all(np.isfinite(blowup))
    assert np.all(np.diff(blowup) > 0)
    assert blowup[0] > batch.losses[d - 1]
    assert blowup[-1] > 50 * batch.losses[d - 1]
    assert np.all(np.isnan(batch.losses[d + DIVERGENCE_BLOWUP_STEPS :]))
    assert np.all(batch.accuracies[d + DIVERGENCE_BLOWUP_STEPS :] == 0.0)
    assert batch.first_diverged_loss() == d + DIVERGENCE_BLOWUP_STEPS

    healthy = TrainingSimulator(seed=2).generate_metrics_batch(0, total, total, 10)
    assert np.array_equal(healthy.losses[:d], batch.losses[:d])


def test_divergence_after_job_end_has_no_effect() -> None:
    batch = TrainingSimulator(seed=4, diverge_at_step=500).generate_metrics_batch(0, 100, 100, 10)
    assert batch.first_diverged_loss() is None


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "count", "total", "spe", "message"),
    [
        (0, -1, 10, 5, "count"),
        (-1, 2, 10, 5, "start_step"),
        (5, 6, 10, 5, "total_steps"),
        (0, 5, 10, 0, "steps_per_epoch"),
        (0, 0, 0, 5, "total_steps"),
    ],
)
def test_batch_argument_validation(
    start: int, count: int, total: int, spe: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingSimulator(seed=0).generate_metrics_batch(start, count, total, spe)


def test_empty_batch_at_end_is_allowed() -> None:
    batch = TrainingSimulator(seed=0).generate_metrics_batch(10, 0, 10, 5)
    assert len(batch) == 0 and batch.steps.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup_steps": -1},
        {"diverge_at_step": -3},
        {"initial_loss": 0.0},
        {"decay_rate": -0.1},
    ],
)
def test_constructor_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainingSimulator(**kwargs)


# --- named series ------------------------------------------------------------


def named_points(sim: TrainingSimulator, start: int, count: int, total: int, per_epoch: int):
    """{key: {step: value}} of the named points at steps start..start+count-1."""
    batch = sim.generate_metrics_batch(start, count, total, per_epoch)
    named = sim.generate_named_batch(batch, total, per_epoch, time=1.0)
    result: dict[str, dict[int, float]] = {name: {} for name in SIMULATED_KEYS}
    for index, step, value in zip(
        named.key_index.tolist(), named.steps.tolist(), named.values.tolist(), strict=True
    ):
        result[named.names[index]][step] = value
    return result


def test_validation_at_epoch_ends_and_grad_norm_every_step() -> None:
    sim = TrainingSimulator(seed=5)
    points = named_points(sim, 0, 100, 100, 20)
    assert sorted(points[GRAD_NORM_KEY]) == list(range(100))
    assert sorted(points[VAL_LOSS_KEY]) == [19, 39, 59, 79, 99]
    assert sorted(points[VAL_ACCURACY_KEY]) == [19, 39, 59, 79, 99]
    assert all(0 <= value <= 1 for value in points[VAL_ACCURACY_KEY].values())
    assert all(value > 0 for value in points[GRAD_NORM_KEY].values())


def test_validation_loss_follows_the_curve_with_a_generalisation_gap() -> None:
    sim = TrainingSimulator(seed=11, initial_loss=2.5, final_loss=0.3, decay_rate=0.001)
    points = named_points(sim, 0, 10_000, 10_000, 10)
    steps = np.array(sorted(points[VAL_LOSS_KEY]))
    val = np.array([points[VAL_LOSS_KEY][step] for step in steps])
    ratio = val / expected_loss(sim, steps)
    # Above the training curve by about the gap; its own noise, so not the training loss.
    assert np.mean(ratio) == pytest.approx(1 + VAL_LOSS_GAP, abs=0.01)
    train = sim.generate_metrics_batch(0, 10_000, 10_000, 10).losses[steps]
    assert not np.allclose(val, train * (1 + VAL_LOSS_GAP))


def test_no_named_point_from_the_divergence_on() -> None:
    sim = TrainingSimulator(seed=3, diverge_at_step=10)
    points = named_points(sim, 0, 60, 60, 5)
    first_nan = 10 + DIVERGENCE_BLOWUP_STEPS
    assert max(points[GRAD_NORM_KEY]) == first_nan - 1
    assert max(points[VAL_LOSS_KEY]) < first_nan
    assert all(math.isfinite(value) for series in points.values() for value in series.values())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    total=st.integers(min_value=1, max_value=400),
    per_epoch=st.integers(min_value=1, max_value=50),
    cut_fractions=st.lists(st.floats(min_value=0, max_value=1), max_size=6),
)
def test_named_points_are_identical_however_the_run_is_split(
    seed: int, total: int, per_epoch: int, cut_fractions: list[float]
) -> None:
    sim = TrainingSimulator(seed=seed)
    whole = named_points(sim, 0, total, total, per_epoch)
    cuts = sorted({0, total, *(int(f * total) for f in cut_fractions)})
    pieces: dict[str, dict[int, float]] = {name: {} for name in SIMULATED_KEYS}
    for a, b in itertools.pairwise(cuts):
        # A fresh instance per piece, as every tick builds its own.
        for name, series in named_points(
            TrainingSimulator(seed=seed), a, b - a, total, per_epoch
        ).items():
            pieces[name] |= series
    assert pieces == whole
