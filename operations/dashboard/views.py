"""The dashboard page and the partial its panels are refreshed from.

Both are plain Django views behind the admin's staff login; the page embeds
the first rendering of the panels, so it shows everything without JavaScript
and htmx only keeps it current.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from operations.dashboard.actions import ACTIONS, CancelPendingForm, RetryFailedForm, TypeForm, record
from operations.dashboard.selectors import snapshot
from operations.lifecycle.requests import RETRY_FAILED_LIMIT


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
        "retry_form": RetryFailedForm(initial={"within_hours": "24"}, auto_id="retry_%s"),
        "cancel_form": CancelPendingForm(auto_id="cancel_%s"),
        "type_form": TypeForm(auto_id="pause_%s"),
    }
    return render(request, "operations/dashboard/page.html", context)


@never_cache
@staff_member_required
@permission_required("operations.view_operation", raise_exception=True)
def panels(request: HttpRequest) -> HttpResponse:
    return render(request, "operations/dashboard/panels.html", _context(request))


@never_cache
@staff_member_required
@permission_required("operations.view_operation", raise_exception=True)
def action(request: HttpRequest, name: str) -> HttpResponse:
    """A bulk action: GET shows what it would do and asks; POST does it."""
    spec = ACTIONS.get(name)
    if spec is None:
        raise Http404(f"no dashboard action {name!r}")
    if not request.user.has_perm(spec.permission):
        raise PermissionDenied(f"{spec.title} needs the permission {spec.permission}")
    form = spec.form(request.POST if request.method == "POST" else request.GET)
    context: dict[str, object] = {**admin.site.each_context(request), "title": spec.title, "action": spec, "form": form}
    if not form.is_valid():
        return render(request, "operations/dashboard/confirm.html", context, status=400)
    data = form.cleaned_data
    if request.method == "POST":
        count = spec.perform(data, request.user.get_username())
        record(spec, request.user.get_username(), data, count)
        messages.success(request, f"{spec.title}: {spec.describe(data)} — {count} changed.")
        return redirect("ops-dashboard")
    affected = spec.affected(data).count()
    limit = RETRY_FAILED_LIMIT if spec.name == "retry-failed" else None
    context.update(description=spec.describe(data), affected=affected, limit=limit)
    return render(request, "operations/dashboard/confirm.html", context)
