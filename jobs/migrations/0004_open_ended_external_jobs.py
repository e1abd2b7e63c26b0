# Open-ended external runs (issue 12, item 3): the declared length becomes optional for
# external jobs and a hint, never a limit. Simulated jobs keep needing it.

import django.db.models.expressions
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0003_trainingjob_ingest_seq_primary_metric'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='trainingjob',
            name='job_current_step_within_total',
        ),
        migrations.AlterField(
            model_name='trainingjob',
            name='steps_per_epoch',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='trainingjob',
            name='total_epochs',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddConstraint(
            model_name='trainingjob',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('steps_per_epoch__isnull', True), ('total_epochs__isnull', True)), models.Q(('steps_per_epoch__isnull', False), ('total_epochs__isnull', False)), _connector='OR'), name='job_length_both_or_neither'),
        ),
        migrations.AddConstraint(
            model_name='trainingjob',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('source', 'simulated'), _negated=True), ('total_epochs__isnull', False), _connector='OR'), name='job_simulated_has_length'),
        ),
        migrations.AddConstraint(
            model_name='trainingjob',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('source', 'simulated'), _negated=True), ('current_step__lte', django.db.models.expressions.CombinedExpression(models.F('total_epochs'), '*', models.F('steps_per_epoch'))), _connector='OR'), name='job_current_step_within_total'),
        ),
    ]
