"""Races of the memory-bank rules, each run many times by real concurrent
transactions on PostgreSQL: beats claiming a scheduled refresh, a delete
against an observation rebuild citing its units, a widened consolidation
against its claim."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from banks import follow_ups, memory, scheduler
from banks.memory import RetainItem
from banks.models import Entity, MemoryUnit, MentalModel, Observation, ObservationSource
from banks.operation_types.consolidation import observe
from operations import lifecycle
from operations.models import Operation
from tenancy.models import Bank
from tests.conftest import race

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

ROUNDS = 30


def test_beats_claim_each_due_run_once(alpha: Any) -> None:
    for round_ in range(ROUNDS):
        model = MentalModel.objects.create(
            bank_id="alpha",
            name=f"m{round_}",
            source_query="q",
            refresh_interval_seconds=60,
            next_refresh_at=timezone.now() - timedelta(seconds=1),
        )
        now = timezone.now()
        queued = race(*[lambda: scheduler.refreshes_queue_due(now=now)] * 3)
        assert sum(queued) == 1, queued
        assert Operation.objects.filter(mental_model_id=str(model.pk)).count() == 1
        model.refresh_from_db()
        assert model.next_refresh_at > now


def test_a_delete_against_a_rebuild_citing_its_units(alpha: Any) -> None:
    bank = Bank.objects.get(pk="alpha")
    memory.retain_items(
        bank=bank, items=[RetainItem(content="Dorothy Hodgkin kept notes.")], default_document_id=lambda i: "keep"
    )
    orders = set()
    for round_ in range(ROUNDS):
        document = f"doc-{round_}"
        memory.retain_items(
            bank=bank,
            items=[RetainItem(content=f"Dorothy Hodgkin solved structure {round_}.")],
            default_document_id=lambda i: document,
        )
        entity_id = Entity.objects.get(name="dorothy hodgkin").pk
        observe(bank, entity_id)
        doomed = set(MemoryUnit.objects.filter(document__document_id=document).values_list("pk", flat=True))
        # The rebuild below cites the doomed unit unless the delete commits first.
        memory.retain_items(
            bank=bank,
            items=[RetainItem(content=f"Dorothy Hodgkin won prize {round_}.")],
            default_document_id=lambda i: f"prize-{round_}",
        )

        def delete() -> Any:
            with transaction.atomic():
                memory.document_delete(bank=bank, document_id=document)
                return follow_ups.after_delete(bank=bank)

        race(delete, lambda: observe(bank, entity_id))

        observation = Observation.objects.get(entity_id=entity_id)
        assert not ObservationSource.objects.filter(unit_id__in=doomed).exists()
        if observation.needs_rebuild:
            orders.add("rebuild first")  # the delete saw the citation and flagged it
        else:
            orders.add("delete first")  # the rebuild never saw the deleted unit
            assert f"structure {round_}." not in observation.text
        observe(bank, entity_id)  # repaired, as the follow-up consolidation does
        observation.refresh_from_db()
        assert not observation.needs_rebuild and f"structure {round_}." not in observation.text
    assert orders == {"rebuild first", "delete first"}


def test_widening_a_consolidation_against_its_claim(alpha: Any) -> None:
    """Whichever wins, the request's scope is covered by a run. (The claim
    is the quicker side and usually wins; both orders are also tested one
    after the other in test_memory.)"""
    bank = Bank.objects.get(pk="alpha")
    for _ in range(ROUNDS):
        Operation.objects.filter(operation_type="consolidation").update(status="completed")
        first = follow_ups.queue_consolidation(bank=bank, scopes=[["a"]]).operation
        widened, lease = race(
            lambda: follow_ups.queue_consolidation(bank=bank, scopes=[["b"]]),
            lambda: lifecycle.operation_claim(operation_id=str(first.pk), worker="w", task_id="t"),
        )
        assert lease is not None
        if widened.operation.pk == first.pk:
            # Widened before the claim: the run the worker holds covers both scopes.
            assert lease.payload == {"observation_scopes": [["a"], ["b"]]}
        else:
            # Claimed first: the request became the next pending run.
            assert lease.payload == {"observation_scopes": [["a"]]}
            assert Operation.objects.get(pk=widened.operation.pk).task_payload == {"observation_scopes": [["b"]]}
