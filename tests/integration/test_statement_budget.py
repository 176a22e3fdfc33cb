"""The hot path's budget: how many statements and transactions the lifecycle
spends to submit, claim and finish an operation, counted, not timed.

Counts are deterministic, so the next change that adds a query to the hot
path fails here and has to raise the budget in the same commit, saying why.
Measured on PostgreSQL, the scaled deployment, where the claim also picks
the next operation to publish (one statement) and the window is estimated
per process (a count at most every 0.1 s, none in these steady-state counts).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from banks import memory
from banks.memory import RetainItem
from banks.models import Webhook
from banks.submissions import retain_async
from banks.webhooks import seal
from core import prepared
from operations import lifecycle
from operations.handlers import Lease
from operations.lifecycle import dispatch, queries
from operations.models import Operation
from tenancy.models import Bank
from tests.conftest import needs_scaled

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Spent:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0

    def within(self, statements: int, transactions: int, what: str) -> None:
        assert len(self.statements) <= statements and self.transactions <= transactions, (
            f"{what}: {len(self.statements)} statements in {self.transactions} transactions, over its budget of "
            f"{statements} in {transactions}. Raise the budget here only with a reason:\n" + "\n".join(self.statements)
        )


@contextmanager
def counted() -> Iterator[Spent]:
    """Statements run on the default connection, and the transactions they
    ran in: one per statement in autocommit, one per outermost atomic block."""
    spent = Spent()
    blocks: set[int] = set()

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        spent.statements.append(" ".join(sql.split())[:160])
        if connection.in_atomic_block:
            blocks.add(id(connection.atomic_blocks[0]))
        else:
            spent.transactions += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield spent
    spent.transactions += len(blocks)


def no_replacement() -> None:
    raise AssertionError("on PostgreSQL the claim picks the next operation itself")


def claim(operation: Operation, operation_type: str) -> Lease:
    """Claim as a worker taking the operation's message (its task id)."""
    lease = lifecycle.operation_claim(
        operation_id=str(operation.pk),
        worker="shared@budget",
        task_id=str(operation.task_id),
        replace=(operation_type, no_replacement),
    )
    assert lease is not None
    return lease


@pytest.fixture(autouse=True)
def _scaled() -> None:
    needs_scaled("the PostgreSQL hot path (the claim picks in its own statement)")


@pytest.fixture
def published_quietly(monkeypatch: Any) -> None:
    """Messages are not sent to a broker here (no worker takes them): the
    statements are what is counted."""
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: True)
    monkeypatch.setattr(dispatch, "send_many", len)
    monkeypatch.setattr(dispatch, "picked_by_claim", lambda *args, **kwargs: None)
    # The window counted once stays counted however slow the machine.
    monkeypatch.setattr(dispatch, "WINDOW_RECOUNT_SECONDS", 60.0)


def test_a_no_op(alpha: Any, published_quietly: None) -> None:
    lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo")  # the window is counted once
    with counted() as submit:
        operation = lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo").operation
    submit.within(1, 1, "submit of a no-op (its INSERT)")
    with counted() as claimed:
        lease = claim(operation, "test_echo")
    claimed.within(1, 1, "claim of a no-op (its UPDATE, with the pick of the next operation)")
    with counted() as finished:
        assert lifecycle.operation_complete(lease=lease, result={})
    finished.within(1, 1, "finish of a no-op (its UPDATE, the webhook question inside)")


def test_a_retain_of_one_document(alpha: Any, published_quietly: None) -> None:
    payload = {"items": [RetainItem(content="Ada met Charles.", document_id="d").to_payload()]}
    lifecycle.operation_submit(bank_id="alpha", operation_type="retain", payload=payload, document_id="d0")
    with counted() as submit:
        operation = lifecycle.operation_submit(
            bank_id="alpha", operation_type="retain", payload=payload, document_id="d"
        ).operation
    submit.within(1, 1, "submit of a retain")
    with counted() as claimed:
        lease = claim(operation, "retain")
    claimed.within(1, 1, "claim of a retain")
    with counted() as finished:
        assert lifecycle.operation_complete(lease=lease, result={"units": 1})
    # The UPDATE, then (after commit) the next retain waiting on the same
    # document is looked up to be published: one indexed SELECT.
    finished.within(2, 2, "finish of a retain of one document")


def test_a_retain_of_five_new_documents_writes_them_together(alpha: Any) -> None:
    """The memory writes of a request's five items: one set of statements
    and one write transaction, not one per item (the fold after them is a
    transaction of its own)."""
    bank = Bank.objects.get(pk="alpha")
    memory.retain_items(
        bank=bank, items=[RetainItem(content="Ada met Charles in London.")], default_document_id=lambda i: "earlier"
    )
    items = [RetainItem(content=f"Ada met Grace in Zurich about note {i}. Grace wrote it down.") for i in range(5)]
    with counted() as written:
        outcome = memory.retain_items(bank=bank, items=items, default_document_id=lambda i: f"d{i}")
    assert outcome.items == 5 and outcome.units == 10
    # Before the write, each in autocommit: which documents have units, the
    # entities (upsert, read), the temporal and entity neighbours, the recent
    # units, their vectors (those this process has not read before). The write, one transaction: lock, documents,
    # whether they have units, units, entities (upsert, read), mentions,
    # targets alive, links, co-occurrences. The fold, one transaction after a
    # check (one statement): locks (one), deltas (one: taken and added),
    # offers (one: taken, checked, links back, targets full); the check that
    # nothing came meanwhile.
    written.within(22, 11, "the memory writes of a retain of five new documents")


def test_an_async_retain_is_one_insert(alpha: Any, published_quietly: None) -> None:
    bank = Bank.objects.get(pk="alpha")
    retain_async(bank=bank, items=[RetainItem(content="Warm.")], document_tags=[])  # the window counted
    with counted() as submit:
        parent, _ = retain_async(
            bank=bank, items=[RetainItem(content=f"Fact {i}.") for i in range(5)], document_tags=[]
        )
    # The retain_batch parent and its one child in the same INSERT.
    submit.within(1, 1, "submit of an async retain of five items")
    assert parent.children.count() == 1


def test_a_parent_with_a_thousand_children(alpha: Any, published_quietly: None, settings: Any) -> None:
    settings.OPS_RETAIN_BATCH_ITEMS = 1
    items = [RetainItem(content=f"Fact {i}.") for i in range(1000)]
    bank = Bank.objects.get(pk="alpha")
    with counted() as submit:
        parent, _ = retain_async(bank=bank, items=items, document_tags=[])
    # The parent (written rolled up: its children are all pending) and its
    # children in INSERTs of 500 rows (three), the window's count (at most
    # every 0.1 s); one transaction.
    submit.within(4, 1, "submit of a parent with 1,000 children")
    child = parent.children.exclude(task_id=None).order_by("created_at").first()
    with counted() as claimed:
        lease = claim(child, "retain")
    # The claim, then the parent's roll-up in a transaction of its own.
    claimed.within(4, 2, "claim of a child")
    with counted() as finished:
        assert lifecycle.operation_complete(lease=lease, result={})
    # One transaction: the UPDATE (with the webhook question) and the roll-up.
    finished.within(4, 1, "finish of a child")


def test_a_finish_in_a_bank_with_webhooks(alpha: Any, published_quietly: None) -> None:
    Webhook.objects.create(
        bank=Bank.objects.get(pk="alpha"),
        url="http://127.0.0.1:9/hook",
        secret_sealed=seal("s"),
        event_types=["operation.completed"],
        enabled=True,
        http_config={},
    )
    first, second = (lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo").operation for _ in "12")
    assert lifecycle.operation_complete(lease=claim(first, "test_echo"), result={})  # the deliveries' window counted
    lease = claim(second, "test_echo")
    with counted() as finished:
        assert lifecycle.operation_complete(lease=lease, result={})
    # The quiet UPDATE finds the hook may act; then one transaction: the UPDATE
    # returning the hook's answer, the webhooks read, the deliveries' INSERT.
    finished.within(4, 2, "finish in a bank with webhooks")


def test_the_claim_and_the_finish_are_prepared_once_per_connection(alpha: Any, published_quietly: None) -> None:
    """Planned on first use, then reused by every claim and finish on the
    connection (`queries.fetchone`): the plan is not paid per operation."""
    for _ in range(3):
        operation = lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo").operation
        assert lifecycle.operation_complete(lease=claim(operation, "test_echo"), result={})
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert len([s for s in prepared if "SET status = 'processing'" in s]) == 1, prepared
    assert len([s for s in prepared if "SET status = 'completed'" in s]) == 1, prepared


def _rows_walked(statement: str, params: list[Any]) -> tuple[int, str]:
    """Rows an UPDATE's plan read and threw away (its filters' "Rows Removed"),
    the statement run for real inside a transaction that is rolled back."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + statement, params)
            plan = "\n".join(line for (line,) in cursor.fetchall())
        transaction.set_rollback(True)
    removed = sum(int(number) for number in re.findall(r"Rows Removed by Filter: (\d+)", plan))
    return removed, plan


def test_a_backlog_that_arrived_after_the_statistics_is_not_walked_per_claim(
    alpha: Any, published_quietly: None, settings: Any
) -> None:
    """Statistics taken on a table of finished work, then a backlog of 400
    arrives: the claim, the pick and the finish still find their row by
    primary key, not by a walk of a partial index the planner believes empty."""
    settings.OPS_DISPATCH_WINDOW = 10
    finished = timezone.now() - timedelta(days=1)
    Operation.objects.bulk_create(
        Operation(
            bank_id="alpha", operation_type="test_echo", status="completed", created_at=finished, completed_at=finished
        )
        for _ in range(3000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE operations_operation")
    backlog = [lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo").operation for _ in range(400)]
    published = next(operation for operation in backlog if operation.task_id)
    now = timezone.now()
    claim_params = queries.claim_params(
        operation_id=published.pk, worker="w", task_id="t", lease_id=uuid.uuid4(), now=now, connection=connection
    )
    pick_params = queries.pick_params(
        operation_type="test_echo",
        after="",
        task_id="p",
        now=prepared.adapt(now, connection),
        stale_before=prepared.adapt(now - timedelta(minutes=2), connection),
    )
    for name, statement, params in (
        ("claim", queries.claim(), claim_params),
        ("pick", queries.pick("postgresql"), pick_params),
        ("claim and pick", queries.claim_and_pick(queries.claim()), claim_params + pick_params),
    ):
        removed, plan = _rows_walked(statement, params)
        assert removed <= 5, f"{name} read {removed} rows it did not want:\n{plan}"
    lease = claim(published, "test_echo")
    finish = queries.complete_params(
        operation_id=lease.operation_id, lease_id=lease.lease_id, result="{}", now=now, connection=connection
    )
    removed, plan = _rows_walked(queries.complete((), quiet=True), finish)
    assert removed <= 5, f"finish read {removed} rows it did not want:\n{plan}"
