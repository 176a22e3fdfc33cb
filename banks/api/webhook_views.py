"""Webhook endpoints: banks/{bank_id}/webhooks[/{webhook_id}[/deliveries|/test]].

Hindsight's paths, shapes and status codes (201 on create); GET of one webhook
and the test event are this service's additions. The bank is resolved (and
scoped) by `BankScopedMixin`: another bank's webhook is a 404.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from banks import webhooks
from banks.api import webhook_serializers as s
from banks.api.memory_views import _validated
from banks.api.views import _body
from banks.models import Webhook
from core.api.responses import AUTH_ERRORS, BAD_INPUT
from tenancy.scoping import BankScopedMixin


class WebhookViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    serializer_class = s.WebhookSerializer

    def get_queryset(self) -> QuerySet[Webhook]:
        return Webhook.objects.filter(bank=self.get_bank()).order_by("created_at", "id")

    def get_webhook(self, webhook_id: str) -> Webhook:
        try:
            pk = uuid.UUID(webhook_id)
        except ValueError:
            raise ValidationError({"webhook_id": [f"{webhook_id!r} is not a valid webhook id (a UUID)"]}) from None
        webhook = self.get_queryset().filter(pk=pk).first()
        if webhook is None:
            raise NotFound(f"webhook {webhook_id} not found")
        return webhook

    @extend_schema(
        summary="List a bank's webhooks (oldest first)",
        operation_id="list_webhooks",
        parameters=[s.WebhookPageSerializer],
        responses={200: s.WebhookListSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def index(self, request: Request, bank_id: str) -> Response:
        page = _validated(s.WebhookPageSerializer, request.query_params)
        rows = self.get_queryset()
        limit, offset = page["limit"], page["offset"]
        return Response(
            {
                "items": s.WebhookSerializer(rows[offset : offset + limit], many=True).data,
                "total": rows.count(),
                "limit": limit,
                "offset": offset,
            }
        )

    @extend_schema(
        summary="Register a webhook",
        operation_id="create_webhook",
        request=s.WebhookInputSerializer,
        responses={201: s.WebhookSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def create(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        data = _validated(s.WebhookInputSerializer, _body(request))
        webhook = webhooks.webhook_create(
            bank=bank,
            url=data["url"],
            secret=data.get("secret") or "",
            event_types=data.get("event_types") or list(webhooks.DEFAULT_EVENT_TYPES),
            enabled=data.get("enabled", True) is not False,
            http_config=data.get("http_config") or {},
        )
        return Response(s.WebhookSerializer(webhook).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Get a webhook",
        operation_id="get_webhook",
        responses={200: s.WebhookSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def retrieve(self, request: Request, bank_id: str, webhook_id: str) -> Response:
        return Response(s.WebhookSerializer(self.get_webhook(webhook_id)).data)

    @extend_schema(
        summary="Change some fields of a webhook",
        operation_id="update_webhook",
        request=s.WebhookInputSerializer,
        responses={200: s.WebhookSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def update(self, request: Request, bank_id: str, webhook_id: str) -> Response:
        webhook = self.get_webhook(webhook_id)
        data = _validated(s.WebhookInputSerializer, _body(request), partial=True)
        # An explicit null leaves a field as it is (Hindsight clients send them).
        fields = {name: value for name, value in data.items() if value is not None}
        return Response(s.WebhookSerializer(webhooks.webhook_update(webhook=webhook, fields=fields)).data)

    @extend_schema(
        summary="Delete a webhook and its delivery log",
        operation_id="delete_webhook",
        responses={200: s.WebhookDeletedSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def destroy(self, request: Request, bank_id: str, webhook_id: str) -> Response:
        webhook = self.get_webhook(webhook_id)
        webhook.delete()
        return Response({"success": True, "message": f"webhook {webhook_id} deleted", "deleted_count": 1})

    @extend_schema(
        summary="A webhook's delivery attempts, newest first",
        operation_id="list_webhook_deliveries",
        parameters=[s.DeliveryPageSerializer],
        responses={200: s.WebhookDeliveryListSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def deliveries(self, request: Request, bank_id: str, webhook_id: str) -> Response:
        webhook = self.get_webhook(webhook_id)
        page = _validated(s.DeliveryPageSerializer, request.query_params)
        try:
            rows, next_cursor = webhooks.deliveries_page(
                webhook=webhook, limit=page["limit"], cursor=page.get("cursor")
            )
        except webhooks.BadCursor as exc:
            raise ValidationError({"cursor": [str(exc)]}) from None
        return Response({"items": s.WebhookDeliverySerializer(rows, many=True).data, "next_cursor": next_cursor})

    @extend_schema(
        summary="Send a test event (webhook.test) to this webhook",
        operation_id="test_webhook",
        request=None,
        responses={200: s.WebhookTestSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def test(self, request: Request, bank_id: str, webhook_id: str) -> Response:
        operation = webhooks.webhook_send_test(webhook=self.get_webhook(webhook_id))
        return Response(
            {
                "operation_id": str(operation.pk),
                "event_id": operation.task_payload["event_id"],
                "status": operation.status,
            }
        )
