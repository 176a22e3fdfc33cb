"""The admin console for banks (with their operations counted), mental models
and webhooks; the API keys' pages are tenancy's (`tenancy/admin.py`).

Writes go through the same services as the API: banks through
`tenancy.services`, mental-model refreshes through the lifecycle service.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from banks.models import MentalModel, Webhook, WebhookDelivery
from core.admin import FullWidthList
from operations import lifecycle
from operations.models import TERMINAL_STATUSES, Operation, OperationStatus
from tenancy import services as bank_services
from tenancy.models import Bank

# Past these, a bank's list row says "10,000+" / "1,000+": counting every
# operation (or a whole backlog) of a busy bank on each page view is what
# makes a large admin slow.
COUNT_CAP = 10_000
PENDING_CAP = 1_000


def _capped_count(cap: int, status: str | None = None) -> RawSQL:
    """How many operations (of a status) a bank has, counted up to cap + 1: a
    LIMITed index scan per bank on the page, whatever the bank's size."""
    where = "AND o.status = %s " if status else ""
    params: tuple[Any, ...] = (status, cap + 1) if status else (cap + 1,)
    return RawSQL(
        f'SELECT count(*) FROM (SELECT 1 FROM "{Operation._meta.db_table}" o '
        f'WHERE o.bank_id = "{Bank._meta.db_table}".bank_id {where}LIMIT %s) capped',
        params,
        output_field=IntegerField(),
    )


def _capped(n: int, cap: int) -> str:
    return f"{cap:,}+" if n > cap else str(n)


def _count(rows: QuerySet[Operation]) -> Coalesce:
    """A correlated count of the bank's rows among `rows`: meant for small,
    index-backed sets (processing, failed in the last day)."""
    counted = rows.filter(bank_id=OuterRef("pk")).order_by().values("bank_id").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _operations_url(bank_id: str, query: str = "") -> str:
    url = reverse("admin:operations_operation_changelist") + f"?bank__bank_id__exact={bank_id}"
    return url + (f"&{query}" if query else "")


@admin.register(Bank)
class BankAdmin(FullWidthList, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "bank_id",
        "name",
        "operations",
        "pending",
        "processing",
        "failed",
        "observations",
        "auto_consolidation",
        "created_at",
    )
    search_fields = ("bank_id", "name")
    list_filter = ("enable_auto_consolidation", "enable_observations")
    show_facets = admin.ShowFacets.NEVER
    fields = (
        "bank_id",
        "name",
        "mission",
        "enable_observations",
        "enable_auto_consolidation",
        "config",
        "operation_counts",
        "created_at",
        "updated_at",
    )
    readonly_fields = ("operation_counts", "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Bank | None = None) -> Any:
        # The id is the bank's address in the API: set once.
        return (*self.readonly_fields, "bank_id") if obj is not None else self.readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Bank]:
        day_ago = timezone.now() - timedelta(hours=24)
        banks: QuerySet[Bank] = (
            super()
            .get_queryset(request)
            .annotate(
                n_operations=_capped_count(COUNT_CAP),
                n_pending=_capped_count(PENDING_CAP, OperationStatus.PENDING.value),
                n_processing=_count(Operation.objects.filter(status=OperationStatus.PROCESSING)),
                # Through the index of finished rows by completion time: the last day only.
                n_failed=_count(
                    Operation.objects.filter(
                        status__in=list(TERMINAL_STATUSES),
                        completed_at__gte=day_ago,
                    ).filter(status=OperationStatus.FAILED)
                ),
            )
        )
        return banks

    @admin.display(description="observations", boolean=True, ordering="enable_observations")
    def observations(self, obj: Bank) -> bool:
        return obj.enable_observations

    @admin.display(description="auto-consolidate", boolean=True, ordering="enable_auto_consolidation")
    def auto_consolidation(self, obj: Bank) -> bool:
        return obj.enable_auto_consolidation

    def _count_link(self, obj: Bank, n: int | str, query: str = "") -> SafeString:
        return format_html('<a href="{}">{}</a>', _operations_url(obj.bank_id, query), n)

    @admin.display(description="operations", ordering="n_operations")
    def operations(self, obj: Bank) -> SafeString:
        return self._count_link(obj, _capped(obj.n_operations, COUNT_CAP))  # type: ignore[attr-defined]

    @admin.display(description="pending", ordering="n_pending")
    def pending(self, obj: Bank) -> SafeString:
        n = _capped(obj.n_pending, PENDING_CAP)  # type: ignore[attr-defined]
        return self._count_link(obj, n, "status__exact=pending")

    @admin.display(description="processing", ordering="n_processing")
    def processing(self, obj: Bank) -> SafeString:
        return self._count_link(obj, obj.n_processing, "status__exact=processing")  # type: ignore[attr-defined]

    @admin.display(description="failed (24 h)", ordering="n_failed")
    def failed(self, obj: Bank) -> SafeString:
        return self._count_link(obj, obj.n_failed, "status__exact=failed")  # type: ignore[attr-defined]

    @admin.display(description="operations by status")
    def operation_counts(self, obj: Bank) -> SafeString | str:
        if obj.pk is None:
            return "—"
        counts = dict(Operation.objects.filter(bank_id=obj.pk).values_list("status").annotate(n=Count("pk")).order_by())
        parts = [
            format_html('<a href="{}">{} {}</a>', _operations_url(obj.pk, f"status__exact={s}"), counts.get(s, 0), s)
            for s in OperationStatus.values
        ]
        return format_html("{}", SafeString(", ".join(parts)))

    def save_model(self, request: HttpRequest, obj: Bank, form: Any, change: bool) -> None:
        fields = {name: form.cleaned_data[name] for name in bank_services.BANK_FIELDS if name in form.cleaned_data}
        bank, _ = bank_services.bank_put(bank_id=obj.bank_id, fields=fields)
        obj.created_at, obj.updated_at = bank.created_at, bank.updated_at

    def delete_model(self, request: HttpRequest, obj: Bank) -> None:
        bank_services.bank_delete(bank=obj)


# --- API keys ----------------------------------------------------------------------


@admin.register(MentalModel)
class MentalModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "bank", "source_query", "max_tokens", "last_refreshed_at", "updated_at")
    list_filter = ("bank",)
    search_fields = ("name", "source_query", "=id")
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = ("id", "content", "last_refreshed_at", "created_at", "updated_at")
    actions = ["refresh_models"]

    def get_readonly_fields(self, request: HttpRequest, obj: MentalModel | None = None) -> Any:
        return (*self.readonly_fields, "bank") if obj is not None else self.readonly_fields

    @admin.action(description="Refresh selected mental models", permissions=["change"])
    def refresh_models(self, request: HttpRequest, queryset: QuerySet[MentalModel]) -> None:
        queued = deduplicated = 0
        for model in queryset:
            submitted = lifecycle.operation_submit(
                bank_id=model.bank_id, operation_type="refresh_mental_model", mental_model_id=str(model.pk)
            )
            if submitted.deduplicated:
                deduplicated += 1
            else:
                queued += 1
                LogEntry.objects.log_actions(
                    user_id=cast(int, request.user.pk),
                    queryset=[model],
                    action_flag=CHANGE,
                    change_message=f"Refresh queued from the admin console (operation {submitted.operation.pk})",
                    single_object=True,
                )
        text = f"Queued {queued} refresh{'' if queued == 1 else 'es'}."
        if deduplicated:
            text += f" {deduplicated} already had one pending."
        self.message_user(request, text, messages.SUCCESS)


class WebhookDeliveryInline(admin.TabularInline):  # type: ignore[type-arg]
    """The delivery log of a webhook, newest first, read-only (the newest 50)."""

    model = WebhookDelivery
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-created_at", "-id")
    fields = (
        "created_at",
        "event_type",
        "event_id",
        "attempt",
        "outcome",
        "status_code",
        "duration_ms",
        "error",
        "response_excerpt",
        "next_retry_at",
        "operation_link",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        # An inline cannot be paginated: show the newest rows only (the API pages the rest).
        newest = WebhookDelivery.objects.order_by("-created_at", "-id")
        return (
            super()
            .get_queryset(request)
            .filter(pk__in=Subquery(newest.filter(webhook_id=OuterRef("webhook_id")).values("pk")[:50]))
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="operation")
    def operation_link(self, delivery: WebhookDelivery) -> SafeString:
        url = reverse("admin:operations_operation_change", args=[delivery.operation_id])
        return format_html('<a href="{}">{}</a>', url, str(delivery.operation_id)[:8])


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Webhooks, read-only but for `enabled`; registered and changed through
    the API, which checks URLs against the SSRF guard. The secret is never
    shown (only whether there is one)."""

    list_display = ("url", "bank", "enabled", "events", "has_secret", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "=bank__bank_id")
    show_facets = admin.ShowFacets.NEVER
    fields = ("id", "bank", "url", "event_types", "enabled", "has_secret", "http_config", "created_at", "updated_at")
    readonly_fields = ("id", "bank", "url", "event_types", "has_secret", "http_config", "created_at", "updated_at")
    inlines = [WebhookDeliveryInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="events")
    def events(self, webhook: Webhook) -> str:
        return ", ".join(webhook.event_types)

    @admin.display(boolean=True, description="secret")
    def has_secret(self, webhook: Webhook) -> bool:
        return webhook.has_secret
