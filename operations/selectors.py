"""Reads of operations: filtered lists and statistics."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Min, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from operations import registry
from operations.models import Operation, OperationQuerySet, OperationStatus

# What the API shows of an operation in a list, and in full.
LIST_FIELDS = (
    "id",
    "bank_id",
    "operation_type",
    "status",
    "items_count",
    "document_id",
    "filename",
    "mental_model_id",
    "tag",
    "parent_id",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "error_message",
    "retry_count",
    "next_retry_at",
    "progress",
    "result_metadata",
    "worker",
    "max_retries",
    "heartbeat_at",
    "cancel_requested_at",
)
DETAIL_FIELDS = (*LIST_FIELDS, "error_history", "task_payload")


def id_prefix_range(term: str, *, shortest: int) -> tuple[uuid.UUID, uuid.UUID] | None:
    """A hex prefix of an id (the short id the consoles show, or more; dashes
    ignored) as the range of ids it covers: a primary-key range scan, not a
    table scan. None when it is not `shortest` to 32 hexadecimal digits."""
    digits = term.replace("-", "").lower()
    if not shortest <= len(digits) <= 32 or digits.strip("0123456789abcdef"):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def operations_filtered(queryset: OperationQuerySet, filters: dict[str, Any]) -> OperationQuerySet:
    """Apply the list filters (as validated by OperationFilterSerializer); newest first."""
    if filters.get("status"):
        queryset = queryset.filter(status__in=filters["status"])
    if filters.get("type"):
        queryset = queryset.filter(operation_type__in=filters["type"])
    if filters.get("tag"):
        queryset = queryset.filter(tag=filters["tag"])
    if filters.get("within_hours"):
        queryset = queryset.created_since(timezone.now() - timedelta(hours=filters["within_hours"]))
    if filters.get("created_after"):
        queryset = queryset.created_since(filters["created_after"])
    if filters.get("created_before"):
        queryset = queryset.filter(created_at__lte=filters["created_before"])
    if filters.get("parent_id"):
        queryset = queryset.filter(parent_id=filters["parent_id"])
    if filters.get("id_prefix"):
        first, last = filters["id_prefix"]
        queryset = queryset.filter(pk__gte=first, pk__lte=last)
    if filters.get("exclude_parents"):
        queryset = queryset.exclude(operation_type__in=registry.parent_type_names())
    if filters.get("bank_id"):
        queryset = queryset.filter(bank_id=filters["bank_id"])
    # The id breaks ties between rows created in the same microsecond, so
    # pages never overlap.
    return queryset.order_by("-created_at", "-id")


# Counting more matching rows than this costs more than a page is worth, and
# grows with the bank (10,000 rows: 1.5 ms, a quarter of the page); beyond it
# `total` is PostgreSQL's estimate, so a first page costs the same at any size.
COUNT_CAP = 1_000

# A list's first pages are its newest rows, and on a busy table those were
# created in the last week: looked for there first (`created_since`: the live
# rows and the last week's partitions), a page's rows come from the recent
# partitions alone, and when the window holds COUNT_CAP rows the older
# weeks, which a large table keeps on disk rather than in memory, are only
# probed by its count (one index descent each, finding nothing) and planned
# by the estimate. A shorter window's count reads the whole list (up to
# COUNT_CAP rows); a list with fewer rows in the window than the page asks is
# read whole, as before.
RECENT = timedelta(days=7)


@dataclass(frozen=True)
class Page:
    total: int
    total_is_estimate: bool
    rows: list[dict[str, Any]]


def operation_page(queryset: OperationQuerySet, *, limit: int, offset: int) -> Page:
    """A page of operations as `.values()` rows (see `api.representation`), and
    how many match: exact up to COUNT_CAP, else the planner's estimate."""
    unordered = queryset.order_by()
    if connection.vendor != "postgresql":
        rows = list(queryset.values(*LIST_FIELDS)[offset : offset + limit])
        if offset == 0 and len(rows) < limit:
            return Page(len(rows), False, rows)
        return Page(unordered.count(), False, rows)
    # Newest first: the window's first offset + limit rows are the whole
    # list's when the window holds that many.
    since = timezone.now() - RECENT
    window = queryset.created_since(since)
    # Counted by creation time alone: the partition key is in no index of a
    # bank's rows, so a count bounded by it reads each row from the table;
    # unbounded, each older week costs one index descent that finds nothing.
    # The whole list is counted only when the window holds fewer than
    # COUNT_CAP rows (PostgreSQL evaluates the CASE's other subquery only
    # then): a long list's count stays in the recent weeks, and a short one's
    # is exact in the page's own statement.
    in_window, in_window_params = _capped_count(queryset.filter(created_at__gte=since))
    whole, whole_params = _capped_count(unordered)
    total = f"CASE WHEN ({in_window}) >= {COUNT_CAP} THEN {COUNT_CAP} ELSE ({whole}) END"
    rows, counted = _counted_page(window, (total, in_window_params + whole_params), limit, offset)
    if len(rows) < limit:
        rows, counted = _counted_page(queryset, (whole, whole_params), limit, offset)
    if counted is None:
        counted = unordered[:COUNT_CAP].count()
    if counted < COUNT_CAP:
        return Page(counted, False, rows)
    return Page(max(_estimated_rows(unordered), COUNT_CAP), True, rows)


def _capped_count(counting: QuerySet[Operation]) -> tuple[str, list[Any]]:
    """A scalar subquery: how many rows `counting` holds, up to COUNT_CAP."""
    capped, params = counting.order_by().values("pk")[:COUNT_CAP].query.sql_with_params()
    return f"SELECT count(*) FROM ({capped}) capped", list(params)


def _counted_page(
    queryset: QuerySet[Operation], count: tuple[str, list[Any]], limit: int, offset: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A page's rows and the value of the `count` subquery (None for an empty
    page). The count rides on the page's own statement (an InitPlan,
    evaluated once): one round trip instead of two."""
    counted = queryset.annotate(capped_total=RawSQL(*count))
    rows = list(counted.values(*LIST_FIELDS, "capped_total")[offset : offset + limit])
    totals = [row.pop("capped_total") for row in rows]
    return rows, totals[0] if totals else None


def _estimated_rows(queryset: QuerySet[Operation]) -> int:
    """The planner's estimate of the rows `queryset` matches.

    Explained under a LIMIT of one row, and read from the LIMIT's input: the
    plan's own cost stays that of one row, where unlimited it grows with the
    table and past `jit_above_cost` PostgreSQL compiles the plan (EXPLAIN
    starts the executor), which at 100M rows cost 3 ms per estimate."""
    statement, params = queryset.values("pk")[:1].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}", params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    node = plan[0]["Plan"]
    if node["Node Type"] == "Limit":
        node = node["Plans"][0]
    return int(node["Plan Rows"])


def operation_stats(*, bank_id: str) -> dict[str, Any]:
    rows = Operation.objects.filter(bank_id=bank_id)
    by_status = dict.fromkeys(OperationStatus.values, 0)
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
