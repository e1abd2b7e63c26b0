"""`simulated_batches`: every job of a tick at once, bit for bit `TrainingSimulator`'s batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.points import MetricBatch, NamedBatch
from metrics.simulator import (
    DIVERGENCE_BLOWUP_STEPS,
    NEVER_DIVERGES,
    UINT64_MASK,
    SimulatedRuns,
    TrainingSimulator,
    simulated_batches,
)

FIELDS = ("steps", "epochs", "losses", "accuracies", "learning_rates")
NAMED_FIELDS = ("key_index", "steps", "values", "times")
TIME = 1_764_566_400.25


@dataclass(frozen=True)
class Run:
    """One job's parameters and next batch, as `TrainingSimulator` takes them."""

    initial_loss: float = 2.5
    final_loss: float = 0.3
    decay_rate: float = 0.01
    seed: int = 1
    base_learning_rate: float = 1e-3
    warmup_steps: int = 0
    diverge_at_step: int | None = None
    start_step: int = 0
    count: int = 10
    total_steps: int = 1000
    steps_per_epoch: int = 7

    def simulator(self) -> TrainingSimulator:
        return TrainingSimulator(
            self.initial_loss,
            self.final_loss,
            self.decay_rate,
            seed=self.seed,
            base_learning_rate=self.base_learning_rate,
            warmup_steps=self.warmup_steps,
            diverge_at_step=self.diverge_at_step,
        )


def runs_of(runs: list[Run]) -> SimulatedRuns:
    def column(name: str, dtype: type) -> np.ndarray:
        return np.array([getattr(run, name) for run in runs], dtype=dtype)

    return SimulatedRuns(
        initial_losses=column("initial_loss", np.float64),
        final_losses=column("final_loss", np.float64),
        decay_rates=column("decay_rate", np.float64),
        seeds=np.array([run.seed & UINT64_MASK for run in runs], dtype=np.uint64),
        base_learning_rates=column("base_learning_rate", np.float64),
        warmup_steps=column("warmup_steps", np.int64),
        diverge_at_steps=np.array(
            [NEVER_DIVERGES if r.diverge_at_step is None else r.diverge_at_step for r in runs],
            dtype=np.int64,
        ),
        start_steps=column("start_step", np.int64),
        counts=column("count", np.int64),
        total_steps=column("total_steps", np.int64),
        steps_per_epoch=column("steps_per_epoch", np.int64),
    )


def per_job(run: Run) -> tuple[MetricBatch, NamedBatch]:
    simulator = run.simulator()
    batch = simulator.generate_metrics_batch(
        run.start_step, run.count, run.total_steps, run.steps_per_epoch
    )
    return batch, simulator.generate_named_batch(batch, run.total_steps, run.steps_per_epoch, TIME)


def assert_identical(runs: list[Run]) -> None:
    tick = simulated_batches(runs_of(runs), TIME)
    assert len(tick.headline) == sum(run.count for run in runs)
    for index, run in enumerate(runs):
        batch, named = per_job(run)
        headline = tick.headline_of(index)
        for name in FIELDS:
            got, want = getattr(headline, name), getattr(batch, name)
            assert got.dtype == want.dtype, (index, name)
            assert np.array_equal(got, want, equal_nan=True), (index, name)
        # The tick marks the jobs it found healthy; the write path trusts the mark.
        assert headline.first_diverged_loss() == batch.first_diverged_loss(), index
        named_rows = tick.named_of(index)
        assert named_rows.names == named.names
        for name in NAMED_FIELDS:
            got, want = getattr(named_rows, name), getattr(named, name)
            assert got.dtype == want.dtype, (index, name)
            assert np.array_equal(got, want, equal_nan=True), (index, name)


@st.composite
def a_run(draw: st.DrawFn) -> Run:
    total_steps = draw(st.integers(1, 2_000_000))
    start_step = draw(
        st.one_of(
            st.just(0),
            st.integers(0, total_steps),
            st.integers(max(total_steps - 40, 0), total_steps),  # near the end
        )
    )
    count = draw(st.integers(0, min(total_steps - start_step, 60)))
    initial_loss = draw(st.floats(0.01, 100.0))
    diverge_at_step = draw(
        st.one_of(
            st.none(),
            st.integers(start_step, start_step + count),  # inside the batch
            st.integers(max(start_step - 2 * DIVERGENCE_BLOWUP_STEPS, 0), start_step),  # before
            st.integers(start_step + count, start_step + count + 30),  # after
            st.integers(0, 2**31 - 1),
        )
    )
    return Run(
        initial_loss=initial_loss,
        final_loss=draw(st.floats(0.0, initial_loss)),
        decay_rate=draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.just(5.0 / total_steps))),
        seed=draw(st.one_of(st.integers(0, 100), st.integers(0, UINT64_MASK))),
        base_learning_rate=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
        warmup_steps=draw(
            st.one_of(st.just(0), st.integers(1, 50), st.integers(0, 2 * total_steps))
        ),
        diverge_at_step=diverge_at_step,
        start_step=start_step,
        count=count,
        total_steps=total_steps,
        steps_per_epoch=draw(
            st.one_of(st.just(1), st.integers(1, 20), st.integers(1, 2 * total_steps))
        ),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(a_run(), min_size=1, max_size=8))
def test_every_job_gets_exactly_its_per_job_batches(runs: list[Run]) -> None:
    assert_identical(runs)


def test_a_mix_of_the_edge_cases() -> None:
    assert_identical(
        [
            Run(count=0),
            Run(seed=UINT64_MASK, start_step=990, count=10, warmup_steps=2000),
            Run(diverge_at_step=5, start_step=0, count=30),  # blows up, then NaN, in one batch
            Run(diverge_at_step=3, start_step=10, count=10),  # blowing up since before
            Run(diverge_at_step=0, start_step=20, count=10),  # all NaN: no named points
            Run(steps_per_epoch=1, warmup_steps=5, count=12),
            Run(steps_per_epoch=10**6, total_steps=10**6, start_step=10**6 - 3, count=3),
            Run(count=0, start_step=1000),  # already at its last step
        ]
    )


def test_named_points_stop_at_the_first_diverged_loss() -> None:
    tick = simulated_batches(runs_of([Run(diverge_at_step=4, count=20), Run(count=20)]), TIME)
    diverging, healthy = tick.headline_of(0), tick.headline_of(1)
    first_nan = int(np.flatnonzero(np.isnan(diverging.losses))[0])
    assert first_nan == 4 + DIVERGENCE_BLOWUP_STEPS
    assert tick.named_of(0).steps.max() == first_nan - 1
    assert len(healthy) == 20 and not np.isnan(healthy.losses).any()
    assert tick.named_of(1).steps.max() == 19


def test_no_jobs_and_no_points() -> None:
    tick = simulated_batches(runs_of([]), TIME)
    assert (len(tick.headline), len(tick.named)) == (0, 0)
    assert_identical([Run(count=0), Run(count=0)])


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (Run(initial_loss=0.0), "initial_loss must be > 0"),
        (Run(decay_rate=-1.0), "decay_rate must be >= 0"),
        (Run(warmup_steps=-1), "warmup_steps must be >= 0"),
        (Run(diverge_at_step=-5), "diverge_at_step must be >= 0"),
        (Run(start_step=995, count=10), "run past the job's last step"),
        (Run(steps_per_epoch=0), "steps_per_epoch must be > 0"),
    ],
)
def test_refuses_what_the_per_job_simulator_refuses(run: Run, message: str) -> None:
    with pytest.raises(ValueError, match=message) as per_job_error:
        per_job(run)
    with pytest.raises(ValueError, match=message) as tick_error:
        simulated_batches(runs_of([Run(), run]), TIME)
    assert str(tick_error.value) == str(per_job_error.value)
