"""Refresh schedules of mental models: set, changed and cleared through the API
(Hindsight's trigger), and the due runs beat claims, each exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from banks import scheduler
from banks.models import MentalModel
from banks.schedules import next_cron_run
from operations.models import Operation

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def create(caller: Any, **fields: Any) -> Any:
    return caller.post("banks/alpha/mental-models", {"name": "Pumps", "source_query": "pump", **fields})


def parsed(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# --- the API ---------------------------------------------------------------------------------------


def test_create_with_a_cron_schedule_reports_the_next_run(alpha: Any, admin: Any) -> None:
    before = timezone.now()
    response = create(
        admin,
        trigger={
            "refresh_cron": " 0  3 * * * ",
            "mode": "full",
            "refresh_after_consolidation": False,
            "keep_trace": False,
        },
    )
    after = timezone.now()
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["trigger"] == {
        "mode": "full",
        "refresh_after_consolidation": False,
        "refresh_cron": "0 3 * * *",
        "refresh_interval_seconds": None,
        "min_refresh_interval_seconds": None,
    }
    assert parsed(body["next_refresh_at"]) in {next_cron_run("0 3 * * *", before), next_cron_run("0 3 * * *", after)}
    assert admin.get(f"banks/alpha/mental-models/{body['id']}").json()["next_refresh_at"] == body["next_refresh_at"]


def test_create_with_an_interval_schedule(alpha: Any, admin: Any) -> None:
    before = timezone.now()
    body = create(admin, trigger={"refresh_interval_seconds": 600, "min_refresh_interval_seconds": 60}).json()
    after = timezone.now()
    assert body["trigger"]["refresh_interval_seconds"] == 600 and body["trigger"]["refresh_cron"] is None
    assert body["trigger"]["min_refresh_interval_seconds"] == 60
    assert before + timedelta(seconds=600) <= parsed(body["next_refresh_at"]) <= after + timedelta(seconds=600)


def test_create_without_a_schedule(alpha: Any, admin: Any) -> None:
    for trigger in (None, {}, {"refresh_cron": None}, {"refresh_cron": ""}, {"refresh_after_consolidation": True}):
        body = create(admin, trigger=trigger).json()
        assert body["next_refresh_at"] is None and body["trigger"]["refresh_cron"] is None


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        ({"refresh_cron": "61 * * * *"}, "trigger.refresh_cron"),
        ({"refresh_cron": "0 0 30 2 *"}, "trigger.refresh_cron"),
        ({"refresh_cron": "0 0 * * * *"}, "trigger.refresh_cron"),
        ({"refresh_cron": 5}, "trigger.refresh_cron"),
        ({"refresh_cron": "@daily", "refresh_interval_seconds": 60}, "trigger.refresh_cron"),
        ({"refresh_interval_seconds": 0}, "trigger.refresh_interval_seconds"),
        ({"refresh_interval_seconds": "often"}, "trigger.refresh_interval_seconds"),
        ({"refresh_interval_seconds": 10**9}, "trigger.refresh_interval_seconds"),
        ({"min_refresh_interval_seconds": -1}, "trigger.min_refresh_interval_seconds"),
        ("every day", "trigger"),
        ([{"refresh_cron": "@daily"}], "trigger"),
    ],
)
def test_a_bad_schedule_is_a_400_naming_the_field_and_writes_nothing(
    alpha: Any, admin: Any, trigger: Any, field: str
) -> None:
    response = create(admin, trigger=trigger)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()
    if trigger == {"refresh_cron": "61 * * * *"}:
        assert "not a valid cron expression" in response.json()["errors"][field][0]
    assert not MentalModel.objects.exists() and not Operation.objects.exists()


def test_patch_changes_and_clears_the_schedule(alpha: Any, admin: Any) -> None:
    model_id = create(admin).json()["id"]
    url = f"banks/alpha/mental-models/{model_id}"

    cron = admin.patch(url, {"trigger": {"refresh_cron": "*/5 * * * *"}})
    assert cron.status_code == 200, cron.content
    assert cron.json()["trigger"]["refresh_cron"] == "*/5 * * * *" and cron.json()["next_refresh_at"]
    next_run = cron.json()["next_refresh_at"]

    # Other fields, or the same trigger sent back (as a client that read it does): the next run stays.
    renamed = admin.patch(url, {"name": "Pump health", "max_tokens": 300, "trigger": cron.json()["trigger"]}).json()
    assert renamed["name"] == "Pump health" and renamed["max_tokens"] == 300
    assert renamed["next_refresh_at"] == next_run and renamed["source_query"] == "pump"
    assert admin.patch(url, {"trigger": {"min_refresh_interval_seconds": 900}}).json()["next_refresh_at"] == next_run

    # An interval replaces the cron expression (a schedule is one or the other).
    interval = admin.patch(url, {"trigger": {"refresh_interval_seconds": 3600}}).json()
    assert interval["trigger"] == {
        "mode": "full",
        "refresh_after_consolidation": False,
        "refresh_cron": None,
        "refresh_interval_seconds": 3600,
        "min_refresh_interval_seconds": 900,
    }
    assert interval["next_refresh_at"] != next_run

    cleared = admin.patch(url, {"trigger": {"refresh_interval_seconds": None}}).json()
    assert cleared["next_refresh_at"] is None and cleared["trigger"]["refresh_interval_seconds"] is None
    assert MentalModel.objects.get(pk=model_id).next_refresh_at is None


def test_a_bad_patch_is_a_400_and_changes_nothing(alpha: Any, admin: Any) -> None:
    model_id = create(admin, trigger={"refresh_cron": "@hourly"}).json()["id"]
    url = f"banks/alpha/mental-models/{model_id}"
    before = admin.get(url).json()
    for body, field in [
        ({"name": "New", "trigger": {"refresh_cron": "every hour"}}, "trigger.refresh_cron"),
        ({"name": "New", "max_tokens": 1}, "max_tokens"),
        ({"name": ""}, "name"),
        ({"tags": "x"}, "tags"),
        ({"trigger": {"refresh_interval_seconds": 60, "refresh_cron": "@daily"}}, "trigger.refresh_cron"),
    ]:
        response = admin.patch(url, body)
        assert response.status_code == 400 and field in response.json()["errors"], response.content
    assert admin.get(url).json() == before
    assert admin.patch("banks/alpha/mental-models/00000000-0000-0000-0000-000000000000", {}).status_code == 404
    assert admin.patch("banks/alpha/mental-models/nope", {}).status_code == 400


def test_patch_is_scoped_to_the_keys_banks(alpha: Any, beta: Any, admin: Any, charlie: Any) -> None:
    model_id = create(admin).json()["id"]
    assert charlie.patch(f"banks/alpha/mental-models/{model_id}", {"name": "Mine"}).status_code == 404
    assert admin.patch(f"banks/beta/mental-models/{model_id}", {"name": "Mine"}).status_code == 404
    assert MentalModel.objects.get(pk=model_id).name == "Pumps"


# --- beat's side: claiming due runs ----------------------------------------------------------------


def scheduled(every: int = 60, due_in: float = 0.0) -> MentalModel:
    model = MentalModel.objects.create(bank_id="alpha", name="m", source_query="q", refresh_interval_seconds=every)
    MentalModel.objects.filter(pk=model.pk).update(next_refresh_at=timezone.now() + timedelta(seconds=due_in))
    model.refresh_from_db()
    return model


def test_a_due_run_is_queued_once_and_the_next_one_set(alpha: Any) -> None:
    model = scheduled(every=60)
    later = scheduled(every=60, due_in=3600)
    due = model.next_refresh_at
    now = due + timedelta(seconds=5)
    assert scheduler.refreshes_queue_due(now=now) == 1
    refresh = Operation.objects.get(operation_type="refresh_mental_model")
    assert refresh.mental_model_id == str(model.pk) and refresh.status == "pending"
    assert refresh.task_payload == {"scheduled_for": due.isoformat()}
    model.refresh_from_db()
    assert model.next_refresh_at == due + timedelta(seconds=60)
    # Asking again for the same moment finds nothing due; the other model was never due.
    assert scheduler.refreshes_queue_due(now=now) == 0
    assert Operation.objects.count() == 1
    later.refresh_from_db()
    assert later.next_refresh_at > now


def test_a_pending_refresh_stands_for_the_scheduled_run(alpha: Any, admin: Any) -> None:
    model = scheduled(every=60)
    manual = admin.post(f"banks/alpha/mental-models/{model.pk}/refresh").json()["operation_id"]
    assert scheduler.refreshes_queue_due(now=model.next_refresh_at) == 1
    assert [str(pk) for pk in Operation.objects.values_list("pk", flat=True)] == [manual]
    model.refresh_from_db()
    assert model.next_refresh_at > timezone.now()


def test_a_claim_fails_once_the_run_was_claimed_or_the_schedule_changed(alpha: Any, admin: Any) -> None:
    model = scheduled(every=60)
    run = scheduler.due_runs(now=model.next_refresh_at)[0]
    admin.patch(f"banks/alpha/mental-models/{model.pk}", {"trigger": {"refresh_interval_seconds": 120}})
    assert scheduler.run_claim(run, now=model.next_refresh_at) is False
    fresh = scheduler.due_runs(now=timezone.now() + timedelta(seconds=121))[0]
    assert scheduler.run_claim(fresh, now=fresh.due) is True
    assert scheduler.run_claim(fresh, now=fresh.due) is False
