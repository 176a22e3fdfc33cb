"""The operator's console for operations, in the Django admin.

Rows are read-only here: every status change goes through the lifecycle
service (`operations.lifecycle`) by way of the cancel, retry and delete
actions in `operations.admin.actions`. The list is built to stay fast over a
million rows: no full count, a capped count of the filtered rows, no facet
counts, no join for the bank column, and filters that map onto indexes.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django_celery_results.admin import TaskResultAdmin
from django_celery_results.models import GroupResult, TaskResult

from core.admin import FullWidthList
from operations import lifecycle, registry, selectors
from operations.admin import actions as admin_actions
from operations.admin.display import (
    age,
    compact_duration,
    pre,
    pretty_json,
    progress_bar,
    short_id,
    status_badge,
)
from operations.admin.paging import CappedCountPaginator
from operations.models import TERMINAL_STATUSES, ConsoleAction, Operation, OperationStatus, WorkerNode

CHILDREN_SHOWN = 50
# The buttons on an operation's page run the list's actions on that one row.
TRANSITION_ACTIONS = {
    "cancel": "cancel_operations",
    "retry": "retry_operations",
    "delete": "delete_terminal_operations",
}


def _operation_link(pk: Any) -> SafeString:
    url = reverse("admin:operations_operation_change", args=[pk])
    return format_html('<a class="ops-id" href="{}" title="{}">{}</a>', url, pk, short_id(pk))


class ChildrenFormSet(BaseInlineFormSet):  # type: ignore[type-arg]
    """The first CHILDREN_SHOWN children only: a batch may have thousands, and
    the inline renders every row it is given. The full list is one click away."""

    def get_queryset(self) -> QuerySet[Operation]:
        return super().get_queryset().order_by("created_at", "id")[:CHILDREN_SHOWN]


class ChildInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Operation
    fk_name = "parent"
    formset = ChildrenFormSet
    verbose_name = "child operation"
    # The rows say what each child is: no caption line of its name above each (console.css).
    classes = ["ops-children"]
    extra = 0
    can_delete = False
    show_change_link = False
    fields = ("child", "badge", "operation_type", "progress_display", "retry_count", "age_display", "error")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="id")
    def child(self, obj: Operation) -> SafeString:
        return _operation_link(obj.pk)

    @admin.display(description="status")
    def badge(self, obj: Operation) -> SafeString:
        return status_badge(obj.status, cancel_requested=bool(obj.cancel_requested_at))

    @admin.display(description="progress")
    def progress_display(self, obj: Operation) -> SafeString:
        return progress_bar(obj.progress, obj.status)

    @admin.display(description="age")
    def age_display(self, obj: Operation) -> str:
        return age(obj.created_at)

    @admin.display(description="error")
    def error(self, obj: Operation) -> str:
        return (obj.error_message or "")[:200]


class OperationTypeFilter(admin.SimpleListFilter):
    """The types come from the registry (not from a DISTINCT over the table)."""

    title = "type"
    parameter_name = "operation_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return registry.choices()

    def queryset(self, request: HttpRequest, queryset: QuerySet[Operation]) -> QuerySet[Operation]:
        return queryset.filter(operation_type=self.value()) if self.value() else queryset


class ParentFilter(admin.SimpleListFilter):
    """Top-level operations only, or the children of one (the inline's "all children" link)."""

    title = "parent"
    parameter_name = "parent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("none", "top-level only")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Operation]) -> QuerySet[Operation]:
        value = self.value()
        if not value:
            return queryset
        if value == "none":
            return queryset.filter(parent__isnull=True)
        try:
            return queryset.filter(parent_id=uuid.UUID(value))
        except ValueError:
            return queryset.none()


class ErrorFilter(admin.SimpleListFilter):
    """The operations whose error starts with the given text: the dashboard's
    failures grouped by error link here (`?error=`). Shown as a choice only
    while it is in use."""

    title = "error"
    parameter_name = "error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, f"starts with “{value[:40]}”")] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Operation]) -> QuerySet[Operation]:
        value = self.value()
        return queryset.filter(error_message__startswith=value) if value else queryset


@admin.register(Operation)
class OperationAdmin(FullWidthList, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "short",
        "badge",
        "operation_type",
        "bank_link",
        "progress_display",
        "age_display",
        "retries",
        "tag",
        "worker",
    )
    list_display_links = ("short",)
    list_filter = (
        "status",
        OperationTypeFilter,
        "bank",
        ("created_at", admin.DateFieldListFilter),
        ParentFilter,
        ErrorFilter,
    )
    # Makes the admin show its search box; get_search_results below does the matching.
    search_fields = ("=id", "=document_id", "filename", "=tag")
    search_help_text = "An id or its first 8+ digits, a document id, a tag, or part of a file name."
    ordering = ("-created_at",)
    list_per_page = 50
    paginator = CappedCountPaginator
    # Counting a million rows on every page view is what makes a big admin slow.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ["cancel_operations", "retry_operations", "delete_terminal_operations"]
    inlines = [ChildInline]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "badge",
                    "operation_type",
                    "bank_link",
                    "parent_link",
                    "children_summary",
                    "tag",
                    "document_id",
                    "filename",
                    "mental_model_id",
                    "items_count",
                )
            },
        ),
        ("Progress", {"fields": ("progress_display", "progress_json")}),
        (
            "Timing",
            {
                "fields": (
                    "created_at",
                    "started_at",
                    "completed_at",
                    "updated_at",
                    "run_time",
                    "retries",
                    "next_retry_at",
                )
            },
        ),
        ("Data", {"fields": ("payload", "result", "error", "history")}),
        (
            "Execution",
            {
                "classes": ("collapse",),
                "fields": (
                    "worker",
                    "task_id",
                    "heartbeat_at",
                    "cancel_requested_at",
                    "dispatched_at",
                    "lease_id",
                    "dedupe_key",
                    "serial_key",
                ),
            },
        ),
    )
    readonly_fields = [
        "id",
        "badge",
        "operation_type",
        "bank_link",
        "parent_link",
        "children_summary",
        "tag",
        "document_id",
        "filename",
        "mental_model_id",
        "items_count",
        "progress_display",
        "progress_json",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
        "run_time",
        "retries",
        "next_retry_at",
        "payload",
        "result",
        "error",
        "history",
        "worker",
        "task_id",
        "heartbeat_at",
        "cancel_requested_at",
        "dispatched_at",
        "lease_id",
        "dedupe_key",
        "serial_key",
    ]

    change_form_template = "admin/operations/operation/change_form.html"

    class Media:
        css = {"all": ["operations/console.css"]}
        js = ["operations/live.js"]

    def get_list_display(self, request: HttpRequest) -> Any:
        """The failed list shows each one's error (the other lists keep their width)."""
        shown = list(super().get_list_display(request))
        if request.GET.get("status__exact") == OperationStatus.FAILED:
            shown.insert(shown.index("badge") + 1, "error_brief")
        return shown

    def get_fieldsets(self, request: HttpRequest, obj: Operation | None = None) -> Any:
        """A failed operation's page opens with its error."""
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None and obj.status == OperationStatus.FAILED:
            fieldsets.insert(0, ("Error", {"fields": ("error",)}))
            fieldsets = [
                (name, {**options, "fields": tuple(f for f in options["fields"] if f != "error")})
                if name == "Data"
                else (name, options)
                for name, options in fieldsets
            ]
        return fieldsets

    @admin.display(description="error")
    def error_brief(self, obj: Operation) -> SafeString:
        message = obj.error_message or ""
        return format_html('<span class="ops-error-brief" title="{}">{}</span>', message, message[:120])

    # --- cancel / retry / delete buttons on an operation's page ------------------------

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path("live/", view(self.live_view), name="operations_operation_live"),
            path(
                "<uuid:pk>/transition/<str:action>/",
                view(self.transition_view),
                name="operations_operation_transition",
            ),
            *super().get_urls(),
        ]

    def live_view(self, request: HttpRequest) -> HttpResponse:
        """The status, progress and worker of the listed operations (`?id=`,
        up to a page of them), drawn as the list and the page draw them: what
        `operations/live.js` swaps into rows that are pending or running."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        ids = []
        for value in request.GET.getlist("id")[: self.list_per_page]:
            try:
                ids.append(uuid.UUID(value))
            except ValueError:
                return JsonResponse({"detail": f"not an operation id: {value!r}"}, status=400)
        rows = Operation.objects.filter(pk__in=ids).only(
            "id", "status", "progress", "worker", "cancel_requested_at", "operation_type", "bank_id"
        )
        return JsonResponse(
            {
                str(row.pk): {
                    "status": row.status,
                    "terminal": row.status in TERMINAL_STATUSES,
                    "badge": self.badge(row),
                    "progress": self.progress_display(row),
                    "worker": row.worker or "",
                }
                for row in rows
            }
        )

    def transition_view(self, request: HttpRequest, pk: uuid.UUID, action: str) -> HttpResponse:
        """POST: the same action as the list's, on one operation, then back to its page."""
        actions = self.get_actions(request)  # only those this user is permitted
        name = TRANSITION_ACTIONS.get(action)
        if request.method != "POST" or name not in actions:
            raise PermissionDenied
        actions[name][0](self, request, Operation.objects.filter(pk=pk))
        if Operation.objects.filter(pk=pk).exists():
            return HttpResponseRedirect(reverse("admin:operations_operation_change", args=[pk]))
        return HttpResponseRedirect(reverse("admin:operations_operation_changelist"))

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        context["transition_buttons"] = self._transition_buttons(request, kwargs.get("obj"))
        return super().render_change_form(request, context, *args, **kwargs)

    def _transition_buttons(self, request: HttpRequest, obj: Operation | None) -> list[tuple[str, str]]:
        """(url, label) of each action this user may take on this operation now."""
        if obj is None:
            return []
        allowed = self.get_actions(request)
        buttons = []
        if obj.status in admin_actions.CANCELLABLE and "cancel_operations" in allowed:
            buttons.append(("cancel", "Cancel (requested)" if obj.cancel_requested_at else "Cancel"))
        if obj.status in admin_actions.RETRYABLE and "retry_operations" in allowed:
            buttons.append(("retry", "Retry"))
        return [
            (reverse("admin:operations_operation_transition", args=[obj.pk, action]), label)
            for action, label in buttons
        ]

    # --- permissions: view-only rows, transitions through the actions ----------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # operations are submitted through the API or by the platform

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # every field is machine-managed

    def has_delete_permission(self, request: HttpRequest, obj: Operation | None = None) -> bool:
        if obj is not None and obj.status not in TERMINAL_STATUSES:
            return False  # the lifecycle deletes finished operations only
        return super().has_delete_permission(request, obj)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("operations.cancel_operation")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("operations.retry_operation")

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would bypass the lifecycle
        return actions

    def get_inlines(self, request: HttpRequest, obj: Operation | None) -> list[Any]:
        if obj is None or not obj.children.exists():
            return []
        return list(self.inlines)

    # --- the delete view of a terminal operation goes through the service too ------

    def delete_model(self, request: HttpRequest, obj: Operation) -> None:
        lifecycle.operation_delete(operation_id=obj.pk)

    # --- search: ids (or their prefix), document ids, tags, file names ---------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Operation], search_term: str
    ) -> tuple[QuerySet[Operation], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(document_id=term) | Q(tag=term) | Q(filename__icontains=term)
        try:
            match |= Q(pk=uuid.UUID(term))
        except ValueError:
            bounds = selectors.id_prefix_range(term, shortest=4)
            if bounds is not None:
                match |= Q(pk__gte=bounds[0], pk__lte=bounds[1])
        return queryset.filter(match), False

    # --- columns -------------------------------------------------------------------

    @admin.display(description="id", ordering="id")
    def short(self, obj: Operation) -> SafeString:
        return format_html('<span class="ops-id" title="{}">{}</span>', obj.pk, short_id(obj.pk))

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Operation) -> SafeString:
        return status_badge(obj.status, cancel_requested=bool(obj.cancel_requested_at))

    @admin.display(description="bank", ordering="bank_id")
    def bank_link(self, obj: Operation) -> SafeString:
        # bank_id is on the row: linking it needs no join with the bank table.
        url = reverse("admin:tenancy_bank_change", args=[obj.bank_id])
        return format_html('<a href="{}">{}</a>', url, obj.bank_id)

    @admin.display(description="progress")
    def progress_display(self, obj: Operation) -> SafeString:
        return progress_bar(obj.progress, obj.status)

    @admin.display(description="age", ordering="created_at")
    def age_display(self, obj: Operation) -> SafeString:
        return format_html('<span title="{}">{}</span>', obj.created_at.isoformat(), age(obj.created_at))

    @admin.display(description="retries")
    def retries(self, obj: Operation) -> str:
        return f"{obj.retry_count}/{obj.max_retries}"

    # --- detail fields ------------------------------------------------------------------

    @admin.display(description="parent")
    def parent_link(self, obj: Operation) -> SafeString | str:
        return _operation_link(obj.parent_id) if obj.parent_id else "—"

    @admin.display(description="children")
    def children_summary(self, obj: Operation) -> SafeString | str:
        count = obj.children.count()
        if not count:
            return "—"
        url = reverse("admin:operations_operation_changelist") + f"?parent={obj.pk}"
        shown = f"the first {CHILDREN_SHOWN} below; " if count > CHILDREN_SHOWN else ""
        return format_html('{} ({}<a href="{}">list them all</a>)', count, shown, url)

    @admin.display(description="progress (raw)")
    def progress_json(self, obj: Operation) -> SafeString:
        return pretty_json(obj.progress)

    @admin.display(description="run time")
    def run_time(self, obj: Operation) -> str:
        if obj.started_at is None:
            return "—"
        end = obj.completed_at or timezone.now()
        return compact_duration((end - obj.started_at).total_seconds())

    @admin.display(description="payload")
    def payload(self, obj: Operation) -> SafeString:
        return pretty_json(obj.task_payload)

    @admin.display(description="result")
    def result(self, obj: Operation) -> SafeString:
        return pretty_json(obj.result_metadata)

    @admin.display(description="error")
    def error(self, obj: Operation) -> SafeString:
        return pre(obj.error_message)

    @admin.display(description="error history")
    def history(self, obj: Operation) -> SafeString:
        return pretty_json(obj.error_history)

    # --- actions: each calls the lifecycle service, one operation at a time ----------

    @admin.action(description="Cancel selected operations", permissions=["cancel"])
    def cancel_operations(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        admin_actions.run_action(
            self,
            request,
            queryset,
            step=admin_actions.cancel_step,
            starts_from=admin_actions.CANCELLABLE,
            log_message=admin_actions.log_message_for("cancelled"),
            nothing="No operation was cancelled.",
        )

    @admin.action(description="Retry selected operations (failed or cancelled)", permissions=["retry"])
    def retry_operations(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        admin_actions.run_action(
            self,
            request,
            queryset,
            step=admin_actions.retry_step,
            starts_from=admin_actions.RETRYABLE,
            log_message=admin_actions.log_message_for("queued again"),
            nothing="No operation was queued again.",
        )

    @admin.action(description="Delete selected finished operations", permissions=["delete"])
    def delete_terminal_operations(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        admin_actions.run_action(
            self,
            request,
            queryset,
            step=admin_actions.delete_step,
            starts_from=admin_actions.DELETABLE,
            log_message=admin_actions.log_message_for("deleted"),
            deletes=True,
            nothing="No operation was deleted.",
        )


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The worker processes as they last reported themselves (read-only)."""

    list_display = ("name", "hostname", "pid", "concurrency", "queue_list", "started_at", "last_seen_at")
    ordering = ("name",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="queues")
    def queue_list(self, obj: WorkerNode) -> str:
        return ", ".join(obj.queues)


@admin.register(ConsoleAction)
class ConsoleActionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The audit of the dashboard's bulk actions: who did what, when, to how many (read-only)."""

    list_display = ("at", "user", "action", "filters", "count")
    list_filter = ("action",)
    search_fields = ("=user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# django-celery-results' models stay out of the way: the Operation row is the
# record of every run, and Celery stores results only for errors that escape
# the platform (rare). Group results are never used. Task results show up
# only while there is one to look at.
admin.site.unregister(GroupResult)


class EscapedErrorsOnly(TaskResultAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) and TaskResult.objects.exists()


admin.site.unregister(TaskResult)
admin.site.register(TaskResult, EscapedErrorsOnly)

admin.site.index_template = "admin/ops_index.html"
admin.site.site_header = "Operations platform"
admin.site.site_title = "Operations platform"
admin.site.index_title = "Operator console"
