"""Reading PostgreSQL's plans in tests (of the operations table, unless told)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from operations import partitions


def file_all_finished() -> int:
    """Every finished row under its week, as the sweep leaves them, whatever
    its time (PostgreSQL); how many moved."""
    if connection.vendor != "postgresql":
        return 0
    return partitions.file_finished(before=timezone.now() + timedelta(days=1000), limit=10**8)


SCANNED_ROWS = 2000


def table_scans(explained: str) -> list[str]:
    """The lines of a plan that scan the operations table, or one of its
    partitions of finished rows that holds enough rows for the planner to
    care (SCANNED_ROWS), sequentially. The planner scans an empty or tiny
    partition rather than open its index, and the active partition holds
    only the live rows: counting those by scanning it reads the live work,
    never the history."""
    scans = []
    for line in explained.splitlines():
        found = re.search(r"Seq Scan on (operations_operation\w*)", line)
        if found is None or found[1] == "operations_operation_active":
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM (SELECT 1 FROM {found[1]} LIMIT %s) q", [SCANNED_ROWS])
            if cursor.fetchone()[0] >= SCANNED_ROWS:
                scans.append(line)
    return scans


def plan(sql: str, params: Any, *, analyze: bool = False) -> str:
    """The plan of a read; of a read between settings of its own (`SET LOCAL
    …; SELECT …; SET LOCAL …`), the plan under those settings."""
    before: list[str] = []
    after: list[str] = []
    read = sql.strip()
    while read.startswith("SET LOCAL"):
        setting, _, read = read.partition(";")
        before.append(setting)
        read = read.strip()
    while re.search(r";\s*SET LOCAL [^;]*$", read):
        read, _, setting = read.rpartition(";")
        after.insert(0, setting.strip())
    explain = f"EXPLAIN {'(ANALYZE) ' if analyze else ''}{read}"
    with connection.cursor() as cursor:
        cursor.execute("; ".join([*before, explain, *after]), params)
        for _ in before:
            cursor.nextset()
        return "\n".join(row[0] for row in cursor.fetchall())


def explained_reads(
    run: Callable[[], Any], *, analyze: bool = False, tables: tuple[str, ...] = ("operations_operation",)
) -> list[str]:
    """EXPLAIN of every read of these tables (the operations table unless
    told) that `run()` makes, under the settings it runs with (`analyze`:
    run again, with the rows each node returned)."""
    with CaptureQueriesContext(connection) as queries:
        run()
    reads = [
        q["sql"]
        for q in queries.captured_queries
        if re.match(r"\s*(SET LOCAL [^;]*;\s*)*SELECT", q["sql"])
        and any(re.search(rf'\b"?{t}"?\b', q["sql"]) for t in tables)
    ]
    assert reads, f"no read of {', '.join(tables)} was captured"
    return [plan(sql.replace("%", "%%"), [], analyze=analyze) for sql in reads]
