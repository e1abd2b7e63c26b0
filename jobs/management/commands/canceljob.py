from __future__ import annotations

from jobs.cli import JobTransitionCommand, transition_help


class Command(JobTransitionCommand):
    action = "cancel"
    past_tense = "cancelled"
    help = transition_help(action, past_tense)
