"""Database errors that say "try again", not "this work is wrong".

A deadlock, a serialization failure, a lock that was not available, a lost
connection, or a foreign key that a concurrent writer removed under a row
being written: none of them is the operation's fault, and running the same
work again a moment later succeeds. They are retried promptly and do not
spend the operation's `max_retries` (`services.operation_fail` with
`transient=`), up to `OPS_TRANSIENT_RETRIES` in a row; a handler can also
retry its own unit of work in place (`retrying`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from django.db import DatabaseError, connection

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE -> what it means, for the error history.
_SQLSTATES = {
    "40P01": "deadlock",
    "40001": "serialization failure",
    "55P03": "lock not available",
    "57P01": "connection terminated by the server",
    "23503": "foreign key violation from a concurrent delete",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def reason(exc: BaseException) -> str | None:
    """Why `exc` is transient ("deadlock", "connection lost", …), or None when
    it is not a database error that retrying fixes."""
    if not isinstance(exc, DatabaseError):
        return None
    for link in _chain(exc):
        sqlstate = getattr(link, "sqlstate", None)
        if sqlstate in _SQLSTATES:
            return _SQLSTATES[sqlstate]
        if isinstance(sqlstate, str) and sqlstate.startswith("08"):
            return "connection lost"
        text = str(link).lower()
        if "database is locked" in text:  # SQLite: the write lock stayed busy past the timeout
            return "database locked"
        if sqlstate is None and (
            ("connection" in text and ("closed" in text or "lost" in text or "terminat" in text))
            or "server closed the connection" in text
            or "consuming input failed" in text
        ):
            return "connection lost"
    return None


def pause(attempt: int) -> None:
    """A short, jittered wait before attempt `attempt` + 1, so two writers that
    just collided do not collide again in lockstep."""
    time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 6)))


def retrying(work: Callable[[], T], *, what: str, attempts: int = 6) -> T:
    """Run `work` (one transaction of its own), again after a transient
    database error, up to `attempts` times; then the error propagates (and the
    operation is retried as a whole). Inside a caller's transaction only a
    savepoint can be retried: a lost connection propagates at once."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DatabaseError as exc:
            why = reason(exc)
            if why is None or attempt == attempts:
                raise
            if connection.in_atomic_block:
                if why == "connection lost":
                    raise
            else:
                connection.close_if_unusable_or_obsolete()
            log.warning("%s: %s, trying again (attempt %d of %d)", what, why, attempt + 1, attempts)
            pause(attempt)
    raise AssertionError("unreachable")
