"""consolidation: turn unconsolidated memory units into per-entity observations.

Each touched entity's observation is rebuilt from all of its units (not only
the new ones), so running it twice gives the same observations: idempotent.
Units are marked consolidated at the end. `payload["tags"]`, when given,
limits the run to units carrying at least one of those tags.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from banks.models import Bank, Entity, MemoryUnit, Observation, UnitEntity
from operations.handlers import OperationContext

UNITS_PER_OBSERVATION = 12
OBSERVATION_MAX_CHARS = 2000


def handle(ctx: OperationContext) -> dict[str, Any]:
    bank = Bank.objects.get(pk=ctx.bank_id)
    scope = set(ctx.payload.get("tags") or [])
    ctx.progress("collecting")
    pending = MemoryUnit.objects.filter(bank=bank, consolidated=False).values_list("pk", "tags")
    unit_ids = [pk for pk, tags in pending if not scope or scope & set(tags)]
    entity_ids = sorted(
        set(UnitEntity.objects.filter(unit_id__in=unit_ids).values_list("entity_id", flat=True))
    )
    updated = 0
    if bank.enable_observations:
        for done, entity_id in enumerate(entity_ids):
            ctx.progress("observing", processed=done, total=len(entity_ids))
            updated += observe(bank, entity_id)
    ctx.progress("marking", processed=len(entity_ids), total=len(entity_ids))
    MemoryUnit.objects.filter(pk__in=unit_ids).update(consolidated=True)
    return {"units": len(unit_ids), "entities": len(entity_ids), "observations": updated}


def observe(bank: Bank, entity_id: int) -> int:
    """Rebuild one entity's observation from its most recent units; 1 if written."""
    entity = Entity.objects.filter(pk=entity_id).first()
    if entity is None:
        return 0
    units = MemoryUnit.objects.filter(bank=bank, unitentity__entity_id=entity_id)
    facts: list[str] = []
    for text in units.order_by("-timestamp", "position").values_list("text", flat=True)[:UNITS_PER_OBSERVATION]:
        if text not in facts:
            facts.append(text)
    body = f"{entity.display_name}: " + " ".join(facts)
    with transaction.atomic():
        Observation.objects.update_or_create(
            bank=bank,
            entity=entity,
            defaults={"text": body[:OBSERVATION_MAX_CHARS], "unit_count": units.count()},
        )
    return 1
