"""Webhook bodies, in Hindsight's shapes (CreateWebhookRequest,
UpdateWebhookRequest, WebhookResponse, WebhookListResponse,
WebhookDeliveryListResponse). The secret is write-only: no output
serializer has a field for it."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from banks import webhooks
from banks.api.serializers import PageSerializer, StrictBooleanField
from banks.models import Webhook, WebhookDelivery, WebhookEvent
from core.api.validators import no_nul_characters

MAX_HEADERS = 20
MAX_HEADER_BYTES = 8192
# RFC 9110 token characters.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")


class StrictCharField(serializers.CharField):
    """A JSON string only: a number is not silently turned into a secret or a URL."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class HttpConfigSerializer(serializers.Serializer[Any]):
    """Hindsight's WebhookHttpConfig. Only POST is sent; query parameters
    belong in the URL."""

    method = serializers.ChoiceField(choices=["POST"], required=False, allow_null=True)
    timeout_seconds = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=webhooks.MAX_TIMEOUT_SECONDS
    )
    headers = serializers.DictField(
        child=StrictCharField(max_length=1000, allow_blank=True), required=False, allow_null=True
    )
    params = serializers.DictField(required=False, allow_null=True)

    def validate_headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        if headers is None:
            return None
        if len(headers) > MAX_HEADERS:
            raise serializers.ValidationError(f"at most {MAX_HEADERS} headers")
        if sum(len(name) + len(value) for name, value in headers.items()) > MAX_HEADER_BYTES:
            raise serializers.ValidationError(f"at most {MAX_HEADER_BYTES} characters of headers in all")
        for name, value in headers.items():
            if not HEADER_NAME.match(name):
                raise serializers.ValidationError(f"{name!r} is not a valid header name")
            lowered = name.lower()
            if lowered in webhooks.RESERVED_HEADERS or lowered.startswith(webhooks.RESERVED_HEADER_PREFIXES):
                raise serializers.ValidationError(f"{name} is set by the service and cannot be overridden")
            if any(c in value for c in "\r\n\x00"):
                raise serializers.ValidationError(f"the value of {name} must be one line")
        return headers

    def validate_params(self, params: dict[str, Any] | None) -> None:
        if params:
            raise serializers.ValidationError("query parameters are not supported; put them in the url")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # What is stored: the two settings that change a delivery.
        config = {}
        if attrs.get("timeout_seconds") is not None:
            config["timeout_seconds"] = attrs["timeout_seconds"]
        if attrs.get("headers") is not None:
            config["headers"] = attrs["headers"]
        return config


class WebhookInputSerializer(serializers.Serializer[Any]):
    """POST (create) and PATCH (partial) bodies; nulls mean "unchanged" / the default."""

    url = StrictCharField(max_length=2048, allow_null=True, validators=[no_nul_characters])
    secret = StrictCharField(
        max_length=512,
        required=False,
        allow_null=True,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        validators=[no_nul_characters],
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.values),
        allow_empty=False,
        max_length=10,
        required=False,
        allow_null=True,
    )
    enabled = StrictBooleanField(required=False, allow_null=True)
    http_config = HttpConfigSerializer(required=False, allow_null=True)

    def validate_url(self, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            webhooks.check_url_for_registration(url)
        except webhooks.UnsafeWebhookURL as exc:
            raise serializers.ValidationError(str(exc)) from None
        return url

    def validate_event_types(self, event_types: list[str] | None) -> list[str] | None:
        return sorted(set(event_types)) if event_types is not None else None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Null is "unchanged" in a PATCH; a new webhook needs its URL.
        if not self.partial and attrs.get("url") is None:
            raise serializers.ValidationError({"url": ["This field is required."]})
        return attrs


class WebhookHttpConfigOutSerializer(serializers.Serializer[Any]):
    method = serializers.CharField()
    timeout_seconds = serializers.IntegerField()
    headers = serializers.DictField(child=serializers.CharField())


class WebhookSerializer(serializers.ModelSerializer[Any]):
    """Hindsight's WebhookResponse, without its `secret` (never returned here),
    plus `has_secret`."""

    id = serializers.CharField()
    bank_id = serializers.CharField()
    has_secret = serializers.BooleanField()
    http_config = serializers.SerializerMethodField()

    class Meta:
        model = Webhook
        fields = [
            "id",
            "bank_id",
            "url",
            "event_types",
            "enabled",
            "has_secret",
            "http_config",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(WebhookHttpConfigOutSerializer)
    def get_http_config(self, webhook: Webhook) -> dict[str, Any]:
        config = webhook.http_config or {}
        return {
            "method": "POST",
            "timeout_seconds": config.get("timeout_seconds", webhooks.DEFAULT_TIMEOUT_SECONDS),
            "headers": config.get("headers") or {},
        }


class WebhookListSerializer(serializers.Serializer[Any]):
    items = WebhookSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class WebhookPageSerializer(PageSerializer):
    """Hindsight's client may ask for `limit=0` (just the total)."""

    limit = serializers.IntegerField(required=False, default=100, min_value=0, max_value=1000)


class DeliveryPageSerializer(serializers.Serializer[Any]):
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=200)
    cursor = serializers.CharField(required=False, max_length=100)


class WebhookDeliverySerializer(serializers.ModelSerializer[Any]):
    """One attempt, as Hindsight's WebhookDeliveryResponse (`attempts` is this
    attempt's number, `status` its outcome: delivered, retrying or failed),
    plus the operation making the attempts and the attempt's duration."""

    id = serializers.CharField()
    webhook_id = serializers.CharField()
    event_id = serializers.CharField()
    operation_id = serializers.CharField()
    status = serializers.CharField(source="outcome")
    attempts = serializers.IntegerField(source="attempt")
    last_error = serializers.SerializerMethodField()
    last_response_status = serializers.IntegerField(source="status_code", allow_null=True)
    last_response_body = serializers.SerializerMethodField()
    last_attempt_at = serializers.DateTimeField(source="created_at")
    updated_at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "webhook_id",
            "url",
            "event_type",
            "status",
            "attempts",
            "next_retry_at",
            "last_error",
            "last_response_status",
            "last_response_body",
            "last_attempt_at",
            "created_at",
            "updated_at",
            "operation_id",
            "duration_ms",
        ]

    def get_last_error(self, delivery: WebhookDelivery) -> str | None:
        return delivery.error or None

    def get_last_response_body(self, delivery: WebhookDelivery) -> str | None:
        return delivery.response_excerpt or None


class WebhookDeliveryListSerializer(serializers.Serializer[Any]):
    items = WebhookDeliverySerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class WebhookDeletedSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    message = serializers.CharField()
    deleted_count = serializers.IntegerField()


class WebhookTestSerializer(serializers.Serializer[Any]):
    operation_id = serializers.CharField()
    event_id = serializers.CharField()
    status = serializers.CharField()
