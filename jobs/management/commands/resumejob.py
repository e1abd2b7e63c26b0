from __future__ import annotations

from jobs.cli import JobTransitionCommand, transition_help


class Command(JobTransitionCommand):
    action = "resume"
    past_tense = "resumed"
    help = transition_help(action, past_tense)
