"""Fair share of a worker pool's slots between banks (SPEC §5 "Fair share").

While another bank has work of the same type waiting, one bank holds at most
`OPS_BANK_SHARE` of a pool's slots (at least one); when nobody else waits it
may hold them all. Enforced where it cannot be bypassed, on both deployments
(the embedded broker has no priorities, so the order of messages cannot be
relied on):

- **at the claim**: a bank at its share does not take another slot while
  another bank waits (`claim_guard`, part of the claim's one UPDATE); the
  message is dropped and the row published again later.
- **at a checkpoint**: an operation of a resumable type (a retain) that runs
  beyond its bank's share while another bank waits gives its slot back
  (`should_yield`): it returns to pending keeping its progress and resumes
  there, without spending a retry. The most recently started go first, just
  enough to bring the bank back to its share.

"Waits" means a due pending operation of the same type in another bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL

from operations.models import LIVE_SQL, Operation


@dataclass(frozen=True)
class Pool:
    name: str
    slots: int

    @property
    def bank_cap(self) -> int:
        """Slots one bank may hold while another bank waits."""
        return max(1, math.floor(settings.OPS_BANK_SHARE * self.slots))


@cache
def pool_of(worker: str) -> Pool:
    """The pool a worker (`<pool>@<node>`, as `runworkers` names them) runs:
    its slots from the slot plan. A worker started another way counts as a
    shared pool of the node's total."""
    from operations import slots

    name = worker.split("@", 1)[0]
    for spec in slots.plan_from_settings().workers:
        if spec.name == name:
            return Pool(name, spec.concurrency)
    return Pool(name, settings.OPS_WORKER_MAX_SLOTS)


_TABLE = Operation._meta.db_table
_ACTIVE = LIVE_SQL  # the active partition alone

# Another bank has a due pending operation of this type: two range probes on
# `ops_pending_bank` (banks below, banks above), so that a bank's own backlog of
# thousands is never scanned.
_OTHERS_WAIT = f"""(
    EXISTS (SELECT 1 FROM {_TABLE} w WHERE w.{_ACTIVE} AND w.status = 'pending'
            AND w.operation_type = {{type}} AND w.bank_id < {{bank}}
            AND (w.next_retry_at IS NULL OR w.next_retry_at <= %s))
    OR EXISTS (SELECT 1 FROM {_TABLE} w WHERE w.{_ACTIVE} AND w.status = 'pending'
            AND w.operation_type = {{type}} AND w.bank_id > {{bank}}
            AND (w.next_retry_at IS NULL OR w.next_retry_at <= %s))
)"""

_RUNNING = f"""(SELECT COUNT(*) FROM {_TABLE} r
    WHERE r.{_ACTIVE} AND r.status = 'processing' AND r.worker = %s AND r.bank_id = {{bank}})"""


# The claim's condition: the row's bank is under its share of this worker's
# pool, or no other bank waits for the type. Nobody else waiting is the common
# case and two index probes: asked first, so the running count is read only
# when it matters.
CLAIM_GUARD = "(NOT {others} OR {running} < %s)".format(
    others=_OTHERS_WAIT.format(type=f"{_TABLE}.operation_type", bank=f"{_TABLE}.bank_id"),
    running=_RUNNING.format(bank=f"{_TABLE}.bank_id"),
)


def claim_guard_params(worker: str, now: datetime) -> list[Any]:
    at = connection.ops.adapt_datetimefield_value(now)
    return [at, at, worker, pool_of(worker).bank_cap]


def claim_guard(worker: str, now: datetime) -> RawSQL:
    """`CLAIM_GUARD` as an ORM condition."""
    return RawSQL(CLAIM_GUARD, claim_guard_params(worker, now), output_field=BooleanField())


def should_yield(*, operation_id: str, operation_type: str, bank_id: str, worker: str, now: datetime) -> bool:
    """Whether this running operation should give its slot back: its bank
    holds more than its share of the pool while another bank waits, and it is
    among the most recently started beyond the share."""
    cap = pool_of(worker).bank_cap
    at = connection.ops.adapt_datetimefield_value(now)
    params = {"type": "%s", "bank": "%s"}
    sql = f"""SELECT
        (SELECT COUNT(*) FROM {_TABLE} r WHERE r.{_ACTIVE} AND r.status = 'processing' AND r.worker = %s AND r.bank_id = %s
            AND (r.started_at < (SELECT started_at FROM {_TABLE} WHERE id = %s AND {_ACTIVE})
                 OR (r.started_at = (SELECT started_at FROM {_TABLE} WHERE id = %s AND {_ACTIVE}) AND r.id < %s))),
        {_OTHERS_WAIT.format(**params)}"""
    pk = str(operation_id) if connection.vendor == "postgresql" else str(operation_id).replace("-", "")
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [worker, bank_id, pk, pk, pk, operation_type, bank_id, at, operation_type, bank_id, at],
        )
        started_before, others_wait = cursor.fetchone()
    return bool(others_wait) and started_before >= cap
