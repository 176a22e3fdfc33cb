"""The operations table's partitions on PostgreSQL: the active rows apart from
the history, and the history a table per day, so that finished operations
never slow the work still to do and pruning a day is dropping its table.

The table is partitioned by range of `finished_on` (`Operation.finished_on`):

- `operations_operation_active` holds every pending and processing row
  (finished_on = 9999-12-31), and the ones that finished in the last
  seconds. The claim, the pick, the finish and fair share say so in their
  statements, so they read this partition only; its indexes hold the live
  work, whatever the history's size. The uniqueness that concurrency rests
  on (one pending per dedupe key, one processing per serial key) is
  enforced in it by the partial unique indexes (`Operation.Meta`).
- `operations_operation_pYYYYMMDD`, one per UTC day, holds the operations that
  finished that day. The sweep files them there in batches
  (`file_finished`, OPS_FILE_FINISHED_AFTER_SECONDS after they finished): the
  hot path's finish stays an UPDATE inside one partition, and a row is moved
  once, with many others. The hourly prune creates the coming days' tables
  ahead (`OPS_PARTITIONS_AHEAD_DAYS`) and drops the days past retention whole.
- `operations_operation_default` catches a finished row whose day has no table
  (the prune did not run for longer than the days ahead); `..._history` holds
  what was finished when the table was first partitioned. Both are pruned
  row by row, like SQLite's single table.

Operation ids are unique across partitions: new ids are random (uuid4), and a
client's own id (a retain batch's) is inserted into the active partition,
where the primary key (id, finished_on) catches a duplicate, then looked for
among the filed rows (`lifecycle.submit`).

A statement that waits for a row the sweep is moving (a retry or a delete
of an operation just as it is filed) fails with a serialization failure,
PostgreSQL's answer for a row moved to another partition; the sweep skips
rows others hold and moves only rows finished seconds ago, so this is rare,
and such errors are transient (`core.transient`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import TypeVar

from django.db import OperationalError, connection, transaction
from django.db.models import CASCADE, SET_NULL

from operations.models import ACTIVE_DAY_SQL, Operation

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = Operation._meta.db_table
ACTIVE = f"{TABLE}_active"
DEFAULT = f"{TABLE}_default"
HISTORY = f"{TABLE}_history"
_DAY = re.compile(rf"^{TABLE}_p(\d{{8}})$")
# Making or dropping a partition takes the table's exclusive lock, and every
# statement on the table queues behind that request while it waits: so it
# waits at most LOCK_TIMEOUT, LOCK_ATTEMPTS times a second apart, then leaves
# the work to the next prune (an hour later) rather than stall the hot path.
LOCK_TIMEOUT = "100ms"
LOCK_ATTEMPTS = 5


def day_table(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        return cursor.fetchone() is not None


@dataclass(frozen=True)
class Partition:
    name: str
    day: date | None  # a day's table; None for active, default, history


def partitions() -> list[Partition]:
    """The table's partitions, days in order after the others."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY c.relname",
            [TABLE],
        )
        names = [name for (name,) in cursor.fetchall()]
    found = []
    for name in names:
        match = _DAY.match(name)
        day = date(int(match[1][:4]), int(match[1][4:6]), int(match[1][6:])) if match else None
        found.append(Partition(name, day))
    return sorted(found, key=lambda p: (p.day is not None, p.day or date.min, p.name))


def file_finished(*, before: datetime, limit: int) -> int:
    """Move up to `limit` operations that finished before `before` from the
    active partition to their day's (oldest first): one UPDATE of their
    partition key, which PostgreSQL carries out as a move. Rows another
    transaction holds are skipped, left for the next sweep. Returns how many moved."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {TABLE} o SET finished_on = (o.completed_at AT TIME ZONE 'UTC')::date
FROM (SELECT id FROM {TABLE}
      WHERE finished_on = {ACTIVE_DAY_SQL} AND status IN ('cancelled', 'completed', 'failed') AND completed_at < %s
      ORDER BY completed_at LIMIT %s FOR UPDATE SKIP LOCKED) f
WHERE o.id = f.id AND o.finished_on = {ACTIVE_DAY_SQL}""",
            [before, limit],
        )
        return int(cursor.rowcount)


def create_day(day: date) -> bool:
    """Create the table of `day` unless it exists. Not when the default
    partition already holds rows of that day (they stay there and are pruned
    with it): PostgreSQL would refuse the new table. Returns whether it made one."""
    name = day_table(day)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            return False
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE finished_on >= %s AND finished_on < %s)",
            [day, day + timedelta(days=1)],
        )
        if cursor.fetchone()[0]:
            log.warning("operations finished on %s are in %s; no partition made for that day", day, DEFAULT)
            return False
        cursor.execute(
            f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)",
            [day.isoformat(), (day + timedelta(days=1)).isoformat()],
        )
    return True


def ensure_ahead(today: date, days: int) -> list[str]:
    """Tables for today and the `days` after it; returns those made now. One
    whose lock is not granted (`_locking`) is left for the next prune (the
    days ahead are the slack)."""
    made = []
    for offset in range(days + 1):
        day = today + timedelta(days=offset)
        created = _locking(partial(create_day, day), what=f"make {day_table(day)}")
        if created is None:
            break
        if created:
            made.append(day_table(day))
    return made


def _locking(work: Callable[[], T], *, what: str) -> T | None:
    """`work` (DDL under LOCK_TIMEOUT), again after a lock not granted in
    time, up to LOCK_ATTEMPTS times; None when it never was."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return work()
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "55P03":
                raise
            if attempt < LOCK_ATTEMPTS:
                time.sleep(1.0)
    log.warning("could not %s now (the table's lock was busy); the next prune will", what)
    return None


def _delete_dependents(partition: str) -> None:
    """What refers to the operations of a partition about to be dropped (there
    are no foreign-key constraints to cascade), as Django's delete would."""
    for relation in Operation._meta.related_objects:
        model = relation.related_model
        if model is Operation or not isinstance(model, type):
            continue
        field = relation.field
        table, column = model._meta.db_table, field.column
        behaviour = relation.on_delete
        with connection.cursor() as cursor:
            if behaviour is CASCADE:
                cursor.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM {partition})")
            elif behaviour is SET_NULL:
                cursor.execute(f"UPDATE {table} SET {column} = NULL WHERE {column} IN (SELECT id FROM {partition})")


def drop_before(cutoff: date) -> list[str]:
    """Drop the day tables wholly before `cutoff` (every row finished before
    it), and the history table once it is. Returns the tables dropped; one
    whose lock is not granted (`_locking`) is left for the next prune."""
    dropped = []
    for partition in partitions():
        if partition.day is not None:
            expired = partition.day + timedelta(days=1) <= cutoff
        elif partition.name == HISTORY:
            expired = _history_upper_bound() <= cutoff
        else:
            expired = False
        if not expired:
            continue
        if _locking(partial(_drop, partition.name), what=f"drop {partition.name}") is None:
            break  # the table's lock is what it waited for: the others would wait as long
        dropped.append(partition.name)
        log.info("dropped %s", partition.name)
    return dropped


def _drop(name: str) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        # What refers to its rows goes first, before the table's lock is asked for.
        _delete_dependents(name)
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        # A table with deferred checks pending cannot be dropped: settle them
        # first (there are some only when the caller wrote rows).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        # Detached first: from then on no statement on the table sees it.
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
        cursor.execute(f"DROP TABLE {name}")
    return True


def _history_upper_bound() -> date:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.relname = %s",
            [HISTORY],
        )
        bound = cursor.fetchone()[0]  # FOR VALUES FROM (MINVALUE) TO ('2026-12-07')
    return date.fromisoformat(re.findall(r"'(\d{4}-\d{2}-\d{2})'", bound)[-1])
