"""Who writes a bank's memory at the same time, and in what order.

Writers of a bank's memory take one of its PostgreSQL advisory locks at the
start of their transaction, so that no two of them ever wait on each other's
row locks in opposite orders (a deadlock), and a crowd never queues on one row:

- **shared**: writers that only add (a retain of a new document, a link top-up,
  a consolidation). Any number run side by side: what they insert is new
  (units, their entities' links, links to neighbours, co-occurrence *deltas*),
  and the foreign keys they check take KEY SHARE locks, which never conflict.
- **exclusive**: writers that delete units or entities (a document re-retained
  or deleted, a unit deleted, the prunes of graph maintenance). They run alone
  in the bank: a delete locks rows that every other writer may reference.

What adders would otherwise fight over (the co-occurrence counts, a
neighbour's cap before it links back) they append instead, and the **fold**
(`memory.fold`) brings it up to date: one adder of the bank at a time holds the
fold lock, taken with a try (a retain that finds it busy leaves its share to
the folder and goes on), and an exclusive writer, being alone, folds in place.

Expensive work (extraction, vectors, choosing link candidates) happens before
the transaction, holding nothing. Banks never share a lock: a crowd in one
bank does not slow another.

SQLite runs one writer at a time already (IMMEDIATE transactions): every
lock here is granted at once there.
"""

from __future__ import annotations

from django.db import connection

# The first key of the two-key advisory locks (the second is the bank's hash),
# chosen so they do not collide with other users of advisory locks.
_WRITERS = 0x6F700001
_FOLD = 0x6F700002


def _take(function: str, kind: int, bank_id: str) -> None:
    if connection.vendor != "postgresql":
        return
    if not connection.in_atomic_block:
        raise RuntimeError("bank write locks are taken inside a transaction (they last until it ends)")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, hashtext(%s))", [kind, bank_id])


def bank_writing(bank_id: str, *, exclusive: bool) -> None:
    """Join the bank's writers until the transaction ends: alongside the other
    adders (`exclusive=False`), or alone (a writer that deletes)."""
    _take("pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared", _WRITERS, bank_id)


def bank_fold(bank_id: str) -> None:
    """Become the bank's folder until the transaction ends, waiting for the
    current one: for a writer that must count a unit's links exactly (a
    top-up), a rare path."""
    _take("pg_advisory_xact_lock", _FOLD, bank_id)


def try_bank_fold(bank_id: str) -> bool:
    """Join the bank's adders (`bank_writing`) and become its folder until
    the transaction ends, if nobody is: False at once when another writer
    folds. One statement, the writers' lock first (the subquery runs before
    the outer select: the order every writer takes them in)."""
    if connection.vendor != "postgresql":
        return True
    if not connection.in_atomic_block:
        raise RuntimeError("bank write locks are taken inside a transaction (they last until it ends)")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s)) "
            "FROM (SELECT pg_advisory_xact_lock_shared(%s, hashtext(%s)) OFFSET 0) AS writing",
            [_FOLD, bank_id, _WRITERS, bank_id],
        )
        return bool(cursor.fetchone()[0])
