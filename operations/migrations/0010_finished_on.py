"""Every operation gets `finished_on` (the UTC day it finished; 9999-12-31
while pending or processing, and until the sweep files a finished one), the
partition key of 0011 on PostgreSQL; the
uniqueness of pending dedupe keys and processing serial keys is stated with it."""

import datetime

from django.db import migrations, models

ACTIVE_DAY = datetime.date.max


def fill_days(apps, schema_editor):
    table = apps.get_model("operations", "Operation")._meta.db_table
    if schema_editor.connection.vendor == "postgresql":
        day = "(COALESCE(completed_at, updated_at) AT TIME ZONE 'UTC')::date"
    else:
        day = "date(COALESCE(completed_at, updated_at))"  # stored in UTC
    schema_editor.execute(
        f"UPDATE {table} SET finished_on = {day} WHERE status IN ('completed', 'failed', 'cancelled')"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("operations", "0009_console_actions_pauses_and_minutes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="operation",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=models.deletion.CASCADE,
                related_name="children",
                to="operations.operation",
            ),
        ),
        migrations.AddField(
            model_name="operation",
            name="finished_on",
            field=models.DateField(db_default=ACTIVE_DAY, default=ACTIVE_DAY, editable=False),
        ),
        migrations.RunPython(fill_days, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name="operation", name="ops_dedupe_pending"),
        migrations.RemoveConstraint(model_name="operation", name="ops_serial_processing"),
        migrations.AddConstraint(
            model_name="operation",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "pending")),
                fields=("dedupe_key", "finished_on"),
                name="ops_dedupe_pending",
            ),
        ),
        migrations.AddConstraint(
            model_name="operation",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "processing")),
                fields=("serial_key", "finished_on"),
                name="ops_serial_processing",
            ),
        ),
        migrations.AddConstraint(
            model_name="operation",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("status__in", ["cancelled", "completed", "failed"]), ("finished_on", ACTIVE_DAY), _connector="OR"
                ),
                name="ops_live_rows_are_active",
            ),
        ),
    ]
