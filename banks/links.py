"""The memory graph's links: choosing them, and writing them fast.

Links are directed: each unit keeps at most `TEMPORAL_CAP` temporal links (its
nearest units in time, half before, half after) and `SEMANTIC_CAP` semantic
ones (its most similar candidates: the most recent units sharing one of its
entities, and the bank's most recent units). A neighbour under its cap links
back (`back_links`, run by the bank's fold).

Planning only reads, holding nothing, and is the expensive half of a retain,
so it is written for speed: the reads are batched over an item's units (a few
queries per item, not per unit), a unit's vector is read once per process
(`_vectors`: units never change, and consecutive items of a bank share most of
their candidates), and links travel as tuples and are written with one
statement, not as model instances.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import orjson
from django.db import connection

from banks.extraction import Vector
from banks.models import FullLinks, LinkKind, MemoryLink, MemoryUnit, PendingBackLink, UnitEntity

TEMPORAL_CAP = 20
SEMANTIC_CAP = 50
CAPS: dict[str, int] = {LinkKind.TEMPORAL: TEMPORAL_CAP, LinkKind.SEMANTIC: SEMANTIC_CAP}
SEMANTIC_THRESHOLD = 0.2
# Semantic candidates: units sharing an entity, and the bank's most recent units.
ENTITY_CANDIDATES = 300
RECENT_CANDIDATES = 200


class Link(NamedTuple):
    source: Any
    target: Any
    kind: str
    weight: float


# (unit, kind) -> the units it already links to.
Have = dict[tuple[Any, str], set[Any]]


def plan(
    bank_id: str,
    units: list[MemoryUnit],
    *,
    entities_of: dict[Any, set[int]] | None = None,
    have: Have | None = None,
    exclude: set[Any] | None = None,
    siblings: list[MemoryUnit] | None = None,
) -> list[Link]:
    """Each unit's temporal and semantic links (up to the caps), chosen by
    reading only: no lock is held, nothing is written.

    `siblings` are units not written yet that are candidates too (the other
    facts of the item being retained, newest of all); `entities_of` gives
    their entities. `exclude`: units about to be deleted. `have`: the links
    each unit already has."""
    if not units:
        return []
    have = have or {}
    exclude = exclude or set()
    siblings = siblings or []
    if entities_of is None:
        entities_of = {}
        for unit_id, entity_id in UnitEntity.objects.filter(unit_id__in=[u.pk for u in units]).values_list(
            "unit_id", "entity_id"
        ):
            entities_of.setdefault(unit_id, set()).add(entity_id)
    stored = _Stored.read(bank_id, units, have=have, exclude=exclude, entities_of=entities_of)
    space = _Space(
        {**stored.vectors, **{s.pk: pack(s.vector) for s in siblings}}, basis=[pack(u.vector) for u in units]
    )
    return _temporal(units, have, exclude, siblings, stored) + _semantic(
        units, have, exclude, siblings, entities_of, stored, space
    )


def plan_items(bank_id: str, items: list[list[MemoryUnit]], *, entities_of: dict[Any, set[int]]) -> list[Link]:
    """The links of several new items' units, exactly as if each item were
    written before the next one is planned (`plan` with the earlier items'
    units as siblings), from one read of what is stored: a retain of many
    items plans them with a handful of queries, not a handful per item."""
    every = [unit for units in items for unit in units]
    if not every:
        return []
    stored = _Stored.read(bank_id, every, have={}, exclude=set(), entities_of=entities_of)
    packed = {u.pk: pack(u.vector) for u in every}
    space = _Space({**stored.vectors, **packed}, basis=list(packed.values()))
    links: list[Link] = []
    written = 0
    for units in items:
        written += len(units)
        siblings = every[:written]
        links += _temporal(units, {}, set(), siblings, stored)
        links += _semantic(units, {}, set(), siblings, entities_of, stored, space)
    return links


def existing_targets(unit_ids: Iterable[Any]) -> Have:
    have: Have = {}
    rows = MemoryLink.objects.filter(source_id__in=list(unit_ids)).values_list("source_id", "kind", "target_id")
    for source_id, kind, target_id in rows:
        have.setdefault((source_id, kind), set()).add(target_id)
    return have


# (unit id, timestamp), in the order a list of candidates is read.
Near = tuple[Any, datetime]


class _Stored:
    """What planning reads of the stored units, once for every unit it plans:
    for each timestamp the units nearest before and after it (newest first
    among equal times), each entity's most recently written units, the
    bank's most recent units, and their vectors."""

    def __init__(self) -> None:
        self.before: dict[datetime, list[Near]] = {}
        self.after: dict[datetime, list[Near]] = {}
        # entity -> (unit, the order its entity row was written in), newest first
        self.sharers: dict[int, list[tuple[Any, int]]] = {}
        self.recent: list[Any] = []
        self.vectors: dict[Any, Packed] = {}
        self._sharer_rows: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    @classmethod
    def read(
        cls, bank_id: str, units: list[MemoryUnit], *, have: Have, exclude: set[Any], entities_of: dict[Any, set[int]]
    ) -> _Stored:
        stored = cls()
        temporal = [u for u in units if _room(u, LinkKind.TEMPORAL, have) > 0]
        if temporal:
            depths: dict[datetime, int] = {}
            for unit in temporal:
                # Enough to fill every unit's half after dropping itself, what
                # it has and what is about to go.
                taken = len(have.get((unit.pk, LinkKind.TEMPORAL), ()))
                depths[unit.timestamp] = depths.get(unit.timestamp, TEMPORAL_CAP // 2 + len(exclude)) + 1 + taken
            stored.before, stored.after = _around(bank_id, depths)
        semantic = [u for u in units if u.vector and _room(u, LinkKind.SEMANTIC, have) > 0]
        if semantic:
            wanted = set().union(*(entities_of.get(u.pk, set()) for u in semantic))
            for entity_id, pk, order in _recent_sharers(wanted, ENTITY_CANDIDATES + 1 + len(exclude)):
                stored.sharers.setdefault(entity_id, []).append((pk, order))
            stored.recent = list(
                MemoryUnit.objects.filter(bank_id=bank_id)
                .order_by("-created_at")
                .values_list("pk", flat=True)[: RECENT_CANDIDATES + len(units) + len(exclude)]
            )
            candidates = {*stored.recent} | {pk for rows in stored.sharers.values() for pk, _ in rows}
            candidates -= {u.pk for u in units}
            # A candidate gone since it was read has no vector: an empty one
            # still takes its place among the most recent, and never links.
            stored.vectors = dict.fromkeys(candidates, _EMPTY) | _vectors.get_many(candidates)
        return stored

    def sharer_rows(self, space: _Space) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """`sharers` as each entity's arrays of recency and row, once."""
        if self._sharer_rows is None:
            self._sharer_rows = {}
            for entity_id, rows in self.sharers.items():
                # The units being planned are not candidates of themselves.
                found = [(order, space.row.get(pk, -1)) for pk, order in rows]
                known = np.array(found, dtype=np.int64).reshape(-1, 2)
                known = known[known[:, 1] >= 0]
                self._sharer_rows[entity_id] = (known[:, 0], known[:, 1].astype(np.intp))
        return self._sharer_rows


def _room(unit: MemoryUnit, kind: str, have: Have) -> int:
    return CAPS[kind] - len(have.get((unit.pk, kind), ()))


def _around(bank_id: str, depths: dict[datetime, int]) -> tuple[dict[datetime, list[Near]], dict[datetime, list[Near]]]:
    """For each timestamp, its `depth` nearest stored units at or before it
    (newest first, the latest written first among equal times) and after it
    (oldest first, the earliest written first): one statement on PostgreSQL,
    a pair per timestamp elsewhere."""
    before: dict[datetime, list[Near]] = {when: [] for when in depths}
    after: dict[datetime, list[Near]] = {when: [] for when in depths}
    if connection.vendor != "postgresql":
        others = MemoryUnit.objects.filter(bank_id=bank_id)
        for when, depth in depths.items():
            before[when] = list(
                others.filter(timestamp__lte=when)
                .order_by("-timestamp", "-created_at")
                .values_list("pk", "timestamp")[:depth]
            )
            after[when] = list(
                others.filter(timestamp__gt=when)
                .order_by("timestamp", "created_at")
                .values_list("pk", "timestamp")[:depth]
            )
        return before, after
    table = MemoryUnit._meta.db_table
    whens = list(depths)
    lateral = """SELECT w.i, {side}, u.id, u.timestamp, u.created_at FROM unnest(%s::timestamptz[], %s::int[])
        WITH ORDINALITY AS w(t, depth, i) CROSS JOIN LATERAL (SELECT id, timestamp, created_at FROM {table}
        WHERE bank_id = %s AND timestamp {op} w.t ORDER BY timestamp {order}, created_at {order} LIMIT w.depth) u"""
    with connection.cursor() as cursor:
        cursor.execute(
            lateral.format(side=0, table=table, op="<=", order="DESC")
            + " UNION ALL "
            + lateral.format(side=1, table=table, op=">", order="ASC"),
            [whens, [depths[w] for w in whens], bank_id] * 2,
        )
        rows = cursor.fetchall()
    to_uuid = MemoryUnit._meta.pk.to_python
    # The union's order is not the laterals' own: sorted again here.
    rows.sort(key=lambda row: (row[0], row[1], row[3], row[4]))
    for index, side, pk, at, _ in rows:
        (after if side else before)[whens[index - 1]].append((to_uuid(pk), at))
    for near in before.values():
        near.reverse()
    return before, after


def _temporal(
    units: list[MemoryUnit], have: Have, exclude: set[Any], siblings: list[MemoryUnit], stored: _Stored
) -> list[Link]:
    """Each unit's nearest units in time (half before, half after), for the
    units that have room. Unwritten siblings are newer than every stored
    unit, and later siblings newer than earlier ones: first among equal times
    before, last among them after."""
    half = TEMPORAL_CAP // 2
    by_time: dict[datetime, list[MemoryUnit]] = {}
    for unit in units:
        if _room(unit, LinkKind.TEMPORAL, have) > 0:
            by_time.setdefault(unit.timestamp, []).append(unit)
    links = []
    for when, group in by_time.items():
        mine_before = sorted(
            ((s.pk, s.timestamp) for s in reversed(siblings) if s.timestamp <= when), key=lambda r: r[1], reverse=True
        )
        mine_after = sorted(((s.pk, s.timestamp) for s in siblings if s.timestamp > when), key=lambda r: r[1])
        # heapq.merge keeps the first list's row first among equal keys.
        before = list(heapq.merge(mine_before, stored.before[when], key=lambda r: r[1], reverse=True))
        after = list(heapq.merge(stored.after[when], mine_after, key=lambda r: r[1]))
        for unit in group:
            skip = have.get((unit.pk, LinkKind.TEMPORAL), set()) | {unit.pk} | exclude
            room = _room(unit, LinkKind.TEMPORAL, have)
            near = [r for r in before if r[0] not in skip][:half] + [r for r in after if r[0] not in skip][:half]
            near.sort(key=lambda r: abs((r[1] - when).total_seconds()))
            links += [
                Link(unit.pk, pk, LinkKind.TEMPORAL, 1.0 / (1.0 + abs((at - when).total_seconds()) / 3600))
                for pk, at in near[:room]
            ]
    return links


def _semantic(
    units: list[MemoryUnit],
    have: Have,
    exclude: set[Any],
    siblings: list[MemoryUnit],
    entities_of: dict[Any, set[int]],
    stored: _Stored,
    space: _Space,
) -> list[Link]:
    """Each unit's most similar candidates (cosine >= SEMANTIC_THRESHOLD): the
    ENTITY_CANDIDATES most recent units sharing one of its entities, and the
    bank's RECENT_CANDIDATES most recent units. Units are rows of `space`
    here, so that choosing and scoring candidates are array operations."""
    units = [u for u in units if u.vector and _room(u, LinkKind.SEMANTIC, have) > 0]
    if not units:
        return []
    # Each entity's units as (recency, row) newest first: unwritten siblings
    # (SIBLING + their position) are newer than any stored unit (the order
    # its entity rows were written in).
    by_siblings: dict[int, list[tuple[int, int]]] = {}
    for position, sibling in enumerate(siblings):
        for entity_id in entities_of.get(sibling.pk, ()):
            by_siblings.setdefault(entity_id, []).append((_SIBLING + position, space.row[sibling.pk]))
    sharers = {
        entity_id: (np.array([k for k, _ in rows], dtype=np.int64), np.array([r for _, r in rows], dtype=np.intp))
        for entity_id, rows in by_siblings.items()
    }
    for entity_id, (recency, rows) in stored.sharer_rows(space).items():
        mine = sharers.get(entity_id)
        sharers[entity_id] = (
            (recency, rows) if mine is None else (np.concatenate([mine[0], recency]), np.concatenate([mine[1], rows]))
        )
    none = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.intp))
    recent = space.rows([s.pk for s in reversed(siblings)] + stored.recent)
    scores = space.scores([pack(unit.vector) for unit in units])
    links = []
    ids, semantic = space.ids, str(LinkKind.SEMANTIC)
    for column, unit in enumerate(units):
        skip = space.rows(have.get((unit.pk, LinkKind.SEMANTIC), set()) | {unit.pk} | exclude)
        shared = [sharers.get(e, none) for e in entities_of.get(unit.pk, ())] + [none]
        recency = np.concatenate([m[0] for m in shared])
        rows = np.concatenate([m[1] for m in shared])
        by_sharing = _first_distinct(rows[np.argsort(-recency, kind="stable")], skip)[:ENTITY_CANDIDATES]
        by_time = _first_distinct(recent, skip)[:RECENT_CANDIDATES]
        candidates = np.unique(np.concatenate([by_sharing, by_time]))
        mine = scores[candidates, column]
        similar = mine >= SEMANTIC_THRESHOLD
        candidates, mine = candidates[similar], mine[similar]
        # Most similar first; ties by id (a UUID orders as its text does).
        best = np.lexsort((space.rank[candidates], -mine))[: _room(unit, LinkKind.SEMANTIC, have)]
        source = unit.pk
        links += [
            Link(source, ids[row], semantic, round(weight, 6))
            for row, weight in zip(candidates[best].tolist(), mine[best].tolist(), strict=True)
        ]
    return links


# Recency of an unwritten sibling: above any stored unit's (a row id).
_SIBLING = 1 << 62


def _first_distinct(rows: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """The rows in their order, each once (its first place), less `skip`."""
    rows = rows[~np.isin(rows, skip)]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


class Packed(NamedTuple):
    """A sparse vector as arrays: the ids of its dimensions (`_DIMENSIONS`)
    and their values, so that many are laid into a matrix at once."""

    dimensions: np.ndarray
    values: np.ndarray


# Dimension name -> id, for the vectors this process has packed (a few
# thousand at most: the extractor's dimensions).
_DIMENSIONS: dict[str, int] = {}
_EMPTY = Packed(np.empty(0, dtype=np.intp), np.empty(0))


def pack(vector: Vector) -> Packed:
    return Packed(
        np.fromiter(
            (_DIMENSIONS.setdefault(name, len(_DIMENSIONS)) for name in vector), dtype=np.intp, count=len(vector)
        ),
        np.fromiter(vector.values(), dtype=np.float64, count=len(vector)),
    )


class _Space:
    """Sparse vectors as the rows of one dense matrix, so that a unit's
    similarity to every candidate is one matrix product (numpy) instead of a
    Python loop per pair. Vectors are unit length: the dot product is the cosine."""

    def __init__(self, vectors: dict[Any, Packed], *, basis: list[Packed]) -> None:
        self.ids = list(vectors)
        self.row = {pk: i for i, pk in enumerate(self.ids)}
        # For ties: a UUID orders as its integer does.
        self.rank = np.empty(len(self.ids), dtype=np.intp)
        self.rank[sorted(range(len(self.ids)), key=lambda i: self.ids[i].int)] = np.arange(len(self.ids))
        # Only the dimensions of the vectors to be scored (`basis`): the
        # others add nothing to their dot products, and the matrix stays small.
        used = np.unique(np.concatenate([_EMPTY.dimensions, *(v.dimensions for v in basis)]))
        self.column = np.full(len(_DIMENSIONS), -1, dtype=np.intp)  # dimension id -> column, or -1
        self.column[used] = np.arange(len(used))
        self.width = len(used)
        self.matrix = self._dense(list(vectors.values()))

    def _dense(self, vectors: list[Packed]) -> np.ndarray:
        """The vectors as rows over the basis's columns: every entry laid at once."""
        matrix = np.zeros((len(vectors), self.width))
        if not vectors:
            return matrix
        dimensions = np.concatenate([v.dimensions for v in vectors])
        values = np.concatenate([v.values for v in vectors])
        rows = np.repeat(np.arange(len(vectors)), [len(v.dimensions) for v in vectors])
        # Dimensions first seen after the basis was taken are not in it.
        inside = dimensions < len(self.column)
        columns = np.full(len(dimensions), -1, dtype=np.intp)
        columns[inside] = self.column[dimensions[inside]]
        used = columns >= 0
        matrix[rows[used], columns[used]] = values[used]
        return matrix

    def rows(self, ids: Iterable[Any]) -> np.ndarray:
        """The rows of these units, in order (units not in the space left out)."""
        return np.fromiter((self.row[pk] for pk in ids if pk in self.row), dtype=np.intp)

    def scores(self, vectors: list[Packed]) -> np.ndarray:
        """Row i, column j: the similarity of candidate i to vector j."""
        scores: np.ndarray = self.matrix @ self._dense(vectors).T
        return scores


def _recent_sharers(entity_ids: set[int], limit: int) -> list[tuple[int, Any, int]]:
    """(entity, unit, order) of each entity's `limit` most recently written
    units, newest first (`banks_entity_recent_units`)."""
    if not entity_ids:
        return []
    table = UnitEntity._meta.db_table
    to_uuid = MemoryUnit._meta.pk.to_python
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT e.id, ue.unit_id, ue.id FROM unnest(%s::bigint[]) AS e(id) CROSS JOIN LATERAL "
                f"(SELECT unit_id, id FROM {table} WHERE entity_id = e.id ORDER BY id DESC LIMIT %s) ue",
                [sorted(entity_ids), limit],
            )
            rows: list[tuple[int, Any, int]] = cursor.fetchall()
        else:
            rows = []
            for entity_id in sorted(entity_ids):
                cursor.execute(
                    f"SELECT entity_id, unit_id, id FROM {table} WHERE entity_id = %s ORDER BY id DESC LIMIT %s",
                    [entity_id, limit],
                )
                rows += cursor.fetchall()
    if connection.vendor == "postgresql":
        return rows  # psycopg gives UUIDs already
    return [(entity_id, to_uuid(unit_id), order) for entity_id, unit_id, order in rows]


class _VectorCache:
    """Unit id -> vector (packed), the `size` most recently read from the
    database (first in, first out: candidates are recent units anyway, and
    reordering on every hit cost two hashes of a UUID per candidate). A unit's
    vector never changes; a deleted unit's entry is only ever a candidate
    that the write finds gone."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Any, Packed] = OrderedDict()

    def get_many(self, unit_ids: set[Any]) -> dict[Any, Packed]:
        found: dict[Any, Packed] = {}
        missing = []
        for unit_id in unit_ids:
            vector = self._entries.get(unit_id)
            if vector is None:
                missing.append(unit_id)
            else:
                found[unit_id] = vector
        if missing:
            table = MemoryUnit._meta.db_table
            condition, params = _any(missing)
            with connection.cursor() as cursor:
                # The vector's text, parsed here (orjson): far cheaper than the ORM's JSON decoding.
                cast = "vector::text" if connection.vendor == "postgresql" else "vector"
                cursor.execute(f"SELECT id, {cast} FROM {table} WHERE id {condition}", params)
                rows = cursor.fetchall()
            for raw_id, text in rows:
                unit_id = MemoryUnit._meta.pk.to_python(raw_id)
                vector = pack(orjson.loads(text))
                found[unit_id] = vector
                self._entries[unit_id] = vector
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return found


_vectors = _VectorCache(size=5000)


def _uuids(ids: Iterable[Any]) -> str:
    """A uuid[] literal: one text parameter instead of an array psycopg dumps
    element by element (a retain sends a few hundred ids per statement)."""
    return "{" + ",".join(u.hex for u in ids) + "}"


def _any(unit_ids: Iterable[Any]) -> tuple[str, list[Any]]:
    """`= ANY(…)` on PostgreSQL (one parameter), `IN (…)` elsewhere."""
    if connection.vendor == "postgresql":
        return "= ANY(%s::uuid[])", [_uuids(unit_ids)]
    ids = [MemoryUnit._meta.pk.get_db_prep_value(pk, connection) for pk in unit_ids]
    return f"IN ({', '.join(['%s'] * len(ids))})", ids


def alive(unit_ids: Iterable[Any]) -> set[Any]:
    """Which of these units exist now."""
    ids = list(unit_ids)
    if not ids:
        return set()
    condition, params = _any(ids)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {MemoryUnit._meta.db_table} WHERE id {condition}", params)
        return {MemoryUnit._meta.pk.to_python(row[0]) for row in cursor.fetchall()}


def insert(bank_id: str, links: list[Link], *, offer_back: bool) -> None:
    """Write links, skipping any that exist; with `offer_back`, queue each
    one written for the fold to offer its target a link back (on PostgreSQL
    only to targets not known full: most are, and the fold skips them anyway)."""
    if not links:
        return
    table, queue, full = MemoryLink._meta.db_table, PendingBackLink._meta.db_table, FullLinks._meta.db_table
    columns = "(bank_id, source_id, target_id, kind, weight)"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            written = f"""INSERT INTO {table} {columns}
                SELECT %s, s, t, k, w FROM unnest(%s::uuid[], %s::uuid[], %s::varchar[], %s::float8[]) AS l(s, t, k, w)
                ON CONFLICT DO NOTHING"""
            if offer_back:
                # One round trip: the links, and the offers of those written to
                # units not known full, each looked up on the index (a LATERAL
                # with a LIMIT: as a NOT EXISTS it was planned as a hash of the
                # whole table, every bank's full units, per statement).
                written = f"""WITH written AS ({written} RETURNING bank_id, source_id, target_id, kind, weight)
                    INSERT INTO {queue} {columns}
                    SELECT w.bank_id, w.source_id, w.target_id, w.kind, w.weight FROM written w
                    LEFT JOIN LATERAL (
                        SELECT 1 AS known FROM {full} f WHERE f.unit_id = w.target_id AND f.kind = w.kind LIMIT 1
                    ) AS f ON TRUE
                    WHERE f.known IS NULL"""
            cursor.execute(
                written,
                [
                    bank_id,
                    _uuids(link.source for link in links),
                    _uuids(link.target for link in links),
                    "{" + ",".join(link.kind for link in links) + "}",
                    "{" + ",".join(map(repr, (link.weight for link in links))) + "}",
                ],
            )
            return
        for link in links:
            row = (bank_id, link.source.hex, link.target.hex, link.kind, link.weight)
            cursor.execute(f"INSERT OR IGNORE INTO {table} {columns} VALUES (%s, %s, %s, %s, %s)", row)
            if offer_back and cursor.rowcount:
                cursor.execute(f"INSERT INTO {queue} {columns} VALUES (%s, %s, %s, %s, %s)", row)


def take_offers(bank_id: str, limit: int) -> tuple[list[Link], int]:
    """Remove the oldest queued offers of links back and return those whose
    target is not known full (`FullLinks`), in the order the links were
    written, with how many were removed (the caller's transaction keeps them
    if it fails)."""
    table, full = PendingBackLink._meta.db_table, FullLinks._meta.db_table
    taken = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE bank_id = %s ORDER BY id LIMIT %s)"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # one statement
            cursor.execute(
                f"""WITH taken AS ({taken} RETURNING id, source_id, target_id, kind, weight)
                SELECT t.*, EXISTS (SELECT 1 FROM {full} f WHERE f.unit_id = t.target_id AND f.kind = t.kind)
                FROM taken t""",
                [bank_id, limit],
            )
            rows = cursor.fetchall()
        else:  # SQLite has no DELETE in WITH
            cursor.execute(f"{taken} RETURNING id, source_id, target_id, kind, weight", [bank_id, limit])
            offers = cursor.fetchall()
            condition, params = _any({target for _, _, target, _, _ in offers})
            cursor.execute(f"SELECT unit_id, kind FROM {full} WHERE unit_id {condition}", params)
            known_full = set(cursor.fetchall())
            rows = [(*offer, (offer[2], offer[3]) in known_full) for offer in offers]
    to_uuid = MemoryUnit._meta.pk.to_python
    return [
        Link(to_uuid(source), to_uuid(target), kind, weight)
        for _, source, target, kind, weight, is_full in sorted(rows)
        if not is_full
    ], len(rows)


def back_links(links: list[Link]) -> list[Link]:
    """For each link in order, one back from its target while the target is
    under its cap; the targets found or made full are recorded (`FullLinks`)
    so that they are neither offered nor counted again. The caller must be
    the only writer of links back (the bank's folder) so the counts cannot
    change meanwhile."""
    if not links:
        return []
    to_uuid = MemoryUnit._meta.pk.to_python
    counts = {(to_uuid(unit_id), kind): n for unit_id, kind, n in _link_counts({link.target for link in links})}
    back = []
    for link in links:
        key = (link.target, link.kind)
        if counts.get(key, 0) < CAPS[link.kind]:
            counts[key] = counts.get(key, 0) + 1
            back.append(Link(link.target, link.source, link.kind, link.weight))
    FullLinks.objects.bulk_create(
        [FullLinks(unit_id=unit_id, kind=kind) for (unit_id, kind), n in sorted(counts.items()) if n >= CAPS[kind]],
        ignore_conflicts=True,
    )
    return back


def _link_counts(unit_ids: set[Any]) -> list[tuple[Any, str, int]]:
    """(unit, kind, how many links it has) for these units, each counted on
    the link index. On PostgreSQL a count per unit (a LATERAL aggregate): a
    bank's links grow by hundreds a retain, and a GROUP BY over `ANY(…)` is
    planned from statistics that lag behind (a seq scan of every bank's links
    once they say the table is small)."""
    table = MemoryLink._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""SELECT u.id, c.kind, c.n FROM unnest(%s::uuid[]) AS u(id)
                CROSS JOIN LATERAL (
                    SELECT kind, COUNT(*) AS n FROM {table} WHERE source_id = u.id GROUP BY kind
                ) AS c""",
                [_uuids(unit_ids)],
            )
        else:
            condition, params = _any(unit_ids)
            cursor.execute(
                f"SELECT source_id, kind, COUNT(*) FROM {table} WHERE source_id {condition} GROUP BY source_id, kind",
                params,
            )
        counts: list[tuple[Any, str, int]] = cursor.fetchall()
        return counts
