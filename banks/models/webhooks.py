"""Webhooks and their deliveries."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from tenancy.models import Bank


class WebhookEvent(models.TextChoices):
    """The events a webhook can subscribe to (SPEC §7)."""

    OPERATION_COMPLETED = "operation.completed", "any operation completed (but a webhook delivery)"
    OPERATION_FAILED = "operation.failed", "any operation failed for good (but a webhook delivery)"
    RETAIN_COMPLETED = "retain.completed", "a document was retained (one event per document)"
    CONSOLIDATION_COMPLETED = "consolidation.completed", "a consolidation completed"


class Webhook(models.Model):
    """A URL a bank's events are POSTed to, signed with the webhook's secret."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="webhooks", db_index=False)
    url = models.CharField(max_length=2048)
    # The secret, encrypted (banks.webhooks.seal): signing needs the raw value,
    # so it cannot be hashed. Empty: deliveries are not signed. Never returned
    # by the API, never shown by the admin, never copied into an operation.
    secret_sealed = models.TextField(blank=True, default="")
    event_types = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    # {"timeout_seconds": int, "headers": {name: value}}
    http_config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["bank", "created_at"], name="banks_webhook_bank_created"),
            # What every finishing operation asks: does its bank have an
            # enabled webhook? A partial index, tiny (or empty) whatever the
            # number of disabled webhooks.
            models.Index(fields=["bank"], condition=models.Q(enabled=True), name="banks_webhook_enabled"),
        ]

    def __str__(self) -> str:
        return f"{self.bank_id}: {self.url}"

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_sealed)


class DeliveryOutcome(models.TextChoices):
    DELIVERED = "delivered", "delivered (2xx)"
    RETRYING = "retrying", "failed, will be retried"
    FAILED = "failed", "failed for good"


class WebhookDelivery(models.Model):
    """One attempt at delivering one event to one webhook."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    # The webhook_delivery operation making the attempts (no foreign key: the
    # log outlives the operation's retention).
    operation_id = models.UUIDField()
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=64)
    url = models.CharField(max_length=2048)
    # 1, 2, … over the whole life of the delivery operation, manual retries
    # included (its retry_count starts again at 0 after one).
    attempt = models.PositiveIntegerField()
    outcome = models.CharField(max_length=16, choices=DeliveryOutcome.choices)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["webhook", "-created_at", "-id"], name="banks_delivery_newest"),
            models.Index(fields=["operation_id"], name="banks_delivery_operation"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.attempt}: {self.outcome}"
