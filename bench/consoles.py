"""Time the operator console's pages over a large operations table.

    DATABASE_URL=postgres://… DJANGO_SECRET_KEY=… .venv/bin/python -m bench.consoles --rows 1000000

Fills a bank of its own (`console-bench`) with synthetic operations in one
INSERT … SELECT, ANALYZEs, then times the admin list (unfiltered, filtered,
searched) and the dashboard's partial through Django's test client, and
removes everything it made. PostgreSQL only: it is the deployment where a
table grows this large.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsproject.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402  (after setup)
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from operations.models import Operation  # noqa: E402
from tenancy.models import Bank  # noqa: E402

BANK = "console-bench"

# Realistic proportions: mostly finished work, a backlog, a few running.
FILL = """
INSERT INTO operations_operation (
    id, bank_id, operation_type, status, task_payload, result_metadata, error_history,
    items_count, progress, retry_count, max_retries, created_at, updated_at, started_at,
    completed_at, worker, heartbeat_at, error_message, tag, document_id
)
SELECT
    gen_random_uuid(), %(bank)s,
    (ARRAY['retain','file_convert_retain','consolidation','graph_maintenance'])[1 + n %% 4],
    s.status, '{}'::jsonb, '{}'::jsonb, '[]'::jsonb, 1,
    CASE WHEN s.status = 'processing' THEN '{"stage": "retain", "processed": 3, "total": 10}'::jsonb END,
    0, 3, s.created, s.created,
    CASE WHEN s.status <> 'pending' THEN s.created END,
    CASE WHEN s.status IN ('completed', 'failed', 'cancelled') THEN s.created + interval '2 seconds' END,
    CASE WHEN s.status = 'processing' THEN 'shared@bench' END,
    CASE WHEN s.status = 'processing' THEN now() END,
    CASE WHEN s.status = 'failed' THEN 'synthetic failure' END,
    CASE WHEN n %% 10 = 0 THEN 'nightly' END,
    'doc-' || n
FROM generate_series(1, %(rows)s) AS n,
LATERAL (SELECT
    CASE
        WHEN n %% 1000 = 0 THEN 'processing'
        WHEN n %% 100 = 1 THEN 'pending'
        WHEN n %% 50 = 2 THEN 'failed'
        WHEN n %% 50 = 3 THEN 'cancelled'
        ELSE 'completed'
    END AS status,
    now() - (n * interval '2 seconds') AS created
) AS s
"""


class BenchError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consoles",
        description="Time the admin operations list and the live dashboard over N synthetic operations (PostgreSQL).",
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page (median shown)")
    options = parser.parse_args(argv)
    try:
        run(options.rows, options.repeat)
    except BenchError as exc:
        print(f"bench.consoles: {exc}", file=sys.stderr)
        return 1
    return 0


def run(rows: int, repeat: int) -> None:
    if connection.vendor != "postgresql":
        raise BenchError("it needs PostgreSQL (set DATABASE_URL)")
    if Bank.objects.filter(bank_id=BANK).exists():
        raise BenchError(f"a bank named {BANK!r} exists already; this benchmark fills and deletes its own")
    user = get_user_model().objects.create_superuser("console-bench", "", None)
    Bank.objects.create(bank_id=BANK)
    try:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(FILL, {"bank": BANK, "rows": rows})
            cursor.execute("ANALYZE operations_operation")
        print(f"{rows:,} operations inserted in {time.perf_counter() - started:.0f}s")
        time_pages(user, repeat)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM operations_operation WHERE bank_id = %s", [BANK])
        Bank.objects.filter(bank_id=BANK).delete()
        user.delete()


def time_pages(user: Any, repeat: int) -> None:
    client = Client()
    client.force_login(user)
    some = Operation.objects.filter(bank_id=BANK, status="failed").values_list("pk", flat=True).first()
    pages = [
        ("operations list", "/admin/operations/operation/", {}),
        ("  status = failed", "/admin/operations/operation/", {"status__exact": "failed"}),
        ("  type = consolidation", "/admin/operations/operation/", {"operation_type": "consolidation"}),
        ("  page 50", "/admin/operations/operation/", {"p": "50"}),
        ("  search: a short id", "/admin/operations/operation/", {"q": str(some)[:8]}),
        ("  search: a tag", "/admin/operations/operation/", {"q": "nightly"}),
        ("one operation", f"/admin/operations/operation/{some}/change/", {}),
        ("banks list", "/admin/tenancy/bank/", {}),
        ("one bank", f"/admin/tenancy/bank/{BANK}/change/", {}),
        ("dashboard panels", "/admin/dashboard/panels/", {}),
    ]
    print(f"\n{'page':32}{'median ms':>12}{'max ms':>10}")
    for label, url, query in pages:
        client.get(url, query)  # warm caches, as a user's second look would
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url, query)
            times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise BenchError(f"{url} {query}: HTTP {response.status_code}")
        print(f"{label:32}{statistics.median(times):>12.0f}{max(times):>10.0f}")


if __name__ == "__main__":
    sys.exit(main())
