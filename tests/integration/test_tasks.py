"""The unified task view, GET /tasks: every operation the caller can see, with
Vectorize's status codes, newest first, paged in the database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from operations.models import Operation
from tests.conftest import Caller
from tests.integration.test_api import make

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def tasks(caller: Caller, **query: Any) -> Any:
    # /tasks lives at the service root, not under /v1/default/.
    return caller.client.get("/tasks", query)


def test_every_status_has_its_code_and_the_shape_is_the_guides(admin: Caller, alpha: Any) -> None:
    made = {
        code: make(status=status, tag=f"t-{code}")
        for code, status in [
            ("Q", "pending"),
            ("R", "processing"),
            ("D", "completed"),
            ("F", "failed"),
            ("C", "cancelled"),
        ]
    }
    response = tasks(admin)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list) and [t["id"] for t in body] == [str(made[c].pk) for c in "CFDRQ"]
    by_id = {t["id"]: t for t in body}
    for code, operation in made.items():
        task = by_id[str(operation.pk)]
        assert set(task) == {"id", "task_type", "task_status", "tag", "created_at", "end_date"}
        assert task["task_status"] == code and task["task_type"] == "test_echo" and task["tag"] == f"t-{code}"
        assert (task["end_date"] is None) == (code in "QR")
    assert by_id[str(made["D"].pk)]["end_date"].startswith(str(made["D"].completed_at.date()))


def test_filters_repeat_and_the_window_defaults_to_an_hour(admin: Caller, alpha: Any) -> None:
    echo = make(status="failed")
    sleep = make(operation_type="test_sleep", status="cancelled", tag="nightly")
    old = make(status="failed")
    Operation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    make(status="completed")

    def ids(**query: Any) -> set[str]:
        response = tasks(admin, **query)
        assert response.status_code == 200, response.json()
        return {t["id"] for t in response.json()}

    assert ids(status=["F", "C"]) == {str(echo.pk), str(sleep.pk)}
    assert ids(status="F", within_hours=3) == {str(echo.pk), str(old.pk)}
    assert ids(task_type=["test_sleep", "test_flaky"]) == {str(sleep.pk)}
    assert ids(tag="nightly") == {str(sleep.pk)}
    assert ids(task_type="test_echo", status="C") == set()


def test_paging_is_done_by_the_database(admin: Caller, alpha: Any) -> None:
    made = [make() for _ in range(7)]
    newest_first = [str(o.pk) for o in reversed(made)]
    pages = []
    for offset in range(0, 7, 3):
        with CaptureQueriesContext(connection) as queries:
            page = tasks(admin, limit=3, offset=offset).json()
        pages += [t["id"] for t in page]
        listing = [q["sql"] for q in queries.captured_queries if 'FROM "operations_operation"' in q["sql"]]
        assert len(listing) == 1 and "LIMIT 3" in listing[0]
    assert pages == newest_first


def test_a_scoped_key_sees_only_its_banks(admin: Caller, alice: Caller, charlie: Caller, alpha: Any, beta: Any) -> None:
    mine, theirs = make("alpha"), make("beta")
    assert [t["id"] for t in tasks(alice).json()] == [str(mine.pk)]
    assert tasks(charlie).json() == []
    assert {t["id"] for t in tasks(admin).json()} == {str(mine.pk), str(theirs.pk)}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "X"}, "status"),
        ({"status": "pending"}, "status"),
        ({"task_type": "no_such_type"}, "task_type"),
        ({"within_hours": "0"}, "within_hours"),
        ({"within_hours": "1.5"}, "within_hours"),
        ({"limit": "101"}, "limit"),
        ({"offset": "-1"}, "offset"),
    ],
)
def test_bad_values_are_400_naming_the_parameter(admin: Caller, query: dict[str, str], field: str) -> None:
    response = tasks(admin, **query)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [name.split(".")[0] for name in errors] == [field] and field in response.json()["detail"]


def test_no_key_is_401(db: None) -> None:
    response = APIClient().get("/tasks")
    assert response.status_code == 401 and "detail" in response.json()


def test_a_wrong_status_code_is_answered_with_the_valid_ones(admin: Caller) -> None:
    response = tasks(admin, status="cancelled")
    assert response.status_code == 400
    (message,) = response.json()["errors"]["status.0"]
    assert message == (
        '"cancelled" is not one of: Q (pending), R (processing), D (completed), F (failed), C (cancelled)'
    )
