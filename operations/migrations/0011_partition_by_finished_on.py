"""PostgreSQL: the operations table becomes a table partitioned by
`finished_on` (see `operations.partitions`), keeping every row: the active
rows in their own partition, what finished before today in a history
partition, and one for the coming days. SQLite keeps one table.

The table is rebuilt: renamed aside, a new one made like it, the rows
copied, then its primary key (id, finished_on: a partitioned table's unique
keys hold its partition key), the foreign keys it holds, and the model's
indexes and constraints made again. Foreign keys to it are dropped: there is
no unique index on `id` alone to refer to (Django cascades). Backwards, the
same into one plain table."""

import datetime

from django.db import migrations
from django.db.models import CheckConstraint

AHEAD_DAYS = 7


def _rebuild(apps, schema_editor, *, partitioned: bool) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("operations", "Operation")
    table = model._meta.db_table
    aside = f"{table}_aside"
    q = schema_editor.quote_name
    today = datetime.datetime.now(datetime.UTC).date()
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' AND confrelid = %s::regclass",
            [table],
        )
        for referrer, name in cursor.fetchall():
            cursor.execute(f"ALTER TABLE {referrer} DROP CONSTRAINT {q(name)}")
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass",
            [table],
        )
        foreign_keys = cursor.fetchall()
        cursor.execute(f"ALTER TABLE {table} RENAME TO {aside}")
        cursor.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass", [aside])
        for number, (index,) in enumerate(cursor.fetchall()):
            cursor.execute(f"ALTER INDEX {index} RENAME TO {aside}_{number}")
        like = f"LIKE {aside} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE"
        if partitioned:
            cursor.execute(f"CREATE TABLE {table} ({like}) PARTITION BY RANGE (finished_on)")
            cursor.execute(
                f"CREATE TABLE {table}_active PARTITION OF {table} FOR VALUES FROM ('9999-12-31') TO (MAXVALUE)"
            )
            # Its rows come and go: a VACUUM that truncated it to nothing would
            # make the planner see an empty table and cache plans that scan it
            # whole (the claim's own row found by a sequential scan through a
            # backlog). Kept at its largest, scans cost what the table once held.
            cursor.execute(f"ALTER TABLE {table}_active SET (vacuum_truncate = false)")
            cursor.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
            cursor.execute(
                f"CREATE TABLE {table}_history PARTITION OF {table} FOR VALUES FROM (MINVALUE) TO (%s)",
                [today.isoformat()],
            )
            # The days ahead; the prune makes the later ones, a week each.
            ahead = today + datetime.timedelta(days=AHEAD_DAYS + 1)
            cursor.execute(
                f"CREATE TABLE {table}_p{today:%Y%m%d} PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)",
                [today.isoformat(), ahead.isoformat()],
            )
        else:
            cursor.execute(f"CREATE TABLE {table} ({like})")
        cursor.execute(f"INSERT INTO {table} SELECT * FROM {aside}")
        cursor.execute(f"DROP TABLE {aside}")  # with its partitions, if it had any
        key = "id, finished_on" if partitioned else "id"
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
        for name, definition in foreign_keys:
            cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {q(name)} {definition}")
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)
    for constraint in model._meta.constraints:
        if not isinstance(constraint, CheckConstraint):  # LIKE … INCLUDING CONSTRAINTS kept those
            schema_editor.add_constraint(model, constraint)


def partition(apps, schema_editor):
    _rebuild(apps, schema_editor, partitioned=True)


def unpartition(apps, schema_editor):
    _rebuild(apps, schema_editor, partitioned=False)


class Migration(migrations.Migration):
    dependencies = [
        ("operations", "0010_finished_on"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
