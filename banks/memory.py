"""Writing a bank's memory: retaining items, deleting documents and units, links.

A retain does its expensive work first, holding nothing: extraction, vectors,
and the choice of link candidates (reads only). Then the items are written,
new documents together in one short transaction (`WRITE_ITEMS`; an item that
replaces a document in one of its own), which locks their document rows: so
concurrent retains of one document run one after the other and a crash
leaves either the old or the new version, never half of each. That also makes
retains idempotent: running one again replaces the document with the same units. Writers of one bank
coordinate through `write_locks` (adders side by side, deleters alone), and
what adders would fight over (co-occurrence counts, a neighbour's cap before
it links back) they append, for `fold` to bring up to date once per retain:
a crowd of retains into one bank neither deadlocks nor queues on one hot row.

Co-occurrence counts are kept exact by deltas for units added and deleted,
written in the same transaction and folded into the counts after. Links, how
they are chosen and written: `banks.links`.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone

from banks import links, write_locks
from banks.extraction import EntityMention, canonical, get_extractor
from banks.models import (
    Document,
    Entity,
    EntityCooccurrence,
    EntityCooccurrenceDelta,
    FullLinks,
    MemoryLink,
    MemoryUnit,
    Observation,
    ObservationSource,
    PendingBackLink,
    UnitEntity,
)
from banks.unit_vectors import UnitId
from core import transient
from tenancy.models import Bank

TEMPORAL_CAP, SEMANTIC_CAP = links.TEMPORAL_CAP, links.SEMANTIC_CAP


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

    def counts(self) -> dict[str, int]:
        """The counts so far, as a progress detail (a resumed run starts from them)."""
        return {
            "items": self.items,
            "units": self.units,
            "replaced_units": self.replaced_units,
            "entities": self.entities,
        }

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> RetainOutcome:
        return cls(
            items=int(counts.get("items", 0)),
            units=int(counts.get("units", 0)),
            replaced_units=int(counts.get("replaced_units", 0)),
            entities=int(counts.get("entities", 0)),
        )


# New documents written in one transaction, by database. On PostgreSQL a
# request's items cost one set of round trips and the transaction stays
# short. SQLite runs in process (no round trips to save) with one writer for
# the whole database: a longer write would hold up every other writer, the
# sweeper included, and put a retain's checkpoints (where it gives its slot to
# a waiting bank) further apart.
WRITE_ITEMS = {"postgresql": 20, "sqlite": 1}


def retain_items(
    *,
    bank: Bank,
    items: list[RetainItem],
    document_tags: list[str] | None = None,
    default_document_id: Callable[[int], str],
    on_item: Callable[[int, int, RetainOutcome], None] | None = None,
    start: int = 0,
    outcome: RetainOutcome | None = None,
) -> RetainOutcome:
    """Retain each item from `start` on, up to WRITE_ITEMS (by database) new
    documents per short transaction, and an item that replaces a document in
    one of its own. `default_document_id(i)` names the document of an item without one;
    it must be deterministic so a re-run replaces instead of duplicating.
    `on_item(done, total, outcome so far)` is called before each write
    (progress and cancellation checkpoints: every item before `done` is
    written). A resumed run passes the `outcome` so far."""
    outcome = outcome if outcome is not None else RetainOutcome()
    index = start
    while index < len(items):
        if on_item is not None:
            on_item(index, len(items), outcome)
        group = _next_group(bank, items, index, default_document_id, document_tags or [])
        for item, (added, replaced, entities) in zip(group, _retain_group(bank, group), strict=True):
            outcome.items += 1
            outcome.units += added
            outcome.replaced_units += replaced
            outcome.entities += entities
            outcome.document_ids.append(item.document_id)
        index += len(group)
    fold(bank)
    return outcome


def new_unit_id() -> uuid.UUID:
    """A time-ordered UUID (version 7 of RFC 9562; the standard library has
    it from Python 3.14): the milliseconds since the epoch, then 74 random
    bits. A retain's links go from its new units to recent ones, so with ids
    in time order their index entries land on the few pages at the right edge
    of each index instead of one random page per link."""
    milliseconds = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    return uuid.UUID(
        int=(milliseconds << 80)
        | (0x7 << 76)
        | ((random >> 62 & 0xFFF) << 64)
        | (0b10 << 62)
        | (random & (1 << 62) - 1)
    )


@dataclass
class _Item:
    """One item extracted, before anything is written: its facts with their
    vectors and entity mentions (the expensive part, done once)."""

    document_id: str
    content_hash: str
    tags: list[str]
    context: str
    metadata: dict[str, Any]
    timestamp: datetime
    facts: list[tuple[uuid.UUID, str, dict[str, float], list[EntityMention]]]

    @classmethod
    def extract(cls, item: RetainItem, *, document_id: str, document_tags: list[str]) -> _Item:
        extractor = get_extractor()
        texts = extractor.extract_facts(item.content) or [item.content.strip() or item.content]
        return cls(
            document_id=document_id,
            content_hash=hashlib.sha256(item.content.encode()).hexdigest(),
            tags=sorted(set(item.tags) | set(document_tags)),
            context=item.context,
            metadata=item.metadata,
            timestamp=item.timestamp or timezone.now(),
            facts=[
                (new_unit_id(), text, extractor.embed(text), _mentions(extractor.extract_entities(text), item.entities))
                for text in texts
            ],
        )

    def units(self, bank: Bank) -> list[MemoryUnit]:
        """Fresh unsaved rows (ids fixed at extraction: links are planned to them)."""
        return [
            MemoryUnit(
                id=unit_id,
                bank=bank,
                position=i,
                text=text,
                timestamp=self.timestamp,
                tags=self.tags,
                context=self.context,
                vector=vector,
            )
            for i, (unit_id, text, vector, _) in enumerate(self.facts)
        ]

    def names(self) -> dict[str, EntityMention]:
        return {canonical(m.name): m for *_, mentions in self.facts for m in mentions}


def _next_group(
    bank: Bank, items: list[RetainItem], index: int, document_id: Callable[[int], str], document_tags: list[str]
) -> list[_Item]:
    """The items written next, extracted: up to WRITE_ITEMS of new, distinct
    documents, or the one item at `index` when it replaces a document (or
    repeats one of the group's)."""
    ahead = range(index, min(index + WRITE_ITEMS.get(connection.vendor, 1), len(items)))
    ids = [items[i].document_id or document_id(i) for i in ahead]
    stored = set(
        _with_units(Document.objects.filter(bank=bank, document_id__in=ids)).values_list("document_id", flat=True)
    )
    taken: list[int] = []
    for i, doc in zip(ahead, ids, strict=True):
        if doc in stored:
            break
        stored.add(doc)  # a repeat within the group replaces it
        taken.append(i)
    taken = taken or [index]
    return [_Item.extract(items[i], document_id=ids[i - index], document_tags=document_tags) for i in taken]


class _NeedsExclusive(Exception):
    """A document has units to replace: its write must run alone in the bank."""


def _retain_group(bank: Bank, group: list[_Item]) -> list[tuple[int, int, int]]:
    """Write new documents together: entities first (each new one in a
    statement of its own, so the write rarely waits on another's uncommitted
    entity), the links planned holding nothing, then one short transaction
    (`_write_items`). A document that turns out to have units meanwhile sends
    the group through one item at a time. A transient database error plans
    and writes again, without spending the operation's retries."""
    if len(group) == 1:
        return [retain_item(bank=bank, item=group[0])]

    def attempt() -> list[tuple[int, int, int]]:
        entity_ids = _upsert_entities(bank, _names(group))
        units = [item.units(bank) for item in group]
        entities_of = {
            unit_id.hex: {entity_ids[canonical(m.name)] for m in mentions}
            for item in group
            for unit_id, _, _, mentions in item.facts
        }
        planned = links.plan_items(bank.pk, units, entities_of=entities_of)
        return _write_items(bank, group, units, planned)

    try:
        return transient.retrying(attempt, what=f"retain of {len(group)} documents")
    except _NeedsExclusive:
        return [retain_item(bank=bank, item=item) for item in group]


def retain_item(*, bank: Bank, item: _Item) -> tuple[int, int, int]:
    """Store one item as (the new version of) its document. Returns (units
    added, units replaced, entities mentioned). As `_retain_group`, for one
    item that may replace a document: the write then runs alone in the bank."""
    exclusive = False

    def attempt() -> tuple[int, int, int]:
        nonlocal exclusive
        for _ in range(3):
            # The document found on its own index, then its units on theirs.
            old = set(
                MemoryUnit.objects.filter(document__bank=bank, document__document_id=item.document_id).values_list(
                    "pk", flat=True
                )
            )
            exclusive = exclusive or bool(old)
            # Created here, each new entity in its own short statement, so that
            # the write below rarely waits for another's uncommitted entity (one
            # left unused by a failed write is an orphan graph maintenance prunes).
            entity_ids = _upsert_entities(bank, item.names())
            units = item.units(bank)
            entities_of = {
                unit_id.hex: {entity_ids[canonical(m.name)] for m in mentions} for unit_id, _, _, mentions in item.facts
            }
            exclude = {unit_id.hex for unit_id in old}
            planned = links.plan(bank.pk, units, entities_of=entities_of, exclude=exclude, siblings=units)
            try:
                return _write_items(bank, [item], [units], planned, exclusive=exclusive)[0]
            except _NeedsExclusive:
                exclusive = True  # another retain of this document wrote it meanwhile
        raise AssertionError("a document's units appeared under an exclusive writer")

    return transient.retrying(attempt, what=f"retain of document {item.document_id!r}")


def _write_items(
    bank: Bank, items: list[_Item], units: list[list[MemoryUnit]], planned: list[links.Link], *, exclusive: bool = False
) -> list[tuple[int, int, int]]:
    """The write phase of a retain: one transaction, locks in the order of
    `write_locks`, documents locked in id order. Only an exclusive writer
    replaces units; an adder that finds a document with units raises
    `_NeedsExclusive`. Returns (added, replaced, entities) per item."""
    with transaction.atomic():
        write_locks.bank_writing(bank.pk, exclusive=exclusive)
        documents = _locked_documents(bank, items)
        old_units = MemoryUnit.objects.filter(document__in=list(documents.values()))
        if exclusive:
            replaced = _delete_units(bank, old_units)
        elif _with_units(Document.objects.filter(pk__in=[d.pk for d in documents.values()])).exists():
            raise _NeedsExclusive
        else:
            replaced = 0
        fresh = []
        for item, rows in zip(items, units, strict=True):
            for unit in rows:
                unit.document = documents[item.document_id]
                fresh.append(unit)
        MemoryUnit.objects.bulk_create(fresh)
        entity_ids = _upsert_entities(bank, _names(items))
        per_unit = [
            (unit_id, sorted({entity_ids[canonical(m.name)] for m in mentions}))
            for item in items
            for unit_id, _, _, mentions in item.facts
        ]
        UnitEntity.objects.bulk_create(
            [UnitEntity(unit_id=unit_id, entity_id=e) for unit_id, ids in per_unit for e in ids],
            ignore_conflicts=True,
        )
        _write_links(bank, planned, fresh={u.pk.hex for u in fresh})
        _add_cooccurrences(bank, [ids for _, ids in per_unit])
    return [(len(rows), replaced, len(item.names())) for item, rows in zip(items, units, strict=True)]


def _with_units(documents: QuerySet[Document]) -> QuerySet[Document]:
    """Those of the documents that have units, each looked up on the units'
    document index. Asked from the units' side (a join, or `exists()` of the
    units), PostgreSQL read every unit of the bank, or of the table: a retain
    of new documents finds none, so a LIMIT 1 never stops a scan early."""
    return documents.filter(Exists(MemoryUnit.objects.filter(document=OuterRef("pk"))))


def _names(items: list[_Item]) -> dict[str, EntityMention]:
    """The entities the items mention, by canonical name."""
    return {name: mention for item in items for name, mention in item.names().items()}


def _locked_documents(bank: Bank, items: list[_Item]) -> dict[str, Document]:
    """Each item's document row as of the item (created if new), locked until
    the transaction ends: one upsert, rows in id order so two writers never
    lock the same documents in opposite orders."""
    rows = Document.objects.bulk_create(
        [
            Document(
                bank=bank,
                document_id=item.document_id,
                content_hash=item.content_hash,
                tags=item.tags,
                context=item.context,
                metadata=item.metadata,
            )
            for item in sorted(items, key=lambda item: item.document_id)
        ],
        update_conflicts=True,
        unique_fields=["bank", "document_id"],
        update_fields=["content_hash", "tags", "context", "metadata", "updated_at"],
    )
    return {row.document_id: row for row in rows}


def _mentions(found: list[EntityMention], explicit: list[EntityMention]) -> list[EntityMention]:
    unique: dict[str, EntityMention] = {}
    for mention in [*explicit, *found]:
        key = canonical(mention.name)
        if key:
            unique.setdefault(key, mention)
    return list(unique.values())


def _upsert_entities(bank: Bank, by_name: dict[str, EntityMention]) -> dict[str, int]:
    """name -> id of each entity, inserting the missing ones in name order."""
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


def _add_cooccurrences(bank: Bank, entity_sets: list[list[int]], *, sign: int = 1) -> None:
    """Append the change to the counts (`EntityCooccurrenceDelta`): no
    shared row is touched, so concurrent retains never wait on each other
    here. `fold` adds the deltas into the counts."""
    EntityCooccurrenceDelta.objects.bulk_create(
        [
            EntityCooccurrenceDelta(bank=bank, entity_a_id=a, entity_b_id=b, count=sign * n)
            for (a, b), n in sorted(_pair_counts(entity_sets).items())
        ]
    )


def _delete_units(bank: Bank, units: QuerySet[MemoryUnit]) -> int:
    """Delete units, keeping co-occurrence counts exact, flagging the
    neighbours that lose a link for a top-up (and as no longer full) and the
    observations built from them for a rebuild. Returns how many were deleted. Only an exclusive
    writer of the bank deletes (`write_locks`): no adder can be linking to
    these units or citing them meanwhile."""
    unit_ids = list(units.order_by("pk").select_for_update().values_list("pk", flat=True))
    if not unit_ids:
        return 0
    Observation.objects.filter(
        pk__in=ObservationSource.objects.filter(unit_id__in=unit_ids).values("observation_id")
    ).update(needs_rebuild=True)
    per_unit: dict[Any, list[int]] = {}
    for unit_id, entity_id in UnitEntity.objects.filter(unit_id__in=unit_ids).values_list("unit_id", "entity_id"):
        per_unit.setdefault(unit_id, []).append(entity_id)
    _add_cooccurrences(bank, list(per_unit.values()), sign=-1)
    neighbours = set(MemoryLink.objects.filter(target_id__in=unit_ids).values_list("source_id", flat=True)) | set(
        MemoryLink.objects.filter(source_id__in=unit_ids).values_list("target_id", flat=True)
    )
    neighbours -= set(unit_ids)
    if neighbours:
        MemoryUnit.objects.filter(pk__in=neighbours).update(needs_link_topup=True)
        FullLinks.objects.filter(unit_id__in=neighbours).delete()  # they have room again
    MemoryUnit.objects.filter(pk__in=unit_ids).delete()
    return len(unit_ids)


def _write_links(bank: Bank, planned: list[links.Link], *, fresh: set[UnitId]) -> None:
    """In the writer's transaction: the planned links to units that still
    exist (one may have been deleted since they were planned), each waiting
    for `fold` to offer its target a link back."""
    alive = links.alive({link.target for link in planned} - fresh) | fresh
    links.insert(bank.pk, [link for link in planned if link.target in alive], offer_back=True)


# --- the fold -------------------------------------------------------------------------

FOLD_CHUNK = 5000


def fold(bank: Bank) -> None:
    """Bring the bank's shared rows up to date with what its retains
    appended: co-occurrence deltas into the counts, and for each pending link
    a link back from its target while the target is under its cap.

    One writer of a bank folds at a time, for everyone: a retain that finds
    the fold busy leaves its share to the folder, which looks again after it
    lets go, so nothing waits and nothing is left behind. Call it outside a
    transaction of the bank's writers (a retain calls it after its items)."""
    for _ in range(10):
        if not _pending(bank):
            return
        with transaction.atomic():
            if not write_locks.try_bank_fold(bank.pk):
                return  # the folder will see ours when it looks again
            _fold_locked(bank)


def _pending(bank: Bank) -> bool:
    """Whether the bank has deltas or offers to fold (one statement)."""
    deltas, offers = EntityCooccurrenceDelta._meta.db_table, PendingBackLink._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {deltas} WHERE bank_id = %s) "
            f"OR EXISTS (SELECT 1 FROM {offers} WHERE bank_id = %s)",
            [bank.pk, bank.pk],
        )
        return bool(cursor.fetchone()[0])


def _fold_locked(bank: Bank) -> None:
    """The fold itself, by the holder of the bank's tail (or its only writer):
    each chunk taken off its queue and applied in the same transaction."""
    while _fold_deltas(bank, FOLD_CHUNK) == FOLD_CHUNK:
        pass
    while links.fold_offers(bank.pk, FOLD_CHUNK) == FOLD_CHUNK:
        pass


def _fold_deltas(bank: Bank, limit: int) -> int:
    """Remove the oldest co-occurrence deltas of the bank and add them into
    the counts (pairs in order): one statement on PostgreSQL. Returns how
    many were taken."""
    table, counts = EntityCooccurrenceDelta._meta.db_table, EntityCooccurrence._meta.db_table
    taken = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE bank_id = %s ORDER BY id LIMIT %s)"
    upsert = (
        f"ON CONFLICT (entity_a_id, entity_b_id) DO UPDATE SET count = {counts}.count + EXCLUDED.count, "
        f"updated_at = EXCLUDED.updated_at"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""WITH taken AS ({taken} RETURNING entity_a_id AS a, entity_b_id AS b, count AS n),
                added AS (
                    INSERT INTO {counts} (bank_id, entity_a_id, entity_b_id, count, updated_at)
                    SELECT %s, a, b, SUM(n), %s FROM taken GROUP BY a, b HAVING SUM(n) <> 0 ORDER BY a, b {upsert}
                )
                SELECT COUNT(*) FROM taken""",
                [bank.pk, limit, bank.pk, timezone.now()],
            )
            return int(cursor.fetchone()[0])
        cursor.execute(f"{taken} RETURNING entity_a_id, entity_b_id, count", [bank.pk, limit])
        deltas = cursor.fetchall()
        sums: Counter[tuple[int, int]] = Counter()
        for a, b, n in deltas:
            sums[(a, b)] += n
        rows = sorted((pair, n) for pair, n in sums.items() if n)
        if rows:
            now = timezone.now()
            values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
            params: list[Any] = [value for (a, b), n in rows for value in (bank.pk, a, b, n, now)]
            cursor.execute(
                f"INSERT INTO {counts} (bank_id, entity_a_id, entity_b_id, count, updated_at) VALUES {values} {upsert}",
                params,
            )
        return len(deltas)


def cooccurrence_counts(bank: Bank) -> dict[tuple[int, int], int]:
    """Each pair's count as of now, unfolded deltas included (pairs at 0 left out)."""
    counts: Counter[tuple[int, int]] = Counter(
        {
            (a, b): n
            for a, b, n in EntityCooccurrence.objects.filter(bank=bank).values_list(
                "entity_a_id", "entity_b_id", "count"
            )
        }
    )
    for a, b, n in EntityCooccurrenceDelta.objects.filter(bank=bank).values_list("entity_a_id", "entity_b_id", "count"):
        counts[(a, b)] += n
    return {pair: n for pair, n in counts.items() if n}


# --- deletes ------------------------------------------------------------------------


def document_delete(*, bank: Bank, document_id: str) -> int | None:
    """Delete a document and its units; None if there is no such document.
    Call inside a transaction that also queues graph maintenance: the
    transaction becomes the bank's only writer until it ends."""
    write_locks.bank_writing(bank.pk, exclusive=True)
    document = Document.objects.select_for_update().filter(bank=bank, document_id=document_id).first()
    if document is None:
        return None
    count = _delete_units(bank, MemoryUnit.objects.filter(document=document))
    document.delete()
    _fold_locked(bank)  # alone in the bank: the counts are exact when this commits
    return count


def unit_delete(*, bank: Bank, unit_id: Any) -> bool:
    """Delete one memory unit (its document stays); False if there is none.
    Inside a transaction, as `document_delete`."""
    write_locks.bank_writing(bank.pk, exclusive=True)
    deleted = _delete_units(bank, MemoryUnit.objects.filter(bank=bank, pk=unit_id))
    _fold_locked(bank)
    return deleted > 0


# --- graph maintenance passes --------------------------------------------------------------


def top_up_links(bank: Bank, *, limit: int = 500) -> int:
    """Pass 1: units that lost a neighbour get links up to their caps again:
    planned holding nothing, written holding the bank's fold (so no link back
    lands on the unit between counting its links and adding to them). A unit
    that lost another neighbour meanwhile keeps its flag for the next pass."""
    units = list(MemoryUnit.objects.filter(bank=bank, needs_link_topup=True)[:limit])
    for unit in units:

        def top_up(unit: MemoryUnit = unit) -> None:
            have = links.existing_targets([unit.pk.hex])
            planned = links.plan(bank.pk, [unit], have=have)
            with transaction.atomic():
                write_locks.bank_writing(bank.pk, exclusive=False)
                write_locks.bank_fold(bank.pk)
                if not MemoryUnit.objects.filter(pk=unit.pk).exists():
                    return  # deleted meanwhile
                now = links.existing_targets([unit.pk.hex])
                if not any(targets - now.get(key, set()) for key, targets in have.items()):
                    MemoryUnit.objects.filter(pk=unit.pk).update(needs_link_topup=False)
                room = {kind: cap - len(now.get((unit.pk.hex, kind), ())) for kind, cap in links.CAPS.items()}
                fitting = []
                for link in planned:
                    if link.target not in now.get((unit.pk.hex, link.kind), set()) and room[link.kind] > 0:
                        room[link.kind] -= 1
                        fitting.append(link)
                _write_links(bank, fitting, fresh=set())

        transient.retrying(top_up, what=f"link top-up of unit {unit.pk}")
    fold(bank)
    return len(units)


def prune_orphan_entities(bank: Bank) -> int:
    """Pass 2: entities no unit mentions any more (their observations go too)."""

    def prune() -> int:
        with transaction.atomic():
            write_locks.bank_writing(bank.pk, exclusive=True)
            orphans = list(
                Entity.objects.filter(bank=bank)
                .annotate(n=Count("unitentity"))
                .filter(n=0)
                .values_list("pk", flat=True)
            )
            Entity.objects.filter(pk__in=orphans).delete()
            return len(orphans)

    return transient.retrying(prune, what="orphan entity prune")


def prune_stale_cooccurrences(bank: Bank) -> int:
    """Pass 3: co-occurrences no unit supports any more."""

    def prune() -> int:
        with transaction.atomic():
            write_locks.bank_writing(bank.pk, exclusive=True)
            _fold_locked(bank)
            deleted, _ = EntityCooccurrence.objects.filter(bank=bank, count__lte=0).delete()
            return deleted

    return transient.retrying(prune, what="stale co-occurrence prune")
