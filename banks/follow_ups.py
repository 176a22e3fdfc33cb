"""Work a change to a bank's memory queues after it."""

from __future__ import annotations

from typing import Any

from banks.memory import RetainOutcome
from banks.models import Bank
from operations import services


def after_retain(*, bank: Bank, outcome: RetainOutcome) -> dict[str, Any]:
    """Consolidation when the bank asks for it and units were added; graph
    maintenance when re-retained documents replaced units."""
    queued: dict[str, Any] = {}
    if outcome.units and bank.enable_auto_consolidation:
        queued["consolidation_operation_id"] = str(queue_consolidation(bank=bank).operation.pk)
    if outcome.replaced_units:
        queued["graph_maintenance_operation_id"] = str(queue_graph_maintenance(bank=bank).operation.pk)
    return queued


def queue_consolidation(*, bank: Bank, tags: list[str] | None = None) -> services.Submission:
    return services.operation_submit(
        bank_id=bank.pk, operation_type="consolidation", payload={"tags": tags or []}
    )


def queue_graph_maintenance(*, bank: Bank) -> services.Submission:
    return services.operation_submit(bank_id=bank.pk, operation_type="graph_maintenance")
