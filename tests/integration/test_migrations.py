"""Data migrations, run forwards and backwards on the real database."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from operations import registry

BEFORE = [("operations", "0003_dispatch_window_indexes")]
AFTER = [("operations", "0004_unambiguous_keys")]


def _latest() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


def _migrate(targets: list[tuple[str, str | None]]) -> Any:
    """Move the apps named in `targets` there (None: before their first; the
    others stay where they are, less what depends on a migration undone);
    returns the models as the applied migrations make them."""
    MigrationExecutor(connection).migrate(targets)
    loader = MigrationExecutor(connection).loader  # read what is applied now
    return loader.project_state(list(loader.applied_migrations)).apps


@pytest.fixture
def back_to_latest() -> Any:
    """Whatever the test does, later tests find every migration applied."""
    yield
    MigrationExecutor(connection).migrate(_latest())


@pytest.mark.django_db(transaction=True)
def test_stored_keys_are_rewritten_unambiguously_and_back(back_to_latest: None) -> None:
    apps = _migrate(BEFORE)
    Bank = apps.get_model("banks", "Bank")
    Operation = apps.get_model("operations", "Operation")
    Bank.objects.create(bank_id="x")
    Bank.objects.create(bank_id="x:y")
    # Bank x with document y:z and bank x:y with document z: one old key (the bug).
    rows = {"plain": ("x", "retain:x:y:z"), "colon": ("x:y", "retain:x:y:z"), "none": ("x:y", None)}
    ids = {}
    for name, (bank, serial) in rows.items():
        ids[name] = uuid.uuid4()
        Operation.objects.create(
            id=ids[name], bank_id=bank, operation_type="retain", status="completed", serial_key=serial
        )

    apps = _migrate(AFTER)
    Operation = apps.get_model("operations", "Operation")
    retain = registry.get("retain")
    keys = dict(Operation.objects.values_list("id", "serial_key"))
    assert (
        keys[ids["plain"]]
        == retain.key_for(registry.Scope.DOCUMENT, bank_id="x", document_id="y:z", mental_model_id=None)
        == "retain:x:y:z"
    )
    assert (
        keys[ids["colon"]]
        == retain.key_for(registry.Scope.DOCUMENT, bank_id="x:y", document_id="z", mental_model_id=None)
        == "retain:x%3Ay:z"
    )
    assert keys[ids["none"]] is None

    apps = _migrate(BEFORE)
    Operation = apps.get_model("operations", "Operation")
    assert Operation.objects.get(pk=ids["colon"]).serial_key == "retain:x:y:z"


@pytest.mark.django_db(transaction=True)
def test_observations_built_before_sources_were_recorded_are_flagged_for_a_rebuild(back_to_latest: None) -> None:
    apps = _migrate([("banks", "0003_bank_profile")])
    Bank = apps.get_model("banks", "Bank")
    Entity = apps.get_model("banks", "Entity")
    Observation = apps.get_model("banks", "Observation")
    bank = Bank.objects.create(bank_id="old")
    entity = Entity.objects.create(bank=bank, name="ada", display_name="Ada")
    Observation.objects.create(bank=bank, entity=entity, text="Ada: wrote notes.", unit_count=1)

    apps = _migrate([("banks", "0004_observation_sources_and_refresh_schedules")])
    Observation = apps.get_model("banks", "Observation")
    assert list(Observation.objects.values_list("text", "needs_rebuild")) == [("Ada: wrote notes.", True)]
    # New observations are not stale.
    Entity = apps.get_model("banks", "Entity")
    fresh = Entity.objects.create(bank_id="old", name="bob", display_name="Bob")
    assert not Observation.objects.create(bank_id="old", entity=fresh, text="Bob: new.").needs_rebuild


@pytest.mark.django_db(transaction=True)
def test_banks_and_keys_move_to_tenancy_with_their_rows_and_permissions(back_to_latest: None) -> None:
    apps = _migrate([("tenancy", None)])  # before the move: both models are the banks app's
    Bank = apps.get_model("banks", "Bank")
    ApiKey = apps.get_model("banks", "ApiKey")
    Operation = apps.get_model("operations", "Operation")
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Bank.objects.create(bank_id="kept", name="Kept")
    ApiKey.objects.create(name="ci", prefix="ops_abc", key_hash="f" * 64, bank_ids=["kept"])
    Operation.objects.create(id=uuid.uuid4(), bank_id="kept", operation_type="retain", status="completed")
    bank_type, _ = ContentType.objects.get_or_create(app_label="banks", model="bank")
    Permission.objects.get_or_create(content_type=bank_type, codename="view_bank", defaults={"name": "Can view bank"})

    apps = _migrate(_latest())
    Bank = apps.get_model("tenancy", "Bank")
    assert Bank.objects.get(bank_id="kept").name == "Kept"
    assert apps.get_model("tenancy", "ApiKey").objects.get(name="ci").bank_ids == ["kept"]
    assert apps.get_model("operations", "Operation").objects.get(bank_id="kept").bank.name == "Kept"
    moved = apps.get_model("contenttypes", "ContentType").objects.get(pk=bank_type.pk)
    assert (moved.app_label, moved.model) == ("tenancy", "bank")
    # The same permission row, now tenancy's: groups that had it keep it.
    assert apps.get_model("auth", "Permission").objects.filter(content_type=moved, codename="view_bank").exists()


@pytest.mark.django_db(transaction=True)
def test_the_operations_table_is_partitioned_keeping_its_rows_and_back(back_to_latest: None) -> None:
    """0010-0011: every row kept, each in its partition on PostgreSQL (one
    table on SQLite), with its day; backwards, one plain table again."""
    apps = _migrate(
        [("operations", "0009_console_actions_pauses_and_minutes"), ("banks", "0009_bank_and_keys_to_tenancy")]
    )
    Operation = apps.get_model("operations", "Operation")
    apps.get_model("tenancy", "Bank").objects.create(bank_id="kept")
    finished_at = datetime(2026, 3, 4, 23, 30, tzinfo=UTC)
    ids = {name: uuid.uuid4() for name in ("pending", "running", "done", "parent", "child")}
    made = {
        "pending": {"status": "pending"},
        "running": {"status": "processing", "serial_key": "retain:kept:d"},
        "done": {"status": "completed", "completed_at": finished_at},
        "parent": {"status": "failed", "completed_at": finished_at, "operation_type": "retain_batch"},
        "child": {"status": "failed", "completed_at": finished_at, "parent_id": ids["parent"]},
    }
    for name, fields in made.items():
        Operation.objects.create(
            id=ids[name], bank_id="kept", **{"operation_type": "retain", **fields}, task_payload={"n": name}
        )
    apps.get_model("banks", "StoredFile").objects.create(
        operation_id=ids["done"], filename="a.txt", size=1, sha256="0" * 64, data=b"a"
    )

    apps = _migrate(_latest())
    Operation = apps.get_model("operations", "Operation")
    rows = {row["id"]: row for row in Operation.objects.values("id", "status", "finished_on", "task_payload")}
    assert {row["task_payload"]["n"]: row["status"] for row in rows.values()} == {
        name: fields["status"] for name, fields in made.items()
    }
    assert rows[ids["pending"]]["finished_on"] == rows[ids["running"]]["finished_on"] == date.max
    assert rows[ids["done"]]["finished_on"] == date(2026, 3, 4)  # the UTC day it finished
    assert Operation.objects.get(pk=ids["child"]).parent_id == ids["parent"]
    assert apps.get_model("banks", "StoredFile").objects.get(operation_id=ids["done"]).filename == "a.txt"
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, tableoid::regclass::text FROM operations_operation")
            where = dict(cursor.fetchall())
        assert where[ids["pending"]] == where[ids["running"]] == "operations_operation_active"
        assert where[ids["done"]] == where[ids["child"]] == "operations_operation_history"

    apps = _migrate([("operations", "0009_console_actions_pauses_and_minutes")])
    Operation = apps.get_model("operations", "Operation")
    assert set(Operation.objects.values_list("id", flat=True)) == set(ids.values())
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_partitioned_table")
            assert cursor.fetchone()[0] == 0


def _memory_indexes() -> set[str]:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'banks_%'")
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE 'banks_%'")
        return {name for (name,) in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_the_redundant_memory_indexes_go_without_a_lock_and_come_back(back_to_latest: None) -> None:
    redundant = {
        "banks_link_bank",
        "banks_memoryunit_bank_id_4688fbfc",
        "banks_document_bank_id_cdd18a46",
        "banks_entity_bank_id_acb5f5a5",
        "banks_unitentity_entity_id_cfcf935b",
        "banks_unitentity_unit_id_36ffce80",
    }
    _migrate([("banks", "0010_stored_file_without_db_constraint")])
    assert redundant <= _memory_indexes()
    _migrate([("banks", "0011_leaner_memory_indexes")])
    left = _memory_indexes()
    assert not (redundant | {f"{name}_like" for name in redundant}) & left
    # What planning and deletes read is still there.
    assert {"banks_unit_time", "banks_unit_recent", "banks_entity_recent_units", "banks_unit_entity_unique"} <= left
