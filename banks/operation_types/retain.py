"""retain: store a chunk of items as documents and memory units.

Idempotent: each item replaces its document in one transaction, and an item
without a `document_id` gets one derived from the operation id and its
position, so a re-run after a crash replaces what the first run wrote.
"""

from __future__ import annotations

from typing import Any

from banks import follow_ups, memory
from banks.models import Bank
from operations.handlers import OperationContext


def handle(ctx: OperationContext) -> dict[str, Any]:
    bank = Bank.objects.get(pk=ctx.bank_id)
    items = [memory.RetainItem.from_payload(item) for item in ctx.payload["items"]]
    offset = int(ctx.payload.get("offset", 0))
    outcome = memory.retain_items(
        bank=bank,
        items=items,
        document_tags=ctx.payload.get("document_tags") or [],
        default_document_id=lambda i: f"{ctx.payload.get('batch_id') or ctx.operation_id}-{offset + i}",
        on_item=lambda done, total: ctx.progress("retaining", processed=done, total=total),
    )
    ctx.progress("retained", processed=len(items), total=len(items))
    return {
        "items": outcome.items,
        "units": outcome.units,
        "replaced_units": outcome.replaced_units,
        "document_ids": outcome.document_ids,
        **follow_ups.after_retain(bank=bank, outcome=outcome),
    }
