"""Reads of operations: filtered lists and statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from operations import registry
from operations.models import Operation, OperationStatus


def operations_filtered(queryset: QuerySet[Operation], filters: dict[str, Any]) -> QuerySet[Operation]:
    """Apply the list filters (as validated by OperationFilterSerializer); newest first."""
    if filters.get("status"):
        queryset = queryset.filter(status__in=filters["status"])
    if filters.get("type"):
        queryset = queryset.filter(operation_type__in=filters["type"])
    if filters.get("tag"):
        queryset = queryset.filter(tag=filters["tag"])
    if filters.get("within_hours"):
        queryset = queryset.filter(created_at__gte=timezone.now() - timedelta(hours=filters["within_hours"]))
    if filters.get("created_after"):
        queryset = queryset.filter(created_at__gte=filters["created_after"])
    if filters.get("created_before"):
        queryset = queryset.filter(created_at__lte=filters["created_before"])
    if filters.get("parent_id"):
        queryset = queryset.filter(parent_id=filters["parent_id"])
    if filters.get("exclude_parents"):
        queryset = queryset.exclude(operation_type__in=[t.name for t in registry.all_types() if t.rollup])
    if filters.get("bank_id"):
        queryset = queryset.filter(bank_id=filters["bank_id"])
    # The id breaks ties between rows created in the same microsecond, so
    # pages never overlap.
    return queryset.order_by("-created_at", "-id")


def operation_page(queryset: QuerySet[Operation], *, limit: int, offset: int) -> tuple[int, list[Operation]]:
    return queryset.count(), list(queryset[offset : offset + limit])


def operation_stats(*, bank_id: str) -> dict[str, Any]:
    rows = Operation.objects.filter(bank_id=bank_id)
    by_status = {s: 0 for s in OperationStatus.values}
    for status, n in rows.values_list("status").annotate(n=Count("id")).order_by():
        by_status[status] = n
    by_type = dict(rows.values_list("operation_type").annotate(n=Count("id")).order_by())
    oldest = rows.filter(status=OperationStatus.PENDING).aggregate(oldest=Min("created_at"))["oldest"]
    return {
        "bank_id": bank_id,
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_type": by_type,
        "oldest_pending_age_seconds": (timezone.now() - oldest).total_seconds() if oldest else None,
    }
