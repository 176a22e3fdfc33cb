"""Every transition of the lifecycle service, including each refused one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from operations import lifecycle, registry
from operations.handlers import Lease
from operations.lifecycle import CancelOutcome, OperationNotFound, TransitionRefused, dispatch
from operations.lifecycle.rollup import roll_up
from operations.models import TRANSITIONS, Operation, OperationStatus

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

ALL_STATUSES = [s.value for s in OperationStatus]


def submit(operation_type: str = "test_echo", **fields: Any) -> Operation:
    return lifecycle.operation_submit(bank_id="alpha", operation_type=operation_type, **fields).operation


def claim(operation: Operation) -> Lease:
    lease = lifecycle.operation_claim(operation_id=str(operation.pk), worker="w@test", task_id="t1")
    assert lease is not None
    return lease


def in_status(status: str, operation_type: str = "test_echo") -> tuple[Operation, Lease | None]:
    """An operation brought to `status` through the service itself."""
    operation = submit(operation_type)
    if status == "pending":
        return operation, None
    if status == "cancelled":
        lifecycle.operation_cancel(operation_id=operation.pk)
        return operation, None
    lease = claim(operation)
    if status == "completed":
        lifecycle.operation_complete(lease=lease, result={})
    elif status == "failed":
        lifecycle.operation_fail(lease=lease, error="boom", permanent=True)
    return operation, lease


def status_of(operation: Operation) -> str:
    return Operation.objects.get(pk=operation.pk).status


# --- submit ---------------------------------------------------------------------------


def test_submit_creates_a_pending_row_with_the_type_defaults(alpha: Any) -> None:
    operation = submit("test_echo", payload={"value": 1}, items_count=3, tag="nightly", document_id="d1")
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "pending"
    assert row.task_payload == {"value": 1}
    assert row.items_count == 3 and row.tag == "nightly" and row.document_id == "d1"
    assert row.max_retries == 3  # OPS_WORKER_MAX_RETRIES
    assert row.retry_count == 0 and row.dedupe_key is None and row.serial_key is None


def test_submit_of_an_unknown_type_is_refused(alpha: Any) -> None:
    with pytest.raises(registry.UnknownOperationType):
        submit("no_such_type")
    assert Operation.objects.count() == 0


def test_submit_deduplicates_while_pending_only(alpha: Any, beta: Any) -> None:
    first = lifecycle.operation_submit(bank_id="alpha", operation_type="test_dedupe")
    again = lifecycle.operation_submit(bank_id="alpha", operation_type="test_dedupe")
    other_bank = lifecycle.operation_submit(bank_id="beta", operation_type="test_dedupe")
    assert not first.deduplicated and again.deduplicated
    assert again.operation.pk == first.operation.pk
    assert not other_bank.deduplicated and other_bank.operation.pk != first.operation.pk
    assert first.operation.dedupe_key == "test_dedupe:alpha"
    claim(first.operation)  # no longer pending: a new submit makes a new row
    later = lifecycle.operation_submit(bank_id="alpha", operation_type="test_dedupe")
    assert not later.deduplicated and later.operation.pk != first.operation.pk


# --- claim --------------------------------------------------------------------------


def test_claim_takes_a_pending_operation_once(alpha: Any) -> None:
    operation = submit()
    lease = claim(operation)
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "processing" and row.worker == "w@test" and row.task_id == "t1"
    assert str(row.lease_id) == lease.lease_id and row.heartbeat_at is not None
    assert lifecycle.operation_claim(operation_id=str(operation.pk), worker="w2", task_id="t2") is None


def test_claim_refuses_an_operation_that_is_not_due(alpha: Any) -> None:
    operation = submit()
    Operation.objects.filter(pk=operation.pk).update(next_retry_at=timezone.now() + timedelta(hours=1))
    assert lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t") is None
    Operation.objects.filter(pk=operation.pk).update(next_retry_at=timezone.now() - timedelta(seconds=1))
    assert lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t") is not None


def test_claim_of_a_missing_operation_is_dropped(alpha: Any) -> None:
    assert (
        lifecycle.operation_claim(operation_id="00000000-0000-0000-0000-000000000000", worker="w", task_id="t") is None
    )


def test_one_processing_per_serialization_key(alpha: Any) -> None:
    running = submit("test_dedupe")
    lease = claim(running)
    waiting = submit("test_dedupe")
    assert waiting.pk != running.pk
    assert lifecycle.operation_claim(operation_id=str(waiting.pk), worker="w", task_id="t") is None
    assert status_of(waiting) == "pending"
    lifecycle.operation_complete(lease=lease, result=None)
    assert lifecycle.operation_claim(operation_id=str(waiting.pk), worker="w", task_id="t") is not None


# --- progress, complete, fail --------------------------------------------------------


def test_progress_is_fenced_by_the_lease(alpha: Any) -> None:
    operation = submit()
    lease = claim(operation)
    report = {"stage": "s", "processed": 1, "total": 2}
    assert lifecycle.operation_progress(lease=lease, progress=report)
    assert Operation.objects.get(pk=operation.pk).progress == report
    stale = Lease(**{**lease.__dict__, "lease_id": "00000000-0000-0000-0000-000000000001"})
    assert not lifecycle.operation_progress(lease=stale, progress=report)
    assert lifecycle.operation_lease_state(lease=stale) == "lost"
    assert lifecycle.operation_lease_state(lease=lease) == "ok"


def test_complete_records_the_result_once(alpha: Any) -> None:
    operation = submit()
    lease = claim(operation)
    assert lifecycle.operation_complete(lease=lease, result={"n": 1})
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "completed" and row.result_metadata == {"n": 1} and row.completed_at
    assert row.lease_id is None
    assert not lifecycle.operation_complete(lease=lease, result={"n": 2})
    assert Operation.objects.get(pk=operation.pk).result_metadata == {"n": 1}


def test_transient_failure_reschedules_with_backoff(alpha: Any, settings: Any) -> None:
    settings.OPS_RETRY_BACKOFF_SECONDS = 10
    operation = submit()
    lease = claim(operation)
    before = timezone.now()
    assert lifecycle.operation_fail(lease=lease, error="flaky", permanent=False, stage="fetch") == "pending"
    row = Operation.objects.get(pk=operation.pk)
    assert row.retry_count == 1 and row.status == "pending" and row.lease_id is None
    assert before <= row.next_retry_at <= timezone.now() + timedelta(seconds=10)
    assert row.error_message == "flaky (stage: fetch)"
    assert [e["error"] for e in row.error_history] == ["flaky (stage: fetch)"]
    # Parked: not claimable until due.
    assert lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t") is None


def test_failure_after_the_retry_budget_is_final(alpha: Any) -> None:
    operation = submit()
    for attempt in range(4):
        Operation.objects.filter(pk=operation.pk).update(next_retry_at=None)
        lease = claim(operation)
        outcome = lifecycle.operation_fail(lease=lease, error=f"e{attempt}", permanent=False)
        assert outcome == ("pending" if attempt < 3 else "failed")
    row = Operation.objects.get(pk=operation.pk)
    assert row.retry_count == 3 and row.error_message == "e3" and len(row.error_history) == 4


def test_permanent_failure_is_not_retried(alpha: Any) -> None:
    operation = submit()
    lease = claim(operation)
    assert lifecycle.operation_fail(lease=lease, error="bad input", permanent=True) == "failed"
    row = Operation.objects.get(pk=operation.pk)
    assert row.retry_count == 0 and row.next_retry_at is None and row.completed_at


def test_error_message_is_capped(alpha: Any) -> None:
    operation = submit()
    lifecycle.operation_fail(lease=claim(operation), error="x" * 9000, permanent=True)
    assert len(Operation.objects.get(pk=operation.pk).error_message) == 5000


# --- cancel -----------------------------------------------------------------------------


def test_cancel_of_a_pending_operation_is_immediate(alpha: Any) -> None:
    operation = submit()
    assert lifecycle.operation_cancel(operation_id=operation.pk) is CancelOutcome.CANCELLED
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "cancelled" and row.completed_at
    assert lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t") is None


def test_cancel_of_a_processing_operation_is_a_request(alpha: Any) -> None:
    operation = submit()
    lease = claim(operation)
    assert lifecycle.operation_cancel(operation_id=operation.pk) is CancelOutcome.REQUESTED
    assert lifecycle.operation_cancel(operation_id=operation.pk) is CancelOutcome.REQUESTED
    assert status_of(operation) == "processing"
    assert lifecycle.operation_lease_state(lease=lease) == "cancel_requested"
    assert lifecycle.operation_confirm_cancel(lease=lease, stage="step 2")
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "cancelled" and row.error_message == "cancelled during stage step 2"


def test_a_failure_after_a_cancel_request_ends_cancelled(alpha: Any) -> None:
    operation = submit()
    lease = claim(operation)
    lifecycle.operation_cancel(operation_id=operation.pk)
    assert lifecycle.operation_fail(lease=lease, error="boom", permanent=False) == "cancelled"
    assert status_of(operation) == "cancelled"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancel_of_a_terminal_operation_is_refused(alpha: Any, status: str) -> None:
    operation, _ = in_status(status)
    with pytest.raises(TransitionRefused) as refused:
        lifecycle.operation_cancel(operation_id=operation.pk)
    assert refused.value.status == status
    assert status_of(operation) == status


def test_transitions_of_a_missing_operation(alpha: Any) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for action in (lifecycle.operation_cancel, lifecycle.operation_retry, lifecycle.operation_delete):
        with pytest.raises(OperationNotFound):
            action(operation_id=missing)


def test_bulk_cancel_of_pending_operations(alpha: Any, beta: Any) -> None:
    pending = [submit("test_echo") for _ in range(3)] + [submit("test_sleep")]
    running = submit("test_echo")
    claim(running)
    other_bank = lifecycle.operation_submit(bank_id="beta", operation_type="test_echo").operation
    assert lifecycle.operations_cancel_pending(bank_id="alpha", operation_type="test_sleep") == 1
    assert lifecycle.operations_cancel_pending(bank_id="alpha") == 3
    assert {status_of(o) for o in pending} == {"cancelled"}
    assert status_of(running) == "processing" and status_of(other_bank) == "pending"


# --- retry, delete ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_retry_requeues_failed_and_cancelled(alpha: Any, status: str) -> None:
    operation, _ = in_status(status)
    lifecycle.operation_retry(operation_id=operation.pk)
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "pending" and row.retry_count == 0 and row.completed_at is None
    assert row.error_message is None and row.cancel_requested_at is None


@pytest.mark.parametrize("status", ["pending", "processing", "completed"])
def test_retry_is_refused_unless_failed_or_cancelled(alpha: Any, status: str) -> None:
    operation, _ = in_status(status)
    with pytest.raises(TransitionRefused):
        lifecycle.operation_retry(operation_id=operation.pk)
    assert status_of(operation) == status


def test_retry_is_refused_when_a_pending_duplicate_covers_it(alpha: Any) -> None:
    operation = submit("test_dedupe")
    lifecycle.operation_cancel(operation_id=operation.pk)
    newer = submit("test_dedupe")
    with pytest.raises(TransitionRefused, match="already covers"):
        lifecycle.operation_retry(operation_id=operation.pk)
    assert status_of(operation) == "cancelled" and status_of(newer) == "pending"


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_delete_only_terminal_operations(alpha: Any, status: str) -> None:
    operation, _ = in_status(status)
    if status in ("pending", "processing"):
        with pytest.raises(TransitionRefused):
            lifecycle.operation_delete(operation_id=operation.pk)
        assert Operation.objects.filter(pk=operation.pk).exists()
    else:
        lifecycle.operation_delete(operation_id=operation.pk)
        assert not Operation.objects.filter(pk=operation.pk).exists()


# --- the table itself -------------------------------------------------------------------


def _attempt(action: str, status: str, operation: Operation, lease: Lease | None) -> bool:
    """Try `action`; True if the service performed it."""
    pk = operation.pk
    try:
        if action == "claim":
            return lifecycle.operation_claim(operation_id=str(pk), worker="w", task_id="t") is not None
        if action in ("cancel", "request_cancel"):
            # One service call, two transitions: which one depends on the status.
            outcome = lifecycle.operation_cancel(operation_id=pk)
            performed = "cancel" if outcome is CancelOutcome.CANCELLED else "request_cancel"
            assert status in TRANSITIONS[performed].sources
            return performed == action
        if action == "retry":
            lifecycle.operation_retry(operation_id=pk)
            return True
        if action == "delete":
            lifecycle.operation_delete(operation_id=pk)
            return True
    except TransitionRefused:
        return False
    if action == "dispatch":
        current = Operation.objects.get(pk=pk)
        return dispatch.publish(pk, current.operation_type, expected_dispatched_at=current.dispatched_at)
    if lease is None:
        return False  # the worker-side actions need a lease, which only processing rows have
    if action == "progress":
        return lifecycle.operation_progress(lease=lease, progress={"stage": "x"})

    if action == "complete":
        return lifecycle.operation_complete(lease=lease, result=None)
    if action == "fail":
        return lifecycle.operation_fail(lease=lease, error="e", permanent=True) == "failed"
    if action == "reschedule":
        return lifecycle.operation_fail(lease=lease, error="e", permanent=False) == "pending"
    if action == "confirm_cancel":
        return lifecycle.operation_confirm_cancel(lease=lease)
    if action == "yield":
        return lifecycle.operation_yield(lease=lease, progress=None)
    raise AssertionError(action)


ROW_ACTIONS = [a for a, t in TRANSITIONS.items() if a != "submit" and not t.parents]


@pytest.mark.parametrize("status", ALL_STATUSES)
@pytest.mark.parametrize("action", ROW_ACTIONS)
def test_transition_table(alpha: Any, action: str, status: str) -> None:
    """Each action succeeds from exactly the statuses the table allows, and
    ends in the status the table names."""
    operation, lease = in_status(status)
    transition = TRANSITIONS[action]
    performed = _attempt(action, status, operation, lease)
    assert performed == (status in transition.sources), f"{action} from {status}"
    if performed and transition.target is not None:
        assert status_of(operation) == transition.target
    if not performed and action not in ("cancel", "request_cancel"):
        assert status_of(operation) == status


# --- parents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ({"pending": 2}, "pending"),
        ({"pending": 1, "processing": 1}, "processing"),
        ({"pending": 1, "completed": 1}, "processing"),
        ({"completed": 2}, "completed"),
        ({"completed": 1, "failed": 1}, "failed"),
        ({"completed": 1, "cancelled": 1}, "cancelled"),
        ({"failed": 1, "cancelled": 1}, "failed"),
        ({"cancelled": 2}, "cancelled"),
        ({}, None),
    ],
)
def test_rolled_up_status(children: dict[str, int], expected: str | None) -> None:
    assert lifecycle.rolled_up_status(children) == expected


def test_parent_follows_its_children(alpha: Any) -> None:
    parent = submit("test_batch")
    kids = [submit("test_echo", parent_id=parent.pk) for _ in range(3)]
    assert status_of(parent) == "pending"
    leases = [claim(k) for k in kids]
    assert status_of(parent) == "processing"
    lifecycle.operation_complete(lease=leases[0], result=None)
    lifecycle.operation_fail(lease=leases[1], error="bad", permanent=True)
    row = Operation.objects.get(pk=parent.pk)
    assert row.status == "processing" and row.progress["processed"] == 2 and row.progress["total"] == 3
    lifecycle.operation_confirm_cancel(lease=leases[2])
    row = Operation.objects.get(pk=parent.pk)
    assert row.status == "failed" and row.completed_at and row.progress["processed"] == 3


def test_cancel_and_retry_of_a_parent_act_on_its_children(alpha: Any) -> None:
    parent = submit("test_batch")
    kids = [submit("test_echo", parent_id=parent.pk) for _ in range(3)]
    running = claim(kids[0])
    assert lifecycle.operation_cancel(operation_id=parent.pk) is CancelOutcome.REQUESTED
    assert [status_of(k) for k in kids] == ["processing", "cancelled", "cancelled"]
    assert status_of(parent) == "processing"
    lifecycle.operation_confirm_cancel(lease=running)
    assert status_of(parent) == "cancelled"
    lifecycle.operation_retry(operation_id=parent.pk)
    assert [status_of(k) for k in kids] == ["pending"] * 3
    assert status_of(parent) == "pending"


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_parent_transitions_from_the_table(alpha: Any, status: str) -> None:
    """Parents move only by their own transitions, from the statuses listed:
    the roll-up never moves a finished parent, and no row transition (the
    cancel of a bulk cancel, a claim) ever touches a parent."""
    parent = submit("test_batch")
    Operation.objects.filter(pk=parent.pk).update(status=status)
    rows = Operation.objects.filter(pk=parent.pk)
    moved = rows.transition("roll_up", status="completed")
    assert bool(moved) == (status in TRANSITIONS["roll_up"].sources)
    rows.update(status=status)
    assert bool(rows.transition("retry_parent")) == (status in TRANSITIONS["retry_parent"].sources)
    rows.update(status=status)
    for action in ROW_ACTIONS:
        if TRANSITIONS[action].targets:
            assert rows.transition(action) == 0, action
    assert status_of(parent) == status


def test_bulk_cancel_of_parents_cancels_their_children_and_they_stay_cancelled(alpha: Any) -> None:
    """Bulk cancel with type=retain_batch used to cancel the parent rows alone:
    the children ran on and the roll-up moved the parent back to processing
    and completed."""
    parent = submit("test_batch")
    kids = [submit("test_echo", parent_id=parent.pk) for _ in range(3)]
    other = submit("test_echo")
    assert lifecycle.operations_cancel_pending(bank_id="alpha", operation_type="test_batch") == 4
    assert status_of(parent) == "cancelled"
    assert [status_of(k) for k in kids] == ["cancelled"] * 3
    assert status_of(other) == "pending"
    # Nothing can bring it back but a retry: no child is claimable, and a
    # roll-up leaves a finished parent alone.
    assert all(lifecycle.operation_claim(operation_id=str(k.pk), worker="w", task_id="t") is None for k in kids)
    with transaction.atomic():
        assert roll_up(parent.pk) is None
    assert status_of(parent) == "cancelled"


def test_bulk_cancel_of_children_rolls_their_parent_up(alpha: Any) -> None:
    parent = submit("test_batch")
    kids = [submit("test_echo", parent_id=parent.pk) for _ in range(2)]
    done = claim(kids[0])
    lifecycle.operation_complete(lease=done, result=None)
    assert lifecycle.operations_cancel_pending(bank_id="alpha", operation_type="test_echo") == 2
    assert status_of(kids[1]) == "cancelled" and status_of(parent) == "cancelled"


def test_a_finished_parent_is_not_resurrected_by_a_late_child(alpha: Any) -> None:
    """A child finishing after its parent was finished by other means leaves the
    parent alone (the roll-up is a conditional UPDATE from active statuses)."""
    parent = submit("test_batch")
    kid = submit("test_echo", parent_id=parent.pk)
    lease = claim(kid)
    Operation.objects.filter(pk=parent.pk).update(status="cancelled")
    lifecycle.operation_complete(lease=lease, result=None)
    assert status_of(parent) == "cancelled"


def test_retrying_one_child_reopens_its_finished_parent(alpha: Any) -> None:
    parent = submit("test_batch")
    kids = [submit("test_echo", parent_id=parent.pk) for _ in range(2)]
    lifecycle.operation_complete(lease=claim(kids[0]), result=None)
    lifecycle.operation_fail(lease=claim(kids[1]), error="bad", permanent=True)
    assert status_of(parent) == "failed"
    lifecycle.operation_retry(operation_id=kids[1].pk)
    row = Operation.objects.get(pk=parent.pk)
    assert row.status == "processing" and row.completed_at is None and row.error_message is None
    lifecycle.operation_complete(lease=claim(kids[1]), result=None)
    assert status_of(parent) == "completed"


def test_parent_progress_detail_counts_children_by_status(alpha: Any) -> None:
    parent = submit("test_batch")
    kids = [submit("test_echo", parent_id=parent.pk) for _ in range(3)]
    lifecycle.operation_cancel(operation_id=kids[0].pk)
    claim(kids[1])
    detail = Operation.objects.get(pk=parent.pk).progress["detail"]
    assert detail == {"pending": 1, "processing": 1, "completed": 0, "failed": 0, "cancelled": 1}


def test_a_cancel_landing_while_a_failure_is_recorded_is_not_lost(alpha: Any, monkeypatch: Any) -> None:
    """operation_fail used to read `cancel_requested_at`, then reschedule
    without checking it again: a cancel answered 202 in between was lost, and
    the next claim ran the operation again. The retry delay is computed between
    that read and the UPDATE; a cancel request lands exactly there."""
    operation = submit()
    lease = claim(operation)
    real_delay = lifecycle.retry_delay
    outcomes = []

    def cancel_meanwhile(optype: Any, attempt: int) -> float:
        outcomes.append(lifecycle.operation_cancel(operation_id=operation.pk))
        return real_delay(optype, attempt)

    monkeypatch.setattr(lifecycle.run, "retry_delay", cancel_meanwhile)  # where the failure asks it
    assert lifecycle.operation_fail(lease=lease, error="flaky", permanent=False) == "cancelled"
    assert outcomes == [CancelOutcome.REQUESTED]
    assert status_of(operation) == "cancelled"
    assert lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t2") is None


# --- keys ---------------------------------------------------------------------------------


def test_dedupe_and_serialization_keys_are_unambiguous_across_banks(db: None) -> None:
    """Bank `x` with document `y:z` and bank `x:y` with document `z` used to
    share the key `type:x:y:z`."""
    from tenancy.models import Bank

    Bank.objects.create(bank_id="x")
    Bank.objects.create(bank_id="x:y")
    first = lifecycle.operation_submit(bank_id="x", operation_type="test_serial_doc", document_id="y:z").operation
    second = lifecycle.operation_submit(bank_id="x:y", operation_type="test_serial_doc", document_id="z").operation
    assert first.serial_key != second.serial_key
    claim(first)
    assert lifecycle.operation_claim(operation_id=str(second.pk), worker="w", task_id="t2") is not None
    a = lifecycle.operation_submit(bank_id="x", operation_type="test_dedupe_doc", document_id="y:z")
    b = lifecycle.operation_submit(bank_id="x:y", operation_type="test_dedupe_doc", document_id="z")
    assert not b.deduplicated and a.operation.pk != b.operation.pk


# --- the reaper -------------------------------------------------------------------------


def _expire(operation: Operation, settings: Any) -> None:
    stale = timezone.now() - timedelta(seconds=settings.OPS_LEASE_SECONDS + 1)
    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=stale)


def test_reaper_requeues_an_operation_whose_lease_expired(alpha: Any, settings: Any) -> None:
    operation = submit()
    lease = claim(operation)
    lifecycle.operation_progress(lease=lease, progress={"stage": "embedding"})
    fresh = submit()
    claim(fresh)
    _expire(operation, settings)
    assert lifecycle.operations_reap() == 1
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "pending" and row.retry_count == 1 and row.lease_id is None
    assert row.error_message == "worker lost (w@test) (stage: embedding)"
    assert status_of(fresh) == "processing"
    # The old worker can no longer write.
    assert not lifecycle.operation_complete(lease=lease, result=None)


def test_reaper_fails_an_operation_out_of_retries(alpha: Any, settings: Any) -> None:
    operation = submit()
    claim(operation)
    Operation.objects.filter(pk=operation.pk).update(retry_count=3)
    _expire(operation, settings)
    assert lifecycle.operations_reap() == 1
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "failed" and row.error_message.startswith("worker lost")


def test_reaper_finishes_a_cancel_request(alpha: Any, settings: Any) -> None:
    operation = submit()
    claim(operation)
    lifecycle.operation_cancel(operation_id=operation.pk)
    _expire(operation, settings)
    lifecycle.operations_reap()
    assert status_of(operation) == "cancelled"


def test_heartbeat_renews_only_held_leases(alpha: Any, settings: Any) -> None:
    operation = submit()
    lease = claim(operation)
    _expire(operation, settings)
    assert lifecycle.operations_heartbeat(leases={lease.operation_id: lease.lease_id}) == 1
    assert lifecycle.operations_reap() == 0
    assert lifecycle.operations_heartbeat(leases={lease.operation_id: "00000000-0000-0000-0000-000000000009"}) == 0
