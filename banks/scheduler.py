"""Scheduled mental-model refreshes, driven by beat (`ops.refresh_scheduled_mental_models`).

No scheduler of its own: each tick finds the models whose `next_refresh_at`
has passed and claims each due run with a conditional UPDATE that moves
`next_refresh_at` to the following run. Several beats (or overlapping ticks)
race for the same run; the database lets exactly one UPDATE match the old
value, and only the winner queues the refresh, in the same transaction, so
a crash between the two loses neither. The refresh itself is deduplicated per
mental model like a manual one: a refresh already pending stands for the run.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from banks.mental_models import mental_model_refresh
from banks.models import MentalModel
from banks.schedules import RefreshSchedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueRun:
    model_id: uuid.UUID
    bank_id: str
    due: datetime
    schedule: RefreshSchedule


def due_runs(*, now: datetime, limit: int = 200) -> list[DueRun]:
    """Models whose next scheduled refresh is due, the longest overdue first."""
    rows = (
        MentalModel.objects.filter(next_refresh_at__lte=now)
        .order_by("next_refresh_at")
        .values_list(
            "pk",
            "bank_id",
            "next_refresh_at",
            "refresh_cron",
            "refresh_interval_seconds",
            "min_refresh_interval_seconds",
        )[:limit]
    )
    return [
        DueRun(pk, bank_id, due, RefreshSchedule(cron=cron, interval_seconds=interval, min_interval_seconds=floor))
        for pk, bank_id, due, cron, interval, floor in rows
        if due is not None  # always: the filter is on it
    ]


def run_claim(run: DueRun, *, now: datetime) -> bool:
    """Claim the run: move `next_refresh_at` from `run.due` to the run after
    it, only if it still holds `run.due`. False when another beat claimed it
    first, or the schedule was changed or cleared meanwhile."""
    following = run.schedule.run_after(run.due, now) if run.schedule.active else None
    claimed = MentalModel.objects.filter(pk=run.model_id, next_refresh_at=run.due).update(next_refresh_at=following)
    return claimed == 1


def refreshes_queue_due(*, now: datetime | None = None, limit: int = 200) -> int:
    """Queue a refresh for each due run this call claims; returns how many."""
    now = now or timezone.now()
    queued = 0
    for run in due_runs(now=now, limit=limit):
        if not run.schedule.active:
            # Cannot happen through the API (a cleared schedule clears the
            # next run); a hand-edited row is disarmed rather than refreshed.
            run_claim(run, now=now)
            continue
        with transaction.atomic():
            if not run_claim(run, now=now):
                continue
            submitted = mental_model_refresh(model_id=run.model_id, bank_id=run.bank_id, scheduled_for=run.due)
        queued += 1
        log.info(
            "scheduled refresh of mental model %s due %s: operation %s%s",
            run.model_id,
            run.due.isoformat(),
            submitted.operation.pk,
            " (deduplicated)" if submitted.deduplicated else "",
        )
    return queued
