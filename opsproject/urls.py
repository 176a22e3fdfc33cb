"""URLs: the REST API under /v1/default/, health, metrics, schema, admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from banks.api.memory_views import (
    ConsolidationViewSet,
    DocumentViewSet,
    FileViewSet,
    MemoryViewSet,
    MentalModelViewSet,
)
from banks.api.views import BankViewSet
from banks.api.webhook_views import WebhookViewSet
from operations.api import health
from operations.api.tasks import TaskViewSet
from operations.api.views import AllOperationViewSet, BankOperationViewSet, WorkerViewSet

handler400 = "core.api.errors.json_bad_request"
handler403 = "core.api.errors.json_forbidden"
handler404 = "core.api.errors.json_not_found"
handler500 = "core.api.errors.json_server_error"

banks = BankViewSet.as_view({"get": "index"})
bank = BankViewSet.as_view({"get": "retrieve", "put": "upsert", "patch": "partial_update", "delete": "destroy"})
bank_stats = BankViewSet.as_view({"get": "stats"})
operations = BankOperationViewSet.as_view({"get": "index"})
operation_stats = BankOperationViewSet.as_view({"get": "stats"})
operations_cancel = BankOperationViewSet.as_view({"post": "bulk_cancel"})
operation = BankOperationViewSet.as_view({"get": "retrieve", "delete": "cancel"})
operation_retry = BankOperationViewSet.as_view({"post": "retry"})
operation_delete = BankOperationViewSet.as_view({"delete": "remove"})

API = "v1/default/"


def _named_or_operation(named: Any, method: str) -> Any:
    """`operations/cancel` and `operations/stats` name bank-wide endpoints but
    also match `operations/{operation_id}`: the other methods go to the
    operation (where "cancel" is refused as an operation id), not to a 405."""

    @csrf_exempt
    def view(request: HttpRequest, bank_id: str) -> Any:
        if request.method in (method, "OPTIONS"):
            return named(request, bank_id=bank_id)
        word = request.path.rstrip("/").rsplit("/", 1)[-1]
        return operation(request, bank_id=bank_id, operation_id=word)

    # The schema documents the named endpoint (drf-spectacular reads these).
    for attribute in ("cls", "initkwargs", "actions"):
        setattr(view, attribute, getattr(named, attribute))
    return view


urlpatterns = [
    path(f"{API}banks", banks, name="banks"),
    path(f"{API}banks/<str:bank_id>", bank, name="bank"),
    path(f"{API}banks/<str:bank_id>/stats", bank_stats, name="bank-stats"),
    path(f"{API}banks/<str:bank_id>/operations", operations, name="bank-operations"),
    path(
        f"{API}banks/<str:bank_id>/operations/stats",
        _named_or_operation(operation_stats, "GET"),
        name="bank-operation-stats",
    ),
    path(
        f"{API}banks/<str:bank_id>/operations/cancel",
        _named_or_operation(operations_cancel, "POST"),
        name="bank-operations-cancel",
    ),
    path(f"{API}banks/<str:bank_id>/operations/<str:operation_id>", operation, name="bank-operation"),
    path(f"{API}banks/<str:bank_id>/operations/<str:operation_id>/retry", operation_retry, name="bank-operation-retry"),
    path(
        f"{API}banks/<str:bank_id>/operations/<str:operation_id>/delete", operation_delete, name="bank-operation-delete"
    ),
    path(f"{API}banks/<str:bank_id>/memories", MemoryViewSet.as_view({"post": "retain"}), name="memories"),
    path(f"{API}banks/<str:bank_id>/memories/list", MemoryViewSet.as_view({"get": "index"}), name="memories-list"),
    path(
        f"{API}banks/<str:bank_id>/memories/<str:memory_id>",
        MemoryViewSet.as_view({"delete": "destroy"}),
        name="memory",
    ),
    path(f"{API}banks/<str:bank_id>/files/retain", FileViewSet.as_view({"post": "retain"}), name="files-retain"),
    path(f"{API}banks/<str:bank_id>/documents", DocumentViewSet.as_view({"get": "index"}), name="documents"),
    path(
        f"{API}banks/<str:bank_id>/documents/<str:document_id>",
        DocumentViewSet.as_view({"delete": "destroy"}),
        name="document",
    ),
    path(f"{API}banks/<str:bank_id>/consolidate", ConsolidationViewSet.as_view({"post": "create"}), name="consolidate"),
    path(
        f"{API}banks/<str:bank_id>/mental-models",
        MentalModelViewSet.as_view({"get": "index", "post": "create"}),
        name="mental-models",
    ),
    path(
        f"{API}banks/<str:bank_id>/mental-models/<str:mental_model_id>",
        MentalModelViewSet.as_view({"get": "retrieve", "patch": "update"}),
        name="mental-model",
    ),
    path(
        f"{API}banks/<str:bank_id>/mental-models/<str:mental_model_id>/refresh",
        MentalModelViewSet.as_view({"post": "refresh"}),
        name="mental-model-refresh",
    ),
    path(
        f"{API}banks/<str:bank_id>/webhooks",
        WebhookViewSet.as_view({"get": "index", "post": "create"}),
        name="webhooks",
    ),
    path(
        f"{API}banks/<str:bank_id>/webhooks/<str:webhook_id>",
        WebhookViewSet.as_view({"get": "retrieve", "patch": "update", "delete": "destroy"}),
        name="webhook",
    ),
    path(
        f"{API}banks/<str:bank_id>/webhooks/<str:webhook_id>/deliveries",
        WebhookViewSet.as_view({"get": "deliveries"}),
        name="webhook-deliveries",
    ),
    path(
        f"{API}banks/<str:bank_id>/webhooks/<str:webhook_id>/test",
        WebhookViewSet.as_view({"post": "test"}),
        name="webhook-test",
    ),
    path(f"{API}operations", AllOperationViewSet.as_view({"get": "index"}), name="operations"),
    path(f"{API}workers", WorkerViewSet.as_view({"get": "index"}), name="workers"),
    path("tasks", TaskViewSet.as_view({"get": "index"}), name="tasks"),
    path("health", health.health, name="health"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("metrics", health.metrics, name="metrics"),
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    # The live dashboard lives in the admin's URL space (and behind its login);
    # the site's root (the admin's "View site") leads there.
    path("", RedirectView.as_view(pattern_name="ops-dashboard"), name="home"),
    path("admin/", include("operations.dashboard.urls")),
    path("admin/", admin.site.urls),
]
