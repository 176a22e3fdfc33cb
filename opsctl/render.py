"""How opsctl draws things: rich tables, badges and progress bars.

Everything here takes the API's JSON and returns a rich renderable; the
commands decide where it goes. Works with both shapes of an operation's
execution details: `execution` (newer servers) or the older `details`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.json import JSON
from rich.measure import Measurement
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    "pending": "grey62",
    "processing": "bold blue",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}
TASK_CODES = {"Q": "pending", "R": "processing", "D": "completed", "F": "failed", "C": "cancelled"}


def status_text(status: str | None) -> Text:
    return Text(status or "?", style=STATUS_STYLES.get(status or "", ""))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def age(value: str | None, now: datetime | None = None) -> str:
    moment = parse_time(value)
    if moment is None:
        return "-"
    return duration(((now or datetime.now(UTC)) - moment).total_seconds())


def worker_of(operation: dict[str, Any]) -> str | None:
    for key in ("execution", "details"):
        block = operation.get(key)
        if isinstance(block, dict) and block.get("worker"):
            return str(block["worker"])
    return None


def progress_cell(operation: dict[str, Any], width: int = 20, *, stage_too: bool = True) -> Any:
    """A bar with processed/total (and the stage), or just the stage."""
    progress = operation.get("progress")
    status = operation.get("status")
    if not isinstance(progress, dict):
        return Text("✓" if status == "completed" else "-", style="dim")
    stage = str(progress.get("stage") or "")
    processed, total = progress.get("processed"), progress.get("total")
    if isinstance(processed, (int, float)) and isinstance(total, (int, float)) and total > 0:
        bar = ProgressBar(
            total=float(total),
            completed=float(min(processed, total)),
            width=width,
            complete_style="green" if status == "completed" else "blue",
        )
        table = Table.grid(padding=(0, 1))
        label = f"{processed}/{total} {stage}" if stage_too else f"{processed}/{total}"
        table.add_row(bar, Text(label.strip(), style="dim"))
        return table
    return Text(stage, style="italic dim")


# On a terminal narrower than this a row shows an id's first 8 characters
# (which every command takes) instead of all 36, so that the type and status
# keep their full text. Into a file or a pipe ids are always whole.
FULL_IDS_FROM = 120
# The narrowest a tag or error column is shown at; narrower, it is left out.
NARROWEST_TEXT = 8


class OperationsTable:
    """Operations, one line each, laid out for the width they are drawn at:
    the id, type, status, progress and age always whole (ids shortened on a
    narrow terminal), then the tag / document / file and the error in what
    is left, ending in an ellipsis when long (`get` shows them whole)."""

    def __init__(self, operations: list[dict[str, Any]], *, title: str | None = None) -> None:
        self.operations = operations
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width, console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)

    def table(self, width: int, console: Console, options: ConsoleOptions) -> Table:
        labels = [op.get("tag") or op.get("document_id") or op.get("filename") or "" for op in self.operations]
        errors = [op.get("error_message") or "" for op in self.operations]
        text = [name for name, values in (("labels", labels), ("errors", errors)) if any(values)]
        short = options.is_terminal and width < FULL_IDS_FROM
        room = width
        while True:
            table = self._build(labels, errors, text, short=short, text_width=room)
            needed = Measurement.get(console, options.update(width=10_000), table).maximum
            if needed <= width:
                return table
            flexible = len(text)
            if not flexible:
                return table  # nothing left to give: let rich fold it
            per_column = room - (needed - width) // flexible - 1
            if per_column >= NARROWEST_TEXT:
                room = per_column
            else:
                text.pop()  # the error column first, then the tag's
                room = width

    def _build(self, labels: list[str], errors: list[str], text: list[str], *, short: bool, text_width: int) -> Table:
        now = datetime.now(UTC)
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("id", no_wrap=True, style="cyan")
        table.add_column("type", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("age", justify="right", no_wrap=True)
        if "labels" in text:
            table.add_column("tag / document / file", overflow="ellipsis", no_wrap=True, max_width=min(40, text_width))
        if "errors" in text:
            table.add_column("error", overflow="ellipsis", no_wrap=True, max_width=min(60, text_width))
        for op, label, error in zip(self.operations, labels, errors, strict=True):
            status = status_text(op.get("status"))
            if op.get("retry_count"):
                status.append(f" r{op['retry_count']}", style="dim")
            identifier = str(op.get("id"))
            cells: list[Any] = [
                identifier[:8] if short else identifier,
                str(op.get("operation_type")),
                status,
                progress_cell(op, width=10 if not short else 6, stage_too=False),
                age(op.get("created_at"), now),
            ]
            if "labels" in text:
                cells.append(label)
            if "errors" in text:
                cells.append(Text(error, style="red"))
            table.add_row(*cells)
        return table


def operations_table(operations: list[dict[str, Any]], *, title: str | None = None) -> OperationsTable:
    return OperationsTable(operations, title=title)


def operation_panel(op: dict[str, Any]) -> Group:
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", op.get("id") or op.get("operation_id")),
        ("bank", op.get("bank_id")),
        ("type", op.get("operation_type")),
        ("status", status_text(op.get("status"))),
        ("progress", progress_cell(op, width=30)),
        ("parent", op.get("parent_id")),
        ("tag", op.get("tag")),
        ("document", op.get("document_id")),
        ("file", op.get("filename")),
        ("items", op.get("items_count")),
        ("created", op.get("created_at")),
        ("started", op.get("started_at")),
        ("completed", op.get("completed_at")),
        ("retries", f"{op.get('retry_count', 0)}"),
        ("next retry", op.get("next_retry_at")),
        ("worker", worker_of(op)),
        ("error", Text(op["error_message"], style="red") if op.get("error_message") else None),
    ]
    for label, value in rows:
        if value not in (None, ""):
            info.add_row(label, value if not isinstance(value, (str, int, float)) else str(value))
    parts: list[Any] = [Panel(info, title="operation", title_align="left")]
    for key, title in (("result_metadata", "result"), ("task_payload", "payload"), ("error_history", "error history")):
        value = op.get(key)
        if value:
            parts.append(Panel(JSON(json.dumps(value)), title=title, title_align="left"))
    children = op.get("child_operations")
    if children:
        parts.append(operations_table(children, title=f"{len(children)} child operations"))
    return Group(*parts)


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
    now = datetime.now(UTC)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True, style="cyan", min_width=36)
    table.add_column("task type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tag")
    table.add_column("age", justify="right")
    table.add_column("ended", no_wrap=True)
    for task in tasks:
        code = str(task.get("task_status"))
        name = TASK_CODES.get(code, code)
        table.add_row(
            str(task.get("id")),
            str(task.get("task_type")),
            status_text(name).append(f" ({code})", style="dim"),
            task.get("tag") or "",
            age(task.get("created_at"), now),
            task.get("end_date") or "-",
        )
    return table


def workers_view(data: dict[str, Any]) -> Group:
    parts: list[Any] = []
    plan = data.get("plan")
    if plan:
        reserved = ", ".join(f"{k}={v}" for k, v in (plan.get("reserved") or {}).items()) or "none"
        slots, shared = plan.get("max_slots"), plan.get("shared")
        parts.append(Text(f"slot plan: {slots} slots, reserved {reserved}, shared {shared}"))
    elif data.get("plan_error"):
        parts.append(Text(f"slot plan error: {data['plan_error']}", style="red"))
    nodes = data.get("nodes") or []
    table = Table(
        title=f"{len(nodes)} live worker node{'s' if len(nodes) != 1 else ''}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("worker", no_wrap=True, style="cyan")
    table.add_column("slots", justify="right")
    table.add_column("busy", justify="right")
    table.add_column("use", no_wrap=True)
    table.add_column("queues", overflow="fold")
    table.add_column("last seen", justify="right")
    for node in nodes:
        slots, busy = int(node.get("concurrency") or 0), int(node.get("busy") or 0)
        table.add_row(
            str(node.get("name")),
            str(slots),
            str(busy),
            ProgressBar(total=float(max(slots, 1)), completed=float(min(busy, slots)), width=12),
            ", ".join(node.get("queues") or []),
            age(node.get("last_seen_at")),
        )
    parts.append(table)
    running = [dict(r, worker=n.get("name")) for n in nodes for r in (n.get("running") or [])]
    if running:
        run = Table(title="running", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        run.add_column("operation", no_wrap=True, style="cyan")
        run.add_column("type")
        run.add_column("bank")
        run.add_column("worker")
        run.add_column("progress", no_wrap=True)
        run.add_column("for", justify="right")
        for item in running:
            run.add_row(
                str(item.get("operation_id")),
                str(item.get("operation_type")),
                str(item.get("bank_id")),
                str(item.get("worker")),
                progress_cell({**item, "status": "processing"}),
                age(item.get("started_at")),
            )
        parts.append(run)
    return Group(*parts)


def banks_table(banks: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("bank", style="cyan", no_wrap=True)
    table.add_column("name")
    table.add_column("auto-consolidation")
    table.add_column("created", no_wrap=True)
    for bank in banks:
        table.add_row(
            str(bank.get("bank_id")),
            bank.get("name") or "",
            "yes" if bank.get("enable_auto_consolidation") else "no",
            age(bank.get("created_at")) + " ago",
        )
    return table


def webhooks_table(webhooks: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", style="cyan", no_wrap=True, min_width=36)
    table.add_column("url", overflow="fold")
    table.add_column("events")
    table.add_column("enabled")
    table.add_column("signed")
    table.add_column("created", no_wrap=True)
    for hook in webhooks:
        table.add_row(
            str(hook.get("id")),
            str(hook.get("url")),
            ", ".join(hook.get("event_types") or []),
            "yes" if hook.get("enabled") else "no",
            "yes" if hook.get("has_secret") else "no",
            age(hook.get("created_at")) + " ago",
        )
    return table


DELIVERY_STYLES = {"delivered": "green", "retrying": "yellow", "failed": "red"}


def deliveries_table(deliveries: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("when", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("event id", style="cyan", no_wrap=True)
    table.add_column("#", justify="right")
    table.add_column("outcome", no_wrap=True)
    table.add_column("http", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("error / next retry", overflow="fold")
    for item in deliveries:
        outcome = str(item.get("status"))
        note = item.get("last_error") or ""
        if item.get("next_retry_at"):
            note = f"{note}; retry at {item['next_retry_at']}" if note else f"retry at {item['next_retry_at']}"
        table.add_row(
            age(item.get("created_at")) + " ago",
            str(item.get("event_type")),
            str(item.get("event_id")),
            str(item.get("attempts")),
            Text(outcome, style=DELIVERY_STYLES.get(outcome, "")),
            str(item.get("last_response_status") or "-"),
            str(item.get("duration_ms") or 0),
            note,
        )
    return table
