"""Every state change of an operation, in one place.

Each transition is named in `models.TRANSITIONS` and performed by
`Operation.objects.filter(...).transition(name, ...)`: one conditional UPDATE
from the statuses the table allows (and its guard), whose row count says whether
it won. Two racing transitions cannot both win; the loser sees 0 rows and
reports it (False, None or `TransitionRefused`), never an error. Uniqueness
rules (dedupe while pending, one processing per serialization key) are partial
unique indexes, so the database enforces them under any concurrency.

A parent's status is derived from its children (`rollup`) in the
same transaction as each child's transition.

Nothing here does network I/O inside a transaction: publishing to the broker is
deferred to `transaction.on_commit`.
"""

from __future__ import annotations

from operations.lifecycle.common import OperationNotFound, TransitionRefused, retry_delay
from operations.lifecycle.pausing import dispatch_pause, dispatch_resume, paused_types
from operations.lifecycle.requests import (
    CancelOutcome,
    failed_matching,
    operation_cancel,
    operation_delete,
    operation_retry,
    operations_cancel_pending,
    operations_retry_failed,
)
from operations.lifecycle.rollup import roll_up, rolled_up_status
from operations.lifecycle.run import (
    operation_claim,
    operation_complete,
    operation_confirm_cancel,
    operation_fail,
    operation_lease_state,
    operation_over_share,
    operation_progress,
    operation_yield,
)
from operations.lifecycle.submit import (
    Child,
    Submission,
    operation_amend_pending,
    operation_submit,
    operation_submit_parent,
    operations_submit_many,
)
from operations.lifecycle.upkeep import (
    operation_abandoned,
    operations_cancel_overdue,
    operations_file_finished,
    operations_heartbeat,
    operations_partitions_keep,
    operations_prune,
    operations_reap,
    operations_roll_up_stranded,
)

__all__ = [
    "CancelOutcome",
    "Child",
    "OperationNotFound",
    "Submission",
    "TransitionRefused",
    "dispatch_pause",
    "dispatch_resume",
    "failed_matching",
    "operation_abandoned",
    "operation_amend_pending",
    "operation_cancel",
    "operation_claim",
    "operation_complete",
    "operation_confirm_cancel",
    "operation_delete",
    "operation_fail",
    "operation_lease_state",
    "operation_over_share",
    "operation_progress",
    "operation_retry",
    "operation_submit",
    "operation_submit_parent",
    "operation_yield",
    "operations_cancel_overdue",
    "operations_cancel_pending",
    "operations_file_finished",
    "operations_heartbeat",
    "operations_partitions_keep",
    "operations_prune",
    "operations_reap",
    "operations_retry_failed",
    "operations_roll_up_stranded",
    "operations_submit_many",
    "paused_types",
    "retry_delay",
    "roll_up",
    "rolled_up_status",
]
