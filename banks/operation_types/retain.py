"""retain: store a chunk of items as documents and memory units.

Idempotent: each item replaces its document in one transaction, and an item
without a `document_id` gets one derived from the operation id and its
position, so a re-run after a crash replaces what the first run wrote.

Resumable: progress is recorded before each item with the counts so far, so
a run that gave its slot to another bank (fair share) or was interrupted
starts again at the first item it had not written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from banks import follow_ups, memory
from operations.handlers import OperationContext
from tenancy.models import Bank


def handle(ctx: OperationContext) -> dict[str, Any]:
    bank = Bank.objects.get(pk=ctx.bank_id)
    items = [memory.RetainItem.from_payload(item) for item in ctx.payload["items"]]
    offset = int(ctx.payload.get("offset", 0))

    def document_id(i: int) -> str:
        return f"{ctx.payload.get('batch_id') or ctx.operation_id}-{offset + i}"

    def on_item(done: int, total: int, so_far: memory.RetainOutcome) -> None:
        ctx.progress("retaining", processed=done, total=total, detail=so_far.counts())

    start, outcome = _resume_point(ctx, items, document_id)
    memory.retain_items(
        bank=bank,
        items=items,
        document_tags=ctx.payload.get("document_tags") or [],
        default_document_id=document_id,
        on_item=on_item,
        start=start,
        outcome=outcome,
    )
    ctx.progress("retained", processed=len(items), total=len(items), detail=outcome.counts())
    return {
        "items": outcome.items,
        "units": outcome.units,
        "replaced_units": outcome.replaced_units,
        "document_ids": outcome.document_ids,
        **follow_ups.after_retain(bank=bank, outcome=outcome),
    }


def _resume_point(
    ctx: OperationContext, items: list[memory.RetainItem], document_id: Callable[[int], str]
) -> tuple[int, memory.RetainOutcome]:
    """Where a resumed run starts: the items before its last progress are
    written (each committed before the next one's progress), with the counts
    that progress carries. A fresh run starts at 0."""
    resumed = ctx.resumed
    if not resumed or resumed.get("stage") != "retaining" or not resumed.get("processed"):
        return 0, memory.RetainOutcome()
    start = min(int(resumed["processed"]), len(items))
    outcome = memory.RetainOutcome.from_counts(resumed.get("detail") or {})
    outcome.document_ids = [items[i].document_id or document_id(i) for i in range(start)]
    return start, outcome
