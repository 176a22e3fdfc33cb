"""Writing a bank's memory: retaining items, deleting documents and units, links.

Every write that changes one document happens in one transaction with the
document row locked, so concurrent retains of one document run one after the
other and a crash leaves either the old or the new version, never half of each.
That also makes retains idempotent: running one again replaces the document
with the same units.

Co-occurrence counts are kept exact by incrementing them for units added and
decrementing them for units deleted, in the same transaction. Links are
directed: each unit keeps at most `TEMPORAL_CAP` temporal and `SEMANTIC_CAP`
semantic outgoing links; a neighbour under its cap links back.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from banks.extraction import EntityMention, canonical, cosine, get_extractor
from banks.models import (
    Bank,
    Document,
    Entity,
    EntityCooccurrence,
    LinkKind,
    MemoryLink,
    MemoryUnit,
    Observation,
    ObservationSource,
    UnitEntity,
)

TEMPORAL_CAP = 20
SEMANTIC_CAP = 50
SEMANTIC_THRESHOLD = 0.2
# Semantic candidates: units sharing an entity, and the bank's most recent units.
ENTITY_CANDIDATES = 300
RECENT_CANDIDATES = 200


@dataclass
class RetainItem:
    content: str
    timestamp: datetime | None = None
    context: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    document_id: str | None = None
    tags: list[str] = field(default_factory=list)
    entities: list[EntityMention] = field(default_factory=list)

    def to_payload(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "context": self.context,
            "metadata": self.metadata,
            "document_id": self.document_id,
            "tags": self.tags,
            "entities": [{"text": e.name, "type": e.entity_type} for e in self.entities],
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> RetainItem:
        timestamp = data.get("timestamp")
        return cls(
            content=data["content"],
            timestamp=datetime.fromisoformat(timestamp) if timestamp else None,
            context=data.get("context") or "",
            metadata=data.get("metadata") or {},
            document_id=data.get("document_id"),
            tags=data.get("tags") or [],
            entities=[EntityMention(e["text"], e.get("type") or "") for e in data.get("entities") or []],
        )


@dataclass
class RetainOutcome:
    items: int = 0
    units: int = 0
    replaced_units: int = 0
    entities: int = 0
    # Each retained document, in item order (one `retain.completed` event each).
    document_ids: list[str] = field(default_factory=list)


def retain_items(
    *,
    bank: Bank,
    items: list[RetainItem],
    document_tags: list[str] | None = None,
    default_document_id: Callable[[int], str],
    on_item: Callable[[int, int], None] | None = None,
) -> RetainOutcome:
    """Retain each item (one transaction per item). `default_document_id(i)`
    names the document of an item without one; it must be deterministic so a
    re-run replaces instead of duplicating. `on_item(done, total)` is called
    before each item (progress and cancellation checkpoints)."""
    outcome = RetainOutcome()
    for index, item in enumerate(items):
        if on_item is not None:
            on_item(index, len(items))
        document_id = item.document_id or default_document_id(index)
        added, replaced, entities = retain_item(
            bank=bank, item=item, document_id=document_id, document_tags=document_tags or []
        )
        outcome.items += 1
        outcome.units += added
        outcome.replaced_units += replaced
        outcome.entities += entities
        outcome.document_ids.append(document_id)
    return outcome


def retain_item(
    *, bank: Bank, item: RetainItem, document_id: str, document_tags: list[str]
) -> tuple[int, int, int]:
    """Store one item as (the new version of) a document. Returns (units added,
    units replaced, entities mentioned)."""
    extractor = get_extractor()
    facts = extractor.extract_facts(item.content) or [item.content.strip() or item.content]
    when = item.timestamp or timezone.now()
    tags = sorted(set(item.tags) | set(document_tags))
    content_hash = hashlib.sha256(item.content.encode()).hexdigest()
    with transaction.atomic():
        document = _locked_document(bank, document_id)
        replaced = _delete_units(bank, MemoryUnit.objects.filter(document=document))
        document.content_hash = content_hash
        document.tags = tags
        document.context = item.context
        document.metadata = item.metadata
        document.save()
        units = MemoryUnit.objects.bulk_create(
            [
                MemoryUnit(
                    bank=bank, document=document, position=i, text=fact, timestamp=when,
                    tags=tags, context=item.context, vector=extractor.embed(fact),
                )
                for i, fact in enumerate(facts)
            ]
        )
        mentions = {
            unit.pk: _mentions(extractor.extract_entities(unit.text), item.entities) for unit in units
        }
        entity_ids = _upsert_entities(bank, [m for ms in mentions.values() for m in ms])
        UnitEntity.objects.bulk_create(
            [
                UnitEntity(unit_id=unit_id, entity_id=entity_ids[canonical(m.name)])
                for unit_id, ms in mentions.items()
                for m in ms
            ],
            ignore_conflicts=True,
        )
        _add_cooccurrences(
            bank, [sorted({entity_ids[canonical(m.name)] for m in ms}) for ms in mentions.values()]
        )
        link_units(bank, units, fresh=True)
    return len(units), replaced, len(entity_ids)


def _locked_document(bank: Bank, document_id: str) -> Document:
    """The document row, created if new, locked until the transaction ends."""
    for _ in range(3):
        document = Document.objects.select_for_update().filter(bank=bank, document_id=document_id).first()
        if document is not None:
            return document
        try:
            with transaction.atomic():
                Document.objects.create(bank=bank, document_id=document_id, content_hash="")
        except IntegrityError:
            pass  # created concurrently: lock theirs
    raise IntegrityError(f"document {document_id} could not be locked")


def _mentions(found: list[EntityMention], explicit: list[EntityMention]) -> list[EntityMention]:
    unique: dict[str, EntityMention] = {}
    for mention in [*explicit, *found]:
        key = canonical(mention.name)
        if key:
            unique.setdefault(key, mention)
    return list(unique.values())


def _upsert_entities(bank: Bank, mentions: list[EntityMention]) -> dict[str, int]:
    by_name = {canonical(m.name): m for m in mentions}
    if not by_name:
        return {}
    Entity.objects.bulk_create(
        [
            Entity(bank=bank, name=name, display_name=m.name[:200], entity_type=m.entity_type[:50])
            for name, m in sorted(by_name.items())
        ],
        ignore_conflicts=True,
    )
    return dict(Entity.objects.filter(bank=bank, name__in=list(by_name)).values_list("name", "id"))


def _pair_counts(entity_sets: Iterable[list[int]]) -> Counter[tuple[int, int]]:
    pairs: Counter[tuple[int, int]] = Counter()
    for entity_ids in entity_sets:
        pairs.update(combinations(sorted(set(entity_ids)), 2))
    return pairs


def _add_cooccurrences(bank: Bank, entity_sets: list[list[int]]) -> None:
    pairs = _pair_counts(entity_sets)
    if not pairs:
        return
    now = timezone.now()
    table = EntityCooccurrence._meta.db_table
    rows = sorted(pairs.items())  # a fixed order: concurrent upserts lock rows alike
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    params: list[Any] = []
    for (a, b), n in rows:
        params += [bank.pk, a, b, n, now]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (bank_id, entity_a_id, entity_b_id, count, updated_at) VALUES {values} "
            f"ON CONFLICT (entity_a_id, entity_b_id) DO UPDATE SET count = {table}.count + EXCLUDED.count, "
            f"updated_at = EXCLUDED.updated_at",
            params,
        )


def _delete_units(bank: Bank, units: QuerySet[MemoryUnit]) -> int:
    """Delete units, keeping co-occurrence counts exact, flagging the
    neighbours that lose a link for a top-up and the observations built from
    them for a rebuild. Returns how many were deleted.

    The units are locked first, in primary-key order, as a consolidation
    citing them locks them (`lock_existing_units`): whichever comes second
    waits, so an observation never commits a citation of a unit deleted
    under it, and a delete never misses a citation committed before it."""
    unit_ids = list(units.order_by("pk").select_for_update().values_list("pk", flat=True))
    if not unit_ids:
        return 0
    Observation.objects.filter(
        pk__in=ObservationSource.objects.filter(unit_id__in=unit_ids).values("observation_id")
    ).update(needs_rebuild=True)
    per_unit: dict[Any, list[int]] = {}
    for unit_id, entity_id in UnitEntity.objects.filter(unit_id__in=unit_ids).values_list("unit_id", "entity_id"):
        per_unit.setdefault(unit_id, []).append(entity_id)
    for (a, b), n in sorted(_pair_counts(per_unit.values()).items()):
        EntityCooccurrence.objects.filter(entity_a_id=a, entity_b_id=b).update(count=F("count") - n)
    neighbours = set(
        MemoryLink.objects.filter(target_id__in=unit_ids).values_list("source_id", flat=True)
    ) | set(MemoryLink.objects.filter(source_id__in=unit_ids).values_list("target_id", flat=True))
    neighbours -= set(unit_ids)
    if neighbours:
        MemoryUnit.objects.filter(pk__in=neighbours).update(needs_link_topup=True)
    MemoryUnit.objects.filter(pk__in=unit_ids).delete()
    return len(unit_ids)


# --- links ---------------------------------------------------------------------------


def link_units(bank: Bank, units: list[MemoryUnit], *, fresh: bool = False) -> int:
    """Give each unit its temporal and semantic links (up to the caps), and
    link back from neighbours still under theirs. Returns links created.

    The reads are batched over the units (an item's facts share their
    timestamp and most of their candidates): a few queries per call, not per
    unit. `fresh` units were just created, so they have no links yet."""
    if not units:
        return 0
    have = _existing_targets(units) if not fresh else {}
    links = _temporal_links(bank, units, have) + _semantic_links(bank, units, have)
    links += _back_links(links)
    created = MemoryLink.objects.bulk_create(links, ignore_conflicts=True)
    return len(created)


def _existing_targets(units: list[MemoryUnit]) -> dict[tuple[Any, str], set[Any]]:
    """(unit, kind) -> the units it already links to."""
    have: dict[tuple[Any, str], set[Any]] = {}
    rows = MemoryLink.objects.filter(source_id__in=[u.pk for u in units]).values_list("source_id", "kind", "target_id")
    for source_id, kind, target_id in rows:
        have.setdefault((source_id, kind), set()).add(target_id)
    return have


def _temporal_links(
    bank: Bank, units: list[MemoryUnit], have: dict[tuple[Any, str], set[Any]]
) -> list[MemoryLink]:
    """Each unit's nearest units in time (half before, half after), for the
    units that have room; one pair of queries per distinct timestamp."""
    half = TEMPORAL_CAP // 2
    by_time: dict[datetime, list[MemoryUnit]] = {}
    for unit in units:
        if TEMPORAL_CAP - len(have.get((unit.pk, LinkKind.TEMPORAL), ())) > 0:
            by_time.setdefault(unit.timestamp, []).append(unit)
    links = []
    for when, group in by_time.items():
        # Enough to fill every unit's half after dropping itself and what it has.
        depth = half + len(group) + max(len(have.get((u.pk, LinkKind.TEMPORAL), ())) for u in group)
        others = MemoryUnit.objects.filter(bank=bank)
        before = list(others.filter(timestamp__lte=when).order_by("-timestamp", "-created_at")
                      .values_list("pk", "timestamp")[:depth])
        after = list(others.filter(timestamp__gt=when).order_by("timestamp", "created_at")
                     .values_list("pk", "timestamp")[:depth])
        for unit in group:
            skip = have.get((unit.pk, LinkKind.TEMPORAL), set()) | {unit.pk}
            room = TEMPORAL_CAP - len(skip) + 1
            near = [r for r in before if r[0] not in skip][:half] + [r for r in after if r[0] not in skip][:half]
            near.sort(key=lambda r: abs((r[1] - when).total_seconds()))
            links += [
                MemoryLink(
                    bank=bank, source=unit, target_id=pk, kind=LinkKind.TEMPORAL,
                    weight=1.0 / (1.0 + abs((at - when).total_seconds()) / 3600),
                )
                for pk, at in near[:room]
            ]
    return links


def _semantic_links(
    bank: Bank, units: list[MemoryUnit], have: dict[tuple[Any, str], set[Any]]
) -> list[MemoryLink]:
    """Each unit's most similar candidates (cosine >= SEMANTIC_THRESHOLD): the
    ENTITY_CANDIDATES most recent units sharing one of its entities, and the
    bank's RECENT_CANDIDATES most recent units. The candidates of all the
    units are read at once: per entity its most recent units (so each unit's
    own most recent sharers are among them), the bank's recent ones, then
    every candidate's vector in one query."""
    units = [u for u in units if u.vector and SEMANTIC_CAP - len(have.get((u.pk, LinkKind.SEMANTIC), ())) > 0]
    if not units:
        return []
    entities_of: dict[Any, set[int]] = {}
    for unit_id, entity_id in UnitEntity.objects.filter(unit_id__in=[u.pk for u in units]).values_list(
        "unit_id", "entity_id"
    ):
        entities_of.setdefault(unit_id, set()).add(entity_id)
    sharers = _recent_units_per_entity(set().union(*entities_of.values()) if entities_of else set())
    recent = list(
        MemoryUnit.objects.filter(bank=bank).order_by("-created_at").values_list("pk", flat=True)[
            : RECENT_CANDIDATES + len(units)
        ]
    )
    wanted = set(recent) | {pk for rows in sharers.values() for pk, _ in rows}
    vectors = dict(MemoryUnit.objects.filter(pk__in=wanted).values_list("pk", "vector"))
    links = []
    for unit in units:
        skip = have.get((unit.pk, LinkKind.SEMANTIC), set()) | {unit.pk}
        room = SEMANTIC_CAP - len(skip) + 1
        shared = sorted(
            {row for entity_id in entities_of.get(unit.pk, ()) for row in sharers.get(entity_id, [])},
            key=lambda row: row[1], reverse=True,
        )
        candidates = [pk for pk, _ in shared if pk not in skip][:ENTITY_CANDIDATES]
        candidates += [pk for pk in recent if pk not in skip][:RECENT_CANDIDATES]
        scored = sorted(
            ((cosine(unit.vector, vectors[pk]), pk) for pk in set(candidates) if pk in vectors),
            key=lambda s: (-s[0], str(s[1])),
        )
        links += [
            MemoryLink(bank=bank, source=unit, target_id=pk, kind=LinkKind.SEMANTIC, weight=round(score, 6))
            for score, pk in scored[:room]
            if score >= SEMANTIC_THRESHOLD
        ]
    return links


def _recent_units_per_entity(entity_ids: set[int]) -> dict[int, list[tuple[Any, datetime]]]:
    """Per entity, its ENTITY_CANDIDATES most recent units (id, created_at)."""
    if not entity_ids:
        return {}
    ranked = (
        UnitEntity.objects.filter(entity_id__in=entity_ids)
        .annotate(
            rank=Window(RowNumber(), partition_by=[F("entity_id")], order_by=F("unit__created_at").desc())
        )
        .filter(rank__lte=ENTITY_CANDIDATES + 1)
        .values_list("entity_id", "unit_id", "unit__created_at")
    )
    per_entity: dict[int, list[tuple[Any, datetime]]] = {}
    for entity_id, unit_id, created_at in ranked:
        per_entity.setdefault(entity_id, []).append((unit_id, created_at))
    return per_entity


def _back_links(links: list[MemoryLink]) -> list[MemoryLink]:
    if not links:
        return []
    caps = {LinkKind.TEMPORAL: TEMPORAL_CAP, LinkKind.SEMANTIC: SEMANTIC_CAP}
    targets = {link.target_id for link in links}
    counts = {
        (row["source_id"], row["kind"]): row["n"]
        for row in MemoryLink.objects.filter(source_id__in=targets)
        .values("source_id", "kind")
        .annotate(n=Count("id"))
        .order_by()
    }
    back = []
    for link in links:
        key = (link.target_id, link.kind)
        if counts.get(key, 0) < caps[link.kind]:
            counts[key] = counts.get(key, 0) + 1
            back.append(
                MemoryLink(bank=link.bank, source_id=link.target_id, target=link.source, kind=link.kind, weight=link.weight)
            )
    return back


# --- deletes ------------------------------------------------------------------------


def document_delete(*, bank: Bank, document_id: str) -> int | None:
    """Delete a document and its units; None if there is no such document.
    Call inside a transaction that also queues graph maintenance."""
    document = Document.objects.select_for_update().filter(bank=bank, document_id=document_id).first()
    if document is None:
        return None
    count = _delete_units(bank, MemoryUnit.objects.filter(document=document))
    document.delete()
    return count


def unit_delete(*, bank: Bank, unit_id: Any) -> bool:
    """Delete one memory unit (its document stays); False if there is none."""
    units = MemoryUnit.objects.filter(bank=bank, pk=unit_id)
    return _delete_units(bank, units) > 0


def lock_existing_units(unit_ids: Iterable[Any]) -> list[Any]:
    """Which of these units still exist, each locked until the transaction
    ends so that it cannot be deleted meanwhile: for a writer about to cite
    them (an observation's sources). In primary-key order, as deletes lock.

    PostgreSQL: FOR KEY SHARE, the lock a foreign key takes. It blocks a
    delete and nothing else: retains linking to the units and top-ups
    flagging them go on. SQLite runs one writer at a time; a read is enough.
    """
    ids = sorted(set(unit_ids), key=str)
    if not ids:
        return []
    if connection.vendor != "postgresql":
        return list(MemoryUnit.objects.filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))
    table = MemoryUnit._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {table} WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE", [ids])
        return [row[0] for row in cursor.fetchall()]


# --- graph maintenance passes --------------------------------------------------------------


def top_up_links(bank: Bank, *, limit: int = 500) -> int:
    """Pass 1: units that lost a neighbour get links up to their caps again."""
    units = list(MemoryUnit.objects.filter(bank=bank, needs_link_topup=True)[:limit])
    for unit in units:
        with transaction.atomic():
            link_units(bank, [unit])
            MemoryUnit.objects.filter(pk=unit.pk).update(needs_link_topup=False)
    return len(units)


def prune_orphan_entities(bank: Bank) -> int:
    """Pass 2: entities no unit mentions any more (their observations go too)."""
    orphans = list(
        Entity.objects.filter(bank=bank).annotate(n=Count("unitentity")).filter(n=0).values_list("pk", flat=True)
    )
    Entity.objects.filter(pk__in=orphans).delete()
    return len(orphans)


def prune_stale_cooccurrences(bank: Bank) -> int:
    """Pass 3: co-occurrences no unit supports any more."""
    deleted, _ = EntityCooccurrence.objects.filter(bank=bank, count__lte=0).delete()
    return deleted
