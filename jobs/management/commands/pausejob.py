from __future__ import annotations

from jobs.cli import JobTransitionCommand, transition_help


class Command(JobTransitionCommand):
    action = "pause"
    past_tense = "paused"
    help = transition_help(action, past_tense)
