"""Leaner memory indexes, dropped without blocking the writers.

- A link's bank: a retain writes about a thousand links, and a bank's links
  are found through its units (they go with them when it is deleted).
- The single-column indexes that an ordered index leading with the same
  column makes redundant: units', documents' and entities' bank, unit-entity
  rows' unit and entity. Beside the ordered ones they were what PostgreSQL
  chose while a bank or an entity was young in the statistics, sorting all of
  its rows on every retain.

Only the indexes go (the models' state says so too): on PostgreSQL each is
dropped CONCURRENTLY, so this migration runs outside a transaction and no
write waits for it; Django's own way would drop and re-add each foreign key,
checking every row under a lock.
"""

import django.db.models.deletion
from django.db import migrations, models

# (index, table, column, whether PostgreSQL has its LIKE twin)
INDEXES = [
    ("banks_link_bank", "banks_memorylink", "bank_id", False),
    ("banks_document_bank_id_cdd18a46", "banks_document", "bank_id", True),
    ("banks_entity_bank_id_acb5f5a5", "banks_entity", "bank_id", True),
    ("banks_memoryunit_bank_id_4688fbfc", "banks_memoryunit", "bank_id", True),
    ("banks_unitentity_entity_id_cfcf935b", "banks_unitentity", "entity_id", False),
    ("banks_unitentity_unit_id_36ffce80", "banks_unitentity", "unit_id", False),
]


def drop(apps, schema_editor):
    postgresql = schema_editor.connection.vendor == "postgresql"
    for name, _, _, like in INDEXES:
        for index in [name, f"{name}_like"] if like and postgresql else [name]:
            schema_editor.execute(f'DROP INDEX {"CONCURRENTLY " if postgresql else ""}IF EXISTS "{index}"')


def restore(apps, schema_editor):
    postgresql = schema_editor.connection.vendor == "postgresql"
    for name, table, column, like in INDEXES:
        schema_editor.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ("{column}")')
        if like and postgresql:
            schema_editor.execute(
                f'CREATE INDEX IF NOT EXISTS "{name}_like" ON "{table}" ("{column}" varchar_pattern_ops)'
            )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("banks", "0010_stored_file_without_db_constraint"),
        ("tenancy", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop, restore)],
            state_operations=[
                migrations.RemoveIndex(
                    model_name="memorylink",
                    name="banks_link_bank",
                ),
                migrations.AlterField(
                    model_name="memorylink",
                    name="bank",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="links",
                        to="tenancy.bank",
                    ),
                ),
                migrations.AlterField(
                    model_name="document",
                    name="bank",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="documents",
                        to="tenancy.bank",
                    ),
                ),
                migrations.AlterField(
                    model_name="entity",
                    name="bank",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="entities",
                        to="tenancy.bank",
                    ),
                ),
                migrations.AlterField(
                    model_name="memoryunit",
                    name="bank",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="memory_units",
                        to="tenancy.bank",
                    ),
                ),
                migrations.AlterField(
                    model_name="unitentity",
                    name="entity",
                    field=models.ForeignKey(
                        db_index=False, on_delete=django.db.models.deletion.CASCADE, to="banks.entity"
                    ),
                ),
                migrations.AlterField(
                    model_name="unitentity",
                    name="unit",
                    field=models.ForeignKey(
                        db_index=False, on_delete=django.db.models.deletion.CASCADE, to="banks.memoryunit"
                    ),
                ),
            ],
        ),
    ]
