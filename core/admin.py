"""What the apps' admin pages share."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse


class FullWidthList:
    """For a ModelAdmin whose list is wide: its list page gets the whole window,
    with no navigation sidebar beside the list and its filters (Home is one
    click away), so that its columns fit 1400 pixels."""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        view = super().changelist_view  # type: ignore[misc]
        response: HttpResponse = view(request, {**(extra_context or {}), "is_nav_sidebar_enabled": False})
        return response
