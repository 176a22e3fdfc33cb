"""`make bench`: the embedded platform against bare Celery, figures and ratios."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from operations.bench import run_side

ROWS = [
    ("submit_per_second", "submitted per second", "{:,.0f}"),
    ("drain_seconds", "backlog drained in (s)", "{:,.1f}"),
    ("drain_per_second", "completed per second", "{:,.0f}"),
    ("pickup_median_ms", "one job when idle, median (ms)", "{:,.0f}"),
    ("pickup_max_ms", "one job when idle, max (ms)", "{:,.0f}"),
]


class Command(BaseCommand):
    help = "Measure the embedded platform against bare Celery on the same broker (prints figures and ratios)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--operations", type=int, default=10_000, help="backlog size (default 10,000)")
        parser.add_argument("--slots", type=int, default=4, help="worker concurrency on both sides")
        parser.add_argument(
            "--task-events", action="store_true",
            help="instead: the platform with Celery task events (what Flower needs) off, then on",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count, slots = options["operations"], options["slots"]
        self.stdout.write(f"Backlog of {count:,} no-op jobs, {slots} slots, embedded broker (filesystem).")
        if options["task_events"]:
            off = run_side("platform", count, slots, {"OPS_TASK_EVENTS": "false"})
            on = run_side("platform", count, slots, {"OPS_TASK_EVENTS": "true"})
            watched = run_side("platform", count, slots, {"OPS_TASK_EVENTS": "true", "OPS_BENCH_FLOWER": "1"})
            self.compare(on, off, ("events on", "events off"), "Ratios are events on / events off.")
            self.compare(
                watched, off, ("+ flower", "events off"),
                f"Ratios are events on with Flower listening / events off "
                f"(Flower saw {watched.get('flower_tasks_seen', 0):,} tasks).",
            )
            return
        self.compare(
            run_side("platform", count, slots),
            run_side("celery", count, slots),
            ("platform", "bare celery"),
            "Ratios are platform / bare Celery: above 1 is more for the platform "
            "(better for rates, worse for times).",
        )

    def compare(
        self, first: dict[str, Any], second: dict[str, Any], names: tuple[str, str], note: str
    ) -> None:
        self.stdout.write(f"\n{'':34}{names[0]:>12}{names[1]:>14}{'ratio':>9}")
        for key, label, fmt in ROWS:
            ours, theirs = first[key], second[key]
            ratio = ours / theirs if theirs else float("inf")
            self.stdout.write(f"{label:34}{fmt.format(ours):>12}{fmt.format(theirs):>14}{ratio:>8.2f}x")
        self.stdout.write("\n" + note)
