"""Which MLflow metric keys feed a job's headline series (loss, accuracy, learning rate).

The headline drives progress, best loss, the dashboard's sparkline and divergence detection
(a NaN or infinite headline loss fails the run). The rule, documented in the README:

- loss: `loss`, `train_loss`, `train/loss`, `training_loss`, `train.loss`
- accuracy: `accuracy`, `acc`, `train_acc`, `train_accuracy`, `train/acc`, `train/accuracy`
- learning rate: `lr`, `learning_rate`, `train/lr`, `train/learning_rate`

Exact names (case-sensitive), earlier names first when a batch has several for one step.
A headline point is made for each step where a loss key has a value in the same request;
accuracy and learning rate join it from that request. Every key, these included, is also
stored as its own named series, so nothing depends on the rule for being kept.
"""

from __future__ import annotations

import math

import numpy as np

from jobs.models import TrainingJob
from metrics.points import MetricBatch, NamedBatch

LOSS_KEYS = ("loss", "train_loss", "train/loss", "training_loss", "train.loss")
ACCURACY_KEYS = ("accuracy", "acc", "train_acc", "train_accuracy", "train/acc", "train/accuracy")
LEARNING_RATE_KEYS = ("lr", "learning_rate", "train/lr", "train/learning_rate")
MAX_EPOCH = 2**31 - 1


def headline_role(name: str) -> str | None:
    """ "loss", "accuracy", "learning_rate" or None for a key name."""
    for role, keys in (
        ("loss", LOSS_KEYS),
        ("accuracy", ACCURACY_KEYS),
        ("learning_rate", LEARNING_RATE_KEYS),
    ):
        if name in keys:
            return role
    return None


def _by_step(batch: NamedBatch, keys: tuple[str, ...]) -> dict[int, float]:
    """Step -> value of the highest-priority key among `keys`, first point per (key, step)."""
    found: dict[int, tuple[int, float]] = {}
    rank = {name: keys.index(name) for name in batch.names if name in keys}
    if not rank:
        return {}
    for index, step, value in zip(
        batch.key_index.tolist(), batch.steps.tolist(), batch.values.tolist(), strict=True
    ):
        name = batch.names[index]
        if name not in rank:
            continue
        held = found.get(step)
        if held is None or rank[name] < held[0]:
            found[step] = (rank[name], value)
    return {step: value for step, (_, value) in found.items()}


def headline_batch(job: TrainingJob, batch: NamedBatch) -> MetricBatch:
    """The headline points the rule draws from `batch`, sorted by step."""
    losses = _by_step(batch, LOSS_KEYS)
    if not losses:
        return MetricBatch.empty()
    accuracies = _by_step(batch, ACCURACY_KEYS)
    rates = _by_step(batch, LEARNING_RATE_KEYS)
    steps = sorted(losses)
    nan = math.nan
    return MetricBatch(
        steps=np.asarray(steps, dtype=np.int64),
        epochs=np.asarray(
            [min(job.epoch_at(step) or 1, MAX_EPOCH) for step in steps], dtype=np.int64
        ),
        losses=np.asarray([losses[step] for step in steps], dtype=np.float64),
        accuracies=np.asarray([accuracies.get(step, nan) for step in steps], dtype=np.float64),
        learning_rates=np.asarray([rates.get(step, nan) for step in steps], dtype=np.float64),
    )
