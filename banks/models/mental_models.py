"""Mental models: a saved query's answer, refreshed on a schedule."""

from __future__ import annotations

import uuid

from django.db import models

from tenancy.models import Bank


class MentalModel(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    bank = models.ForeignKey(Bank, on_delete=models.CASCADE, related_name="mental_models")
    name = models.CharField(max_length=200)
    source_query = models.TextField()
    content = models.TextField(blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    max_tokens = models.PositiveIntegerField(default=500)
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    # The refresh schedule (Hindsight's trigger): a UTC cron expression or an
    # interval, never both; `min_refresh_interval_seconds` is a floor between
    # two scheduled refreshes. `next_refresh_at` is when the next one is due
    # (null: no schedule); beat claims it with a conditional UPDATE, so several
    # beats queue each due refresh once (banks.scheduler).
    refresh_cron = models.CharField(max_length=200, blank=True, default="")
    refresh_interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    min_refresh_interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    next_refresh_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(refresh_cron="") | models.Q(refresh_interval_seconds__isnull=True),
                name="banks_mental_model_one_schedule",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_refresh_at"],
                condition=models.Q(next_refresh_at__isnull=False),
                name="banks_mental_model_due",
            ),
        ]

    def __str__(self) -> str:
        return self.name
