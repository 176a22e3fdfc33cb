"""The operations table's partitions on PostgreSQL (`operations.partitions`):
live rows apart from the history, a table per day, pruning by dropping a day,
and the uniqueness guarantees kept across partitions."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from banks.models import StoredFile
from operations import lifecycle, partitions, selectors
from operations.models import ACTIVE_DAY, MetricsWatermark, Operation
from operations.tasks import prune
from tenancy.api_keys import api_key_create
from tenancy.models import Bank
from tests.conftest import EMBEDDED, race
from tests.plans import explained_reads, file_all_finished

pytestmark = pytest.mark.skipif(
    EMBEDDED, reason="partitions exist on PostgreSQL only (the embedded deployment keeps one SQLite table)"
)


def where(pk: Any) -> str:
    """The partition that holds the operation's row."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM operations_operation WHERE id = %s", [pk])
        rows = cursor.fetchall()
    assert len(rows) == 1, rows  # one row per id, in one partition
    return str(rows[0][0])


def submit(**fields: Any) -> Operation:
    return lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", **fields).operation


def run(operation: Operation, *, fail: bool = False) -> None:
    lease = lifecycle.operation_claim(operation_id=str(operation.pk), worker="shared@here", task_id="t")
    assert lease is not None
    if fail:
        lifecycle.operation_fail(lease=lease, error="no", permanent=True)
    else:
        assert lifecycle.operation_complete(lease=lease, result={})


def today() -> date:
    return timezone.now().date()


def test_an_operation_is_live_until_it_finishes_then_the_sweep_files_it_under_its_day(
    alpha: Any, settings: Any
) -> None:
    assert partitions.is_partitioned()
    done, failed, cancelled, recent = submit(), submit(), submit(), submit()
    assert {where(o.pk) for o in (done, failed, cancelled, recent)} == {partitions.ACTIVE}
    run(done)
    run(failed, fail=True)
    lifecycle.operation_cancel(operation_id=cancelled.pk)
    run(recent)
    # Finishing is an UPDATE inside the active partition; the sweep moves them later, together.
    assert {where(o.pk) for o in (done, failed, cancelled)} == {partitions.ACTIVE}
    Operation.objects.filter(pk__in=[done.pk, failed.pk, cancelled.pk]).update(
        completed_at=timezone.now() - timedelta(seconds=11)
    )
    settings.OPS_FILE_FINISHED_AFTER_SECONDS = 10
    assert lifecycle.operations_file_finished(limit=2) == 3  # in batches
    day = partitions.holding(today())
    assert day != partitions.DEFAULT
    assert {where(o.pk) for o in (done, failed, cancelled)} == {day}
    assert where(recent.pk) == partitions.ACTIVE  # finished a moment ago: not yet
    assert Operation.objects.get(pk=done.pk).finished_on == today()
    # A retry brings it back to the live work, and it runs again.
    lifecycle.operation_retry(operation_id=failed.pk)
    assert where(failed.pk) == partitions.ACTIVE
    assert Operation.objects.get(pk=failed.pk).finished_on == ACTIVE_DAY
    run(failed)
    assert file_all_finished() == 2
    assert where(failed.pk) == where(recent.pk) == day


def test_a_live_row_cannot_be_filed_under_a_day(alpha: Any) -> None:
    operation = submit()
    with pytest.raises(IntegrityError, match="ops_live_rows_are_active"), connection.cursor() as cursor:
        cursor.execute("UPDATE operations_operation SET finished_on = CURRENT_DATE WHERE id = %s", [operation.pk])


def test_the_prune_makes_the_coming_days_and_drops_the_days_past_retention(
    alpha: Any, settings: Any, monkeypatch: Any
) -> None:
    settings.OPS_OPERATION_RETENTION_DAYS = 30
    settings.OPS_PARTITIONS_AHEAD_DAYS = 10
    now = timezone.now()
    expired, kept = submit(), submit()
    for operation in (expired, kept):
        run(operation)
    # Seen from 40 days on: one finished "5 days from now" (in the partition
    # the migration made ahead), with a stored file; one 15 days from now.
    Operation.objects.filter(pk=expired.pk).update(completed_at=now + timedelta(days=5))
    Operation.objects.filter(pk=kept.pk).update(completed_at=now + timedelta(days=15))
    assert file_all_finished() == 2
    soon = partitions.holding(today() + timedelta(days=5))
    assert where(expired.pk) == soon != partitions.DEFAULT
    assert where(kept.pk) == partitions.DEFAULT  # no partition that far ahead
    StoredFile.objects.create(operation_id=expired.pk, filename="a.txt", size=1, sha256="0" * 64, data=b"a")
    parked = submit()  # pending all along: never pruned
    monkeypatch.setattr("operations.lifecycle.upkeep.timestamp", lambda: now + timedelta(days=40))

    outcome = prune()

    assert set(outcome["dropped"]) == {partitions.HISTORY, soon}
    names = {p.name for p in partitions.partitions()}
    assert outcome["created"] and set(outcome["created"]) <= names and not set(outcome["dropped"]) & names
    # Every day ahead held, a week a partition (the last one may be cut short by none).
    held = {partitions.holding(today() + timedelta(days=40 + n)) for n in range(11)}
    assert partitions.DEFAULT not in held and held == set(outcome["created"]) and len(held) in (2, 3)
    assert outcome["deleted"] == 0  # `kept`, in the default partition, is within retention
    assert not Operation.objects.filter(pk=expired.pk).exists()
    assert not StoredFile.objects.filter(operation_id=expired.pk).exists()  # no constraint cascaded: the prune did
    assert set(Operation.objects.values_list("pk", flat=True)) == {kept.pk, parked.pk}
    assert prune() == {"created": [], "dropped": [], "deleted": 0}  # and again: nothing to do


def test_a_day_without_its_table_goes_to_the_default_partition_and_is_pruned_row_by_row(alpha: Any) -> None:
    operation = submit()
    run(operation)
    far = timezone.now() + timedelta(days=400)  # past the days made ahead
    Operation.objects.filter(pk=operation.pk).update(completed_at=far)
    assert file_all_finished() == 1
    assert where(operation.pk) == partitions.DEFAULT
    # Its partition is not made while the default holds rows of its span.
    assert partitions.create_span(far.date(), 7) is None
    assert partitions.create_span(far.date() + timedelta(days=30), 7) is not None
    assert lifecycle.operations_prune(older_than_days=1) == 0
    old = submit()
    run(old)
    Operation.objects.filter(pk=old.pk).update(completed_at=timezone.now() - timedelta(days=5))
    assert file_all_finished() == 1
    assert where(old.pk) == partitions.HISTORY
    assert lifecycle.operations_prune(older_than_days=1) == 1
    assert set(Operation.objects.values_list("pk", flat=True)) == {operation.pk}


def test_a_day_whose_table_is_in_use_is_dropped_at_a_later_prune(alpha: Any) -> None:
    operation = submit()
    run(operation)
    Operation.objects.filter(pk=operation.pk).update(completed_at=timezone.now() + timedelta(days=5))
    assert file_all_finished() == 1
    day = partitions.holding(today() + timedelta(days=5))
    assert where(operation.pk) == day
    # A long reader holds the table: the prune waits only lock_timeout for it.
    reader = psycopg.connect(**_dsn())
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM operations_operation")
    try:
        assert partitions.drop_before(today() + timedelta(days=9)) == []
        assert partitions.ensure_ahead(today() + timedelta(days=100), 1, 7) == []  # nor made: next time
    finally:
        reader.rollback()
        reader.close()
    assert Operation.objects.filter(pk=operation.pk).exists()
    assert day in partitions.drop_before(today() + timedelta(days=9))
    assert not Operation.objects.filter(pk=operation.pk).exists()


def test_a_partition_detached_by_a_prune_that_stopped_is_dropped_by_the_next(alpha: Any, monkeypatch: Any) -> None:
    """The prune detaches a partition (the table's lock, briefly) and drops it
    after (its files, slowly, with no lock of the table's); stopped between
    the two, it leaves a table no query sees, which the next prune drops."""
    operation = submit()
    run(operation)
    Operation.objects.filter(pk=operation.pk).update(completed_at=timezone.now() + timedelta(days=5))
    assert file_all_finished() == 1
    day = partitions.holding(today() + timedelta(days=5))

    drop = partitions._drop_detached

    def stopped(name: str) -> None:
        if name == f"{day}_detached":
            raise RuntimeError("the prune stopped here")
        drop(name)  # the history partition, before it

    with monkeypatch.context() as patched:
        patched.setattr(partitions, "_drop_detached", stopped)
        with pytest.raises(RuntimeError):
            partitions.drop_before(today() + timedelta(days=9))
    assert day not in {p.name for p in partitions.partitions()}
    assert not Operation.objects.filter(pk=operation.pk).exists()
    assert _tables_named(day) == 0 and _tables_named(f"{day}_detached") == 1  # detached, not dropped
    with connection.cursor() as cursor:  # a table of the same shape that is not the prune's
        cursor.execute(f"CREATE TABLE {day} (id int)")

    partitions.drop_before(today())  # nothing of its own to drop

    assert _tables_named(f"{day}_detached") == 0
    assert _tables_named(day) == 1


def test_one_prune_at_a_time_keeps_the_partitions(alpha: Any, settings: Any, monkeypatch: Any) -> None:
    """Two beat schedulers' prunes: while one keeps the partitions (an advisory
    lock), the other leaves them alone instead of detaching the same table."""
    settings.OPS_OPERATION_RETENTION_DAYS = 30
    monkeypatch.setattr("operations.lifecycle.upkeep.timestamp", lambda: timezone.now() + timedelta(days=40))
    other = psycopg.connect(**_dsn(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s, %s)", partitions._KEEPER)
        assert lifecycle.operations_partitions_keep(older_than_days=30) == {"created": [], "dropped": []}
        assert partitions.HISTORY in {p.name for p in partitions.partitions()}
    finally:
        other.close()  # its lock goes with it
    assert partitions.HISTORY in lifecycle.operations_partitions_keep(older_than_days=30)["dropped"]


def _tables_named(name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname = %s AND relkind = 'r'", [name])
        return int(cursor.fetchone()[0])


def test_reads_of_recent_operations_skip_the_older_weeks(alpha: Any, client: Any) -> None:
    """`/tasks?within_hours`, a list's `created_after` and the metrics rollup
    bound the partition key too: PostgreSQL plans and reads the live rows and
    the recent weeks, however many older weeks the table keeps."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {partitions.HISTORY}")  # a table kept five weeks, instead
    partitions.ensure_ahead(today() - timedelta(days=35), 35, 7)
    older = [
        p.name for p in partitions.partitions() if p.finished and p.upper and p.upper < today() - timedelta(days=2)
    ]
    assert len(older) >= 4
    key = {"HTTP_AUTHORIZATION": f"Bearer {api_key_create(admin=True)[1]}"}
    client.get("/metrics")  # the first scrape starts the rollup: an hour's finished rows next
    MetricsWatermark.objects.update(counted_until=timezone.now() - timedelta(hours=1))
    plans = explained_reads(lambda: client.get("/metrics"))
    plans += explained_reads(lambda: client.get("/tasks", {"within_hours": "24"}, **key))
    since = (timezone.now() - timedelta(hours=3)).isoformat()
    plans += explained_reads(lambda: client.get("/v1/default/banks/alpha/operations", {"created_after": since}, **key))
    assert len(plans) >= 6
    read = [name for name in older if any(name in p for p in plans)]
    assert not read, read
    # Unbounded, a list reads every week (the check above can see them).
    unbounded = "".join(explained_reads(lambda: client.get("/v1/default/banks/alpha/operations", **key)))
    assert all(name in unbounded for name in older)


def test_a_first_page_of_recent_operations_reads_no_older_week(alpha: Any, client: Any, monkeypatch: Any) -> None:
    """When the last week's operations fill a bank's page and its count (to
    COUNT_CAP), its rows come from the live rows and the recent weeks alone:
    no older week gives a row (the count looks in each, and finds none)."""
    monkeypatch.setattr(selectors, "COUNT_CAP", 3)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {partitions.HISTORY}")  # a table kept five weeks, instead
    partitions.ensure_ahead(today() - timedelta(days=35), 35, 7)
    now = timezone.now()
    made = [submit() for _ in range(8)]
    for operation in made[:7]:
        run(operation)
    for days, operation in zip((30, 23, 16, 15.5), made, strict=False):  # weeks before the window
        moment = now - timedelta(days=days)
        Operation.objects.filter(pk=operation.pk).update(created_at=moment, completed_at=moment)
    file_all_finished()
    bound = (now - selectors.RECENT - timedelta(days=1)).date()
    older = {p.name for p in partitions.partitions() if p.finished and p.upper and p.upper <= bound}
    assert {where(o.pk) for o in made[:4]} <= older
    key = {"HTTP_AUTHORIZATION": f"Bearer {api_key_create(admin=True)[1]}"}
    page = lambda: client.get("/v1/default/banks/alpha/operations", {"limit": 3}, **key)  # noqa: E731
    body = page().json()
    assert [o["id"] for o in body["operations"]] == [str(o.pk) for o in reversed(made[5:])]
    assert body["total_is_estimate"] is True  # the window's four reach the cap of three
    given = [
        (found[1], found[2] or "0")
        for explained in explained_reads(page, analyze=True)
        for found in re.finditer(r" on (operations_operation_\w+) .*?(?:never executed|rows=(\d+) loops)", explained)
        if found[1] in older
    ]
    assert given and all(rows == "0" for _, rows in given), given
    # A page that the last week cannot fill reads the older weeks too, and so
    # does an exact count.
    monkeypatch.setattr(selectors, "COUNT_CAP", 1000)
    body = client.get("/v1/default/banks/alpha/operations", {"limit": 6}, **key).json()
    assert [o["id"] for o in body["operations"]] == [str(o.pk) for o in reversed(made[2:])]
    assert (body["total"], body["total_is_estimate"]) == (8, False)


def _dsn() -> dict[str, Any]:
    settings = connection.settings_dict
    return {
        "dbname": settings["NAME"],
        "user": settings["USER"],
        "host": settings["HOST"],
        "port": settings["PORT"] or 5432,
        "password": settings["PASSWORD"] or None,
    }


def test_a_client_id_of_a_finished_operation_is_not_taken_twice(alpha: Any) -> None:
    """Ids are unique per partition only; a client's id that a finished
    operation holds is refused at submit all the same."""
    taken = submit()
    run(taken)
    assert file_all_finished() == 1
    assert where(taken.pk) != partitions.ACTIVE
    with pytest.raises(IntegrityError, match="already taken"), transaction.atomic():
        lifecycle.operation_submit_parent(
            bank_id="alpha", operation_type="retain_batch", operation_id=taken.pk, children=[]
        )
    with pytest.raises(IntegrityError, match="already taken"):
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", operation_id=taken.pk)
    assert Operation.objects.filter(pk=taken.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_client_id_raced_against_its_own_finish_is_taken_once(transactional_db: None) -> None:
    """The sweep files a finished row under its day while the same id is
    submitted again: whichever order the two take, one row holds the id."""
    Bank.objects.create(bank_id="alpha")
    for _ in range(20):
        client_id = uuid.uuid4()
        first = lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", operation_id=client_id)
        lease = lifecycle.operation_claim(operation_id=str(client_id), worker="shared@here", task_id="t")
        assert lease is not None and first.operation.pk == client_id
        assert lifecycle.operation_complete(lease=lease, result={})
        go = threading.Barrier(2)
        outcomes: list[Any] = []

        def finish() -> None:
            go.wait()
            outcomes.append(file_all_finished())
            connection.close()

        def again(client_id: uuid.UUID = client_id) -> None:
            go.wait()
            try:
                lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", operation_id=client_id)
                outcomes.append("inserted")
            except IntegrityError:
                outcomes.append("refused")
            finally:
                connection.close()

        threads = [threading.Thread(target=finish), threading.Thread(target=again)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert "refused" in outcomes and 1 in outcomes, outcomes
        assert Operation.objects.filter(pk=client_id).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_retry_and_a_delete_raced_against_the_filing_of_their_row_succeed(transactional_db: None) -> None:
    """PostgreSQL refuses to update a row another transaction just moved to
    another partition (a serialization failure): the request tries again."""
    Bank.objects.create(bank_id="alpha")
    for _ in range(15):
        retried, deleted = submit(), submit()
        run(retried, fail=True)
        run(deleted, fail=True)
        race(
            file_all_finished,
            lambda retried=retried: lifecycle.operation_retry(operation_id=retried.pk),
            lambda deleted=deleted: lifecycle.operation_delete(operation_id=deleted.pk),
        )
        assert where(retried.pk) == partitions.ACTIVE
        assert Operation.objects.get(pk=retried.pk).status == "pending"
        assert not Operation.objects.filter(pk=deleted.pk).exists()
        Operation.objects.filter(pk=retried.pk).delete()


@pytest.mark.django_db(transaction=True)
def test_the_live_partition_emptied_and_vacuumed_still_looks_its_size_to_the_planner(
    transactional_db: None,
) -> None:
    """Its rows come and go; truncated to nothing by VACUUM it would look
    empty, and a plan cached then would scan it whole (by id too)."""
    Bank.objects.create(bank_id="alpha")
    many = lifecycle.operations_submit_many(
        bank_id="alpha", operations=[lifecycle.Child(operation_type="test_echo", payload={}) for _ in range(3000)]
    )
    Operation.objects.filter(pk__in=[o.pk for o in many]).delete()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {partitions.ACTIVE}")
        cursor.execute(f"SELECT pg_relation_size('{partitions.ACTIVE}')")
        assert cursor.fetchone()[0] > 0
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        try:
            cursor.execute(
                "PREPARE by_id(uuid) AS SELECT status FROM operations_operation "
                "WHERE id = $1 AND finished_on = '9999-12-31'"
            )
            cursor.execute("EXPLAIN EXECUTE by_id(%s)", [uuid.uuid4()])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE ALL")
            cursor.execute("RESET plan_cache_mode")
    assert f"Index Scan using {partitions.ACTIVE}_pkey" in plan, plan
