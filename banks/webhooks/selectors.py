"""Reading a webhook's deliveries, a page at a time."""

from __future__ import annotations

from datetime import UTC

from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from banks.models import Webhook, WebhookDelivery


class BadCursor(ValueError):
    pass


def _cursor_of(delivery: WebhookDelivery) -> str:
    # UTC with "Z": no "+" to be mangled into a space in a query string.
    return f"{delivery.created_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}|{delivery.pk}"


def deliveries_page(*, webhook: Webhook, limit: int, cursor: str | None) -> tuple[list[WebhookDelivery], str | None]:
    """A webhook's delivery attempts, newest first, after `cursor` (a
    `next_cursor` from the previous page; Hindsight's bare `created_at` is
    read too). Returns (page, next cursor or None). Raises BadCursor."""
    rows = WebhookDelivery.objects.filter(webhook=webhook).order_by("-created_at", "-id")
    if cursor:
        when_text, _, id_text = cursor.partition("|")
        when = parse_datetime(when_text.strip())
        if when is None or (id_text and not id_text.isdigit()):
            raise BadCursor(f"{cursor!r} is not a cursor this endpoint returned")
        if timezone.is_naive(when):
            when = timezone.make_aware(when, UTC)
        older = Q(created_at__lt=when)
        rows = rows.filter(older | Q(created_at=when, id__lt=int(id_text)) if id_text else older)
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (_cursor_of(page[-1]) if more and page else None)
