"""Each memory handler on real data: the rows it creates, updates and deletes.

Handlers run through `runner.execute` in this process (claim, handler, outcome
recorded): the code a worker runs, minus the broker. The worker path itself is
tested in test_memory_workers.py.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from collections import Counter
from datetime import timedelta
from itertools import combinations
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from banks import links, memory
from banks.extraction import EntityMention, RuleBasedExtractor, cosine
from banks.memory import RetainItem
from banks.models import (
    Document,
    Entity,
    EntityCooccurrence,
    FullLinks,
    MemoryLink,
    MemoryUnit,
    MentalModel,
    Observation,
    UnitEntity,
)
from operations import lifecycle
from operations.models import Operation
from operations.worker import runner
from tenancy.models import Bank
from tests.plans import explained_reads

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def run(operation_type: str, bank: str = "alpha", **fields: Any) -> Operation:
    """Submit an operation and run it here, as a worker would."""
    operation = lifecycle.operation_submit(bank_id=bank, operation_type=operation_type, **fields).operation
    runner.execute(str(operation.pk), operation_type=operation.operation_type, worker="test@here", task_id="t")
    return Operation.objects.get(pk=operation.pk)


def retain(items: list[dict[str, Any]], bank: str = "alpha") -> Operation:
    payload = {"items": [RetainItem(**item).to_payload() for item in items], "document_tags": []}
    return run("retain", bank=bank, payload=payload, items_count=len(items))


def exact_cooccurrences(bank: str = "alpha") -> dict[tuple[int, int], int]:
    """Co-occurrence counts recomputed from scratch from the unit-entity rows."""
    per_unit: dict[Any, set[int]] = {}
    for unit_id, entity_id in UnitEntity.objects.filter(unit__bank_id=bank).values_list("unit_id", "entity_id"):
        per_unit.setdefault(unit_id, set()).add(entity_id)
    counts: Counter[tuple[int, int]] = Counter()
    for entities in per_unit.values():
        counts.update(combinations(sorted(entities), 2))
    return dict(counts)


def stored_cooccurrences(bank: str = "alpha") -> dict[tuple[int, int], int]:
    return {
        (a, b): n
        for a, b, n in EntityCooccurrence.objects.filter(bank_id=bank, count__gt=0).values_list(
            "entity_a_id", "entity_b_id", "count"
        )
    }


# --- the extractor ---------------------------------------------------------------------


def test_rule_based_extractor() -> None:
    extractor = RuleBasedExtractor()
    text = "Ada Lovelace met Charles Babbage in London. She wrote notes!\nThe Analytical Engine ran @ada #math"
    assert extractor.extract_facts(text) == [
        "Ada Lovelace met Charles Babbage in London.",
        "She wrote notes!",
        "The Analytical Engine ran @ada #math",
    ]
    names = {m.name: m.entity_type for m in extractor.extract_entities(text)}
    assert names == {
        "Ada Lovelace": "",
        "Charles Babbage": "",
        "London": "",
        "Analytical Engine": "",
        "ada": "person",
        "math": "topic",
    }
    a = extractor.embed("the analytical engine computes bernoulli numbers")
    b = extractor.embed("Bernoulli numbers computed by the analytical engine")
    c = extractor.embed("a recipe for apple pie")
    assert abs(cosine(a, a) - 1) < 1e-4
    assert cosine(a, b) > 0.3 > cosine(a, c)


# --- retain ------------------------------------------------------------------------------


def test_retain_stores_documents_units_entities_and_links(alpha: Any) -> None:
    done = retain(
        [
            {
                "content": "Ada Lovelace worked with Charles Babbage. Babbage designed the Analytical Engine.",
                "document_id": "ada",
                "tags": ["history"],
                "entities": [EntityMention("Mathematics", "topic")],
            },
            {
                "content": "Charles Babbage lived in London.",
                "document_id": "babbage",
                "timestamp": timezone.now() - timedelta(days=1),
            },
        ]
    )
    assert done.status == "completed", done.error_message
    assert done.result_metadata["units"] == 3 and done.result_metadata["items"] == 2
    assert done.progress["stage"] == "retained"
    assert set(Document.objects.values_list("document_id", flat=True)) == {"ada", "babbage"}
    ada = Document.objects.get(document_id="ada")
    assert ada.tags == ["history"] and len(ada.content_hash) == 64
    texts = list(MemoryUnit.objects.filter(document=ada).order_by("position").values_list("text", flat=True))
    assert texts == ["Ada Lovelace worked with Charles Babbage.", "Babbage designed the Analytical Engine."]
    names = set(Entity.objects.values_list("name", flat=True))
    assert {"ada lovelace", "charles babbage", "babbage", "analytical engine", "london", "mathematics"} <= names
    # The explicit entity applies to every unit of its item.
    maths = Entity.objects.get(name="mathematics")
    assert maths.entity_type == "topic" and UnitEntity.objects.filter(entity=maths).count() == 2
    assert stored_cooccurrences() == exact_cooccurrences()
    assert MemoryLink.objects.filter(kind="temporal").count() > 0
    first = MemoryUnit.objects.get(text="Ada Lovelace worked with Charles Babbage.")
    assert MemoryLink.objects.filter(source=first, kind="temporal").count() == 2


def test_retain_without_document_ids_is_idempotent(alpha: Any) -> None:
    payload = {"items": [RetainItem(content="Grace Hopper wrote compilers.").to_payload()]}
    operation = lifecycle.operation_submit(bank_id="alpha", operation_type="retain", payload=payload).operation
    for _ in range(2):  # a re-run after a crash: same document, same units
        Operation.objects.filter(pk=operation.pk).update(status="pending")
        runner.execute(str(operation.pk), operation_type="retain", worker="w", task_id="t")
    assert Document.objects.count() == 1 and MemoryUnit.objects.count() == 1
    assert Document.objects.get().document_id == f"{operation.pk}-0"
    assert stored_cooccurrences() == exact_cooccurrences()


def test_re_retaining_a_document_replaces_its_units(alpha: Any) -> None:
    retain(
        [
            {"content": "Alan Turing studied at Cambridge. Turing met Alonzo Church.", "document_id": "d1"},
            {"content": "Alonzo Church taught at Princeton.", "document_id": "d2"},
        ]
    )
    old_ids = set(MemoryUnit.objects.filter(document__document_id="d1").values_list("pk", flat=True))
    again = retain([{"content": "Alan Turing worked at Bletchley Park.", "document_id": "d1"}])
    assert again.result_metadata["replaced_units"] == 2
    units = MemoryUnit.objects.filter(document__document_id="d1")
    assert list(units.values_list("text", flat=True)) == ["Alan Turing worked at Bletchley Park."]
    assert not MemoryUnit.objects.filter(pk__in=old_ids).exists()
    assert stored_cooccurrences() == exact_cooccurrences()
    # Replacing units queued graph maintenance.
    queued = Operation.objects.get(pk=again.result_metadata["graph_maintenance_operation_id"])
    assert queued.operation_type == "graph_maintenance" and queued.status == "pending"


def test_retain_queues_consolidation_when_the_bank_asks(alpha: Any, beta: Any) -> None:
    Bank.objects.filter(pk="beta").update(enable_auto_consolidation=True)
    quiet = retain([{"content": "Nothing follows."}])
    loud = retain([{"content": "Something follows."}], bank="beta")
    assert "consolidation_operation_id" not in quiet.result_metadata
    queued = Operation.objects.get(pk=loud.result_metadata["consolidation_operation_id"])
    assert queued.operation_type == "consolidation" and queued.bank_id == "beta"
    # A second retain finds it pending: deduplicated onto the same operation.
    again = retain([{"content": "More follows."}], bank="beta")
    assert again.result_metadata["consolidation_operation_id"] == str(queued.pk)


def test_link_caps(alpha: Any) -> None:
    base = timezone.now()
    items = [
        {
            "content": f"The Engine project status report number {i} mentions the Engine again.",
            "document_id": f"r{i}",
            "timestamp": base + timedelta(minutes=i),
        }
        for i in range(60)
    ]
    retain(items)
    per_source = Counter(MemoryLink.objects.values_list("source_id", "kind"))
    assert max(n for (_, kind), n in per_source.items() if kind == "temporal") == memory.TEMPORAL_CAP
    assert max(n for (_, kind), n in per_source.items() if kind == "semantic") == memory.SEMANTIC_CAP
    assert all(
        n <= (memory.TEMPORAL_CAP if kind == "temporal" else memory.SEMANTIC_CAP) for (_, kind), n in per_source.items()
    )
    # Temporal links go to the nearest units in time.
    middle = MemoryUnit.objects.get(document__document_id="r30")
    targets = MemoryLink.objects.filter(source=middle, kind="temporal").values_list(
        "target__document__document_id", flat=True
    )
    assert {int(t[1:]) for t in targets} == set(range(20, 41)) - {30}
    assert_links_back()


def link_counts(bank: str = "alpha") -> Counter[tuple[Any, str]]:
    return Counter(MemoryLink.objects.filter(bank_id=bank).values_list("source_id", "kind"))


def assert_links_back(bank: str = "alpha") -> None:
    """Without deletes, every link has its link back unless its target is full
    (a target under its cap always links back), and a unit recorded as full
    has its cap of links of that kind."""
    counts = link_counts(bank)
    present = set(MemoryLink.objects.filter(bank_id=bank).values_list("source_id", "target_id", "kind"))
    missing = [
        (source, target, kind)
        for source, target, kind in present
        if (target, source, kind) not in present and counts[(target, kind)] < links.CAPS[kind]
    ]
    assert not missing, f"{len(missing)} links without their link back, e.g. {missing[0]}"
    recorded = list(FullLinks.objects.filter(unit__bank_id=bank).values_list("unit_id", "kind"))
    assert recorded, "no unit was recorded as full"
    assert all(counts[(unit, kind)] == links.CAPS[kind] for unit, kind in recorded)


def test_a_unit_recorded_full_gets_room_again_when_a_neighbour_goes(alpha: Any) -> None:
    """Units whose links reach a cap are recorded as full (their links are not
    counted again); deleting a neighbour gives them room again, graph
    maintenance fills it, and links back reach them as before."""
    base = timezone.now()
    retain(
        [
            {
                "content": f"The Engine status report {i} names the Engine and Ada.",
                "document_id": f"r{i}",
                "timestamp": base + timedelta(minutes=i),
            }
            for i in range(40)
        ]
    )
    assert_links_back()
    gone = set(MemoryUnit.objects.filter(document__document_id="r20").values_list("pk", flat=True))
    losing = set(MemoryLink.objects.filter(target_id__in=gone).values_list("source_id", flat=True)) - gone
    full_before = set(FullLinks.objects.filter(unit_id__in=losing).values_list("unit_id", "kind"))
    assert full_before, "the deleted unit's neighbours include units recorded as full"

    assert memory.document_delete(bank=Bank.objects.get(pk="alpha"), document_id="r20")
    assert not FullLinks.objects.filter(unit_id__in=losing).exists()
    done = run("graph_maintenance")
    assert done.status == "completed", done.error_message
    counts = link_counts()
    # Topped up to their caps again, then recorded anew as they fill.
    assert {key: counts[key] for key in full_before} == {key: links.CAPS[key[1]] for key in full_before}
    retain(
        [
            {
                "content": f"The Engine status report {i} names the Engine and Ada.",
                "document_id": f"s{i}",
                "timestamp": base + timedelta(minutes=i, seconds=30),
            }
            for i in range(15, 25)
        ]
    )
    counts = link_counts()
    assert all(
        counts[(unit, kind)] == links.CAPS[kind]
        for unit, kind in FullLinks.objects.filter(unit__bank_id="alpha").values_list("unit_id", "kind")
    )


def _graph(bank: str) -> dict[str, Any]:
    """A bank's memory in terms that do not depend on its ids: units named by
    (document, position), entities by name."""
    name = {
        pk: (document, position)
        for pk, document, position in MemoryUnit.objects.filter(bank_id=bank).values_list(
            "pk", "document__document_id", "position"
        )
    }
    entity = dict(Entity.objects.filter(bank_id=bank).values_list("pk", "name"))
    return {
        "units": sorted(
            MemoryUnit.objects.filter(bank_id=bank).values_list("document__document_id", "position", "text")
        ),
        "links": sorted(
            (name[source], name[target], kind, round(weight, 6))
            for source, target, kind, weight in MemoryLink.objects.filter(bank_id=bank).values_list(
                "source_id", "target_id", "kind", "weight"
            )
        ),
        "mentions": sorted(
            (name[unit], entity[e])
            for unit, e in UnitEntity.objects.filter(unit__bank_id=bank).values_list("unit_id", "entity_id")
        ),
        "cooccurrences": sorted(
            (*sorted((entity[a], entity[b])), n)  # ids, and so the pairs' order, depend on when each was created
            for (a, b), n in memory.cooccurrence_counts(Bank.objects.get(pk=bank)).items()
        ),
    }


def test_items_written_together_make_the_graph_written_one_by_one(alpha: Any, beta: Any, monkeypatch: Any) -> None:
    """A retain writes up to WRITE_ITEMS new documents in one transaction,
    planning each item's links as if the ones before it were written: the
    graph is the one item-by-item writes make, replacements and repeated
    documents included."""
    rng = random.Random(11)
    people, places = ["Ada", "Grace Hopper", "Alan Turing", "Edsger", "Barbara Liskov"], ["London", "Zurich", "Delft"]
    base = timezone.now() - timedelta(days=1)

    def item(n: int, document: str) -> RetainItem:
        who, other = rng.sample(people, 2)
        return RetainItem(
            content=f"{who} met {other} in {rng.choice(places)} about note {n}. "
            f"{other} reviewed the {rng.choice(['draft', 'proof', 'budget'])} with {who}.",
            document_id=document,
            # Shared and out-of-order times: ties and candidates on both sides.
            timestamp=base + timedelta(minutes=rng.choice([0, 5, 5, 9, 30, -20])),
        )

    stored = [item(n, f"d{n}") for n in range(12)]
    crowd = [item(n, f"d{n}") for n in range(12, 40)]
    crowd[10] = item(99, "d3")  # replaces a stored document: written alone
    crowd[20] = item(98, "d20")  # repeats a document of the same request (38 documents in all)
    for bank, size in (("alpha", 1), ("beta", 7)):
        monkeypatch.setitem(memory.WRITE_ITEMS, connection.vendor, size)
        # The same ids in the same order for both banks' units: ties between
        # equally similar candidates break the same way.
        counter = itertools.count()
        prefix = 1 if bank == "alpha" else 2
        monkeypatch.setattr(memory, "new_unit_id", lambda: uuid.UUID(int=(prefix << 64) + next(counter)))
        for items in (stored, crowd):
            memory.retain_items(bank=Bank.objects.get(pk=bank), items=items, default_document_id=str)
    one_by_one, together = _graph("alpha"), _graph("beta")
    assert len(one_by_one["units"]) == 2 * 38 and len(one_by_one["links"]) > 1000
    assert together == one_by_one


# --- deletes and graph maintenance -----------------------------------------------------------


def test_document_delete_and_graph_maintenance(alpha: Any, admin: Any) -> None:
    retain(
        [
            {"content": "Marie Curie discovered Polonium with Pierre Curie.", "document_id": "curie"},
            {"content": "Polonium is named after Poland. Marie Curie was born in Warsaw.", "document_id": "polonium"},
            {"content": "Pierre Curie studied piezoelectricity.", "document_id": "pierre"},
        ]
    )
    gone = set(MemoryUnit.objects.filter(document__document_id="curie").values_list("pk", flat=True))
    neighbours = set(MemoryLink.objects.filter(target_id__in=gone).values_list("source_id", flat=True)) - gone
    assert neighbours

    response = admin.delete("banks/alpha/documents/curie")
    assert response.status_code == 200 and response.json()["units_deleted"] == 1
    maintenance = Operation.objects.get(pk=response.json()["operation_id"])
    assert maintenance.operation_type == "graph_maintenance"
    assert set(MemoryUnit.objects.filter(needs_link_topup=True).values_list("pk", flat=True)) == neighbours
    # Deleting again finds nothing; the pending maintenance is reused by the next delete.
    assert admin.delete("banks/alpha/documents/curie").status_code == 404
    assert stored_cooccurrences() == exact_cooccurrences()

    links_before = {n: MemoryLink.objects.filter(source_id=n).count() for n in neighbours}
    done = run_existing(maintenance)
    assert done.status == "completed", done.error_message
    assert done.result_metadata["units_topped_up"] == len(neighbours)
    # No orphan entity (nothing mentions "Pierre Curie"... except pierre's unit: kept).
    assert not Entity.objects.filter(unitentity__isnull=True).exists()
    assert Entity.objects.filter(name="pierre curie").exists()
    # No stale co-occurrence: every stored count is backed by units.
    assert not EntityCooccurrence.objects.filter(count__lte=0).exists()
    assert stored_cooccurrences() == exact_cooccurrences()
    assert not MemoryUnit.objects.filter(needs_link_topup=True).exists()
    for unit_id, before in links_before.items():
        assert MemoryLink.objects.filter(source_id=unit_id).count() >= min(before, 1)


def run_existing(operation: Operation) -> Operation:
    runner.execute(str(operation.pk), operation_type=operation.operation_type, worker="test@here", task_id="t")
    return Operation.objects.get(pk=operation.pk)


def test_graph_maintenance_prunes_orphans_and_stale_cooccurrences(alpha: Any) -> None:
    retain(
        [
            {"content": "Niels Bohr met Werner Heisenberg in Copenhagen.", "document_id": "together"},
            {"content": "Niels Bohr liked westerns.", "document_id": "bohr"},
            {"content": "Werner Heisenberg played piano.", "document_id": "heisenberg"},
        ]
    )
    bank = Bank.objects.get(pk="alpha")
    memory.document_delete(bank=bank, document_id="together")
    # Copenhagen is now an orphan; Bohr-Heisenberg a pair no unit supports.
    assert Entity.objects.filter(name="copenhagen").exists()
    assert EntityCooccurrence.objects.filter(count=0).count() == 3
    done = run("graph_maintenance")
    assert done.result_metadata["entities_pruned"] == 1
    # Two stale pairs went with Copenhagen; the third is pruned as stale.
    assert done.result_metadata["cooccurrences_pruned"] == 1
    assert set(Entity.objects.values_list("name", flat=True)) == {"niels bohr", "werner heisenberg"}
    assert EntityCooccurrence.objects.count() == 0
    assert stored_cooccurrences() == exact_cooccurrences() == {}


def test_memory_delete_endpoint(alpha: Any, admin: Any) -> None:
    retain([{"content": "Rosalind Franklin imaged DNA. Franklin used X-rays.", "document_id": "dna"}])
    listed = admin.get("banks/alpha/memories/list").json()
    assert listed["total"] == 2 and {i["document_id"] for i in listed["items"]} == {"dna"}
    unit_id = listed["items"][0]["id"]
    response = admin.delete(f"banks/alpha/memories/{unit_id}")
    assert response.status_code == 200 and response.json()["units_deleted"] == 1
    assert Operation.objects.get(pk=response.json()["operation_id"]).operation_type == "graph_maintenance"
    assert admin.delete(f"banks/alpha/memories/{unit_id}").status_code == 404
    assert admin.delete("banks/alpha/memories/not-a-uuid").status_code == 400
    assert MemoryUnit.objects.count() == 1 and Document.objects.filter(document_id="dna").exists()


# --- consolidation ------------------------------------------------------------------------


def test_consolidation_builds_observations_per_entity(alpha: Any) -> None:
    retain(
        [
            {"content": "Katherine Johnson calculated orbits for NASA.", "tags": ["space"]},
            {"content": "Katherine Johnson was born in West Virginia.", "tags": ["bio"]},
            {"content": "NASA launched Apollo.", "tags": ["space"]},
        ]
    )
    scoped = run("consolidation", payload={"tags": ["space"]})
    assert scoped.status == "completed" and scoped.result_metadata["units"] == 2
    assert MemoryUnit.objects.filter(consolidated=False).count() == 1
    full = run("consolidation")
    assert full.result_metadata["units"] == 1
    katherine = Observation.objects.get(entity__name="katherine johnson")
    assert katherine.unit_count == 2
    assert katherine.text.startswith("Katherine Johnson: ")
    assert "calculated orbits" in katherine.text and "West Virginia" in katherine.text
    assert Observation.objects.get(entity__name="nasa").unit_count == 2
    before = dict(Observation.objects.values_list("entity__name", "text"))
    MemoryUnit.objects.update(consolidated=False)
    run("consolidation")  # again: same observations
    assert dict(Observation.objects.values_list("entity__name", "text")) == before


def test_consolidation_without_observations_only_marks_units(alpha: Any) -> None:
    Bank.objects.filter(pk="alpha").update(enable_observations=False)
    retain([{"content": "Hedy Lamarr co-invented frequency hopping."}])
    assert run("consolidation").result_metadata["observations"] == 0
    assert Observation.objects.count() == 0 and not MemoryUnit.objects.filter(consolidated=False).exists()


# --- mental models -----------------------------------------------------------------------------


def test_refresh_mental_model_searches_and_rewrites_within_max_tokens(alpha: Any) -> None:
    retain(
        [
            {"content": "The reactor cooling pump failed on Monday."},
            {"content": "Engineers replaced the cooling pump seals."},
            {"content": "Lunch was pizza."},
        ]
    )
    model = MentalModel.objects.create(bank_id="alpha", name="Pump health", source_query="cooling pump", max_tokens=200)
    done = run("refresh_mental_model", mental_model_id=str(model.pk))
    assert done.status == "completed", done.error_message
    model.refresh_from_db()
    assert model.content.startswith("# Pump health\n")
    assert "cooling pump failed" in model.content and "pump seals" in model.content
    assert "pizza" not in model.content and model.last_refreshed_at is not None
    MentalModel.objects.filter(pk=model.pk).update(max_tokens=12)
    run("refresh_mental_model", mental_model_id=str(model.pk))
    model.refresh_from_db()
    assert len(model.content.split()) <= 12 and model.content.count("\n- ") == 1


def test_refresh_of_a_deleted_mental_model_fails_without_retry(alpha: Any) -> None:
    done = run("refresh_mental_model", mental_model_id="00000000-0000-0000-0000-000000000000")
    assert done.status == "failed" and done.retry_count == 0
    assert "no longer exists" in done.error_message


def test_mental_model_endpoints(alpha: Any, admin: Any) -> None:
    created = admin.post("banks/alpha/mental-models", {"name": "Team", "source_query": "team", "max_tokens": 100})
    assert created.status_code == 200
    model_id = created.json()["id"]
    refresh_op = Operation.objects.get(pk=created.json()["operation_id"])
    assert refresh_op.operation_type == "refresh_mental_model" and refresh_op.mental_model_id == model_id
    again = admin.post(f"banks/alpha/mental-models/{model_id}/refresh")
    assert again.json() == {"operation_id": str(refresh_op.pk), "status": "pending", "deduplicated": True}
    assert admin.get(f"banks/alpha/mental-models/{model_id}").json()["name"] == "Team"
    assert admin.get("banks/alpha/mental-models").json()["total"] == 1
    assert admin.get("banks/alpha/mental-models/nope").status_code == 400
    assert admin.get("banks/alpha/mental-models/00000000-0000-0000-0000-000000000000").status_code == 404
    bad = admin.post("banks/alpha/mental-models", {"name": "", "source_query": "x", "max_tokens": 1})
    assert bad.status_code == 400 and {"name", "max_tokens"} <= set(bad.json()["errors"])
    assert MentalModel.objects.count() == 1


def test_documents_endpoint_and_bank_stats(alpha: Any, admin: Any) -> None:
    retain([{"content": "One. Two.", "document_id": "a"}, {"content": "Three.", "document_id": "b"}])
    stats = admin.get("banks/alpha/stats").json()
    assert stats["documents"] == 2 and stats["memory_units"] == 3 and stats["unconsolidated_units"] == 3
    assert stats["links"] == MemoryLink.objects.count() > 0 and stats["total_operations"] == 1
    body = admin.get("banks/alpha/documents").json()
    assert body["total"] == 2
    assert {d["document_id"]: d["unit_count"] for d in body["items"]} == {"a": 2, "b": 1}
    assert admin.get("banks/alpha/documents", {"limit": 0}).status_code == 400


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's plans")
def test_a_retain_reads_its_neighbours_in_index_order_while_statistics_are_young(alpha: Any) -> None:
    """Statistics taken while a bank was empty (a new bank's, before its first
    analyze) must not make a retain sort the bank's units, or an entity's, to
    find the nearest and most recent: each read walks an index in its order."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE banks_memoryunit, banks_unitentity, banks_document, banks_entity")
    retain(
        [{"content": f"Ada met Grace in Zurich. Note {i} is about Ada.", "document_id": f"n{i}"} for i in range(150)]
    )
    bank = Bank.objects.get(pk="alpha")
    item = [RetainItem(content="Ada wrote to Grace from Zurich.", document_id="late")]
    plans = explained_reads(
        lambda: memory.retain_items(bank=bank, items=item, default_document_id=str),
        tables=("banks_memoryunit", "banks_unitentity"),
        analyze=True,
    )
    # The neighbour reads are among those explained, each down its index.
    for index in ("banks_unit_time", "banks_unit_recent", "banks_entity_recent_units"):
        assert any(index in p for p in plans), f"no read went down {index}"
    sorted_reads = [p for p in plans if re.search(r"\bSort\b", p)]
    assert not sorted_reads, "\n\n".join(sorted_reads)


def test_deleting_a_bank_takes_its_links_and_leaves_another_banks(alpha: Any, beta: Any, admin: Any) -> None:
    """Links have no index on their bank: they go with the bank's units."""
    for bank in ("alpha", "beta"):
        retain(
            [{"content": f"Ada met Grace in Zurich. Note {i} about Ada.", "document_id": f"n{i}"} for i in range(4)],
            bank,
        )
    theirs = set(MemoryLink.objects.filter(bank_id="beta").values_list("pk", flat=True))
    assert theirs and MemoryLink.objects.filter(bank_id="alpha").exists()
    assert admin.delete("banks/alpha").status_code == 200
    assert set(MemoryLink.objects.values_list("pk", flat=True)) == theirs
    assert admin.get("banks/beta/stats").json()["links"] == len(theirs)


# --- observations: their sources, and consolidation after deletes ------------------------------


def cited(entity: str, bank: str = "alpha") -> set[str]:
    """Texts of the units the entity's observation records as its sources."""
    observation = Observation.objects.get(bank_id=bank, entity__name=entity)
    return set(observation.sources.values_list("text", flat=True))


def auto_consolidating(bank: str = "alpha") -> None:
    Bank.objects.filter(pk=bank).update(enable_auto_consolidation=True)


def run_pending_consolidation(bank: str = "alpha") -> Operation:
    pending = Operation.objects.get(bank_id=bank, operation_type="consolidation", status="pending")
    done = run_existing(pending)
    assert done.status == "completed", done.error_message
    return done


def test_observations_record_the_units_they_were_built_from(alpha: Any) -> None:
    retain([{"content": f"Grace Hopper fixed bug number {i}.", "document_id": f"bug-{i}"} for i in range(14)])
    run("consolidation")
    grace = Observation.objects.get(entity__name="grace hopper")
    assert grace.unit_count == 14 and not grace.needs_rebuild
    # The most recent twelve (same timestamp: by position, then id): exactly what its text says.
    sources = list(grace.sources.all())
    assert len(sources) == 12 and all(unit.text in grace.text for unit in sources)
    left_out = MemoryUnit.objects.exclude(pk__in=[u.pk for u in sources])
    assert left_out.count() == 2 and not any(unit.text in grace.text for unit in left_out)


def test_a_document_delete_queues_consolidation_that_rebuilds_or_removes_stale_observations(
    alpha: Any, admin: Any
) -> None:
    auto_consolidating()
    retain(
        [
            {"content": "Ada Lovelace wrote to Charles Babbage.", "document_id": "letters"},
            {"content": "Charles Babbage built the Difference Engine.", "document_id": "engine"},
            {"content": "Mary Somerville introduced Ada Lovelace to Charles Babbage.", "document_id": "intro"},
            {"content": "Alan Turing read about the Difference Engine.", "document_id": "turing"},
        ]
    )
    run_pending_consolidation()
    assert cited("ada lovelace") == {
        "Ada Lovelace wrote to Charles Babbage.",
        "Mary Somerville introduced Ada Lovelace to Charles Babbage.",
    }
    gone = set(MemoryUnit.objects.filter(document__document_id__in=["letters", "intro"]).values_list("pk", flat=True))

    first = admin.delete("banks/alpha/documents/letters").json()
    second = admin.delete("banks/alpha/documents/intro").json()
    consolidation = Operation.objects.get(pk=first["consolidation_operation_id"])
    assert consolidation.operation_type == "consolidation" and consolidation.status == "pending"
    # Deduplicated like any other: the second delete joins the pending one.
    assert second["consolidation_operation_id"] == str(consolidation.pk)
    # Stale: everything that cited a deleted unit, and nothing else.
    stale = set(Observation.objects.filter(needs_rebuild=True).values_list("entity__name", flat=True))
    assert stale == {"ada lovelace", "charles babbage", "mary somerville"}
    assert not Observation.objects.get(entity__name="difference engine").needs_rebuild

    done = run_existing(consolidation)
    assert done.status == "completed", done.error_message
    assert done.result_metadata["stale_observations"] == 3
    assert done.result_metadata["observations_removed"] == 2  # Ada and Mary: no unit left
    assert set(Observation.objects.values_list("entity__name", flat=True)) == {
        "charles babbage",
        "difference engine",
        "alan turing",
    }
    babbage = Observation.objects.get(entity__name="charles babbage")
    assert babbage.text == "Charles Babbage: Charles Babbage built the Difference Engine."
    assert babbage.unit_count == 1 and cited("charles babbage") == {"Charles Babbage built the Difference Engine."}
    assert not Observation.objects.filter(needs_rebuild=True).exists()
    assert not Observation.objects.filter(sources__in=gone).exists()


def test_a_memory_delete_queues_consolidation_only_for_observations_it_made_stale(alpha: Any, admin: Any) -> None:
    auto_consolidating()
    retain([{"content": "Lise Meitner explained fission. Otto Hahn found barium.", "document_id": "fission"}])
    run_pending_consolidation()
    units = {u.text: u.pk for u in MemoryUnit.objects.all()}
    # A unit no observation cites (a new one, not consolidated yet): graph maintenance only.
    retain([{"content": "Fission was big news.", "document_id": "news"}])
    Operation.objects.filter(operation_type="consolidation", status="pending").delete()
    news = MemoryUnit.objects.get(document__document_id="news")
    quiet = admin.delete(f"banks/alpha/memories/{news.pk}").json()
    assert quiet["consolidation_operation_id"] is None
    assert Operation.objects.get(pk=quiet["operation_id"]).operation_type == "graph_maintenance"

    loud = admin.delete(f"banks/alpha/memories/{units['Otto Hahn found barium.']}").json()
    assert Operation.objects.get(pk=loud["consolidation_operation_id"]).operation_type == "consolidation"
    assert list(Observation.objects.filter(needs_rebuild=True).values_list("entity__name", flat=True)) == ["otto hahn"]
    run_existing(Operation.objects.get(pk=loud["consolidation_operation_id"]))
    assert set(Observation.objects.values_list("entity__name", flat=True)) == {"lise meitner"}


@pytest.mark.parametrize("settings_off", ["enable_auto_consolidation", "enable_observations"])
def test_consolidation_after_deletes_follows_the_bank_settings(alpha: Any, admin: Any, settings_off: str) -> None:
    auto_consolidating()
    retain([{"content": "Emmy Noether proved her theorem.", "document_id": "noether"}])
    run_pending_consolidation()
    Bank.objects.filter(pk="alpha").update(**{settings_off: False})
    body = admin.delete("banks/alpha/documents/noether").json()
    assert body["consolidation_operation_id"] is None
    assert not Operation.objects.filter(operation_type="consolidation").exclude(status="completed").exists()
    # Still recorded as stale: a consolidation run later repairs it.
    assert Observation.objects.get(entity__name="emmy noether").needs_rebuild
    if settings_off == "enable_auto_consolidation":
        run("consolidation")
        assert not Observation.objects.exists()


def test_re_retaining_a_document_rebuilds_the_observations_of_its_old_units(alpha: Any) -> None:
    auto_consolidating()
    retain([{"content": "Vera Rubin measured Andromeda.", "document_id": "rubin"}])
    run_pending_consolidation()
    again = retain([{"content": "Vera Rubin measured galaxy rotation.", "document_id": "rubin"}])
    assert Observation.objects.get(entity__name="andromeda").needs_rebuild
    run_existing(Operation.objects.get(pk=again.result_metadata["consolidation_operation_id"]))
    assert set(Observation.objects.values_list("entity__name", flat=True)) == {"vera rubin"}
    assert cited("vera rubin") == {"Vera Rubin measured galaxy rotation."}


# --- consolidation scopes ------------------------------------------------------------------------


def scoped_units() -> None:
    retain(
        [
            {"content": "Project Apollo met Project Gemini.", "tags": ["nasa", "crewed"], "document_id": "both"},
            {"content": "Project Apollo landed.", "tags": ["nasa"], "document_id": "nasa"},
            {"content": "Project Gemini docked.", "tags": ["crewed"], "document_id": "crewed"},
            {"content": "Project Vostok flew.", "tags": ["soviet", "crewed"], "document_id": "vostok"},
            {"content": "Project Mercury flew.", "document_id": "untagged"},
        ]
    )


def unconsolidated() -> set[str]:
    return set(MemoryUnit.objects.filter(consolidated=False).values_list("document__document_id", flat=True))


def test_observation_scopes_consolidate_only_units_carrying_every_tag_of_one_scope(alpha: Any) -> None:
    scoped_units()
    done = run("consolidation", payload={"observation_scopes": [["nasa", "crewed"], ["soviet"]]})
    assert done.status == "completed" and done.result_metadata["units"] == 2
    assert unconsolidated() == {"nasa", "crewed", "untagged"}
    assert set(Observation.objects.values_list("entity__name", flat=True)) == {
        "project apollo",
        "project gemini",
        "project vostok",
    }
    # The older `tags` form: any one of them.
    run("consolidation", payload={"tags": ["nasa"]})
    assert unconsolidated() == {"crewed", "untagged"}


def test_consolidate_endpoint_takes_observation_scopes(alpha: Any, admin: Any) -> None:
    response = admin.post("banks/alpha/consolidate", {"observation_scopes": [["crewed", "nasa", "nasa"], ["soviet"]]})
    assert response.status_code == 200 and response.json()["deduplicated"] is False
    operation = Operation.objects.get(pk=response.json()["operation_id"])
    assert operation.task_payload == {"observation_scopes": [["crewed", "nasa"], ["soviet"]]}
    scoped_units()
    run_existing(operation)
    assert unconsolidated() == {"nasa", "crewed", "untagged"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"observation_scopes": "per_tag"}, "observation_scopes"),
        ({"observation_scopes": ["nasa"]}, "observation_scopes.0"),
        ({"observation_scopes": [["nasa"], {"tags": ["x"]}]}, "observation_scopes.1"),
        ({"observation_scopes": [["nasa"], []]}, "observation_scopes.1"),
        ({"observation_scopes": [["nasa", None]]}, "observation_scopes.0.1"),
        ({"observation_scopes": [["x" * 101]]}, "observation_scopes.0.0"),
        ({"observation_scopes": [["nasa"]], "tags": ["crewed"]}, "observation_scopes"),
        ({"tags": "nasa"}, "tags"),
    ],
)
def test_consolidate_endpoint_refuses_malformed_scopes(alpha: Any, admin: Any, body: Any, field: str) -> None:
    response = admin.post("banks/alpha/consolidate", body)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()
    assert not Operation.objects.exists()


def test_empty_scopes_mean_every_unit(alpha: Any, admin: Any) -> None:
    for body in ({"observation_scopes": []}, {"observation_scopes": None, "tags": []}, None):
        response = admin.post("banks/alpha/consolidate", body)
        assert response.status_code == 200
        assert Operation.objects.get(pk=response.json()["operation_id"]).task_payload == {}


def test_a_deduplicated_consolidation_widens_the_pending_ones_scope(alpha: Any, admin: Any) -> None:
    def consolidate(body: dict[str, Any] | None) -> dict[str, Any]:
        response = admin.post("banks/alpha/consolidate", body)
        assert response.status_code == 200
        return dict(response.json())

    first = consolidate({"observation_scopes": [["nasa"]]})
    joined = consolidate({"observation_scopes": [["soviet", "crewed"]], "tag": "second"})
    assert joined == {"operation_id": first["operation_id"], "deduplicated": True}
    pending = Operation.objects.get(pk=first["operation_id"])
    assert pending.task_payload == {"observation_scopes": [["crewed", "soviet"], ["nasa"]]}
    consolidate({"tags": ["nasa"]})  # already covered: unchanged
    assert Operation.objects.get(pk=pending.pk).task_payload == pending.task_payload
    consolidate(None)  # every unit: the pending one now covers them all
    assert Operation.objects.get(pk=pending.pk).task_payload == {}
    consolidate({"observation_scopes": [["nasa"]]})
    assert Operation.objects.get(pk=pending.pk).task_payload == {}
    # Once it has been claimed, a request is a new operation with its own scope.
    Operation.objects.filter(pk=pending.pk).update(status="processing")
    later = consolidate({"observation_scopes": [["nasa"]]})
    assert later["deduplicated"] is False and later["operation_id"] != first["operation_id"]
    assert Operation.objects.get(pk=later["operation_id"]).task_payload == {"observation_scopes": [["nasa"]]}
