"""Train the numpy MLP of train_numpy_mlp.py and report it through the real MLflow client.

    pip install mlflow-skinny numpy
    export MLFLOW_TRACKING_URI=http://127.0.0.1:8000
    export MLFLOW_TRACKING_TOKEN=tm_...     # a trainmon API token
    python examples/train_mlflow.py --epochs 30

Nothing trainmon-specific: the script uses only `mlflow` (set_experiment, start_run,
log_params, log_metrics, set_tag), as any MLflow-instrumented script does. Each step logs
`loss`, `accuracy` and `lr` (trainmon's headline keys: progress, best loss and divergence
follow them) and each epoch `train/full_accuracy`, a named series of its own.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import mlflow
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_numpy_mlp import CLASSES, MLP, MOMENTUM, WARMUP_FRACTION, learning_rate, spirals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="numpy-mlp", help="the MLflow experiment")
    parser.add_argument("--name", default=None, help="the run's name (default: generated)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--points-per-class", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--async-logging",
        action="store_true",
        help="log in the background (mlflow.config.enable_async_logging)",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "points_per_class", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.async_logging:
        mlflow.config.enable_async_logging(True)
    rng = np.random.default_rng(args.seed)
    inputs, labels = spirals(args.points_per_class, noise=0.2, rng=rng)
    steps_per_epoch = math.ceil(len(labels) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    model = MLP(args.hidden, rng)

    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=args.name) as run:
        mlflow.log_params(
            {
                "batch_size": args.batch_size,
                "hidden": args.hidden,
                "peak_lr": args.lr,
                "momentum": MOMENTUM,
                "warmup_fraction": WARMUP_FRACTION,
                "seed": args.seed,
                "epochs": args.epochs,
            }
        )
        mlflow.set_tags(
            {"model": f"mlp-2x{args.hidden}x{CLASSES}", "dataset": "spirals", "example": "yes"}
        )
        print(f"run {run.info.run_id} in experiment {run.info.experiment_id}")
        step = 0
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(len(labels))
            for start in range(0, len(labels), args.batch_size):
                batch = order[start : start + args.batch_size]
                lr = learning_rate(step, total_steps, args.lr)
                loss, accuracy = model.train_step(inputs[batch], labels[batch], lr)
                mlflow.log_metrics({"loss": loss, "accuracy": accuracy, "lr": lr}, step=step)
                step += 1
            full = model.accuracy(inputs, labels)
            mlflow.log_metric("train/full_accuracy", full, step=step - 1)
            print(f"epoch {epoch:3d}  loss {loss:.4f}  train accuracy {full:.3f}")
    print(f"done: {step} steps logged to run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
