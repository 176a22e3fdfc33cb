"""refresh_mental_model: run the model's `source_query` against the bank's
units and observations, and rewrite its content within `max_tokens` (tokens
counted as words). Rewrites the whole content, so re-running is harmless.

The result names what the refresh did with Hindsight's outcome values, which
the API reports as the operation's `details`."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from banks import search
from banks.models import MentalModel
from operations.handlers import OperationContext, PermanentError

# Hindsight's RefreshMentalModelOperationDetails.outcome values this handler produces.
CONTENT_WRITTEN = "content_written"
CONTENT_UNCHANGED = "content_unchanged"
NO_NEW_FACTS = "content_preserved_no_new_facts"
FAILED = "refresh_failed_error"
EMPTY = "- (nothing in this bank matches the query yet)"


def handle(ctx: OperationContext) -> dict[str, Any]:
    if ctx.mental_model_id is None:
        raise PermanentError("the operation names no mental model")
    model = MentalModel.objects.filter(pk=ctx.mental_model_id, bank_id=ctx.bank_id).first()
    if model is None:
        raise PermanentError(f"mental model {ctx.mental_model_id} no longer exists")
    ctx.progress("searching")
    hits = search.search_bank(bank_id=ctx.bank_id, query=model.source_query, limit=50, tags=model.tags)
    ctx.progress("writing", processed=len(hits), total=len(hits), detail={"hits": len(hits)})
    now = timezone.now()
    if not hits and model.content:
        # Nothing to read: keep what the model says rather than blank it.
        MentalModel.objects.filter(pk=model.pk).update(last_refreshed_at=now, updated_at=now)
        return {"outcome": NO_NEW_FACTS, "hits": 0, "words": len(model.content.split())}
    content = compose(model.name, hits, model.max_tokens)
    MentalModel.objects.filter(pk=model.pk).update(content=content, last_refreshed_at=now, updated_at=now)
    outcome = CONTENT_UNCHANGED if content == model.content else CONTENT_WRITTEN
    return {"outcome": outcome, "hits": len(hits), "words": len(content.split())}


def details(status: str, result: dict[str, Any]) -> dict[str, Any] | None:
    """The operation's `details` (Hindsight's RefreshMentalModelOperationDetails):
    the outcome once it finished, null before."""
    if status == "completed" and result.get("outcome"):
        return {"operation_type": "refresh_mental_model", "outcome": result["outcome"], "failure_reason": None}
    if status == "failed":
        return {"operation_type": "refresh_mental_model", "outcome": FAILED, "failure_reason": "unexpected_error"}
    return None


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
        lines.append(EMPTY)
    return "\n".join(lines)
