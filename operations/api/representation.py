"""Operations as the API shows them, built straight from `.values()` rows.

The serializers in `serializers.py` document the shapes (the OpenAPI schema is
generated from them); listing goes through here because a DRF serializer cost
about 0.35 ms per operation, more than the query of a whole page. A test holds
the two to the same output.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from operations import registry
from operations.models import Operation
from operations.selectors import LIST_FIELDS


def iso(value: datetime | None) -> str | None:
    """A timestamp as DRF renders it (ISO 8601, UTC as 'Z')."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def details(operation_type: str, status: str, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """Hindsight's `details`: the typed outcome a type declares, else null."""
    try:
        describe = registry.get(operation_type).details_function
    except registry.UnknownOperationType:
        return None
    return describe(status, result or {}) if describe else None


def operation_item(row: dict[str, Any]) -> dict[str, Any]:
    """One operation of a list (OperationSerializer's shape)."""
    operation_id = str(row["id"])
    return {
        "id": operation_id,
        "operation_id": operation_id,
        "bank_id": row["bank_id"],
        "task_type": row["operation_type"],
        "operation_type": row["operation_type"],
        "status": row["status"],
        "items_count": row["items_count"],
        "document_id": row["document_id"],
        "filename": row["filename"],
        "mental_model_id": row["mental_model_id"],
        "tag": row["tag"],
        "parent_id": str(row["parent_id"]) if row["parent_id"] else None,
        "details": details(row["operation_type"], row["status"], row["result_metadata"]),
        "execution": {
            "worker": row["worker"],
            "max_retries": row["max_retries"],
            "heartbeat_at": iso(row["heartbeat_at"]),
            "cancel_requested_at": iso(row["cancel_requested_at"]),
        },
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
        "error_message": row["error_message"],
        "retry_count": row["retry_count"],
        "next_retry_at": iso(row["next_retry_at"]),
        "progress": row["progress"],
    }


def operation_items(queryset: QuerySet[Operation] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = queryset.values(*LIST_FIELDS) if isinstance(queryset, QuerySet) else queryset
    return [operation_item(row) for row in rows]


def operation_detail(
    row: dict[str, Any], *, children: list[dict[str, Any]] | None, include_payload: bool
) -> dict[str, Any]:
    """One operation in full (OperationDetailSerializer's shape)."""
    data = operation_item(row)
    data["max_retries"] = row["max_retries"]
    data["result_metadata"] = row["result_metadata"]
    data["error_history"] = row["error_history"]
    data["child_operations"] = (
        None
        if children is None
        else [{**operation_item(child), "sub_batch_index": index} for index, child in enumerate(children)]
    )
    if include_payload:
        data["task_payload"] = row["task_payload"]
    return data
