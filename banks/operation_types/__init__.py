"""The memory-bank operation types (SPEC §4), declared once each.

One module per type holds its handler; this module is the declaration list.
"""

from __future__ import annotations

from django.conf import settings

from operations.registry import OperationType, Scope, register

RETAIN = register(
    OperationType(
        name="retain",
        handler="banks.operation_types.retain.handle",
        description="store items as documents and memory units, extract entities, link units",
        serialize=Scope.DOCUMENT,
        soft_time_limit=900,
        resumable=True,
    )
)
RETAIN_BATCH = register(
    OperationType(
        name="retain_batch",
        description="parent of the retain children an async submission is split into",
        rollup=True,
    )
)
FILE_CONVERT_RETAIN = register(
    OperationType(
        name="file_convert_retain",
        handler="banks.operation_types.file_convert_retain.handle",
        description="convert an uploaded file to text, then retain it",
        serialize=Scope.DOCUMENT,
        soft_time_limit=900,
    )
)
CONSOLIDATION = register(
    OperationType(
        name="consolidation",
        handler="banks.operation_types.consolidation.handle",
        description="turn new memory units into per-entity observations",
        dedupe=Scope.BANK,
        serialize=Scope.BANK,
        reserved_slots=2,
        soft_time_limit=1800,
    )
)
REFRESH_MENTAL_MODEL = register(
    OperationType(
        name="refresh_mental_model",
        handler="banks.operation_types.refresh_mental_model.handle",
        description="re-run a mental model's source query and rewrite its content",
        dedupe=Scope.MENTAL_MODEL,
        serialize=Scope.MENTAL_MODEL,
        soft_time_limit=600,
        details="banks.operation_types.refresh_mental_model.details",
    )
)
GRAPH_MAINTENANCE = register(
    OperationType(
        name="graph_maintenance",
        handler="banks.operation_types.graph_maintenance.handle",
        description="after deletes: top up links, prune orphan entities and stale co-occurrences",
        dedupe=Scope.BANK,
        serialize=Scope.BANK,
        soft_time_limit=1800,
    )
)
WEBHOOK_DELIVERY = register(
    OperationType(
        name="webhook_delivery",
        handler="banks.operation_types.webhook_delivery.handle",
        description="POST a signed event to a registered webhook URL",
        # Hindsight's schedule (about 5 s, 5 min, 30 min, 2 h, 5 h) unless
        # OPS_WEBHOOK_RETRY_DELAYS says otherwise: one retry per delay.
        retry_delays=tuple(settings.OPS_WEBHOOK_RETRY_DELAYS),
        max_retries=len(settings.OPS_WEBHOOK_RETRY_DELAYS),
        # The longest allowed timeout (300 s), plus the guard's name resolution.
        soft_time_limit=330,
    )
)
