"""Train a small numpy MLP on generated spirals and report every step to trainmon.

    export TRAINMON_TOKEN=tm_...        # from the "API tokens" page or `manage.py createapitoken`
    python examples/train_numpy_mlp.py --url http://127.0.0.1:8000 --epochs 30

A real training loop, not a simulation: three interleaved spirals (generated with a fixed
seed, nothing downloaded), a 2-64-3 ReLU network with softmax cross-entropy, mini-batch SGD
with momentum, a linear warm-up then cosine learning-rate schedule. Each step reports the
batch loss, batch accuracy and learning rate through clients/trainmon_client.py, which this
script imports from the repository without installing anything. Needs only numpy.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients"))

from trainmon_client import Run

CLASSES = 2 + 1
WARMUP_FRACTION = 0.05
MOMENTUM = 0.9


def spirals(
    points_per_class: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CLASSES interleaved spiral arms in the plane: inputs (n, 2) and labels (n,)."""
    radius = np.tile(np.linspace(0.05, 1.0, points_per_class), CLASSES)
    labels = np.repeat(np.arange(CLASSES), points_per_class)
    angle = (
        labels * 2 * math.pi / CLASSES + radius * 4.0 + rng.normal(scale=noise, size=radius.shape)
    )
    inputs = np.column_stack([radius * np.sin(angle), radius * np.cos(angle)])
    return inputs.astype(np.float64), labels


class MLP:
    """x -> ReLU(x W1 + b1) -> W2 + b2 -> softmax, trained with momentum SGD."""

    def __init__(self, hidden: int, rng: np.random.Generator) -> None:
        # He initialisation for the ReLU layer.
        self.params = {
            "w1": rng.normal(scale=math.sqrt(2 / 2), size=(2, hidden)),
            "b1": np.zeros(hidden),
            "w2": rng.normal(scale=math.sqrt(2 / hidden), size=(hidden, CLASSES)),
            "b2": np.zeros(CLASSES),
        }
        self.velocity = {name: np.zeros_like(value) for name, value in self.params.items()}

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden = np.maximum(x @ self.params["w1"] + self.params["b1"], 0.0)
        logits = hidden @ self.params["w2"] + self.params["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return hidden, probabilities

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, float]:
        """One SGD step on a batch; returns its loss and accuracy (before the update)."""
        hidden, probabilities = self.forward(x)
        n = len(y)
        loss = float(-np.log(probabilities[np.arange(n), y] + 1e-12).mean())
        accuracy = float((probabilities.argmax(axis=1) == y).mean())

        d_logits = probabilities.copy()
        d_logits[np.arange(n), y] -= 1.0
        d_logits /= n
        d_hidden = (d_logits @ self.params["w2"].T) * (hidden > 0)
        grads = {
            "w2": hidden.T @ d_logits,
            "b2": d_logits.sum(axis=0),
            "w1": x.T @ d_hidden,
            "b1": d_hidden.sum(axis=0),
        }
        for name, grad in grads.items():
            self.velocity[name] = MOMENTUM * self.velocity[name] - lr * grad
            self.params[name] += self.velocity[name]
        return loss, accuracy

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.forward(x)[1].argmax(axis=1) == y).mean())


def learning_rate(step: int, total_steps: int, base: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to zero."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the trainmon server")
    parser.add_argument(
        "--token",
        default=os.environ.get("TRAINMON_TOKEN"),
        help="API token (default: $TRAINMON_TOKEN)",
    )
    parser.add_argument("--name", default="numpy-mlp-spirals", help="the job's name")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="sets the steps per epoch")
    parser.add_argument("--points-per-class", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set TRAINMON_TOKEN")
    for name in ("epochs", "batch_size", "points_per_class", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    inputs, labels = spirals(args.points_per_class, noise=0.2, rng=rng)
    steps_per_epoch = math.ceil(len(labels) / args.batch_size)
    model = MLP(args.hidden, rng)

    with Run(
        args.url,
        args.token,
        name=args.name,
        total_epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        model_name=f"mlp-2x{args.hidden}x{CLASSES}",
        dataset=f"spirals-{CLASSES}x{args.points_per_class} (seed {args.seed})",
        description="examples/train_numpy_mlp.py: numpy MLP, momentum SGD, warm-up + cosine.",
        hyperparameters={
            "batch_size": args.batch_size,
            "hidden": args.hidden,
            "peak_lr": args.lr,
            "momentum": MOMENTUM,
            "warmup_fraction": WARMUP_FRACTION,
            "seed": args.seed,
        },
    ) as run:
        print(f"job {run.job_id}: {run.url}  ({run.total_steps} steps)")
        step = 0
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(len(labels))
            for start in range(0, len(labels), args.batch_size):
                batch = order[start : start + args.batch_size]
                lr = learning_rate(step, run.total_steps, args.lr)
                loss, accuracy = model.train_step(inputs[batch], labels[batch], lr)
                run.log(step, loss=loss, accuracy=accuracy, learning_rate=lr, epoch=epoch)
                step += 1
            print(
                f"epoch {epoch:3d}  loss {loss:.4f}  train accuracy "
                f"{model.accuracy(inputs, labels):.3f}"
            )
    print(f"done: {run.created} points stored, job {run.job['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
