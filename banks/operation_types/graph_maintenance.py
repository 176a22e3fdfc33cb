"""graph_maintenance: repair the memory graph after deletes, in three passes:
link top-up for units that lost a neighbour, orphan entity prune, stale
co-occurrence prune. Each pass only converges, so re-running is harmless."""

from __future__ import annotations

from typing import Any

from banks import memory
from operations.handlers import OperationContext
from tenancy.models import Bank


def handle(ctx: OperationContext) -> dict[str, Any]:
    bank = Bank.objects.get(pk=ctx.bank_id)
    ctx.progress("topping up links", processed=0, total=3)
    topped = 0
    while True:
        batch = memory.top_up_links(bank, limit=200)
        topped += batch
        ctx.checkpoint()
        if batch < 200:
            break
    ctx.progress("pruning orphan entities", processed=1, total=3)
    orphans = memory.prune_orphan_entities(bank)
    ctx.progress("pruning stale co-occurrences", processed=2, total=3)
    stale = memory.prune_stale_cooccurrences(bank)
    ctx.progress("done", processed=3, total=3)
    return {"units_topped_up": topped, "entities_pruned": orphans, "cooccurrences_pruned": stale}
