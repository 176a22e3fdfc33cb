"""The vectors of the units link planning scores, kept by each process.

Planning a retain scores its new units against a few thousand recent units of
the bank, most of them the same from one retain to the next. A unit's vector
never changes and its id is never reused, so each process keeps the vectors it
has read (and those of the units it planned) in one place, and planning works
on small integers, *handles*, instead of ids:

- a unit's id is text, 32 hex digits (`UnitId`): what SQLite stores and what
  PostgreSQL reads as a uuid. Python's `uuid.UUID` hashes and compares in
  Python, and planning did some 20,000 of those per retain;
- each vector is packed once (`pack`) into two growing arrays shared by every
  vector, so that laying a few thousand of them into a matrix is a handful of
  array operations, not a Python loop.

The store is emptied when it holds more than `MAX_VALUES` vector entries, only
between two plans (`make_room`): handles stay valid for a whole plan. Each
thread has its own (`kept`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import orjson
from django.db import connection
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from banks.extraction import Vector
from banks.models import MemoryUnit

# One BLAS thread in this process. Workers are processes already, and after
# a product OpenBLAS's threads spin for a while: with one per core in every
# worker, they took the cores the other workers and PostgreSQL needed (a
# retain's planning cost twice its CPU time, and slowed everything beside it).
threadpool_limits(limits=1, user_api="blas")

# A unit's id as 32 hex digits (`uuid.UUID.hex`).
UnitId = str
# Entries of all vectors kept (a dimension and its value each): some 20 MB.
MAX_VALUES = 1_000_000


def hex_column(column: str) -> str:
    """SQL reading a uuid column as a `UnitId`."""
    return f"replace({column}::text, '-', '')" if connection.vendor == "postgresql" else column


def any_unit(unit_ids: Iterable[UnitId]) -> tuple[str, list[str]]:
    """`= ANY(…)` on PostgreSQL (one text parameter: an array psycopg would
    dump element by element costs more than the statement), `IN (…)` elsewhere."""
    ids = list(unit_ids)
    if connection.vendor == "postgresql":
        return "= ANY(%s::uuid[])", ["{" + ",".join(ids) + "}"]
    return f"IN ({', '.join(['%s'] * len(ids))})", ids


class Packed(NamedTuple):
    """A sparse vector as arrays: the ids of its dimensions (`_DIMENSIONS`)
    and their values."""

    dimensions: np.ndarray
    values: np.ndarray


# Dimension name -> id, for the vectors this process has packed (a few
# thousand at most: the extractor's dimensions), shared by its threads.
_DIMENSIONS: dict[str, int] = {}
_NEW_DIMENSION = threading.Lock()
EMPTY = Packed(np.empty(0, dtype=np.intp), np.empty(0))


def _dimension(name: str) -> int:
    found = _DIMENSIONS.get(name)
    if found is None:
        with _NEW_DIMENSION:  # two threads must not give two names one id
            found = _DIMENSIONS.setdefault(name, len(_DIMENSIONS))
    return found


def pack(vector: Vector) -> Packed:
    return Packed(
        np.fromiter((_dimension(name) for name in vector), dtype=np.intp, count=len(vector)),
        np.fromiter(vector.values(), dtype=np.float64, count=len(vector)),
    )


class Store:
    """Unit id -> handle, and each handle's vector and order (the id's, for
    ties): `ids[h]`, entries `start[h]` to `start[h] + length[h]` of
    `dimensions` and `values`, and `high[h]`, `low[h]` (the id's two halves,
    so that handles sort as their ids do)."""

    def __init__(self, max_values: int = MAX_VALUES) -> None:
        self.max_values = max_values
        self._clear()

    def _clear(self) -> None:
        self.handle: dict[UnitId, int] = {}
        self.ids: list[UnitId] = []
        self.start = np.empty(1024, dtype=np.intp)
        self.length = np.empty(1024, dtype=np.intp)
        self.high = np.empty(1024, dtype=np.uint64)
        self.low = np.empty(1024, dtype=np.uint64)
        self.dimensions = np.empty(1 << 15, dtype=np.intp)
        self.values = np.empty(1 << 15)
        self.used = 0

    def make_room(self) -> None:
        """Empty the store if it is full: call it before a plan takes handles."""
        if self.used > self.max_values:
            self._clear()

    def add(self, vectors: dict[UnitId, Packed]) -> None:
        """Keep these units' vectors (units already kept are left as they are)."""
        new = [(unit, vector) for unit, vector in vectors.items() if unit not in self.handle]
        if not new:
            return
        first, count = len(self.ids), len(new)
        lengths = np.fromiter((len(v.dimensions) for _, v in new), dtype=np.intp, count=count)
        total = int(lengths.sum())
        self._grow(first + count, self.used + total)
        self.length[first : first + count] = lengths
        self.start[first : first + count] = self.used + np.cumsum(lengths) - lengths
        if total:
            self.dimensions[self.used : self.used + total] = np.concatenate([v.dimensions for _, v in new])
            self.values[self.used : self.used + total] = np.concatenate([v.values for _, v in new])
        self.used += total
        self.high[first : first + count] = [int(unit[:16], 16) for unit, _ in new]
        self.low[first : first + count] = [int(unit[16:], 16) for unit, _ in new]
        for handle, (unit, _) in enumerate(new, start=first):
            self.handle[unit] = handle
            self.ids.append(unit)

    def _grow(self, units: int, values: int) -> None:
        if units > len(self.start):
            size = max(units, 2 * len(self.start))
            for name in ("start", "length", "high", "low"):
                old = getattr(self, name)
                grown = np.empty(size, dtype=old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        if values > len(self.values):
            size = max(values, 2 * len(self.values))
            for name in ("dimensions", "values"):
                old = getattr(self, name)
                grown = np.empty(size, dtype=old.dtype)
                grown[: self.used] = old[: self.used]
                setattr(self, name, grown)

    def handles(self, unit_ids: list[UnitId]) -> np.ndarray:
        """The handles of these units, in order, reading the vectors of the
        ones not kept yet (one statement). A unit gone since its id was read
        gets an empty vector: it keeps its place among candidates and never
        links (the write finds it gone anyway)."""
        handle = self.handle
        missing = {unit for unit in unit_ids if unit not in handle}
        if missing:
            found = dict.fromkeys(missing, EMPTY) | _read(missing)
            self.add(found)
        return np.fromiter((handle[unit] for unit in unit_ids), dtype=np.intp, count=len(unit_ids))

    def similarities(self, candidates: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Row i, column j: the similarity of candidate i to unit j (vectors
        are unit length: the dot product is the cosine), one matrix product."""
        columns, width = self._basis(units)
        product: np.ndarray = self._dense(candidates, columns, width) @ self._dense(units, columns, width).T
        return product

    def _basis(self, handles: np.ndarray) -> tuple[np.ndarray, int]:
        """The columns of a matrix of these vectors: dimension id -> column
        (or -1), and how many. Only these vectors' dimensions: the others add
        nothing to their dot products, and the matrix stays small."""
        used = np.unique(self.dimensions[self._entries(handles)[0]])
        column = np.full(len(_DIMENSIONS), -1, dtype=np.intp)
        column[used] = np.arange(len(used))
        return column, len(used)

    def _dense(self, handles: np.ndarray, column: np.ndarray, width: int) -> np.ndarray:
        """The vectors as the rows of a matrix over `_basis`'s columns."""
        entries, rows = self._entries(handles)
        matrix = np.zeros((len(handles), width))
        dimensions = self.dimensions[entries]
        # Dimensions first seen after the basis was taken are not in it.
        columns = np.full(len(entries), -1, dtype=np.intp)
        known = dimensions < len(column)
        columns[known] = column[dimensions[known]]
        inside = columns >= 0
        matrix[rows[inside], columns[inside]] = self.values[entries[inside]]
        return matrix

    def _entries(self, handles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positions of these vectors' entries, and the row (index into
        `handles`) of each."""
        lengths = self.length[handles]
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        entries = np.arange(total) + np.repeat(self.start[handles] - (ends - lengths), lengths)
        return entries, np.repeat(np.arange(len(handles)), lengths)


def _read(unit_ids: set[UnitId]) -> dict[UnitId, Packed]:
    condition, params = any_unit(unit_ids)
    # The vector's text, parsed here (orjson): far cheaper than the ORM's JSON decoding.
    vector = "vector::text" if connection.vendor == "postgresql" else "vector"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {hex_column('id')}, {vector} FROM {MemoryUnit._meta.db_table} WHERE id {condition}", params
        )
        return {unit: pack(orjson.loads(text)) for unit, text in cursor.fetchall()}


_local = threading.local()


def kept() -> Store:
    """This thread's store (one per thread, so that planning in a threaded
    server never shares one: a worker process has one thread)."""
    store: Store | None = getattr(_local, "store", None)
    if store is None:
        store = _local.store = Store()
    return store
