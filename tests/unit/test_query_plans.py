"""A bank's first page (and its count) uses the indexes, whatever the filters:
checked with EXPLAIN on PostgreSQL over enough rows for the planner to care."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from operations import selectors
from operations.api.serializers import OperationFilterSerializer
from operations.models import Operation
from tenancy.models import Bank
from tests.plans import explained_reads, file_all_finished, plan, table_scans

pytestmark = pytest.mark.django_db

BANKS = 40
PER_BANK = 1000


@pytest.fixture
def many_operations(db: None) -> None:
    rng = random.Random(3)
    Bank.objects.bulk_create([Bank(bank_id=f"bank{i}") for i in range(BANKS)])
    now = timezone.now()
    statuses = ["pending", "processing", "completed", "completed", "completed", "failed", "cancelled"]
    types = ["test_echo", "test_sleep", "test_flaky", "test_batch"]
    rows = []
    for i in range(BANKS * PER_BANK):
        status = rng.choice(statuses)
        created = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        rows.append(
            Operation(
                id=uuid.uuid4(),
                bank_id=f"bank{i % BANKS}",
                operation_type=rng.choice(types),
                status=status,
                tag=rng.choice([None, "nightly", "import"]),
                created_at=created,
                completed_at=created + timedelta(minutes=1) if status not in ("pending", "processing") else None,
            )
        )
    Operation.objects.bulk_create(rows, batch_size=5000)
    file_all_finished()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE operations_operation")


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "pending"},
    {"status": "failed,cancelled"},
    {"type": "test_echo"},
    {"type": "test_sleep", "status": "completed"},
    {"tag": "nightly"},
    {"within_hours": "6"},
    {"created_after": (timezone.now() - timedelta(days=2)).isoformat()},
    {"created_before": (timezone.now() - timedelta(days=20)).isoformat()},
    {"exclude_parents": "true"},
    {"parent_id": str(uuid.uuid4())},
    {"status": "pending", "type": "test_echo", "tag": "import", "exclude_parents": "true"},
    {"offset": "40", "limit": "20"},
]


def test_first_page_and_count_use_indexes(many_operations: None) -> None:
    scans = []
    for query in FILTERS:
        filters = OperationFilterSerializer(data=query)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        rows = selectors.operations_filtered(Operation.objects.filter(bank_id="bank7"), data)
        page = rows[data["offset"] : data["offset"] + data["limit"]]
        for queryset, what in ((page, "page"), (rows.order_by(), "count")):
            sql, params = queryset.query.sql_with_params()
            if what == "count":
                sql = f"SELECT count(*) FROM ({sql}) AS q"
            explained = plan(sql, params)
            assert "operations_operation" in explained
            if table_scans(explained):
                scans.append(f"{what} with {query}:\n{explained}")
    assert not scans, "\n\n".join(scans)
    assert Operation.objects.count() == BANKS * PER_BANK
    # Without a bank, a tag filter does scan the table: the check above can fail.
    explained = plan("SELECT * FROM operations_operation WHERE tag = %s", ["nightly"])
    assert table_scans(explained)


def test_a_metrics_scrape_and_the_cross_bank_first_pages_use_indexes(many_operations: None, client: Any) -> None:
    """What must stay fast at a million rows: no sequential scan of the table."""
    from tenancy.api_keys import api_key_create

    key = {"HTTP_AUTHORIZATION": f"Bearer {api_key_create(admin=True)[1]}"}
    client.get("/metrics")  # the first scrape starts the rollup
    plans = explained_reads(lambda: client.get("/metrics"))
    plans += explained_reads(lambda: client.get("/v1/default/operations", **key))
    # A status filter: the page, that is. (Its count is exact up to COUNT_CAP
    # matches, so it reads the matching rows, and stops there.)
    plans += [
        p
        for p in explained_reads(lambda: client.get("/v1/default/operations", {"status": "failed"}, **key))
        if "count(" not in p.lower() and "Aggregate" not in p
    ]
    plans += explained_reads(lambda: client.get("/tasks", {"within_hours": "720"}, **key))
    scans = [p for p in plans if _unbounded_scan(p)]
    assert not scans, "\n\n".join(scans)


def _unbounded_scan(explained: str) -> bool:
    """A sequential scan of the table that may read all of it: filtered (it
    reads until enough rows match), or not under a LIMIT. (The capped count,
    a LIMIT over an unfiltered scan, reads at most COUNT_CAP rows.)"""
    lines = explained.splitlines()
    for index, line in enumerate(lines):
        if not table_scans(line):
            continue
        follows = lines[index + 1] if index + 1 < len(lines) else ""
        if "Filter:" in follows or not any("Limit" in above for above in lines[:index]):
            return True
    return False
