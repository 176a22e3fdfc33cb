"""A paginator that never counts a million rows.

The admin counts the filtered rows on every page view (to number the pages).
On PostgreSQL an exact `count(*)` over a large table reads every matching row,
so this paginator counts at most `EXACT_LIMIT + 1` of them (a LIMITed
subquery, which stops early) and, past that, takes the planner's estimate of
the row count: the page links are then approximate, the page itself is not.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet

EXACT_LIMIT = 10_000


def planner_estimate(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of how many rows `queryset` returns (EXPLAIN, not
    run), or None on another database."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]  # generic only in the stubs
    """Exact counts up to EXACT_LIMIT, the planner's estimate beyond."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        capped = queryset.order_by()[: EXACT_LIMIT + 1].count()
        if capped <= EXACT_LIMIT:
            return capped
        estimate = planner_estimate(queryset)
        if estimate is None:
            return queryset.count()  # SQLite (the embedded platform): small enough to count
        return max(estimate, EXACT_LIMIT + 1)

    @property
    def is_estimate(self) -> bool:
        return self.count > EXACT_LIMIT
