"""The operations table's partitions on PostgreSQL: the active rows apart from
the history, and the history a table per week, so that finished operations
never slow the work still to do and pruning is dropping a table.

The table is partitioned by range of `finished_on` (`Operation.finished_on`):

- `operations_operation_active` holds every pending and processing row
  (finished_on = 9999-12-31), and the ones that finished in the last
  seconds. The claim, the pick, the finish and fair share say so in their
  statements, so they read this partition only; its indexes hold the live
  work, whatever the history's size. The uniqueness that concurrency rests
  on (one pending per dedupe key, one processing per serial key) is
  enforced in it by the partial unique indexes (`Operation.Meta`). VACUUM
  never truncates it (`vacuum_truncate = false`, migration 0011): emptied
  and truncated, it looked empty to the planner, whose cached plans then
  scanned it whole through the next backlog (the no-op bench ran at 0.26x
  of bare Celery; 0.56x with its pages kept, median of 3 runs).
- `operations_operation_pYYYYMMDD` holds the operations that finished in
  the OPS_PARTITION_DAYS (7) UTC days from that day on (weeks from Monday).
  The sweep files them there in batches (`file_finished`,
  OPS_FILE_FINISHED_AFTER_SECONDS after they finished): the hot path's
  finish stays an UPDATE inside one partition, and a row is moved once,
  with many others. The hourly prune makes the coming days' partitions
  ahead (`OPS_PARTITIONS_AHEAD_DAYS`) and drops those wholly past retention.
  A week, not a day: every query that cannot name its partitions is planned
  over all of them (2.5 ms a query with 40, measured), so they are kept few.
- `operations_operation_default` catches a finished row whose day has no
  partition (the prune did not run for longer than the days ahead);
  `..._history` holds what had finished when the table was partitioned and
  is dropped once all of it is past retention. The default is pruned row by
  row, like SQLite's single table.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import TypeVar

from django.db import OperationalError, connection, transaction
from django.db.models import CASCADE, SET_NULL

from operations.models import LIVE_SQL, Operation

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = Operation._meta.db_table
ACTIVE = f"{TABLE}_active"
DEFAULT = f"{TABLE}_default"
HISTORY = f"{TABLE}_history"
# Making or dropping a partition takes the table's exclusive lock, and every
# statement on the table queues behind that request while it waits: so it
# waits at most LOCK_TIMEOUT, LOCK_ATTEMPTS times a second apart, then leaves
# the work to the next prune (an hour later) rather than stall the hot path.
LOCK_TIMEOUT = "100ms"
LOCK_ATTEMPTS = 5
_BOUND = re.compile(r"'(\d{4}-\d{2}-\d{2})'|(MINVALUE|MAXVALUE)")


def span_table(start: date) -> str:
    return f"{TABLE}_p{start:%Y%m%d}"


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        return cursor.fetchone() is not None


@dataclass(frozen=True)
class Partition:
    name: str
    lower: date | None  # None: MINVALUE (the history), or the default partition
    upper: date | None  # None: MAXVALUE (the active partition), or the default

    @property
    def finished(self) -> bool:
        """A partition of finished rows with bounds (neither active nor default)."""
        return self.name not in (ACTIVE, DEFAULT)

    def holds(self, day: date) -> bool:
        return self.finished and (self.lower is None or self.lower <= day) and (self.upper is None or day < self.upper)


def partitions() -> list[Partition]:
    """The table's partitions, the finished rows' in the order of their days."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        ends: list[date | None] = [date.fromisoformat(day) if day else None for day, _ in _BOUND.findall(bound)]
        lower, upper = [*ends, None, None][:2]
        found.append(Partition(name, lower, upper))
    return sorted(found, key=lambda p: (p.finished, p.lower or date.min, p.name))


def holding(day: date) -> str:
    """The partition a row finished on `day` goes to."""
    for partition in partitions():
        if partition.holds(day):
            return partition.name
    return DEFAULT


def file_finished(*, before: datetime, limit: int) -> int:
    """Move up to `limit` operations that finished before `before` from the
    active partition to their week's (oldest first): one UPDATE of their
    partition key, which PostgreSQL carries out as a move. Rows another
    transaction holds are skipped, left for the next sweep. Returns how many moved."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {TABLE} o SET finished_on = (o.completed_at AT TIME ZONE 'UTC')::date
FROM (SELECT id FROM {TABLE}
      WHERE {LIVE_SQL} AND status IN ('cancelled', 'completed', 'failed') AND completed_at < %s
      ORDER BY completed_at LIMIT %s FOR UPDATE SKIP LOCKED) f
WHERE o.id = f.id AND o.{LIVE_SQL}""",
            [before, limit],
        )
        return int(cursor.rowcount)


def create_span(day: date, span_days: int) -> str | None:
    """Make the partition for the rows finished on `day` unless one holds
    them: `span_days` days from the Monday of its week (days from the Unix
    epoch, in general) clipped to its neighbours. Not when the default
    partition already holds rows of that span (they stay there and are
    pruned with it: PostgreSQL would refuse the new table). Returns its name
    when it made one."""
    existing = partitions()
    if any(p.holds(day) for p in existing):
        return None
    epoch_monday = date(1970, 1, 5)
    lower = day - timedelta(days=(day - epoch_monday).days % span_days)
    upper = lower + timedelta(days=span_days)
    for other in existing:
        if not other.finished:
            continue
        if other.upper is not None and lower < other.upper <= day:
            lower = other.upper
        if other.lower is not None and day < other.lower < upper:
            upper = other.lower
    name = span_table(lower)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE finished_on >= %s AND finished_on < %s)", [lower, upper]
        )
        if cursor.fetchone()[0]:
            log.warning(
                "operations finished from %s to %s are in %s; no partition made for them", lower, upper, DEFAULT
            )
            return None
        cursor.execute(
            f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)",
            [lower.isoformat(), upper.isoformat()],
        )
    return name


def ensure_ahead(today: date, days: int, span_days: int) -> list[str]:
    """Partitions for the rows finished today and in the `days` after it;
    returns those made now. One whose lock is not granted (`_locking`) is
    left for the next prune (the days ahead are the slack)."""
    made = []
    for offset in range(days + 1):
        day = today + timedelta(days=offset)
        try:
            name = _locking(partial(create_span, day, span_days), what=f"make the partition of {day}")
        except _Busy:
            break
        if name is not None:
            made.append(name)
    return made


class _Busy(Exception):
    """The table's lock was not granted in LOCK_ATTEMPTS tries."""


def _locking(work: Callable[[], T], *, what: str) -> T:
    """`work` (DDL under LOCK_TIMEOUT), again after a lock not granted in
    time, up to LOCK_ATTEMPTS times; then _Busy."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return work()
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "55P03":
                raise
            if attempt < LOCK_ATTEMPTS:
                time.sleep(1.0)
    log.warning("could not %s now (the table's lock was busy); the next prune will", what)
    raise _Busy(what)


# The advisory lock one prune at a time holds (first key as banks.write_locks'),
# so that two beat schedulers do not detach the same partition.
_KEEPER = (0x6F700003, 0)


@contextmanager
def sole_keeper() -> Iterator[bool]:
    """Whether this connection is the only one keeping the partitions (a
    session's advisory lock, held while the body runs); False when another is."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", _KEEPER)
        granted = bool(cursor.fetchone()[0])
    try:
        yield granted
    finally:
        if granted:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", _KEEPER)


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
    """Drop the partitions of finished rows wholly before `cutoff` (every row
    in them finished before it). Returns those dropped; one whose lock is not
    granted (`_locking`) is left for the next prune, with the later ones.

    Each is detached in a transaction of its own and dropped in the next, so
    that the table's lock is held for the catalog change alone (milliseconds),
    not while the partition's files are removed (125 ms at 2.3M rows, growing
    with them): call it outside a transaction."""
    for name in _detached():
        _drop_detached(name)  # a prune stopped between the two steps
    dropped = []
    for partition in partitions():
        if not partition.finished or partition.upper is None or partition.upper > cutoff:
            continue
        try:
            detached = _locking(partial(_detach, partition.name), what=f"detach {partition.name}")
        except _Busy:
            break  # the table's lock is what it waited for: the others would wait as long
        _drop_detached(detached)
        dropped.append(partition.name)
        log.info("dropped %s", partition.name)
    return dropped


# A detached partition's name until it is dropped: only the prune makes one.
_DETACHED_SUFFIX = "_detached"


def _detach(name: str) -> str:
    """Take a partition out of the table, renamed as detached; returns the name."""
    detached = name + _DETACHED_SUFFIX
    with transaction.atomic(), connection.cursor() as cursor:
        # What refers to its rows goes first, before the table's lock is asked for.
        _delete_dependents(name)
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        # A table with deferred checks pending cannot be detached: settle them
        # first (there are some only when the caller wrote rows).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
        cursor.execute(f"ALTER TABLE {name} RENAME TO {detached}")
    return detached


def _drop_detached(name: str) -> None:
    """Drop a partition already detached: no statement on the table waits for it."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


def _detached() -> list[str]:
    """Partitions the prune detached and did not drop (it stopped between)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ %s "
            "AND relnamespace = current_schema()::regnamespace",
            [f"^{TABLE}_[a-z0-9]+{_DETACHED_SUFFIX}$"],
        )
        return [name for (name,) in cursor.fetchall()]
