"""refresh_mental_model: run the model's `source_query` against the bank's
units and observations, and rewrite its content within `max_tokens` (tokens
counted as words). Rewrites the whole content, so re-running is harmless."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from banks import search
from banks.models import MentalModel
from operations.handlers import OperationContext, PermanentError


def handle(ctx: OperationContext) -> dict[str, Any]:
    model = MentalModel.objects.filter(pk=ctx.mental_model_id, bank_id=ctx.bank_id).first()
    if model is None:
        raise PermanentError(f"mental model {ctx.mental_model_id} no longer exists")
    ctx.progress("searching")
    hits = search.search_bank(bank_id=ctx.bank_id, query=model.source_query, limit=50, tags=model.tags)
    ctx.progress("writing", processed=len(hits), total=len(hits))
    content = compose(model.name, hits, model.max_tokens)
    MentalModel.objects.filter(pk=model.pk).update(
        content=content, last_refreshed_at=timezone.now(), updated_at=timezone.now()
    )
    return {"hits": len(hits), "words": len(content.split())}


def compose(name: str, hits: list[search.Hit], max_tokens: int) -> str:
    lines = [f"# {name}"]
    words = 2
    for hit in hits:
        line = f"- {hit.text}"
        size = len(line.split())
        if words + size > max_tokens:
            break
        lines.append(line)
        words += size
    if len(lines) == 1:
        lines.append("- (nothing in this bank matches the query yet)")
    return "\n".join(lines)
