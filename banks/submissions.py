"""Submitting memory work: async retains (a retain_batch parent and its
children), file uploads, and the idempotency of client operation ids."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from banks.memory import RetainItem
from banks.models import StoredFile
from operations import lifecycle
from operations.models import Operation
from tenancy.models import Bank


class OperationIdConflict(Exception):
    """A client operation id already names an operation of another bank or type."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file and how to retain it."""

    filename: str
    content_type: str
    data: bytes
    context: str = ""
    document_id: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


def _existing(operation_id: uuid.UUID, *, bank: Bank, operation_type: str) -> Operation | None:
    existing = Operation.objects.filter(pk=operation_id).first()
    if existing is None:
        return None
    if existing.bank_id != bank.pk or existing.operation_type != operation_type:
        raise OperationIdConflict(
            f"operation id {operation_id} is already used by a {existing.operation_type} "
            f"operation{'' if existing.bank_id == bank.pk else ' of another bank'}"
        )
    return existing


def retain_async(
    *,
    bank: Bank,
    items: list[RetainItem],
    document_tags: list[str],
    operation_id: uuid.UUID | None = None,
    tag: str | None = None,
) -> tuple[Operation, bool]:
    """One retain_batch parent and children of at most OPS_RETAIN_BATCH_ITEMS
    items, in one transaction (published on commit). Returns (the parent as
    inserted, rolled up already; repeated):
    a repeated client `operation_id` returns the original parent untouched.
    Raises OperationIdConflict when the id names another bank's or type's operation."""
    if operation_id is not None:
        existing = _existing(operation_id, bank=bank, operation_type="retain_batch")
        if existing is not None:
            return existing, True
    batch_id = str(operation_id or uuid.uuid4())
    size = settings.OPS_RETAIN_BATCH_ITEMS
    children = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        children.append(
            lifecycle.Child(
                operation_type="retain",
                items_count=len(chunk),
                # A one-document chunk is serialized with other retains of that document.
                document_id=chunk[0].document_id if len(chunk) == 1 else None,
                payload={
                    "items": [item.to_payload() for item in chunk],
                    "document_tags": document_tags,
                    "batch_id": batch_id,
                    "offset": start,
                },
            )
        )
    try:
        with transaction.atomic():
            parent, _ = lifecycle.operation_submit_parent(
                bank_id=bank.pk,
                operation_type="retain_batch",
                operation_id=batch_id,
                fresh_id=operation_id is None,
                items_count=len(items),
                tag=tag,
                payload={"document_tags": document_tags, "children": len(children)},
                children=children,
            )
    except IntegrityError:
        # The same client id submitted concurrently: the other request won.
        if operation_id is None:
            raise
        existing = _existing(operation_id, bank=bank, operation_type="retain_batch")
        if existing is None:
            raise
        return existing, True
    return parent, False


def files_submit(*, bank: Bank, uploads: list[Upload], tag: str | None = None) -> list[Operation]:
    """One file_convert_retain operation per file, each with its file stored in
    the same transaction (so a worker never sees an operation without its file)."""
    operations = []
    with transaction.atomic():
        for upload in uploads:
            payload: dict[str, Any] = {
                "tags": list(upload.tags),
                "context": upload.context,
                "metadata": upload.metadata,
                "content_type": upload.content_type,
            }
            operation = lifecycle.operation_submit(
                bank_id=bank.pk,
                operation_type="file_convert_retain",
                filename=upload.filename,
                document_id=upload.document_id or upload.filename,
                items_count=1,
                payload=payload,
                tag=tag,
            ).operation
            StoredFile.objects.create(
                operation=operation,
                filename=upload.filename,
                content_type=upload.content_type,
                size=len(upload.data),
                sha256=hashlib.sha256(upload.data).hexdigest(),
                data=upload.data,
            )
            operations.append(operation)
    return operations
