"""file_convert_retain: convert an uploaded file to text, then retain it.

Conversion errors are permanent (`ConversionError`). The file stays in the
database until the operation completes (`banks.tasks.delete_finished_files`),
so a retry, automatic or manual, finds it again; the retain replaces the same
document, so a re-run is harmless.
"""

from __future__ import annotations

from typing import Any

from banks import converters, follow_ups, memory
from banks.models import StoredFile
from operations.handlers import OperationContext, PermanentError
from tenancy.models import Bank


def handle(ctx: OperationContext) -> dict[str, Any]:
    ctx.progress("loading")
    stored = StoredFile.objects.filter(operation_id=ctx.operation_id).first()
    if stored is None:
        raise PermanentError("the uploaded file is no longer stored; upload it again")
    ctx.progress("converting", detail={"bytes": stored.size})
    text = converters.convert(data=bytes(stored.data), content_type=stored.content_type, filename=stored.filename)
    bank = Bank.objects.get(pk=ctx.bank_id)
    item = memory.RetainItem(
        content=text,
        context=ctx.payload.get("context") or "",
        tags=ctx.payload.get("tags") or [],
        metadata={
            **(ctx.payload.get("metadata") or {}),
            "filename": stored.filename,
            "content_type": stored.content_type,
            "size": stored.size,
        },
        document_id=ctx.document_id,
    )
    ctx.progress("retaining", processed=0, total=1)
    outcome = memory.retain_items(bank=bank, items=[item], default_document_id=lambda i: f"file-{ctx.operation_id}")
    ctx.progress("retained", processed=1, total=1)
    return {
        "filename": stored.filename,
        "characters": len(text),
        "units": outcome.units,
        "document_ids": outcome.document_ids,
        **follow_ups.after_retain(bank=bank, outcome=outcome),
    }
