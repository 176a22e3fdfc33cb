"""The store of vectors link planning scores with (`banks.unit_vectors`):
similarities as cosines, vectors read once, a unit gone since its id was read,
a full store emptied between plans, one per thread, and one BLAS thread."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from banks import links, memory, unit_vectors
from banks.extraction import cosine, get_extractor
from banks.memory import RetainItem
from banks.models import MemoryUnit, UnitEntity
from banks.unit_vectors import Store, kept

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

TEXTS = [
    "Ada met Grace in Zurich to review the design note.",
    "Grace checks the numbers with the team in London.",
    "The design note names Ada and the review in Zurich.",
    "Nothing here is about anyone at all.",
]


def retained(alpha: Any, texts: list[str]) -> dict[str, dict[str, float]]:
    memory.retain_items(
        bank=alpha, items=[RetainItem(content=text) for text in texts], default_document_id=lambda i: f"d{i}"
    )
    return {unit.hex: vector for unit, vector in MemoryUnit.objects.values_list("pk", "vector")}


def test_similarities_are_the_cosines_of_the_vectors_read(alpha: Any) -> None:
    vectors = retained(alpha, TEXTS)
    store = Store()
    ids = sorted(vectors)
    handles = store.handles(ids)  # every vector read from the database
    assert [store.ids[h] for h in handles] == ids
    scores = store.similarities(handles, handles[:2])
    expected = np.array([[cosine(vectors[a], vectors[b]) for b in ids[:2]] for a in ids])
    assert np.allclose(scores, expected) and scores.max() > 0.2


def test_handles_keep_their_vectors_and_order_as_their_ids(alpha: Any) -> None:
    vectors = retained(alpha, TEXTS)
    store = Store()
    first = store.handles(sorted(vectors))
    again = store.handles(sorted(vectors, reverse=True))
    assert list(again) == list(first[::-1])  # kept, not read twice
    order = np.lexsort((store.low[first], store.high[first]))
    assert [store.ids[h] for h in first[order]] == sorted(vectors)


def test_a_unit_gone_since_its_id_was_read_has_an_empty_vector(alpha: Any) -> None:
    vectors = retained(alpha, TEXTS)
    gone = "f" * 32
    store = Store()
    handles = store.handles([*sorted(vectors), gone])
    assert store.length[handles[-1]] == 0
    scores = store.similarities(handles, handles[:1])
    assert scores[-1, 0] == 0.0 and scores[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_a_full_store_is_emptied_between_plans_and_reads_again(alpha: Any) -> None:
    vectors = retained(alpha, TEXTS)
    store = Store(max_values=5)
    store.handles(sorted(vectors))
    assert store.used > 5
    store.make_room()
    assert store.used == 0 and not store.ids
    handles = store.handles(sorted(vectors))
    assert store.similarities(handles, handles[:1])[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_plans_are_the_same_whatever_the_store_holds(alpha: Any) -> None:
    """A plan from an empty store (every vector read) and from a warm one
    (none read) choose the same links."""
    retained(alpha, [f"Ada met Grace in Zurich about note {i}. Grace wrote it down." for i in range(30)])
    extractor = get_extractor()
    late = [
        MemoryUnit(
            pk=memory.new_unit_id(), bank=alpha, text=text, timestamp=MemoryUnit.objects.latest("timestamp").timestamp
        )
        for text in ["Ada wrote to Grace from Zurich.", "Grace answered Ada."]
    ]
    for unit in late:
        unit.vector = extractor.embed(unit.text)
    entities = set(UnitEntity.objects.values_list("entity_id", flat=True))
    entities_of = {unit.pk.hex: entities for unit in late}
    warm = links.plan(alpha.pk, late, entities_of=entities_of, siblings=late)
    unit_vectors._local.store = Store()  # as a new process has it
    cold = links.plan(alpha.pk, late, entities_of=entities_of, siblings=late)
    assert cold == warm and any(link.kind == "semantic" for link in cold)


def test_each_thread_plans_with_a_store_of_its_own() -> None:
    mine = kept()
    theirs: list[Store] = []
    thread = threading.Thread(target=lambda: theirs.append(kept()))
    thread.start()
    thread.join()
    assert kept() is mine and theirs and theirs[0] is not mine


def test_numpy_runs_one_blas_thread() -> None:
    """Workers are processes already; OpenBLAS's spinning threads took the
    cores the other workers and PostgreSQL needed."""
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)


def test_stored_units_planned_together_are_no_semantic_candidates_of_each_other(alpha: Any) -> None:
    """Only siblings (units not written yet) are candidates among the units
    planned; two stored units planned together (a top-up of both) are not."""
    retained(alpha, [f"Ada met Grace in Zurich about note {i}. Grace wrote it down." for i in range(12)])
    first, second = MemoryUnit.objects.filter(text="Grace wrote it down.").order_by("-created_at")[:2]

    def semantic(planned: list[Any]) -> set[tuple[str, str]]:
        return {(link.source, link.target) for link in links.plan(alpha.pk, planned) if link.kind == "semantic"}

    assert (first.pk.hex, second.pk.hex) in semantic([first])
    together = semantic([first, second])
    assert together and (first.pk.hex, second.pk.hex) not in together
    assert (second.pk.hex, first.pk.hex) not in together
