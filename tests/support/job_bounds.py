"""Values each of jobs.services' bounds refuses, for the form, admin and service tests."""

from __future__ import annotations

# (field, value typed, the message). Each bound keeps a finite input from overflowing a tick.
BOUND_REFUSALS = [
    ("total_epochs", "10001", "Total epochs can be at most 10,000."),
    ("steps_per_epoch", "1000001", "Steps per epoch can be at most 1,000,000."),
    ("steps_per_tick", "10001", "Steps per tick can be at most 10,000."),
    ("steps_per_tick", "0", "Steps per tick must be a positive integer."),
    ("initial_loss", "1.7e308", "The initial loss must be a number from 0.001 to 1,000,000."),
    ("initial_loss", "0.0001", "The initial loss must be a number from 0.001 to 1,000,000."),
    ("final_loss", "-1", "The final loss must be a number from 0 to 1,000,000."),
    ("final_loss", "1e300", "The final loss must be a number from 0 to 1,000,000."),
    ("decay_rate", "0", "The decay rate must be a positive number."),
    ("decay_rate", "1e308", "The decay rate can be at most 10."),
    ("base_learning_rate", "1e308", "The learning rate must be a number from 0 to 10."),
    ("base_learning_rate", "-0.1", "The learning rate must be a number from 0 to 10."),
    ("seed", str(2**63), f"The seed must be an integer from 0 to {2**63 - 1}."),
    ("warmup_steps", "100000001", "Warm-up steps can be at most 100,000,000."),
    ("diverge_at_step", "100000001", "The divergence step can be at most 100,000,000."),
]
