"""A stored file refers to its operation without a foreign-key constraint:
the partitioned operations table has no unique index on `id` alone. The
constraint itself is dropped by operations 0011 (with any other pointing at
that table); Django still deletes the file with its operation, and the prune
with the day it drops."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("banks", "0009_bank_and_keys_to_tenancy"),
        ("operations", "0010_finished_on"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="storedfile",
                    name="operation",
                    field=models.OneToOneField(
                        db_constraint=False,
                        on_delete=models.deletion.CASCADE,
                        related_name="stored_file",
                        to="operations.operation",
                    ),
                ),
            ]
        ),
    ]
