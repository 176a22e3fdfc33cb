"""consolidation: turn unconsolidated memory units into per-entity observations.

Each touched entity's observation is rebuilt from its most recent units (not
only the new ones), recording them as its sources, so running it twice gives
the same observations: idempotent. Units are marked consolidated at the end.

Which units: all unconsolidated ones, or only those in scope. The scope is
Hindsight's `observation_scopes` (lists of tags: a unit is in scope when it
carries every tag of at least one list) or, the older form, `tags` (a unit
carrying any one of them: `[[t] for t in tags]`).

Every run, scoped or not, also repairs the bank's stale observations (those
a delete took a source from): each is rebuilt from the units that survive,
or removed when none do. A delete queues a consolidation for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from django.db import transaction

from banks import write_locks
from banks.models import Entity, MemoryUnit, Observation, ObservationSource, UnitEntity
from operations.handlers import OperationContext
from tenancy.models import Bank

UNITS_PER_OBSERVATION = 12
OBSERVATION_MAX_CHARS = 2000

Scopes = list[frozenset[str]]


def scopes_from_payload(payload: dict[str, Any]) -> Scopes | None:
    """The run's scope as tag sets, None for every unit."""
    if payload.get("observation_scopes"):
        return [frozenset(scope) for scope in payload["observation_scopes"]]
    if payload.get("tags"):
        return [frozenset([tag]) for tag in payload["tags"]]
    return None


def in_scope(tags: Sequence[str], scopes: Scopes | None) -> bool:
    if scopes is None:
        return True
    held = set(tags)
    return any(scope <= held for scope in scopes)


def handle(ctx: OperationContext) -> dict[str, Any]:
    bank = Bank.objects.get(pk=ctx.bank_id)
    scopes = scopes_from_payload(ctx.payload)
    ctx.progress("collecting")
    pending = MemoryUnit.objects.filter(bank=bank, consolidated=False).values_list("pk", "tags")
    unit_ids = [pk for pk, tags in pending if in_scope(tags, scopes)]
    entity_ids = set(UnitEntity.objects.filter(unit_id__in=unit_ids).values_list("entity_id", flat=True))
    stale = set(Observation.objects.filter(bank=bank, needs_rebuild=True).values_list("entity_id", flat=True))
    written = removed = 0
    if bank.enable_observations:
        todo = sorted(entity_ids | stale)
        for done, entity_id in enumerate(todo):
            ctx.progress("observing", processed=done, total=len(todo))
            outcome = observe(bank, entity_id)
            written += outcome == "written"
            removed += outcome == "removed"
    ctx.progress("marking", processed=len(entity_ids), total=len(entity_ids))
    with transaction.atomic():
        write_locks.bank_writing(bank.pk, exclusive=False)
        MemoryUnit.objects.filter(pk__in=unit_ids).update(consolidated=True)
    return {
        "units": len(unit_ids),
        "entities": len(entity_ids),
        "observations": written,
        "stale_observations": len(stale) if bank.enable_observations else 0,
        "observations_removed": removed,
    }


def observe(bank: Bank, entity_id: int) -> Literal["written", "removed", "none"]:
    """Rebuild one entity's observation from its most recent units and record
    them as its sources; remove it when the entity has no units left."""
    units = MemoryUnit.objects.filter(bank=bank, unitentity__entity_id=entity_id)
    recent = units.order_by("-timestamp", "position", "pk")
    with transaction.atomic():
        # As an adder of the bank (`write_locks`): no delete can remove the
        # entity or a unit cited here before this commits.
        write_locks.bank_writing(bank.pk, exclusive=False)
        entity = Entity.objects.filter(pk=entity_id).first()
        if entity is None:
            return "none"  # pruned meanwhile; its observation went with it
        cited = list(recent.values_list("pk", "text")[:UNITS_PER_OBSERVATION])
        if not cited:
            deleted, _ = Observation.objects.filter(bank=bank, entity=entity).delete()
            return "removed" if deleted else "none"
        facts: list[str] = []
        for _, text in cited:
            if text not in facts:
                facts.append(text)
        body = f"{entity.display_name}: " + " ".join(facts)
        observation, _ = Observation.objects.update_or_create(
            bank=bank,
            entity=entity,
            defaults={"text": body[:OBSERVATION_MAX_CHARS], "unit_count": units.count(), "needs_rebuild": False},
        )
        sources = [pk for pk, _ in cited]
        ObservationSource.objects.filter(observation=observation).exclude(unit_id__in=sources).delete()
        ObservationSource.objects.bulk_create(
            [ObservationSource(observation=observation, unit_id=pk) for pk in sources], ignore_conflicts=True
        )
    return "written"
