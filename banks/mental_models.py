"""Writing mental models: create, update (with the refresh schedule), queue a refresh.

Updates write only the columns they change (`UPDATE … SET`), never a whole
row read earlier: a refresh running meanwhile writes `content` and
`last_refreshed_at`, and a beat claims `next_refresh_at`; neither may be
overwritten with a stale copy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from banks.models import MentalModel
from banks.schedules import RefreshSchedule
from operations import lifecycle
from tenancy.models import Bank

# The schedule fields of Hindsight's trigger that this service acts on.
SCHEDULE_FIELDS = ("refresh_cron", "refresh_interval_seconds", "min_refresh_interval_seconds")


def schedule_of(model: MentalModel) -> RefreshSchedule:
    return RefreshSchedule(
        cron=model.refresh_cron,
        interval_seconds=model.refresh_interval_seconds,
        min_interval_seconds=model.min_refresh_interval_seconds,
    )


def schedule_patched(current: RefreshSchedule, trigger: dict[str, Any]) -> RefreshSchedule:
    """`current` with the schedule fields `trigger` names (Hindsight patches a
    trigger key by key: a key it carries replaces, null clears, a key it
    lacks stays). Naming a cron expression replaces an interval, and the
    other way round: a schedule is one or the other."""
    cron = current.cron
    interval = current.interval_seconds
    floor = current.min_interval_seconds
    if "refresh_cron" in trigger:
        cron = trigger["refresh_cron"] or ""
        if cron and "refresh_interval_seconds" not in trigger:
            interval = None
    if "refresh_interval_seconds" in trigger:
        interval = trigger["refresh_interval_seconds"]
        if interval and "refresh_cron" not in trigger:
            cron = ""
    if "min_refresh_interval_seconds" in trigger:
        floor = trigger["min_refresh_interval_seconds"]
    return RefreshSchedule(cron=cron, interval_seconds=interval, min_interval_seconds=floor)


def _schedule_columns(schedule: RefreshSchedule, next_refresh_at: datetime | None) -> dict[str, Any]:
    return {
        "refresh_cron": schedule.cron,
        "refresh_interval_seconds": schedule.interval_seconds,
        "min_refresh_interval_seconds": schedule.min_interval_seconds,
        "next_refresh_at": next_refresh_at,
    }


@dataclass(frozen=True)
class Created:
    model: MentalModel
    refresh: lifecycle.Submission


def mental_model_create(
    *,
    bank: Bank,
    model_id: uuid.UUID,
    name: str,
    source_query: str,
    tags: list[str],
    max_tokens: int,
    schedule: RefreshSchedule,
    tag: str | None = None,
) -> Created:
    """Create the model and queue its first refresh, in one transaction. Its
    first scheduled refresh is due one period from now (the first refresh
    runs at once anyway). Raises IntegrityError if the id is taken."""
    now = timezone.now()
    with transaction.atomic():
        model = MentalModel.objects.create(
            id=model_id,
            bank=bank,
            name=name,
            source_query=source_query,
            tags=tags,
            max_tokens=max_tokens,
            **_schedule_columns(schedule, schedule.first_run(now)),
        )
        submitted = mental_model_refresh(model_id=model.pk, bank_id=bank.pk, tag=tag)
    return Created(model, submitted)


def mental_model_update(
    *, model: MentalModel, changes: dict[str, Any], trigger: dict[str, Any] | None = None
) -> MentalModel:
    """Apply `changes` (name, source_query, tags, max_tokens) and the
    schedule fields `trigger` names; returns the model as stored now.

    A changed schedule starts afresh from now (its first run one period
    away); an unchanged one, as when a client sends back the trigger it
    read, keeps its next run.
    """
    fields = dict(changes)
    if trigger is not None:
        current = schedule_of(model)
        schedule = schedule_patched(current, trigger)
        if (schedule.cron, schedule.interval_seconds) != (current.cron, current.interval_seconds):
            fields.update(_schedule_columns(schedule, schedule.first_run(timezone.now())))
        elif schedule.min_interval_seconds != current.min_interval_seconds:
            fields["min_refresh_interval_seconds"] = schedule.min_interval_seconds
    if fields:
        MentalModel.objects.filter(pk=model.pk).update(**fields, updated_at=timezone.now())
    return MentalModel.objects.get(pk=model.pk)


def mental_model_refresh(
    *, model_id: uuid.UUID | str, bank_id: str, tag: str | None = None, scheduled_for: datetime | None = None
) -> lifecycle.Submission:
    """Queue a refresh (deduplicated while one is pending for the model).
    A scheduled one records the run it stands for in its payload."""
    payload = {"scheduled_for": scheduled_for.isoformat()} if scheduled_for is not None else None
    return lifecycle.operation_submit(
        bank_id=bank_id,
        operation_type="refresh_mental_model",
        mental_model_id=str(model_id),
        payload=payload,
        tag=tag,
    )
