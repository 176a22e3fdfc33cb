"""The dashboard page and the partial its panels are refreshed from.

Both are plain Django views behind the admin's staff login; the page embeds
the first rendering of the panels, so it shows everything without JavaScript
and htmx only keeps it current.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from operations.dashboard.selectors import snapshot


def _context(request: HttpRequest) -> dict[str, object]:
    seconds = settings.OPS_DASHBOARD_REFRESH_SECONDS
    return {"snapshot": snapshot(), "refresh_seconds": seconds, "refresh_ms": round(seconds * 1000)}


# Staff (the admin's login), and allowed to see operations: the page shows
# ids, payload-derived errors and what every worker runs.
@never_cache
@staff_member_required
@permission_required("operations.view_operation", raise_exception=True)
def page(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        **_context(request),
        "title": "Live operations",
    }
    return render(request, "operations/dashboard/page.html", context)


@never_cache
@staff_member_required
@permission_required("operations.view_operation", raise_exception=True)
def panels(request: HttpRequest) -> HttpResponse:
    return render(request, "operations/dashboard/panels.html", _context(request))
