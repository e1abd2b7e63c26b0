# Every tick rewrites each running job's row (its progress; a scheduled tick also its
# last_tick), and every API batch its job's. With full pages (the default) each new row
# version lands on another page and is indexed again in all nine of the table's indexes.
# Half of each page left free lets the new version stay on its page (a HOT update, no
# index entry): measured on a 1,000-job tick, its progress UPDATE took about half the time.
# The table is small (a few hundred bytes a job), so doubling its pages costs little.
# PostgreSQL only (SQLite has no such setting); pages written before keep their layout
# until their rows move.

from django.db import migrations

FILLFACTOR = 50


def _set_fillfactor(schema_editor, setting):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE jobs_trainingjob {setting}")


def forwards(apps, schema_editor):
    _set_fillfactor(schema_editor, f"SET (fillfactor = {FILLFACTOR})")


def backwards(apps, schema_editor):
    _set_fillfactor(schema_editor, "RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0007_dashboard_order_index"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
