"""The memory graph's links: choosing them, and writing them fast.

Links are directed: each unit keeps at most `TEMPORAL_CAP` temporal links (its
nearest units in time, half before, half after) and `SEMANTIC_CAP` semantic
ones (its most similar candidates: the most recent units sharing one of its
entities, and the bank's most recent units). A neighbour under its cap links
back (`back_links`, run by the bank's fold).

Planning only reads, holding nothing, and is the expensive half of a retain,
so it is written for speed: the reads are batched over all the units a retain
plans (four statements), units are ids as text and, among candidates, handles
of the process's store of vectors (`banks.unit_vectors`: a vector is read once
per process), choosing and scoring candidates are array operations, and links
travel as tuples and are written with one statement, not as model instances.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
from django.db import connection

from banks.models import FullLinks, LinkKind, MemoryLink, MemoryUnit, PendingBackLink, UnitEntity
from banks.unit_vectors import UnitId, any_unit, hex_column, kept, pack

TEMPORAL_CAP = 20
SEMANTIC_CAP = 50
CAPS: dict[str, int] = {LinkKind.TEMPORAL: TEMPORAL_CAP, LinkKind.SEMANTIC: SEMANTIC_CAP}
SEMANTIC_THRESHOLD = 0.2
# Semantic candidates: units sharing an entity, and the bank's most recent units.
ENTITY_CANDIDATES = 300
RECENT_CANDIDATES = 200


class Link(NamedTuple):
    source: UnitId
    target: UnitId
    kind: str
    weight: float


# (unit, kind) -> the units it already links to.
Have = dict[tuple[UnitId, str], set[UnitId]]


def plan(
    bank_id: str,
    units: list[MemoryUnit],
    *,
    entities_of: dict[UnitId, set[int]] | None = None,
    have: Have | None = None,
    exclude: set[UnitId] | None = None,
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
    siblings = siblings or []
    if entities_of is None:
        entities_of = {}
        for unit, entity_id in UnitEntity.objects.filter(unit_id__in=[u.pk for u in units]).values_list(
            "unit_id", "entity_id"
        ):
            entities_of.setdefault(unit.hex, set()).add(entity_id)
    planner = _Planner(bank_id, units, siblings, have=have or {}, exclude=exclude or set(), entities_of=entities_of)
    return planner.temporal(units, siblings) + planner.semantic(units, siblings)


def plan_items(bank_id: str, items: list[list[MemoryUnit]], *, entities_of: dict[UnitId, set[int]]) -> list[Link]:
    """The links of several new items' units, exactly as if each item were
    written before the next one is planned (`plan` with the earlier items'
    units as siblings), from one read of what is stored: a retain of many
    items plans them with a handful of queries, not a handful per item."""
    every = [unit for units in items for unit in units]
    if not every:
        return []
    planner = _Planner(bank_id, every, every, have={}, exclude=set(), entities_of=entities_of)
    links: list[Link] = []
    written = 0
    for units in items:
        written += len(units)
        siblings = every[:written]
        links += planner.temporal(units, siblings)
        links += planner.semantic(units, siblings)
    return links


def existing_targets(unit_ids: Iterable[UnitId]) -> Have:
    have: Have = {}
    rows = MemoryLink.objects.filter(source_id__in=list(unit_ids)).values_list("source_id", "kind", "target_id")
    for source, kind, target in rows:
        have.setdefault((source.hex, kind), set()).add(target.hex)
    return have


# (unit id, timestamp), in the order a list of candidates is read.
Near = tuple[UnitId, datetime]
# Recency of an unwritten sibling: above any stored unit's (a row id).
_SIBLING = 1 << 62
_NONE = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.intp))


class _Planner:
    """What planning reads of the stored units, once for every unit it plans:
    for each timestamp the units nearest before and after it (newest first
    among equal times), each entity's most recently written units, the
    bank's most recent units; and, for the semantic links, every candidate as
    a row of `space` (sorted handles of the store) with its similarity to
    each unit planned (`scores`), so that choosing and scoring candidates are
    array operations."""

    def __init__(
        self,
        bank_id: str,
        units: list[MemoryUnit],
        siblings: list[MemoryUnit],
        *,
        have: Have,
        exclude: set[UnitId],
        entities_of: dict[UnitId, set[int]],
    ) -> None:
        self.have, self.exclude, self.entities_of = have, exclude, entities_of
        # Units planned that are not siblings are no semantic candidates of
        # one another (as before they were written).
        self.outside = {u.pk.hex for u in units} - {s.pk.hex for s in siblings}
        self.before: dict[datetime, list[Near]] = {}
        self.after: dict[datetime, list[Near]] = {}
        temporal = [u for u in units if self._room(u, LinkKind.TEMPORAL) > 0]
        if temporal:
            depths: dict[datetime, int] = {}
            for unit in temporal:
                # Enough to fill every unit's half after dropping itself, what
                # it has and what is about to go.
                taken = len(have.get((unit.pk.hex, LinkKind.TEMPORAL), ()))
                depths[unit.timestamp] = depths.get(unit.timestamp, TEMPORAL_CAP // 2 + len(exclude)) + 1 + taken
            self.before, self.after = _around(bank_id, depths)
        semantic = [u for u in units if u.vector and self._room(u, LinkKind.SEMANTIC) > 0]
        if not semantic:
            return
        self.store = store = kept()
        store.make_room()
        # Packed only when new: the store keeps a unit's first vector anyway.
        store.add({u.pk.hex: pack(u.vector) for u in (*units, *siblings) if u.pk.hex not in store.handle})
        wanted = set().union(*(entities_of.get(u.pk.hex, set()) for u in semantic))
        sharers = _recent_sharers(wanted, ENTITY_CANDIDATES + 1 + len(exclude))
        recent = _recent(bank_id, RECENT_CANDIDATES + len(units) + len(exclude))
        handles = store.handles(recent + [unit for _, unit, _ in sharers])
        mine = store.handles([u.pk.hex for u in (*units, *siblings)])
        self.space = np.unique(np.concatenate([handles, mine]))
        self.recent = np.searchsorted(self.space, handles[: len(recent)])
        # Each entity's stored units as (recency, row), the order its entity
        # rows were written in standing for recency.
        entity = np.fromiter((e for e, _, _ in sharers), dtype=np.int64, count=len(sharers))
        order = np.fromiter((o for _, _, o in sharers), dtype=np.int64, count=len(sharers))
        rows = np.searchsorted(self.space, handles[len(recent) :])
        by_entity = np.argsort(entity, kind="stable")
        entities, starts = np.unique(entity[by_entity], return_index=True)
        parts = np.split(by_entity, starts[1:]) if len(entities) else []
        self.sharers: dict[int, tuple[np.ndarray, np.ndarray]] = {
            e: (order[part], rows[part]) for e, part in zip(entities.tolist(), parts, strict=True)
        }
        self.column = {u.pk.hex: i for i, u in enumerate(semantic)}
        # Row i, column j: the similarity of candidate i to unit j.
        self.scores = store.similarities(self.space, store.handles([u.pk.hex for u in semantic]))
        self.high, self.low = store.high[self.space], store.low[self.space]

    def _room(self, unit: MemoryUnit, kind: str) -> int:
        return CAPS[kind] - len(self.have.get((unit.pk.hex, kind), ()))

    def _rows(self, unit_ids: Iterable[UnitId]) -> np.ndarray:
        """The rows of these units, in order (units not in the space left out)."""
        handle = self.store.handle
        handles = np.fromiter((handle[u] for u in unit_ids if u in handle), dtype=np.intp)
        rows = np.searchsorted(self.space, handles)
        rows[rows == len(self.space)] = 0
        found: np.ndarray = rows[self.space[rows] == handles]
        return found

    def temporal(self, units: list[MemoryUnit], siblings: list[MemoryUnit]) -> list[Link]:
        """Each unit's nearest units in time (half before, half after), for
        the units that have room. Unwritten siblings are newer than every
        stored unit, and later siblings newer than earlier ones: first among
        equal times before, last among them after."""
        half = TEMPORAL_CAP // 2
        by_time: dict[datetime, list[MemoryUnit]] = {}
        for unit in units:
            if self._room(unit, LinkKind.TEMPORAL) > 0:
                by_time.setdefault(unit.timestamp, []).append(unit)
        links = []
        for when, group in by_time.items():
            mine_before = sorted(
                ((s.pk.hex, s.timestamp) for s in reversed(siblings) if s.timestamp <= when),
                key=lambda r: r[1],
                reverse=True,
            )
            mine_after = sorted(((s.pk.hex, s.timestamp) for s in siblings if s.timestamp > when), key=lambda r: r[1])
            # heapq.merge keeps the first list's row first among equal keys.
            before = list(heapq.merge(mine_before, self.before[when], key=lambda r: r[1], reverse=True))
            after = list(heapq.merge(self.after[when], mine_after, key=lambda r: r[1]))
            for unit in group:
                me = unit.pk.hex
                skip = self.have.get((me, LinkKind.TEMPORAL), set()) | {me} | self.exclude
                room = self._room(unit, LinkKind.TEMPORAL)
                near = [r for r in before if r[0] not in skip][:half] + [r for r in after if r[0] not in skip][:half]
                near.sort(key=lambda r: abs((r[1] - when).total_seconds()))
                links += [
                    Link(me, unit_id, LinkKind.TEMPORAL, 1.0 / (1.0 + abs((at - when).total_seconds()) / 3600))
                    for unit_id, at in near[:room]
                ]
        return links

    def semantic(self, units: list[MemoryUnit], siblings: list[MemoryUnit]) -> list[Link]:
        """Each unit's most similar candidates (cosine >= SEMANTIC_THRESHOLD):
        the ENTITY_CANDIDATES most recent units sharing one of its entities,
        and the bank's RECENT_CANDIDATES most recent units."""
        units = [u for u in units if u.vector and self._room(u, LinkKind.SEMANTIC) > 0]
        if not units:
            return []
        # Each entity's units as (recency, row) newest first: unwritten
        # siblings (SIBLING + their position) are newer than any stored unit.
        sibling_rows = self._rows(s.pk.hex for s in siblings)
        by_siblings: dict[int, list[tuple[int, int]]] = {}
        for position, (sibling, row) in enumerate(zip(siblings, sibling_rows.tolist(), strict=True)):
            for entity_id in self.entities_of.get(sibling.pk.hex, ()):
                by_siblings.setdefault(entity_id, []).append((_SIBLING + position, row))
        sharers = dict(self.sharers)
        for entity_id, found in by_siblings.items():
            recency = np.array([k for k, _ in found], dtype=np.int64)
            at = np.array([r for _, r in found], dtype=np.intp)
            stored = sharers.get(entity_id)
            sharers[entity_id] = (
                (recency, at)
                if stored is None
                else (np.concatenate([recency, stored[0]]), np.concatenate([at, stored[1]]))
            )
        recent = np.concatenate([sibling_rows[::-1], self.recent])
        links = []
        semantic = str(LinkKind.SEMANTIC)
        ids = self.store.ids
        for unit in units:
            me = unit.pk.hex
            skip = self._rows(self.have.get((me, LinkKind.SEMANTIC), set()) | {me} | self.exclude | self.outside)
            shared = [sharers.get(e, _NONE) for e in self.entities_of.get(me, ())] + [_NONE]
            recency = np.concatenate([m[0] for m in shared])
            rows = np.concatenate([m[1] for m in shared])
            by_sharing = _first_distinct(rows[np.argsort(-recency, kind="stable")], skip)[:ENTITY_CANDIDATES]
            by_time = _first_distinct(recent, skip)[:RECENT_CANDIDATES]
            candidates = np.unique(np.concatenate([by_sharing, by_time]))
            mine = self.scores[candidates, self.column[me]]
            similar = mine >= SEMANTIC_THRESHOLD
            candidates, mine = candidates[similar], mine[similar]
            # Most similar first; ties by id.
            best = np.lexsort((self.low[candidates], self.high[candidates], -mine))[
                : self._room(unit, LinkKind.SEMANTIC)
            ]
            links += [
                Link(me, ids[handle], semantic, round(weight, 6))
                for handle, weight in zip(self.space[candidates[best]].tolist(), mine[best].tolist(), strict=True)
            ]
        return links


def _first_distinct(rows: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """The rows in their order, each once (its first place), less `skip`."""
    rows = rows[~np.isin(rows, skip)]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


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
            before[when] = [
                (pk.hex, at)
                for pk, at in others.filter(timestamp__lte=when)
                .order_by("-timestamp", "-created_at")
                .values_list("pk", "timestamp")[:depth]
            ]
            after[when] = [
                (pk.hex, at)
                for pk, at in others.filter(timestamp__gt=when)
                .order_by("timestamp", "created_at")
                .values_list("pk", "timestamp")[:depth]
            ]
        return before, after
    table = MemoryUnit._meta.db_table
    whens = list(depths)
    lateral = """SELECT w.i, {side}, {unit}, u.timestamp, u.created_at FROM unnest(%s::timestamptz[], %s::int[])
        WITH ORDINALITY AS w(t, depth, i) CROSS JOIN LATERAL (SELECT id, timestamp, created_at FROM {table}
        WHERE bank_id = %s AND timestamp {op} w.t ORDER BY timestamp {order}, created_at {order} LIMIT w.depth) u"""
    unit = hex_column("u.id")
    rows = _in_index_order(
        lateral.format(side=0, unit=unit, table=table, op="<=", order="DESC")
        + " UNION ALL "
        + lateral.format(side=1, unit=unit, table=table, op=">", order="ASC"),
        [whens, [depths[w] for w in whens], bank_id] * 2,
    )
    # The union's order is not the laterals' own: sorted again here.
    rows.sort(key=lambda row: (row[0], row[1], row[3], row[4]))
    for index, side, unit_id, at, _ in rows:
        (after if side else before)[whens[index - 1]].append((unit_id, at))
    for near in before.values():
        near.reverse()
    return before, after


def _in_index_order(sql: str, params: list[Any]) -> list[Any]:
    """The rows of a read an index gives in the order it asks for. On
    PostgreSQL with sorting disabled for this statement alone: while a bank
    or an entity is young in the statistics (a new bank filling up, an
    entity mentioned more than the average), the planner expects a handful
    of rows and prefers to collect them all and sort them, which reads every
    unit of the bank, or of the entity, on each retain."""
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute(sql, params)
            found: list[Any] = cursor.fetchall()
            return found
        # One round trip: Django binds parameters client-side and sends the
        # three as one query (server-side binding would refuse it). The
        # setting is put back in case a transaction is open.
        cursor.execute(f"SET LOCAL enable_sort = off; {sql}; SET LOCAL enable_sort TO DEFAULT", params)
        cursor.nextset()
        rows: list[Any] = cursor.fetchall()
        return rows


def _recent(bank_id: str, limit: int) -> list[UnitId]:
    """The bank's `limit` most recently written units, newest first."""
    rows = _in_index_order(
        f"SELECT {hex_column('id')} FROM {MemoryUnit._meta.db_table} WHERE bank_id = %s "
        f"ORDER BY created_at DESC LIMIT %s",
        [bank_id, limit],
    )
    return [unit for (unit,) in rows]


def _recent_sharers(entity_ids: set[int], limit: int) -> list[tuple[int, UnitId, int]]:
    """(entity, unit, order) of each entity's `limit` most recently written
    units, newest first (`banks_entity_recent_units`)."""
    if not entity_ids:
        return []
    table = UnitEntity._meta.db_table
    if connection.vendor == "postgresql":
        return _in_index_order(
            f"SELECT e.id, {hex_column('ue.unit_id')}, ue.id FROM unnest(%s::bigint[]) AS e(id) CROSS JOIN LATERAL "
            f"(SELECT unit_id, id FROM {table} WHERE entity_id = e.id ORDER BY id DESC LIMIT %s) ue",
            [sorted(entity_ids), limit],
        )
    rows: list[tuple[int, UnitId, int]] = []
    with connection.cursor() as cursor:
        for entity_id in sorted(entity_ids):
            cursor.execute(
                f"SELECT entity_id, unit_id, id FROM {table} WHERE entity_id = %s ORDER BY id DESC LIMIT %s",
                [entity_id, limit],
            )
            rows += cursor.fetchall()
        return rows


def alive(unit_ids: Iterable[UnitId]) -> set[UnitId]:
    """Which of these units exist now."""
    ids = list(unit_ids)
    if not ids:
        return set()
    condition, params = any_unit(ids)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {hex_column('id')} FROM {MemoryUnit._meta.db_table} WHERE id {condition}", params)
        return {unit for (unit,) in cursor.fetchall()}


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
            # Arrays as text literals: one parameter each, instead of arrays
            # psycopg dumps element by element (a retain writes about a
            # thousand links).
            cursor.execute(
                written,
                [
                    bank_id,
                    "{" + ",".join([link.source for link in links]) + "}",
                    "{" + ",".join([link.target for link in links]) + "}",
                    "{" + ",".join([link.kind for link in links]) + "}",
                    "{" + ",".join(map(repr, [link.weight for link in links])) + "}",
                ],
            )
            return
        for link in links:
            row = (bank_id, link.source, link.target, link.kind, link.weight)
            cursor.execute(f"INSERT OR IGNORE INTO {table} {columns} VALUES (%s, %s, %s, %s, %s)", row)
            if offer_back and cursor.rowcount:
                cursor.execute(f"INSERT INTO {queue} {columns} VALUES (%s, %s, %s, %s, %s)", row)


def fold_offers(bank_id: str, limit: int) -> int:
    """Take the bank's oldest queued offers of links back and make them: for
    each offer in the order its link was written, a link back from its target
    while the target is under its cap, unless the target is known full or an
    end was deleted since. The targets found or made full are recorded
    (`FullLinks`) so that they are neither offered nor counted again. One
    statement on PostgreSQL. Returns how many offers were taken (the caller's
    transaction keeps them if it fails). The caller must be the only writer
    of links back (the bank's folder), so that counts cannot change meanwhile."""
    if connection.vendor != "postgresql":
        pending, taken = _take_offers(bank_id, limit)
        ends = alive({end for link in pending for end in (link.source, link.target)})
        insert(bank_id, back_links([link for link in pending if {link.source, link.target} <= ends]), offer_back=False)
        return taken
    queue, full, table = PendingBackLink._meta.db_table, FullLinks._meta.db_table, MemoryLink._meta.db_table
    units = MemoryUnit._meta.db_table

    def cap(kind: str) -> str:
        return f"CASE {kind} " + " ".join(f"WHEN '{k}' THEN {n}" for k, n in CAPS.items()) + " END"

    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH taken AS (
                DELETE FROM {queue} WHERE id IN (SELECT id FROM {queue} WHERE bank_id = %(bank)s ORDER BY id LIMIT %(limit)s)
                RETURNING id, source_id, target_id, kind, weight
            ), offered AS (
                SELECT t.* FROM taken t
                WHERE NOT EXISTS (SELECT 1 FROM {full} f WHERE f.unit_id = t.target_id AND f.kind = t.kind)
                    AND EXISTS (SELECT 1 FROM {units} u WHERE u.id = t.source_id)
                    AND EXISTS (SELECT 1 FROM {units} u WHERE u.id = t.target_id)
            ), counted AS (
                -- Each target's links by kind, counted on the link index.
                SELECT o.target_id, c.kind, c.n FROM (SELECT DISTINCT target_id FROM offered) o
                CROSS JOIN LATERAL (
                    SELECT kind, COUNT(*) AS n FROM {table} l WHERE l.source_id = o.target_id GROUP BY kind
                ) c
            ), ranked AS (
                -- The k-th offer to a target gets its link back while n + k is within the cap.
                SELECT o.id, o.source_id, o.target_id, o.kind, o.weight, COALESCE(c.n, 0) AS n,
                    row_number() OVER (PARTITION BY o.target_id, o.kind ORDER BY o.id) AS k
                FROM offered o LEFT JOIN counted c ON c.target_id = o.target_id AND c.kind = o.kind
            ), back AS (
                INSERT INTO {table} (bank_id, source_id, target_id, kind, weight)
                SELECT %(bank)s, target_id, source_id, kind, weight FROM ranked WHERE n + k <= {cap("kind")} ORDER BY id
                ON CONFLICT DO NOTHING
            ), made_full AS (
                -- Every kind of every target counted: full once its links and offers reach the cap.
                INSERT INTO {full} (unit_id, kind)
                SELECT target_id, kind FROM (
                    SELECT target_id, kind, n FROM counted UNION ALL SELECT target_id, kind, 1 FROM offered
                ) AS c
                GROUP BY target_id, kind HAVING SUM(n) >= {cap("kind")}
                ORDER BY target_id, kind
                ON CONFLICT DO NOTHING
            )
            SELECT COUNT(*) FROM taken""",
            {"bank": bank_id, "limit": limit},
        )
        return int(cursor.fetchone()[0])


def _take_offers(bank_id: str, limit: int) -> tuple[list[Link], int]:
    """Remove the oldest queued offers of links back and return those whose
    target is not known full, in the order the links were written, with how
    many were removed."""
    table, full = PendingBackLink._meta.db_table, FullLinks._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE bank_id = %s ORDER BY id LIMIT %s) "
            f"RETURNING id, source_id, target_id, kind, weight",
            [bank_id, limit],
        )
        offers = cursor.fetchall()
        condition, params = any_unit({target for _, _, target, _, _ in offers})
        cursor.execute(f"SELECT unit_id, kind FROM {full} WHERE unit_id {condition}", params)
        known_full = set(cursor.fetchall())
    return [
        Link(source, target, kind, weight)
        for _, source, target, kind, weight in sorted(offers)
        if (target, kind) not in known_full
    ], len(offers)


def back_links(links: list[Link]) -> list[Link]:
    """For each link in order, one back from its target while the target is
    under its cap; the targets found or made full are recorded (`FullLinks`).
    The portable half of `fold_offers`."""
    if not links:
        return []
    counts = {(unit_id, kind): n for unit_id, kind, n in _link_counts({link.target for link in links})}
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


def _link_counts(unit_ids: set[UnitId]) -> list[tuple[UnitId, str, int]]:
    """(unit, kind, how many links it has) for these units."""
    condition, params = any_unit(unit_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT source_id, kind, COUNT(*) FROM {MemoryLink._meta.db_table} WHERE source_id {condition} "
            f"GROUP BY source_id, kind",
            params,
        )
        counts: list[tuple[UnitId, str, int]] = cursor.fetchall()
        return counts
