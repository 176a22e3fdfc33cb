"""Reading PostgreSQL's plans of the operations table in tests."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from operations import partitions


def file_all_finished() -> None:
    """Every finished row under its day, as the sweep leaves them (PostgreSQL)."""
    if connection.vendor == "postgresql":
        partitions.file_finished(before=timezone.now() + timedelta(days=1), limit=10**8)


def table_scans(explained: str) -> list[str]:
    """The lines of a plan that scan the operations table, or one of its
    partitions of finished rows that holds some, sequentially. The planner
    scans an empty partition rather than open its index (no cost), and the
    active partition holds only the live rows: counting those by scanning it
    reads the live work, never the history."""
    scans = []
    for line in explained.splitlines():
        found = re.search(r"Seq Scan on (operations_operation\w*)", line)
        if found is None or found[1] == "operations_operation_active":
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {found[1]})")
            if cursor.fetchone()[0]:
                scans.append(line)
    return scans
