"""The lifecycle's hot-path statements, named and documented in one place.

`operations.lifecycle` is the only caller. It builds each transition's
conditional UPDATE from the status table (`operations.models.TRANSITIONS`);
where the hot path pays per operation, the statements below ride on those
UPDATEs, so that a no-op costs three transactions: its INSERT, its CLAIM
(which also picks the next waiting operation to publish: CLAIM_AND_PICK) and
its finish (whose RETURNING also says whether a finish hook has work).

Placeholders are positional (`%s`, Django's cursor on both vendors); each
statement's `*_params` function gives them in order.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import orjson
from django.db import connection

from core.prepared import adapt
from operations import fair_share, registry
from operations.models import LIVE_SQL, TRANSITIONS, Operation, PausedType, concrete_field

TABLE = Operation._meta.db_table
PAUSED = PausedType._meta.db_table
# Pending and processing rows are all in the active partition on PostgreSQL.
ACTIVE = LIVE_SQL


def _statuses(names: frozenset[str]) -> str:
    return ", ".join(f"'{name}'" for name in sorted(names))


def _status_in(names: frozenset[str]) -> str:
    """`status IN (…)` for an UPDATE that finds its row by primary key, written
    so that it implies no partial index's predicate (`status = 'pending'`…).
    With statistics taken before a backlog arrived (an index then nearly
    empty), the planner preferred such an index to the primary key and walked
    it whole: 5,000 entries per claim behind a backlog of 5,000."""
    return f"status || '' IN ({_statuses(names)})"


def _runs() -> str:
    """Rows that run (a transition meant for them never touches a parent)."""
    parents = registry.parent_type_names()
    return f"operation_type NOT IN ({', '.join(repr(str(name)) for name in parents)})" if parents else "TRUE"


# --- INSERT ------------------------------------------------------------------------
#
# A new pending operation (`services.operation_submit`): the columns a
# submission sets, the others NULL. Django's create() builds and adapts the
# same INSERT on every call (a third of the submitter's CPU); this one is
# built once and prepared.

INSERTED = (
    "id",
    "bank_id",
    "operation_type",
    "status",
    "task_payload",
    "result_metadata",
    "error_history",
    "items_count",
    "retry_count",
    "max_retries",
    "document_id",
    "filename",
    "mental_model_id",
    "tag",
    "parent_id",
    "dedupe_key",
    "serial_key",
    "task_id",
    "dispatched_at",
    "created_at",
    "updated_at",
    "progress",
)
_JSON_COLUMNS = frozenset({"task_payload", "result_metadata", "error_history", "progress"})
_UUID_COLUMNS = frozenset({"id", "parent_id"})
_TIME_COLUMNS = frozenset({"dispatched_at", "created_at", "updated_at"})


@cache
def insert(rows: int = 1) -> str:
    """The INSERT of `rows` rows (a bulk submission's children are one)."""
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    values = ", ".join(f"%s{cast}" if column in _JSON_COLUMNS else "%s" for column in INSERTED)
    return f"INSERT INTO {TABLE} ({', '.join(INSERTED)}) VALUES {', '.join([f'({values})'] * rows)}"


def insert_batch_size() -> int:
    """Rows per INSERT: 500, or fewer where the database takes fewer parameters."""
    return min(500, connection.ops.bulk_batch_size(INSERTED, [None] * 500))


def insert_params(row: dict[str, Any], connection: Any) -> list[Any]:
    """`row` holds every column of INSERTED as the model's Python values.
    JSON goes to PostgreSQL as orjson's text (jsonb normalizes it); elsewhere
    as Django writes it, since SQLite keeps the text and compares it as
    written (a later `filter(task_payload=…)` must match)."""
    pk = Operation._meta.pk.get_db_prep_value
    postgresql = connection.vendor == "postgresql"
    params = []
    for column in INSERTED:
        value = row[column]
        if value is None:
            pass
        elif column in _JSON_COLUMNS:
            if postgresql:
                value = orjson.dumps(value).decode()
            else:
                value = concrete_field(Operation, column).get_db_prep_save(value, connection)
        elif column in _UUID_COLUMNS:
            value = pk(value, connection)
        elif column in _TIME_COLUMNS:
            value = adapt(value, connection)
        params.append(value)
    return params


# --- CLAIM -------------------------------------------------------------------------
#
# pending -> processing (`TRANSITIONS["claim"]`) for a row that is due and
# whose bank is under its fair share (`fair_share.CLAIM_GUARD`), holding a
# lease: the worker, its task, a fencing token, and the clock, unless an
# operator paused its type (`PausedType`: the message is dropped, the row
# waits). Returns what the run needs. A busy serialization key makes it fail on
# `ops_serial_processing` (IntegrityError): the row stays pending.

CLAIMED = (
    "id",
    "bank_id",
    "operation_type",
    "retry_count",
    "task_payload",
    "document_id",
    "filename",
    "mental_model_id",
    "tag",
    "parent_id",
    "serial_key",
    "progress",
)


@cache
def claim() -> str:
    transition = TRANSITIONS["claim"]
    return f"""UPDATE {TABLE} SET status = '{transition.target}', worker = %s, task_id = %s, lease_id = %s,
    heartbeat_at = %s, started_at = %s, cancel_requested_at = NULL, updated_at = %s
WHERE id = %s AND {ACTIVE} AND {_status_in(transition.sources)} AND {_runs()}
  AND (next_retry_at IS NULL OR next_retry_at <= %s) AND {fair_share.CLAIM_GUARD}
  AND NOT EXISTS (SELECT 1 FROM {PAUSED} z WHERE z.operation_type = {TABLE}.operation_type)
RETURNING {", ".join(CLAIMED)}"""


def claim_params(
    *, operation_id: Any, worker: str, task_id: str, lease_id: Any, now: datetime, connection: Any
) -> list[Any]:
    at, pk = adapt(now, connection), Operation._meta.pk.get_db_prep_value
    return [
        worker,
        task_id,
        pk(lease_id, connection),
        at,
        at,
        at,
        pk(operation_id, connection),
        at,
        *fair_share.claim_guard_params(worker, now),
    ]


# --- COMPLETE ----------------------------------------------------------------------
#
# processing -> completed (`TRANSITIONS["complete"]`) while this lease holds
# the row. Two forms: the quiet one applies only while no finish hook may act
# on the row (its conditions negated in the WHERE: a no-op's one statement);
# the other returns each hook's answer, run inside the finishing transaction.


@cache
def complete(conditions: tuple[tuple[str, str], ...], *, quiet: bool) -> str:
    transition = TRANSITIONS["complete"]
    where = f"""id = %s AND {ACTIVE} AND lease_id = %s AND {_status_in(transition.sources)} AND {_runs()}"""
    if quiet:
        where += "".join(f" AND NOT ({condition})" for _, condition in conditions)
        returning = "id"
    else:
        returning = ", ".join(["id", *(f"({condition}) AS {name}" for name, condition in conditions)])
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    return f"""UPDATE {TABLE} SET status = '{transition.target}', result_metadata = %s{cast}, completed_at = %s,
    next_retry_at = NULL, lease_id = NULL, updated_at = %s
WHERE {where}
RETURNING {returning}"""


def complete_params(*, operation_id: Any, lease_id: Any, result: str, now: datetime, connection: Any) -> list[Any]:
    at, pk = adapt(now, connection), Operation._meta.pk.get_db_prep_value
    return [result, at, at, pk(operation_id, connection), pk(lease_id, connection)]


# --- PICK --------------------------------------------------------------------------
#
# The next waiting operation of a type to publish, fairly across banks: the
# oldest due, unpublished operation of the first bank after the picker's
# cursor that has one, else of the first bank (the cursor wraps: COALESCE
# evaluates its second query only when the first finds nothing), whose
# serialization key is free. Marked as published in the same statement, so
# concurrent pickers never take the same row (on PostgreSQL a row another
# picker holds is skipped, not waited for). Returns its id, its bank, and
# whether its bank already has a message of this type in the broker (then it
# goes behind the window, else ahead of it: a Redis priority).
# Indexes: `ops_pending_fair` (candidates), `ops_serial_processing` (the key),
# `ops_pending_bank` (the priority probe). The UPDATE finds the picked row by
# its primary key: its WHERE leaves `status` out (the candidate's row lock,
# or SQLite's write lock, already holds it pending) so that it cannot match a
# partial index's predicate, which the planner, with statistics taken before
# a backlog arrived, preferred and walked whole (4,900 entries per pick).

_CANDIDATE = """(
    SELECT o.id FROM {table} o
    WHERE o.{active} AND o.status = 'pending' AND o.operation_type = %s AND o.dispatched_at IS NULL {after}
      AND (o.next_retry_at IS NULL OR o.next_retry_at <= %s)
      AND (o.serial_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM {table} p WHERE p.{active} AND p.status = 'processing' AND p.serial_key = o.serial_key))
      AND NOT EXISTS (SELECT 1 FROM {paused} z WHERE z.operation_type = o.operation_type)
    ORDER BY o.bank_id, o.created_at
    LIMIT 1 {lock})"""

_PICK = """UPDATE {table} SET dispatched_at = %s, task_id = %s
WHERE id = COALESCE({first}, {wrapped}) AND {active} AND dispatched_at IS NULL
RETURNING id, bank_id, EXISTS (
    SELECT 1 FROM {table} w
    WHERE w.{active} AND w.status = 'pending' AND w.operation_type = {table}.operation_type AND w.bank_id = {table}.bank_id
      AND w.dispatched_at >= %s AND w.id <> {table}.id) AS behind"""


def pick(vendor: str) -> str:
    lock = "FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""
    return _PICK.format(
        table=TABLE,
        active=ACTIVE,
        first=_CANDIDATE.format(table=TABLE, active=ACTIVE, paused=PAUSED, after="AND o.bank_id > %s", lock=lock),
        wrapped=_CANDIDATE.format(table=TABLE, active=ACTIVE, paused=PAUSED, after="", lock=lock),
    )


def pick_params(*, operation_type: str, after: str, task_id: str, now: Any, stale_before: Any) -> list[Any]:
    """`now` and `stale_before` already adapted for the database."""
    return [now, task_id, operation_type, after, now, operation_type, now, stale_before]


# --- CLAIM_AND_PICK (PostgreSQL) ------------------------------------------------------
#
# The claim (pending -> processing, the UPDATE … RETURNING built by services
# from the transition table) and the PICK that replaces the taken message in
# the window, as one statement: both data-modifying CTEs run to completion
# whatever the outer query reads, and each reads the table as it was when the
# statement began (the claimed row was published, so the pick never takes it).
# One row: the claimed row and the picked one, each as JSON or NULL.

CLAIM_AND_PICK = """WITH claimed AS ({claim}), picked AS ({pick})
SELECT (SELECT row_to_json(c) FROM claimed c), (SELECT row_to_json(p) FROM picked p)"""


def claim_and_pick(claim: str) -> str:
    return CLAIM_AND_PICK.format(claim=claim, pick=pick("postgresql"))


# --- ROLL_UP_LOCK, ROLL_UP_COUNTS ---------------------------------------------------------
#
# A parent, locked, then its children's status counts (`rollup.roll_up`, in
# the transaction that changed a child): concurrent children serialize on the
# parent's row, so the last one to finish counts every sibling final. Two
# statements, since a statement reads with the snapshot it began with: counts
# taken beside the lock would miss the sibling whose commit it waited for.
# SQLite's transaction already holds the write lock. The counts are a JSON
# object of status -> count (NULL or {} without children).

_ROLL_UP_LOCK = "SELECT status, started_at, bank_id, operation_type, tag, parent_id FROM {table} WHERE id = %s {lock}"

_ROLL_UP_COUNTS = (
    "SELECT {counts} FROM (SELECT status, COUNT(*) AS n FROM {table} WHERE parent_id = %s GROUP BY status) c"
)


@cache
def roll_up_lock() -> str:
    return _ROLL_UP_LOCK.format(table=TABLE, lock="FOR UPDATE" if connection.vendor == "postgresql" else "")


@cache
def roll_up_counts() -> str:
    counts = (
        "json_object_agg(c.status, c.n)" if connection.vendor == "postgresql" else "json_group_object(c.status, c.n)"
    )
    return _ROLL_UP_COUNTS.format(table=TABLE, counts=counts)
