"""The dashboard acts and shows history: bulk retry of the failed, cancelling
a bank's pending work, pausing a type, each asked for first, permitted by the
admin's permissions and recorded; charts drawn from the per-minute rollup;
pending work per bank; failures grouped by error, linked to their operations."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from operations import lifecycle, metrics
from operations.dashboard import selectors
from operations.lifecycle import dispatch
from operations.models import ConsoleAction, MetricsWatermark, Operation, PausedType
from tests.consoles import make, staff_user

pytestmark = pytest.mark.django_db

RETRY = "/admin/dashboard/actions/retry-failed/"
CANCEL = "/admin/dashboard/actions/cancel-pending/"
PAUSE = "/admin/dashboard/actions/pause/"
RESUME = "/admin/dashboard/actions/resume/"


def statuses(*operations: Operation) -> list[str]:
    return [Operation.objects.get(pk=o.pk).status for o in operations]


def as_user(client: Client, *permissions: str) -> Client:
    client.force_login(staff_user("operator", "operations.view_operation", *permissions))
    return client


def test_retry_failed_asks_first_then_retries_the_filtered_ones_and_is_recorded(
    client: Client, alpha: Any, beta: Any
) -> None:
    mine = [make(status="failed") for _ in range(3)]
    other_bank = make(bank="beta", status="failed")
    other_type = make(operation_type="test_sleep", status="failed")
    old = make(status="failed")
    Operation.objects.filter(pk=old.pk).update(completed_at=timezone.now() - timedelta(days=3))
    operator = as_user(client, "operations.retry_operation")
    query = {"operation_type": "test_echo", "bank_id": "alpha", "within_hours": "24"}

    asked = operator.get(RETRY, query)
    assert asked.status_code == 200
    assert re.search(r"<strong>3</strong> operations\s+match", asked.content.decode())
    assert set(statuses(*mine)) == {"failed"}  # asking changes nothing

    done = operator.post(RETRY, query, follow=True)
    assert done.redirect_chain[-1][0] == "/admin/dashboard/"
    assert set(statuses(*mine)) == {"pending"}
    assert statuses(other_bank, other_type, old) == ["failed"] * 3
    record = ConsoleAction.objects.get()
    assert (record.user, record.action, record.count) == ("operator", "retry-failed", 3)
    assert record.filters == query
    page = done.content.decode()
    assert "Retry failed operations" in page and "3 changed" in page  # the message
    assert 'id="ops-recent-actions"' in page and "retry-failed" in page


def test_cancel_pending_takes_one_banks_pending_work_only(client: Client, alpha: Any, beta: Any) -> None:
    mine = [make(), make(operation_type="test_sleep")]
    running = make(status="processing")
    theirs = make(bank="beta")
    operator = as_user(client, "operations.cancel_operation")
    asked = operator.get(CANCEL, {"bank_id": "alpha"})
    assert re.search(r"<strong>2</strong> operations\s+match", asked.content.decode())
    operator.post(CANCEL, {"bank_id": "alpha"})
    assert statuses(*mine) == ["cancelled", "cancelled"]
    assert statuses(running, theirs) == ["processing", "pending"]
    assert ConsoleAction.objects.get().count == 2


def test_pause_holds_a_types_claims_until_resumed(client: Client, alpha: Any) -> None:
    waiting = make()
    other = make(operation_type="test_sleep")
    operator = as_user(client, "operations.pause_dispatch")
    operator.post(PAUSE, {"operation_type": "test_echo"})
    assert PausedType.objects.get().paused_by == "operator"
    # The claim refuses the paused type (a message already in the broker is dropped); others run.
    assert lifecycle.operation_claim(operation_id=str(waiting.pk), worker="w@n", task_id="t") is None
    assert lifecycle.operation_claim(operation_id=str(other.pk), worker="w@n", task_id="t") is not None
    # Nothing of it is published: not by the pick, nor a retry's offer, nor the sweeper.
    Operation.objects.filter(pk=waiting.pk).update(dispatched_at=None)
    assert not dispatch.publish_next("test_echo")
    assert not dispatch.offer(waiting.pk, "test_echo")
    assert dispatch.top_up("test_echo") == 0
    assert Operation.objects.get(pk=waiting.pk).dispatched_at is None
    page = operator.get("/admin/dashboard/").content.decode()
    paused = r'data-type="test_echo">\s*<td><a [^>]*>test_echo</a> <span class="ops-badge[^"]*" title="paused by operator at '
    assert re.search(paused, page)

    assert [a.action for a in ConsoleAction.objects.all()] == ["pause"]


def test_every_action_needs_its_own_permission(client: Client, alpha: Any) -> None:
    failed = make(status="failed")
    viewer = as_user(client)  # may look at operations, may not change them
    PausedType.objects.create(operation_type="test_sleep", paused_by="someone else")
    for url, data in [
        (RETRY, {}),
        (CANCEL, {"bank_id": "alpha"}),
        (PAUSE, {"operation_type": "test_echo"}),
        (RESUME, {"operation_type": "test_sleep"}),
    ]:
        assert viewer.get(url, data).status_code == 403
        assert viewer.post(url, data).status_code == 403
    assert statuses(failed) == ["failed"] and not ConsoleAction.objects.exists()
    assert list(PausedType.objects.values_list("operation_type", flat=True)) == ["test_sleep"]
    page = viewer.get("/admin/dashboard/").content.decode()
    assert 'id="ops-actions"' not in page  # no form offered to someone who may not use it
    client.logout()
    assert client.get(RETRY).status_code == 302  # to the login


def test_bad_action_input_is_refused_naming_the_problem(client: Client, alpha: Any) -> None:
    operator = as_user(client, "operations.cancel_operation", "operations.pause_dispatch")
    missing = operator.post(CANCEL, {"bank_id": "nobody"})
    assert missing.status_code == 400 and "no bank &#x27;nobody&#x27;" in missing.content.decode()
    unknown = operator.post(PAUSE, {"operation_type": "no_such_type"})
    assert unknown.status_code == 400 and "type" in unknown.content.decode()
    assert operator.get("/admin/dashboard/actions/explode/").status_code == 404
    assert not ConsoleAction.objects.exists() and not PausedType.objects.exists()


def test_charts_are_drawn_from_the_minute_rollup(alpha: Any) -> None:
    now = timezone.now()
    MetricsWatermark.objects.create(pk=1, counted_until=now - timedelta(days=1))
    done = [make(status="completed") for _ in range(4)]
    failed = [make(status="failed") for _ in range(2)]
    for n, operation in enumerate(done + failed):
        # Two minutes ago, and three hours ago for the last completed one.
        at = now - (timedelta(hours=3) if operation == done[-1] else timedelta(minutes=2 + n % 2))
        Operation.objects.filter(pk=operation.pk).update(completed_at=at)
    metrics.roll_up_finished()
    # The table may lose its rows (retention): the charts keep what finished.
    Operation.objects.all().delete()
    hour, day = selectors.charts(now)
    assert (hour.completed, hour.failed) == (3, 2)
    # Each in its minute: two minutes ago, three minutes ago (the last bar is this minute).
    assert [(b.completed, b.failed) for b in hour.bars[-4:]] == [(1, 1), (2, 1), (0, 0), (0, 0)]
    assert (day.completed, day.failed) == (4, 2)
    assert len(hour.bars) == 60 and len(day.bars) == 24
    assert max(b.completed_percent + b.failed_percent for b in hour.bars) == 100


def test_pending_by_bank_and_failures_grouped_by_error(client: Client, alpha: Any, beta: Any) -> None:
    for _ in range(3):
        make()
    make(bank="beta")
    deadlocks = []
    for n in range(3):
        operation = make(status="processing")
        Operation.objects.filter(pk=operation.pk).update(
            status="failed", completed_at=timezone.now(), error_message=f"OperationalError: deadlock detected\nstep {n}"
        )
        deadlocks.append(operation)
    unreadable = make(status="failed")  # "boom: the extractor gave up"
    assert selectors.pending_banks() == [("alpha", 3), ("beta", 1)]
    groups = selectors.failure_groups(timezone.now())
    assert [(g.message, g.count) for g in groups] == [
        ("OperationalError: deadlock detected", 3),
        ("boom: the extractor gave up (stage: extract)", 1),
    ]
    client.force_login(staff_user("root", superuser=True))
    page = client.get("/admin/dashboard/").content.decode()
    link = re.search(r'<a href="([^"]+)">OperationalError: deadlock detected</a>', page)
    assert link, page[:2000]
    listed = client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert all(str(o.pk) in listed for o in deadlocks) and str(unreadable.pk) not in listed
