from __future__ import annotations

from jobs.cli import JobTransitionCommand, transition_help


class Command(JobTransitionCommand):
    action = "cancel"
    help = transition_help(action)
