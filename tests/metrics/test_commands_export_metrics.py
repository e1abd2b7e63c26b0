from __future__ import annotations

import csv
import io
import json
import os
import stat
from functools import partial

import pytest
from django.core.management import CommandError

from metrics.export import EXPORT_COLUMNS
from metrics.management.commands import export_metrics
from tests.support.commands import command_output
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import points_write

pytestmark = pytest.mark.django_db


@pytest.fixture
def job_with_points(user):
    job = TrainingJobFactory(owner=user, total_epochs=10, steps_per_epoch=10)
    return points_write(job, range(12))


run = partial(command_output, "export_metrics")


def test_csv_to_stdout_by_default(job_with_points):
    rows = list(csv.reader(io.StringIO(run(str(job_with_points.pk)))))
    assert rows[0] == list(EXPORT_COLUMNS)
    assert [int(row[0]) for row in rows[1:]] == list(range(12))


def test_json_to_stdout(job_with_points):
    document = json.loads(run(str(job_with_points.pk), "--format", "json"))
    assert document["job"]["id"] == job_with_points.pk
    assert len(document["points"]) == 12


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_output_file_gets_the_same_bytes_as_stdout(job_with_points, tmp_path, fmt):
    target = tmp_path / f"points.{fmt}"
    assert run(str(job_with_points.pk), "--format", fmt, "-o", str(target)) == ""
    assert target.read_text() == run(str(job_with_points.pk), "--format", fmt)
    assert os.listdir(tmp_path) == [target.name]  # no temporary file left behind
    # An ordinary new file, not the private mode its temporary file started with.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_unknown_job_is_one_line_error():
    with pytest.raises(CommandError, match=r"^No job 424242\.$"):
        run("424242")


def test_bad_format_is_one_line_error(job_with_points):
    with pytest.raises(CommandError, match=r"^Unknown format 'xml': use csv or json\.$"):
        run(str(job_with_points.pk), "--format", "xml")


def test_unwritable_destinations_are_errors(job_with_points, tmp_path):
    with pytest.raises(CommandError, match=r"Cannot write .*missing"):
        run(str(job_with_points.pk), "-o", str(tmp_path / "missing" / "points.csv"))
    with pytest.raises(CommandError, match="it is a directory"):
        run(str(job_with_points.pk), "-o", str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_failed_export_leaves_no_file(job_with_points, tmp_path, monkeypatch):
    def broken(job):
        yield "step,epoch\n"
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(export_metrics.GENERATORS, "csv", broken)
    target = tmp_path / "points.csv"
    with pytest.raises(CommandError, match="No space left on device"):
        run(str(job_with_points.pk), "-o", str(target))
    assert os.listdir(tmp_path) == []
