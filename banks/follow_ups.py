"""Work a change to a bank's memory queues after it."""

from __future__ import annotations

from typing import Any

from banks.memory import RetainOutcome
from banks.models import Observation
from operations import lifecycle
from tenancy.models import Bank


def after_retain(*, bank: Bank, outcome: RetainOutcome) -> dict[str, Any]:
    """Consolidation when the bank asks for it and units were added (it also
    repairs observations that replaced units left stale); graph maintenance
    when re-retained documents replaced units."""
    queued: dict[str, Any] = {}
    if outcome.units and bank.enable_auto_consolidation:
        queued["consolidation_operation_id"] = str(queue_consolidation(bank=bank).operation.pk)
    if outcome.replaced_units:
        queued["graph_maintenance_operation_id"] = str(queue_graph_maintenance(bank=bank).operation.pk)
    return queued


def after_delete(*, bank: Bank) -> dict[str, str | None]:
    """Call in the deleting transaction, so the follow-ups are queued if and
    only if the delete commits. Graph maintenance always; a consolidation
    when the delete left observations stale and the bank keeps them up to
    date on its own (`enable_observations` and `enable_auto_consolidation`)."""
    maintenance = queue_graph_maintenance(bank=bank)
    consolidation = queue_consolidation(bank=bank) if _stale_observations(bank) else None
    return {
        "operation_id": str(maintenance.operation.pk),
        "consolidation_operation_id": str(consolidation.operation.pk) if consolidation else None,
    }


def _stale_observations(bank: Bank) -> bool:
    return (
        bank.enable_observations
        and bank.enable_auto_consolidation
        and Observation.objects.filter(bank=bank, needs_rebuild=True).exists()
    )


def queue_consolidation(
    *, bank: Bank, scopes: list[list[str]] | None = None, tag: str | None = None
) -> lifecycle.Submission:
    """Queue a consolidation of the units in `scopes` (None: every unit).

    Deduplicated per bank while one is pending; then the pending one's scope
    is widened to cover this request too, so a deduplicated request is not
    a lost one. The widening is a conditional UPDATE on the row still being
    pending: if a worker claimed it first, the request is submitted again
    (and becomes, or joins, the next pending one)."""
    wanted = _normalized(scopes)
    for _ in range(5):
        submitted = lifecycle.operation_submit(
            bank_id=bank.pk, operation_type="consolidation", payload=_payload(wanted), tag=tag
        )
        if not submitted.deduplicated:
            return submitted
        pending = submitted.operation
        merged = _widened(_scopes_of(pending.task_payload), wanted)
        if merged == _scopes_of(pending.task_payload):
            return submitted
        if lifecycle.operation_amend_pending(operation=pending, payload=_payload(merged)):
            return submitted
    return submitted


def _normalized(scopes: list[list[str]] | None) -> list[list[str]] | None:
    """Scopes in one canonical order (each sorted, no duplicates), so equal
    scopes compare equal; None (every unit) for none."""
    if not scopes:
        return None
    return [list(scope) for scope in sorted({tuple(sorted(set(scope))) for scope in scopes})]


def _scopes_of(payload: dict[str, Any]) -> list[list[str]] | None:
    if payload.get("observation_scopes"):
        return _normalized(payload["observation_scopes"])
    if payload.get("tags"):  # the older form: any one of these tags
        return _normalized([[tag] for tag in payload["tags"]])
    return None


def _widened(current: list[list[str]] | None, extra: list[list[str]] | None) -> list[list[str]] | None:
    if current is None or extra is None:
        return None  # one of them covers every unit
    return _normalized(current + extra)


def _payload(scopes: list[list[str]] | None) -> dict[str, Any]:
    return {"observation_scopes": scopes} if scopes else {}


def queue_graph_maintenance(*, bank: Bank) -> lifecycle.Submission:
    return lifecycle.operation_submit(bank_id=bank.pk, operation_type="graph_maintenance")
