"""How an operation looks in the consoles: status badges, progress bars, ages,
short ids and pretty-printed JSON. Shared by the admin and the live dashboard,
so an operation reads the same everywhere."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

# One colour per status; the CSS (operations/static/operations/console.css)
# keys on the class name, so the badge is also readable without the stylesheet.
STATUS_CLASSES = {
    "pending": "ops-badge ops-pending",
    "processing": "ops-badge ops-processing",
    "completed": "ops-badge ops-completed",
    "failed": "ops-badge ops-failed",
    "cancelled": "ops-badge ops-cancelled",
}


def short_id(value: Any) -> str:
    """The first 8 hex digits of a UUID: enough to tell operations apart on a
    screen, and searchable in the admin (a prefix search)."""
    return str(value).replace("-", "")[:8]


def status_badge(status: str, *, cancel_requested: bool = False) -> SafeString:
    label = "cancelling" if cancel_requested and status == "processing" else status
    return format_html(
        '<span class="{}" data-status="{}">{}</span>',
        STATUS_CLASSES.get(status, "ops-badge"),
        status,
        label,
    )


def progress_fraction(progress: dict[str, Any] | None) -> float | None:
    """processed/total in [0, 1], or None when the handler reported no total."""
    if not isinstance(progress, dict):
        return None
    processed, total = progress.get("processed"), progress.get("total")
    if not isinstance(processed, (int, float)) or not isinstance(total, (int, float)) or total <= 0:
        return None
    return max(0.0, min(1.0, processed / total))


def progress_bar(progress: dict[str, Any] | None, status: str) -> SafeString:
    """A bar with `processed/total` and the stage; a finished operation shows
    a full (completed) or frozen bar, one without a total only its stage."""
    if not isinstance(progress, dict):
        return format_html('<span class="ops-muted">{}</span>', "—")
    stage = str(progress.get("stage") or "")
    fraction = progress_fraction(progress)
    if status == "completed" and fraction is None:
        fraction = 1.0
    if fraction is None:
        return format_html('<span class="ops-stage">{}</span>', stage)
    percent = round(fraction * 100)
    counts = f"{progress.get('processed')}/{progress.get('total')}" if progress.get("total") else f"{percent}%"
    return format_html(
        '<div class="ops-progress" title="{} {}" data-percent="{}">'
        '<div class="ops-progress-bar ops-bar-{}" style="width: {}%"></div>'
        '<span class="ops-progress-text">{} {}</span></div>',
        stage,
        counts,
        percent,
        status,
        percent,
        counts,
        stage,
    )


def compact_duration(seconds: float) -> str:
    """3s, 4m 10s, 2h 5m, 3d 4h: two units at most, for narrow columns."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "—"
    return compact_duration(((now or timezone.now()) - moment).total_seconds())


def pretty_json(value: Any) -> SafeString:
    """Indented JSON in a <pre>, escaped; empty values say so instead of `{}`."""
    if value in (None, {}, []):
        return format_html('<span class="ops-muted">{}</span>', "(empty)")
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="ops-json">{}</pre>', text)


def pre(text: str | None) -> SafeString:
    if not text:
        return format_html('<span class="ops-muted">{}</span>', "(none)")
    return format_html('<pre class="ops-json">{}</pre>', text)
