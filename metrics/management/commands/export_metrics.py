from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.models import TrainingJob
from metrics.export import (
    FORMATS,
    export_csv_chunks,
    export_json_chunks,
    named_csv_chunks,
    named_json_chunks,
)

GENERATORS = {"csv": export_csv_chunks, "json": export_json_chunks}
NAMED_GENERATORS = {"csv": named_csv_chunks, "json": named_json_chunks}


class Command(BaseCommand):
    help = (
        "Export a job's metric points at full resolution as CSV or JSON (to stdout or a file); "
        "with --keys, its named series in long format (key, step, value, timestamp)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "job_id", type=int, metavar="JOB_ID", help="The job, as `jobs` lists it."
        )
        # Checked in handle(), not by argparse `choices`, so a bad value is one CommandError line.
        parser.add_argument("--format", default="csv", help="csv (default) or json")
        parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
        parser.add_argument(
            "--keys",
            nargs="?",
            const="",
            default=None,
            metavar="A,B",
            help="export named series instead of the headline one: all keys, or those listed",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        fmt = options["format"].lower()
        if fmt not in FORMATS:
            raise CommandError(f"Unknown format {options['format']!r}: use csv or json.")
        try:
            job = TrainingJob.objects.get(pk=options["job_id"])
        except TrainingJob.DoesNotExist:
            raise CommandError(f"No job {options['job_id']}.") from None
        if options["keys"] is None:
            chunks = GENERATORS[fmt](job)
        else:
            names = {name for name in options["keys"].split(",") if name} or None
            chunks = NAMED_GENERATORS[fmt](job, names)
        if options["output"]:
            _write_file(Path(options["output"]), chunks)
        else:
            for chunk in chunks:
                self.stdout.write(chunk, ending="")


def _write_file(path: Path, chunks: Any) -> None:
    """Write through a temporary file in the same folder, so a failed export leaves nothing."""
    if path.is_dir():
        raise CommandError(f"Cannot write {path}: it is a directory.")
    try:
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
    except OSError as error:
        raise CommandError(f"Cannot write {path}: {error.strerror or error}.") from None
    try:
        # mkstemp makes the file private; give the export the permissions a new file gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as output:
            for chunk in chunks:
                output.write(chunk)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise CommandError(f"Cannot write {path}: {error.strerror or error}.") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
