"""Running management commands the way a terminal would, with their output captured."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command


def command_outputs(name: str, *args: str, **options: object) -> tuple[str, str]:
    """Run the command `name`; return what it wrote to stdout and to stderr."""
    stdout, stderr = StringIO(), StringIO()
    call_command(name, *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def command_output(name: str, *args: str, **options: object) -> str:
    """Run the command `name`; return what it wrote to stdout (stderr is captured and dropped)."""
    return command_outputs(name, *args, **options)[0]
