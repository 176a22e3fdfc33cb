"""Template filters of the consoles (the same rendering as the admin columns)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django import template
from django.conf import settings
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from operations.admin import display as admin_display

register = template.Library()


@register.filter
def ops_badge(status: str, cancel_requested: Any = None) -> SafeString:
    return admin_display.status_badge(status, cancel_requested=bool(cancel_requested))


@register.filter
def ops_progress(progress: dict[str, Any] | None, status: str = "processing") -> SafeString:
    return admin_display.progress_bar(progress, status)


@register.filter
def ops_age(moment: datetime | None) -> str:
    return admin_display.age(moment)


@register.filter
def ops_duration(seconds: float | None) -> str:
    return "—" if seconds is None else admin_display.compact_duration(seconds)


@register.filter
def ops_link(operation_id: Any) -> SafeString:
    url = reverse("admin:operations_operation_change", args=[operation_id])
    return format_html(
        '<a class="ops-id" href="{}" title="{}">{}</a>', url, operation_id, admin_display.short_id(operation_id)
    )


@register.filter
def ops_changelist(query: str) -> str:
    """The operations list with a query string, e.g. "status__exact=failed"."""
    return f"{reverse('admin:operations_operation_changelist')}?{query}"


@register.filter
def ops_failed_with(prefix: str) -> str:
    """The failed operations whose error starts with `prefix` (the admin's `error` filter)."""
    return (
        f"{reverse('admin:operations_operation_changelist')}?{urlencode({'status__exact': 'failed', 'error': prefix})}"
    )


@register.filter
def ops_get(mapping: Mapping[str, Any], key: str) -> Any:
    """mapping[key]: a template cannot index with a variable."""
    return mapping.get(key)


@register.filter
def ops_attr(item: Any, name: str) -> Any:
    return getattr(item, name, "")


@register.simple_tag
def ops_refresh_seconds() -> str:
    """How often the consoles refresh (OPS_DASHBOARD_REFRESH_SECONDS)."""
    return f"{settings.OPS_DASHBOARD_REFRESH_SECONDS:g}"
