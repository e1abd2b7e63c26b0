# TEMPORARY placeholder (h-nj): the backend developer adds the real 0003 with these two fields.
# Drop this file in favour of theirs when merging.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0002_trainingjob_last_tick"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainingjob",
            name="ingest_seq",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="trainingjob",
            name="primary_metric",
            field=models.CharField(blank=True, max_length=250),
        ),
    ]
