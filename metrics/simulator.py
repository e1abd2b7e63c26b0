from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from metrics.points import JobsPoints, MetricBatch, NamedBatch, diverged_losses

LOSS_FLOOR = 0.05
LOSS_NOISE_STD = 0.1
# The noise std shrinks linearly to (1 - this) of its start value by the end.
LOSS_NOISE_SHRINK = 0.8
ACCURACY_NOISE = 0.01
DIVERGENCE_GROWTH = 1.5
DIVERGENCE_BLOWUP_STEPS = 12

# Independent random streams, one per kind of noise, so that adding a stream
# never shifts the values another stream produces.
STREAM_LOSS_RADIUS = 1
STREAM_LOSS_ANGLE = 2
STREAM_ACCURACY = 3
STREAM_VAL_LOSS_RADIUS = 4
STREAM_VAL_LOSS_ANGLE = 5
STREAM_VAL_ACCURACY = 6
STREAM_GRAD_NORM = 7

_STREAMS = (
    STREAM_LOSS_RADIUS,
    STREAM_LOSS_ANGLE,
    STREAM_ACCURACY,
    STREAM_VAL_LOSS_RADIUS,
    STREAM_VAL_LOSS_ANGLE,
    STREAM_VAL_ACCURACY,
    STREAM_GRAD_NORM,
)
_STREAM_IDS = np.array(_STREAMS, dtype=np.uint64)

# The named series a simulated job writes beside its headline points: validation loss and
# accuracy at each epoch's last step, the gradient norm at every step.
VAL_LOSS_KEY = "val/loss"
VAL_ACCURACY_KEY = "val/accuracy"
GRAD_NORM_KEY = "train/grad_norm"
SIMULATED_KEYS = (GRAD_NORM_KEY, VAL_LOSS_KEY, VAL_ACCURACY_KEY)
# Validation loss sits this fraction above the training curve (the generalisation gap),
# with noise of its own at this fraction of the training noise (it averages a whole set).
VAL_LOSS_GAP = 0.08
VAL_NOISE_SCALE = 0.5
# Gradient norm: this times sqrt(loss / initial loss), jittered by up to +-GRAD_NORM_JITTER.
GRAD_NORM_SCALE = 5.0
GRAD_NORM_JITTER = 0.25

SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MUL1 = 0xBF58476D1CE4E5B9
SPLITMIX_MUL2 = 0x94D049BB133111EB
UINT64_MASK = (1 << 64) - 1

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # uint64 arithmetic is meant to wrap modulo 2**64.
    with np.errstate(over="ignore"):
        z = x + _U64(SPLITMIX_GAMMA)
        z = (z ^ (z >> _U64(30))) * _U64(SPLITMIX_MUL1)
        z = (z ^ (z >> _U64(27))) * _U64(SPLITMIX_MUL2)
        return z ^ (z >> _U64(31))


def _bits_to_unit(bits: np.ndarray) -> np.ndarray:
    # 52 bits + 0.5 is exact in a float64 and lands strictly inside (0, 1),
    # so log(u) in Box-Muller is always finite.
    return ((bits >> _U64(12)).astype(np.float64) + 0.5) * 2.0**-52


# --- the formulas ------------------------------------------------------------------------------
# Written once for both generators: `TrainingSimulator` passes its parameters as scalars,
# `simulated_batches` as one array entry per point. Element-wise float operations give a point
# the same bits either way, as long as both make the same calls in the same order.

# A simulator parameter: one value for every point, or an array with one per point.
Parameter = float | np.ndarray


def _stream_keys(seeds: np.ndarray) -> np.ndarray:
    """Every stream's key for each uint64 seed: shape (len(seeds), len(_STREAMS))."""
    return _splitmix64(_splitmix64(seeds)[:, None] ^ _STREAM_IDS[None, :])


def _uniforms(keys: np.ndarray, steps: np.ndarray) -> np.ndarray:
    # Counter-based: the draw for a step depends on nothing but the key and
    # the step, so batch boundaries cannot influence it.
    with np.errstate(over="ignore"):
        counters = keys + steps.astype(np.uint64) * _U64(SPLITMIX_GAMMA)
    return _bits_to_unit(_splitmix64(counters))


def _healthy_losses(
    steps: np.ndarray,
    *,
    total_steps: Parameter,
    initial_loss: Parameter,
    final_loss: Parameter,
    decay_rate: Parameter,
    radius_uniforms: np.ndarray,
    angle_uniforms: np.ndarray,
    gap: float = 0.0,
    noise_scale: float = 1.0,
) -> np.ndarray:
    # The validation curve is this one with a gap, less noise and streams of its own.
    progress = steps / total_steps
    expected = final_loss + (initial_loss - final_loss) * np.exp(-decay_rate * steps)
    radius = np.sqrt(-2.0 * np.log(radius_uniforms))
    angle = 2.0 * np.pi * angle_uniforms
    std = noise_scale * LOSS_NOISE_STD * (1.0 - LOSS_NOISE_SHRINK * progress)
    losses: np.ndarray = np.maximum(
        expected * (1.0 + gap) + std * radius * np.cos(angle), LOSS_FLOOR
    )
    return losses


def _blown_up(anchors: Parameter, since: np.ndarray) -> np.ndarray:
    # Growing from the loss at the divergence step rather than from each step's own noisy
    # value keeps the spike strictly increasing. `since` counts from 0 at that step.
    losses: np.ndarray = anchors * DIVERGENCE_GROWTH ** (since + 1).astype(np.float64)
    return losses


def _accuracies(losses: np.ndarray, initial_loss: Parameter, uniforms: np.ndarray) -> np.ndarray:
    jitter = (2.0 * uniforms - 1.0) * ACCURACY_NOISE
    with np.errstate(invalid="ignore"):
        accuracies = np.clip(1.0 - losses / initial_loss + jitter, 0.0, 1.0)
    accuracies[~np.isfinite(losses)] = 0.0
    return accuracies


def _learning_rates(
    steps: np.ndarray, total_steps: Parameter, base: Parameter, warmup: Parameter
) -> np.ndarray:
    # Linear warmup over the first `warmup` steps, then a cosine decay to 0 at the end.
    s = np.asarray(steps, dtype=np.float64)
    decay_steps = np.maximum(np.subtract(total_steps, warmup), 1)
    phase = np.clip((s - warmup) / decay_steps, 0.0, 1.0)
    cosine = base * 0.5 * (1.0 + np.cos(np.pi * phase))
    warming = s < warmup
    if not np.any(warming):
        return np.asarray(cosine)
    # The warmup branch is computed for every step and kept where warming: with warmup 0
    # (never warming) it divides by zero, harmlessly.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(warming, base * (s + 1.0) / warmup, cosine)


def _grad_norms(losses: np.ndarray, initial_loss: Parameter, uniforms: np.ndarray) -> np.ndarray:
    jitter = 2.0 * uniforms - 1.0
    norms: np.ndarray = (
        GRAD_NORM_SCALE * np.sqrt(losses / initial_loss) * (1.0 + GRAD_NORM_JITTER * jitter)
    )
    return norms


class TrainingSimulator:
    """Synthetic training curves; every value is a pure function of (seed, step, parameters)."""

    def __init__(
        self,
        initial_loss: float = 2.5,
        final_loss: float = 0.3,
        decay_rate: float = 0.15,
        *,
        seed: int | None = None,
        base_learning_rate: float = 1e-3,
        warmup_steps: int = 0,
        diverge_at_step: int | None = None,
    ) -> None:
        if initial_loss <= 0:
            raise ValueError(f"initial_loss must be > 0, got {initial_loss}")
        if decay_rate < 0:
            raise ValueError(f"decay_rate must be >= 0, got {decay_rate}")
        if base_learning_rate < 0:
            raise ValueError(f"base_learning_rate must be >= 0, got {base_learning_rate}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if diverge_at_step is not None and diverge_at_step < 0:
            raise ValueError(f"diverge_at_step must be >= 0, got {diverge_at_step}")
        # SimulatedRuns.check() mirrors these checks over arrays, for a whole tick at once.
        self.initial_loss = float(initial_loss)
        self.final_loss = float(final_loss)
        self.decay_rate = float(decay_rate)
        self.seed = secrets.randbits(64) if seed is None else int(seed)
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.diverge_at_step = None if diverge_at_step is None else int(diverge_at_step)
        [keys] = _stream_keys(np.array([self.seed & UINT64_MASK], dtype=np.uint64))
        self._stream_keys = {stream: keys[i : i + 1] for i, stream in enumerate(_STREAMS)}

    def _uniforms(self, stream: int, steps: np.ndarray) -> np.ndarray:
        return _uniforms(self._stream_keys[stream], steps)

    def _healthy_losses(
        self,
        steps: np.ndarray,
        total_steps: int,
        *,
        gap: float = 0.0,
        noise_scale: float = 1.0,
        streams: tuple[int, int] = (STREAM_LOSS_RADIUS, STREAM_LOSS_ANGLE),
    ) -> np.ndarray:
        return _healthy_losses(
            steps,
            total_steps=total_steps,
            initial_loss=self.initial_loss,
            final_loss=self.final_loss,
            decay_rate=self.decay_rate,
            radius_uniforms=self._uniforms(streams[0], steps),
            angle_uniforms=self._uniforms(streams[1], steps),
            gap=gap,
            noise_scale=noise_scale,
        )

    def _losses(self, steps: np.ndarray, total_steps: int) -> np.ndarray:
        losses = self._healthy_losses(steps, total_steps)
        if self.diverge_at_step is None:
            return losses
        since = steps - self.diverge_at_step
        blowing = (since >= 0) & (since < DIVERGENCE_BLOWUP_STEPS)
        if blowing.any():
            anchor = self._healthy_losses(
                np.array([self.diverge_at_step], dtype=np.int64), total_steps
            )[0]
            losses[blowing] = _blown_up(anchor, since[blowing])
        losses[since >= DIVERGENCE_BLOWUP_STEPS] = np.nan
        return losses

    def _accuracies(
        self, losses: np.ndarray, steps: np.ndarray, stream: int = STREAM_ACCURACY
    ) -> np.ndarray:
        return _accuracies(losses, self.initial_loss, self._uniforms(stream, steps))

    def generate_loss_point(self, step: int, total_steps: int) -> float:
        _check_point(step, total_steps)
        return float(self._losses(np.array([step], dtype=np.int64), total_steps)[0])

    def generate_accuracy(self, loss: float, step: int = 0) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        losses = np.array([loss], dtype=np.float64)
        return float(self._accuracies(losses, np.array([step], dtype=np.int64))[0])

    def learning_rate(self, steps: np.ndarray, total_steps: int) -> np.ndarray:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        return _learning_rates(steps, total_steps, self.base_learning_rate, self.warmup_steps)

    def generate_metrics_batch(
        self, start_step: int, count: int, total_steps: int, steps_per_epoch: int
    ) -> MetricBatch:
        check_batch_args(start_step, count, total_steps, steps_per_epoch)
        steps = np.arange(start_step, start_step + count, dtype=np.int64)
        losses = self._losses(steps, total_steps)
        return MetricBatch(
            steps=steps,
            epochs=steps // steps_per_epoch + 1,
            losses=losses,
            accuracies=self._accuracies(losses, steps),
            learning_rates=self.learning_rate(steps, total_steps),
        )

    def generate_named_batch(
        self, batch: MetricBatch, total_steps: int, steps_per_epoch: int, time: float
    ) -> NamedBatch:
        """The named points at the steps of a headline `batch` (from
        `generate_metrics_batch`), all stamped `time`: the gradient norm at every step, the
        validation loss and accuracy at each epoch's last step. Steps from the batch's first
        diverged loss on get none: the job fails there. Like every value here, a pure
        function of (seed, step, parameters), so however ticks split a run, its points agree.
        """
        diverged = batch.first_diverged_loss()
        end = len(batch) if diverged is None else diverged
        steps, losses = batch.steps[:end], batch.losses[:end]
        grad_norms = _grad_norms(losses, self.initial_loss, self._uniforms(STREAM_GRAD_NORM, steps))
        # The epoch ends in the batch, without a pass over its steps: first the step that
        # ends the epoch the batch starts in, then every steps_per_epoch on.
        first_end = (
            -(-(int(steps[0]) + 1) // steps_per_epoch) * steps_per_epoch - 1 if len(steps) else 0
        )
        val_steps = np.arange(first_end, int(steps[-1]) + 1 if len(steps) else 0, steps_per_epoch)
        if len(val_steps):
            val_losses = self._healthy_losses(
                val_steps,
                total_steps,
                gap=VAL_LOSS_GAP,
                noise_scale=VAL_NOISE_SCALE,
                streams=(STREAM_VAL_LOSS_RADIUS, STREAM_VAL_LOSS_ANGLE),
            )
            val_accuracies = self._accuracies(val_losses, val_steps, STREAM_VAL_ACCURACY)
        else:
            val_losses = val_accuracies = np.empty(0)
        n, v = len(steps), len(val_steps)
        return NamedBatch(
            names=SIMULATED_KEYS,
            key_index=np.repeat(np.arange(3, dtype=np.int64), [n, v, v]),
            steps=np.concatenate([steps, val_steps, val_steps]),
            values=np.concatenate([grad_norms, val_losses, val_accuracies]),
            times=np.full(n + 2 * v, time, dtype=np.float64),
        )


# --- every job of a tick at once ----------------------------------------------------------------

# `SimulatedRuns.diverge_at_steps` for a job that never diverges.
NEVER_DIVERGES = -1


@dataclass(frozen=True, eq=False)
class SimulatedRuns:
    """Many jobs' simulator parameters (see `TrainingSimulator`) and next batch
    (`generate_metrics_batch`'s arguments), one array entry per job."""

    initial_losses: np.ndarray  # float64
    final_losses: np.ndarray  # float64
    decay_rates: np.ndarray  # float64
    seeds: np.ndarray  # uint64: each seed & UINT64_MASK
    base_learning_rates: np.ndarray  # float64
    warmup_steps: np.ndarray  # int64
    diverge_at_steps: np.ndarray  # int64, NEVER_DIVERGES for none
    start_steps: np.ndarray  # int64
    counts: np.ndarray  # int64
    total_steps: np.ndarray  # int64
    steps_per_epoch: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.counts)

    def simulator(self, job: int) -> TrainingSimulator:
        """The per-job simulator of job `job`, as its parameters ask for one."""
        diverge_at_step = int(self.diverge_at_steps[job])
        return TrainingSimulator(
            float(self.initial_losses[job]),
            float(self.final_losses[job]),
            float(self.decay_rates[job]),
            seed=int(self.seeds[job]),
            base_learning_rate=float(self.base_learning_rates[job]),
            warmup_steps=int(self.warmup_steps[job]),
            diverge_at_step=None if diverge_at_step == NEVER_DIVERGES else diverge_at_step,
        )

    def check(self) -> None:
        """Raise the ValueError `TrainingSimulator` or `check_batch_args` would raise for the
        first job whose parameters they refuse, with the same message."""
        refused = (
            (self.initial_losses <= 0)
            | (self.decay_rates < 0)
            | (self.base_learning_rates < 0)
            | (self.warmup_steps < 0)
            | (self.diverge_at_steps < NEVER_DIVERGES)
            | (self.total_steps <= 0)
            | (self.steps_per_epoch <= 0)
            | (self.counts < 0)
            | (self.start_steps < 0)
            | (self.start_steps + self.counts > self.total_steps)
        )
        if not refused.any():
            return
        job = int(np.argmax(refused))
        self.simulator(job)
        check_batch_args(
            int(self.start_steps[job]),
            int(self.counts[job]),
            int(self.total_steps[job]),
            int(self.steps_per_epoch[job]),
        )
        # Unreachable while the mask above and those checks agree.
        raise ValueError(f"job {job} of the tick has parameters the simulator refuses")


def simulated_batches(runs: SimulatedRuns, time: float) -> JobsPoints:
    """Every job's `generate_metrics_batch` and `generate_named_batch` (stamped `time`) in
    one pass, bit for bit the same values, job after job (a job's named points: its
    gradient norms, then its validation losses, then its validation accuracies).

    A tick advances thousands of jobs by 10 or 100 steps each; one simulator and a dozen
    numpy calls per job would spend most of the tick's generation time on numpy's per-call
    overhead. Here each parameter is spread to the job's points (`np.repeat` over the
    counts) and the shared formulas run once over all points: a fixed number of numpy
    calls however many jobs. The counter-based streams make every value a pure function of
    (seed, stream, step, parameters), so it matters not which job sits next to which.
    """
    runs.check()
    counts = runs.counts
    ends = np.cumsum(counts)
    starts = ends - counts
    job = np.repeat(np.arange(len(counts)), counts)  # the job of each point
    steps = np.arange(len(job), dtype=np.int64) - starts[job] + runs.start_steps[job]
    keys = _stream_keys(runs.seeds)
    keys_of = {stream: keys[:, i] for i, stream in enumerate(_STREAMS)}
    total_steps = runs.total_steps[job]
    initial_losses = runs.initial_losses[job]

    def healthy_losses(
        jobs: np.ndarray,
        at: np.ndarray,
        *,
        streams: tuple[int, int] = (STREAM_LOSS_RADIUS, STREAM_LOSS_ANGLE),
        gap: float = 0.0,
        noise_scale: float = 1.0,
    ) -> np.ndarray:
        # TrainingSimulator._healthy_losses for the points `at` of `jobs`.
        return _healthy_losses(
            at,
            total_steps=runs.total_steps[jobs],
            initial_loss=runs.initial_losses[jobs],
            final_loss=runs.final_losses[jobs],
            decay_rate=runs.decay_rates[jobs],
            radius_uniforms=_uniforms(keys_of[streams[0]][jobs], at),
            angle_uniforms=_uniforms(keys_of[streams[1]][jobs], at),
            gap=gap,
            noise_scale=noise_scale,
        )

    losses = healthy_losses(job, steps)
    diverge_at = runs.diverge_at_steps[job]
    diverges = diverge_at != NEVER_DIVERGES
    since = steps - diverge_at
    blowing = diverges & (since >= 0) & (since < DIVERGENCE_BLOWUP_STEPS)
    if blowing.any():
        # The anchor again for each blowing point: at most DIVERGENCE_BLOWUP_STEPS a job.
        anchors = healthy_losses(job[blowing], diverge_at[blowing])
        losses[blowing] = _blown_up(anchors, since[blowing])
    losses[diverges & (since >= DIVERGENCE_BLOWUP_STEPS)] = np.nan
    headline = MetricBatch(
        steps=steps,
        epochs=steps // runs.steps_per_epoch[job] + 1,
        losses=losses,
        accuracies=_accuracies(
            losses, initial_losses, _uniforms(keys_of[STREAM_ACCURACY][job], steps)
        ),
        learning_rates=_learning_rates(
            steps, total_steps, runs.base_learning_rates[job], runs.warmup_steps[job]
        ),
    )

    # Named points stop at each job's first diverged loss: none from there on in its batch.
    diverged_so_far = np.concatenate([[0], np.cumsum(diverged_losses(losses))])
    kept = diverged_so_far[1:] == diverged_so_far[starts][job]
    grad_job, grad_steps = job[kept], steps[kept]
    grad_norms = _grad_norms(
        losses[kept],
        initial_losses[kept],
        _uniforms(keys_of[STREAM_GRAD_NORM][grad_job], grad_steps),
    )
    epoch_ends = kept & ((steps + 1) % runs.steps_per_epoch[job] == 0)
    val_job, val_steps = job[epoch_ends], steps[epoch_ends]
    val_losses = healthy_losses(
        val_job,
        val_steps,
        streams=(STREAM_VAL_LOSS_RADIUS, STREAM_VAL_LOSS_ANGLE),
        gap=VAL_LOSS_GAP,
        noise_scale=VAL_NOISE_SCALE,
    )
    val_accuracies = _accuracies(
        val_losses,
        runs.initial_losses[val_job],
        _uniforms(keys_of[STREAM_VAL_ACCURACY][val_job], val_steps),
    )

    # Each job's named rows: its n gradient norms, v validation losses, v accuracies.
    n = np.bincount(grad_job, minlength=len(counts))
    v = np.bincount(val_job, minlength=len(counts))
    named_ends = np.cumsum(n + 2 * v)
    named_starts = named_ends - n - 2 * v
    grad_rows = named_starts[grad_job] + np.arange(len(grad_job)) - (np.cumsum(n) - n)[grad_job]
    val_rows = (
        named_starts[val_job] + n[val_job] + np.arange(len(val_job)) - (np.cumsum(v) - v)[val_job]
    )
    size = len(grad_job) + 2 * len(val_job)
    key_index = np.empty(size, dtype=np.int64)
    named_steps = np.empty(size, dtype=np.int64)
    values = np.empty(size, dtype=np.float64)
    accuracy_rows = val_rows + v[val_job]
    for key, rows, at, column in (
        (0, grad_rows, grad_steps, grad_norms),
        (1, val_rows, val_steps, val_losses),
        (2, accuracy_rows, val_steps, val_accuracies),
    ):
        key_index[rows] = key
        named_steps[rows] = at
        values[rows] = column
    named = NamedBatch(
        names=SIMULATED_KEYS,
        key_index=key_index,
        steps=named_steps,
        values=values,
        times=np.full(size, time, dtype=np.float64),
    )
    return JobsPoints(headline, ends.tolist(), named, named_ends.tolist())


def _check_point(step: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def check_batch_args(start_step: int, count: int, total_steps: int, steps_per_epoch: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if start_step + count > total_steps:
        raise ValueError(
            f"steps {start_step}..{start_step + count - 1} run past the job's last step "
            f"{total_steps - 1} (total_steps={total_steps})"
        )
