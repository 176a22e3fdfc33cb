"""Figures, the table `make bench` prints, and the JSON it writes.

A figure is one row: the platform's value, the reference's from the same
run, their ratio, and the issue's target with whether it holds. The table is
Markdown so it can go into docs/performance.md as printed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured figure. `platform` and `reference` are display strings;
    `values` keeps the raw numbers for the JSON. `holds` is None when the
    figure has no target or could not be measured."""

    key: str
    label: str
    platform: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    holds: bool | None = None
    values: dict[str, Any] = field(default_factory=dict)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated; the figures' p50 and p95."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio_text(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def verdict(holds: bool | None) -> str:
    return {True: "holds", False: "misses", None: ""}[holds]


def markdown_table(figures: Sequence[Figure]) -> str:
    rows = [
        "| figure | platform | reference | ratio | target | |",
        "|---|---:|---:|---:|---|---|",
    ]
    for f in figures:
        rows.append(f"| {f.label} | {f.platform} | {f.reference} | {f.ratio} | {f.target} | {verdict(f.holds)} |")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory_kib = 0
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: the fields stay rough
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def machine_line(info: dict[str, Any]) -> str:
    return f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, Python {info['python']}"


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write the run's JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=2, default=str) + "\n")
    partial.replace(path)


def results_document(
    *,
    figures: Sequence[Figure],
    machine_info: dict[str, Any],
    options: dict[str, Any],
    started_at: str,
    seconds: float,
    embedded: dict[str, Any] | None,
    notes: Sequence[str],
) -> dict[str, Any]:
    return {
        "started_at": started_at,
        "seconds": round(seconds, 1),
        "machine": machine_info,
        "options": options,
        "figures": [asdict(f) for f in figures],
        "embedded": embedded,
        "notes": list(notes),
    }
