"""Plain-Python reference for TrainingSimulator: the benchmark's baseline and a cross-check."""

from __future__ import annotations

import math

from metrics.simulator import (
    ACCURACY_NOISE,
    DIVERGENCE_BLOWUP_STEPS,
    DIVERGENCE_GROWTH,
    LOSS_FLOOR,
    LOSS_NOISE_SHRINK,
    LOSS_NOISE_STD,
    SPLITMIX_GAMMA,
    SPLITMIX_MUL1,
    SPLITMIX_MUL2,
    STREAM_ACCURACY,
    STREAM_LOSS_ANGLE,
    STREAM_LOSS_RADIUS,
    UINT64_MASK,
    TrainingSimulator,
    check_batch_args,
)


def _splitmix64(x: int) -> int:
    z = (x + SPLITMIX_GAMMA) & UINT64_MASK
    z = ((z ^ (z >> 30)) * SPLITMIX_MUL1) & UINT64_MASK
    z = ((z ^ (z >> 27)) * SPLITMIX_MUL2) & UINT64_MASK
    return z ^ (z >> 31)


def _uniform(key: int, step: int) -> float:
    bits = _splitmix64((key + step * SPLITMIX_GAMMA) & UINT64_MASK)
    return ((bits >> 12) + 0.5) * 2.0**-52


def _healthy_loss(sim: TrainingSimulator, keys: dict[int, int], step: int, total: int) -> float:
    progress = step / total
    expected = sim.final_loss + (sim.initial_loss - sim.final_loss) * math.exp(
        -sim.decay_rate * step
    )
    radius = math.sqrt(-2.0 * math.log(_uniform(keys[STREAM_LOSS_RADIUS], step)))
    angle = 2.0 * math.pi * _uniform(keys[STREAM_LOSS_ANGLE], step)
    std = LOSS_NOISE_STD * (1.0 - LOSS_NOISE_SHRINK * progress)
    return max(expected + std * radius * math.cos(angle), LOSS_FLOOR)


def _learning_rate(sim: TrainingSimulator, step: int, total: int) -> float:
    base = sim.base_learning_rate
    warmup = sim.warmup_steps
    if step < warmup:
        return base * (step + 1.0) / warmup
    phase = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * phase))


def generate_metrics_python(
    sim: TrainingSimulator,
    start_step: int,
    count: int,
    total_steps: int,
    steps_per_epoch: int,
) -> list[tuple[int, int, float, float, float]]:
    check_batch_args(start_step, count, total_steps, steps_per_epoch)
    seed_hash = _splitmix64(sim.seed & UINT64_MASK)
    keys = {
        stream: _splitmix64(seed_hash ^ stream)
        for stream in (STREAM_LOSS_RADIUS, STREAM_LOSS_ANGLE, STREAM_ACCURACY)
    }
    diverge = sim.diverge_at_step
    anchor = None if diverge is None else _healthy_loss(sim, keys, diverge, total_steps)
    rows = []
    for step in range(start_step, start_step + count):
        since = None if diverge is None else step - diverge
        if since is None or since < 0:
            loss = _healthy_loss(sim, keys, step, total_steps)
        elif since < DIVERGENCE_BLOWUP_STEPS:
            loss = anchor * DIVERGENCE_GROWTH ** float(since + 1)
        else:
            loss = math.nan
        if math.isfinite(loss):
            jitter = (2.0 * _uniform(keys[STREAM_ACCURACY], step) - 1.0) * ACCURACY_NOISE
            accuracy = min(max(1.0 - loss / sim.initial_loss + jitter, 0.0), 1.0)
        else:
            accuracy = 0.0
        rows.append(
            (
                step,
                step // steps_per_epoch + 1,
                loss,
                accuracy,
                _learning_rate(sim, step, total_steps),
            )
        )
    return rows
