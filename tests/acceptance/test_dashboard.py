"""The live dashboard's numbers, and the console's queries over many rows:
each read of the dashboard and of the admin list goes through an index
(checked with EXPLAIN on PostgreSQL), and no page counts every row."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from operations.admin import paging as admin_paging
from operations.dashboard import selectors
from operations.models import Operation, WorkerNode
from tenancy.models import Bank
from tests.consoles import make, staff_user
from tests.plans import file_all_finished, table_scans

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(client: Client) -> Client:
    client.force_login(staff_user("root", superuser=True))
    return client


def test_snapshot_counts_per_type(alpha: Any) -> None:
    due = [make(), make()]
    parked = make()
    Operation.objects.filter(pk=parked.pk).update(next_retry_at=timezone.now() + timedelta(minutes=5))
    make(status="processing", progress={"stage": "loop", "processed": 1, "total": 4})
    make(status="failed")
    old_failure = make(status="failed")
    Operation.objects.filter(pk=old_failure.pk).update(completed_at=timezone.now() - timedelta(hours=3))
    make(operation_type="test_sleep", status="failed")
    snapshot = selectors.snapshot()
    rows = {row.name: row for row in snapshot.types}
    echo = rows["test_echo"]
    assert (echo.due, echo.parked, echo.processing, echo.failed_last_hour) == (2, 1, 1, 1)
    assert rows["test_sleep"].failed_last_hour == 1
    assert rows["consolidation"].idle  # every registered type has a row
    assert snapshot.types[0].name in ("test_echo", "test_sleep")  # busy types first
    assert snapshot.oldest_pending == min(o.created_at for o in due)
    assert snapshot.totals.due == 2 and snapshot.totals.failed_last_hour == 2
    # Latest failures: newest first, within the look-back window (both are).
    assert [f["id"] for f in snapshot.failures][-1] == old_failure.pk
    assert snapshot.running[0]["progress"]["processed"] == 1


def test_slots_per_node_from_the_worker_reports(alpha: Any) -> None:
    now = timezone.now()
    for name, queues, concurrency in (
        ("shared@node1", ["ops.test_echo", "ops.test_sleep"], 3),
        ("consolidation@node1", ["ops.consolidation"], 2),
        ("system@node1", ["ops.system"], 1),
        ("shared@node2", ["ops.test_echo"], 4),
        ("shared@dead", ["ops.test_echo"], 4),
    ):
        WorkerNode.objects.create(
            name=name, hostname=name.split("@")[1], pid=1, queues=queues, concurrency=concurrency, last_seen_at=now
        )
    WorkerNode.objects.filter(name="shared@dead").update(last_seen_at=now - timedelta(hours=1))
    make(status="processing")  # runs on shared@node1 (see tests.consoles.make)
    nodes = {n.hostname: n for n in selectors.nodes()}
    assert set(nodes) == {"node1", "node2"}  # the dead node is not live
    node1 = nodes["node1"]
    assert [(p.label, p.slots, p.used) for p in node1.pools] == [
        ("reserved: consolidation", 2, 0),
        ("shared pool", 3, 1),
        ("system (sweeper)", 1, 0),
    ]
    assert (node1.reserved_slots, node1.shared_slots, node1.used_slots) == (2, 3, 1)


def test_dashboard_page_and_partial_render_for_staff(root: Client, alpha: Any) -> None:
    running = make(status="processing", progress={"stage": "loop", "processed": 2, "total": 8})
    failed = make(status="failed")
    page = root.get("/admin/dashboard/").content.decode()
    # The page polls its partial (htmx, served from our own static files) only while visible.
    assert "operations/vendor/htmx.min.js" in page and "//unpkg" not in page and "cdn" not in page.lower()
    assert 'hx-get="/admin/dashboard/panels/"' in page
    assert "every 3000ms [document.visibilityState === 'visible']" in page  # OPS_DASHBOARD_REFRESH_SECONDS
    partial = root.get("/admin/dashboard/panels/").content.decode()
    assert "<html" not in partial  # a fragment, swapped into the page
    assert f'data-operation-id="{running.pk}"' in partial and 'data-percent="25"' in partial
    assert "boom: the extractor gave up" in partial and str(failed.pk)[:8] in partial
    assert 'id="ops-failed">1<' in partial


# --- many rows: indexes, no full count -------------------------------------------------

ROWS = 60_000


@pytest.fixture
def many_operations(db: None) -> None:
    rng = random.Random(7)
    Bank.objects.bulk_create([Bank(bank_id=f"bank{i}") for i in range(20)])
    now = timezone.now()
    statuses = ["completed"] * 12 + ["failed", "cancelled", "pending", "processing"]
    types = ["test_echo", "test_sleep", "test_flaky", "test_batch"]
    rows = []
    for i in range(ROWS):
        state = rng.choice(statuses)
        created = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        rows.append(
            Operation(
                id=uuid.uuid4(),
                bank_id=f"bank{i % 20}",
                operation_type=rng.choice(types),
                status=state,
                created_at=created,
                started_at=created if state != "pending" else None,
                completed_at=created + timedelta(seconds=5) if state in ("completed", "failed", "cancelled") else None,
                worker="shared@node1" if state == "processing" else None,
                heartbeat_at=now if state == "processing" else None,
                # Most pending work is a backlog far in the past; only some is recent.
                tag=rng.choice([None, "nightly"]),
            )
        )
    Operation.objects.bulk_create(rows, batch_size=5000)
    file_all_finished()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE operations_operation")


def explain(sql: str, params: Any = ()) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def operation_reads(queries: list[dict[str, Any]]) -> list[str]:
    return [q["sql"] for q in queries if 'FROM "operations_operation"' in q["sql"] and q["sql"].startswith("SELECT")]


def test_dashboard_reads_use_indexes(root: Client, many_operations: None) -> None:
    with CaptureQueriesContext(connection) as captured:
        assert root.get("/admin/dashboard/panels/").status_code == 200
    reads = operation_reads(captured.captured_queries)
    assert len(reads) >= 5  # pending, processing, failed last hour, running, failures (+ nodes)
    for sql in reads:
        plan = explain(sql)
        assert not table_scans(plan), f"{sql}\n{plan}"


def test_admin_list_never_counts_every_row(root: Client, many_operations: None) -> None:
    for query in ({}, {"status__exact": "completed"}, {"status__exact": "failed"}, {"operation_type": "test_echo"}):
        with CaptureQueriesContext(connection) as captured:
            response = root.get("/admin/operations/operation/", query)
        assert response.status_code == 200
        reads = operation_reads(captured.captured_queries)
        counts = [sql for sql in reads if "COUNT(" in sql.upper()]
        # One count, capped: a LIMITed subquery that stops after EXACT_LIMIT + 1 rows.
        assert len(counts) == 1 and f"LIMIT {admin_paging.EXACT_LIMIT + 1}" in counts[0], counts
        page = [sql for sql in reads if "COUNT(" not in sql.upper() and "ORDER BY" in sql]
        assert page and all("LIMIT 50" in sql for sql in page)
        # The page itself is read through an index (newest first), not by sorting the table.
        plan = explain(page[0])
        assert not table_scans(plan), plan


def test_paginator_estimates_past_the_cap(many_operations: None) -> None:
    completed = Operation.objects.filter(status="completed")
    paginator = admin_paging.CappedCountPaginator(completed, 50)
    exact = completed.count()
    assert exact > admin_paging.EXACT_LIMIT
    assert paginator.is_estimate
    # The planner's estimate: in the right region, never below the cap.
    assert exact * 0.7 < paginator.count < exact * 1.3
    few = admin_paging.CappedCountPaginator(Operation.objects.filter(status="failed", bank_id="bank3"), 50)
    assert few.count == Operation.objects.filter(status="failed", bank_id="bank3").count()
    assert not few.is_estimate


def test_the_sites_root_leads_to_the_dashboard(root: Client) -> None:
    """The admin's "View site" link goes to `/`: it lands on the dashboard, not a 404."""
    response = root.get("/", follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/admin/dashboard/"
    assert 'hx-get="/admin/dashboard/panels/"' in response.content.decode()
