"""The admin console, through Django's test client on PostgreSQL: what the
operations list shows and finds, the lifecycle actions and who may use them,
the admin log, banks, API keys, mental models, and what stays hidden."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.test import Client

from banks.models import MentalModel
from operations.models import Operation
from tenancy.api_keys import api_key_authenticate
from tenancy.models import ApiKey
from tests.consoles import make, staff_user

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/operations/operation/"


def change_url(operation: Operation) -> str:
    return f"{CHANGELIST}{operation.pk}/change/"


@pytest.fixture
def root(client: Client) -> Client:
    client.force_login(staff_user("root", superuser=True))
    return client


def as_user(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shown_ids(response: Any) -> set[str]:
    """Operation ids of the list's rows (each row's checkbox holds its id)."""
    html = response.content.decode()
    marker = 'name="_selected_action" value="'
    return {chunk.split('"', 1)[0] for chunk in html.split(marker)[1:]}


def act(client: Client, action: str, *operations: Operation, url: str = CHANGELIST) -> list[str]:
    """Run a list action on the operations; the messages shown after it."""
    response = client.post(
        url, {"action": action, "_selected_action": [str(o.pk) for o in operations], "index": 0}, follow=True
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def status(operation: Operation) -> str:
    return Operation.objects.get(pk=operation.pk).status


# --- the list -----------------------------------------------------------------------------


def test_list_shows_badges_progress_short_ids_and_no_add(root: Client, alpha: Any) -> None:
    running = make(status="processing", progress={"stage": "extract", "processed": 3, "total": 10})
    failed = make(status="failed")
    response = root.get(CHANGELIST)
    html = response.content.decode()
    assert response.status_code == 200
    assert shown_ids(response) == {str(running.pk), str(failed.pk)}
    assert 'class="ops-badge ops-processing"' in html and 'class="ops-badge ops-failed"' in html
    assert 'data-percent="30"' in html and "3/10" in html
    assert str(running.pk).replace("-", "")[:8] in html
    # No "add", and the add view itself is refused; no bulk delete that bypasses the service.
    assert "/admin/operations/operation/add/" not in html
    assert root.get(f"{CHANGELIST}add/").status_code == 403
    assert 'value="delete_selected"' not in html
    assert 'value="cancel_operations"' in html and 'value="retry_operations"' in html


def test_list_filters_by_status_type_bank_and_date(root: Client, alpha: Any, beta: Any) -> None:
    pending = make()
    failed = make(status="failed")
    other_type = make(operation_type="test_sleep")
    other_bank = make(bank="beta")
    assert shown_ids(root.get(CHANGELIST, {"status__exact": "failed"})) == {str(failed.pk)}
    assert shown_ids(root.get(CHANGELIST, {"operation_type": "test_sleep"})) == {str(other_type.pk)}
    assert shown_ids(root.get(CHANGELIST, {"bank__bank_id__exact": "beta"})) == {str(other_bank.pk)}
    long_ago = {"created_at__gte": "2000-01-01 00:00:00+00:00", "created_at__lt": "2000-01-02 00:00:00+00:00"}
    assert shown_ids(root.get(CHANGELIST, long_ago)) == set()
    everything = shown_ids(root.get(CHANGELIST))
    assert everything == {str(o.pk) for o in (pending, failed, other_type, other_bank)}


def test_search_by_id_short_id_document_tag_and_filename(root: Client, alpha: Any) -> None:
    by_document = make(document_id="doc-42")
    by_tag = make(tag="nightly")
    by_file = make(filename="quarterly-report.pdf")
    assert shown_ids(root.get(CHANGELIST, {"q": str(by_tag.pk)})) == {str(by_tag.pk)}
    assert shown_ids(root.get(CHANGELIST, {"q": str(by_tag.pk)[:8]})) == {str(by_tag.pk)}
    assert shown_ids(root.get(CHANGELIST, {"q": "doc-42"})) == {str(by_document.pk)}
    assert shown_ids(root.get(CHANGELIST, {"q": "nightly"})) == {str(by_tag.pk)}
    assert shown_ids(root.get(CHANGELIST, {"q": "quarterly"})) == {str(by_file.pk)}
    # Nonsense is no match, never an error.
    response = root.get(CHANGELIST, {"q": "zz-no-such-thing-\x7f"})
    assert response.status_code == 200 and shown_ids(response) == set()


def test_detail_is_read_only_with_pretty_data_parent_link_and_children(root: Client, alpha: Any) -> None:
    parent = make(operation_type="test_batch")
    children = [make(parent_id=parent.pk, payload={"n": i, "text": "<b>not html</b>"}) for i in range(3)]
    make(status="failed")  # a neighbour that must not show up below
    html = root.get(change_url(parent)).content.decode()
    assert "View operation" in html and 'name="_save"' not in html  # read-only: nothing to save
    for child in children:
        assert f"/admin/operations/operation/{child.pk}/change/" in html  # the children inline
    assert f"?parent={parent.pk}" in html  # "list them all"
    child_html = root.get(change_url(children[0])).content.decode()
    assert f"/admin/operations/operation/{parent.pk}/change/" in child_html  # the parent link
    assert '<pre class="ops-json">{\n  &quot;n&quot;: 0,' in child_html  # indented, escaped JSON
    assert "<b>not html</b>" not in child_html
    assert shown_ids(root.get(CHANGELIST, {"parent": str(parent.pk)})) == {str(c.pk) for c in children}


def test_detail_shows_the_error_history(root: Client, alpha: Any) -> None:
    failed = make(status="failed")
    html = root.get(change_url(failed)).content.decode()
    assert "boom: the extractor gave up (stage: extract)" in html
    assert "&quot;attempt&quot;: 0" in html  # error_history, pretty-printed


def test_a_failed_operation_shows_its_error_first_and_times_to_the_second(root: Client, alpha: Any) -> None:
    failed = make(status="failed")
    done = make(status="completed")
    html = root.get(change_url(failed)).content.decode()
    error = html.index("boom: the extractor gave up (stage: extract)")
    assert error < html.index(">Progress<") and error < html.index(">Timing<")  # its own fieldset, first
    assert html.count("field-error") == 1  # and not again under Data
    completed = Operation.objects.get(pk=done.pk).completed_at
    done_html = root.get(change_url(done)).content.decode()
    assert completed is not None and completed.strftime("%Y-%m-%d %H:%M:%S") in done_html
    assert done_html.index(">Progress<") < done_html.index(">Data<")  # the usual order otherwise
    # The failed list shows each one's error; the others keep their columns.
    failed_list = root.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    assert 'class="ops-error-brief" title="boom: the extractor gave up' in failed_list
    assert "ops-error-brief" not in root.get(CHANGELIST).content.decode()


# --- actions through the lifecycle service ------------------------------------------------


def test_cancel_action_reports_changed_and_refused_and_logs(root: Client, alpha: Any) -> None:
    pending = [make(), make()]
    running = make(status="processing")
    done = make(status="completed")
    messages = act(root, "cancel_operations", *pending, running, done)
    assert messages == [
        "Cancelled 2 operations; requested cancel of 1 running operation (they stop at their next checkpoint). "
        "1 refused: cannot cancel an operation that is completed (1)."
    ]
    assert [status(o) for o in pending] == ["cancelled", "cancelled"]
    assert Operation.objects.get(pk=running.pk).cancel_requested_at is not None
    assert status(done) == "completed"
    entries = LogEntry.objects.filter(action_flag=CHANGE).order_by("id")
    assert sorted(e.object_id for e in entries) == sorted(str(o.pk) for o in (*pending, running))
    assert {e.change_message for e in entries} == {
        "Cancelled from the admin console (it was pending)",
        "Cancel requested from the admin console (it was processing)",
    }
    assert {e.user.username for e in entries} == {"root"}


def test_retry_action_requeues_failed_and_refuses_the_rest(root: Client, alpha: Any) -> None:
    failed = make(status="failed")
    cancelled = make(status="cancelled")
    pending = make()
    messages = act(root, "retry_operations", failed, cancelled, pending)
    assert messages == ["Queued 2 operations again. 1 refused: cannot retry an operation that is pending (1)."]
    assert status(failed) == "pending" and status(cancelled) == "pending"
    assert LogEntry.objects.filter(action_flag=CHANGE).count() == 2


def test_delete_action_deletes_finished_ones_only(root: Client, alpha: Any) -> None:
    done = make(status="completed")
    pending = make()
    messages = act(root, "delete_terminal_operations", done, pending)
    assert messages == ["Deleted 1 finished operation. 1 refused: cannot delete an operation that is pending (1)."]
    assert not Operation.objects.filter(pk=done.pk).exists()
    assert status(pending) == "pending"
    entry = LogEntry.objects.get(action_flag=DELETION)
    assert entry.object_id == str(done.pk)


def test_nothing_changed_is_a_warning(root: Client, alpha: Any) -> None:
    done = make(status="completed")
    response = root.post(
        CHANGELIST, {"action": "cancel_operations", "_selected_action": [str(done.pk)], "index": 0}, follow=True
    )
    (message,) = list(response.context["messages"])
    assert message.level_tag == "warning"
    assert str(message) == "No operation was cancelled. 1 refused: cannot cancel an operation that is completed (1)."


def test_detail_page_buttons_run_the_same_actions(root: Client, alpha: Any) -> None:
    pending = make()
    html = root.get(change_url(pending)).content.decode()
    assert f"{pending.pk}/transition/cancel/" in html and "/transition/retry/" not in html
    response = root.post(f"{CHANGELIST}{pending.pk}/transition/cancel/", follow=True)
    assert response.redirect_chain[-1][0] == change_url(pending)
    assert status(pending) == "cancelled"
    assert "/transition/retry/" in response.content.decode()
    assert root.get(f"{CHANGELIST}{pending.pk}/transition/retry/").status_code == 403  # POST only
    root.post(f"{CHANGELIST}{pending.pk}/transition/retry/")
    assert status(pending) == "pending"


def test_delete_view_of_a_finished_operation_uses_the_service(root: Client, alpha: Any) -> None:
    running = make(status="processing")
    assert root.get(f"{CHANGELIST}{running.pk}/delete/").status_code == 403
    done = make(status="failed")
    response = root.post(f"{CHANGELIST}{done.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert not Operation.objects.filter(pk=done.pk).exists()


# --- permissions ------------------------------------------------------------------------------


def test_a_viewer_sees_but_cannot_cancel_or_retry(alpha: Any) -> None:
    viewer = as_user(staff_user("viewer", "operations.view_operation"))
    pending = make()
    response = viewer.get(CHANGELIST)
    assert response.status_code == 200 and shown_ids(response) == set()  # no action: no checkboxes
    assert 'value="cancel_operations"' not in response.content.decode()
    assert act(viewer, "cancel_operations", pending) == []  # not even looked at
    assert status(pending) == "pending"
    assert viewer.post(f"{CHANGELIST}{pending.pk}/transition/cancel/").status_code == 403
    assert status(pending) == "pending"
    assert not LogEntry.objects.exists()


def test_cancel_permission_allows_cancel_but_not_retry(alpha: Any) -> None:
    canceller = as_user(staff_user("canceller", "operations.view_operation", "operations.cancel_operation"))
    pending = make()
    failed = make(status="failed")
    html = canceller.get(CHANGELIST).content.decode()
    assert 'value="cancel_operations"' in html and 'value="retry_operations"' not in html
    assert 'value="delete_terminal_operations"' not in html
    assert act(canceller, "cancel_operations", pending) == ["Cancelled 1 operation."]
    assert act(canceller, "retry_operations", failed) == ["No action selected."]
    assert status(failed) == "failed"


def test_non_staff_and_anonymous_are_sent_to_the_login(client: Client, alpha: Any) -> None:
    from django.contrib.auth import get_user_model

    assert client.get(CHANGELIST).status_code == 302
    assert client.get("/admin/dashboard/").status_code == 302
    client.force_login(get_user_model().objects.create_user("outsider", password="x"))
    assert client.get("/admin/dashboard/")["Location"].startswith("/admin/login/")
    assert client.get("/admin/dashboard/panels/").status_code == 302


# --- the rest of the console ---------------------------------------------------------------


def test_celery_results_stay_out_of_the_way_until_they_hold_something(root: Client) -> None:
    from django_celery_results.models import TaskResult

    html = root.get("/admin/").content.decode()
    assert "Group results" not in html and "Task results" not in html
    assert "/admin/dashboard/" in html  # the live dashboard, linked from the index
    TaskResult.objects.create(task_id="escaped", status="FAILURE", result='"boom"')
    assert "Task results" in root.get("/admin/").content.decode()
    assert root.get("/admin/django_celery_results/groupresult/").status_code == 404


def test_banks_show_their_operation_counts(root: Client, alpha: Any, beta: Any) -> None:
    make(), make(), make(status="failed"), make(bank="beta", status="processing")
    html = root.get("/admin/tenancy/bank/").content.decode()
    assert '<a href="/admin/operations/operation/?bank__bank_id__exact=alpha">3</a>' in html
    assert '<a href="/admin/operations/operation/?bank__bank_id__exact=alpha&amp;status__exact=pending">2</a>' in html
    assert '<a href="/admin/operations/operation/?bank__bank_id__exact=alpha&amp;status__exact=failed">1</a>' in html
    assert '<a href="/admin/operations/operation/?bank__bank_id__exact=beta&amp;status__exact=processing">1</a>' in html
    detail = root.get("/admin/tenancy/bank/alpha/change/").content.decode()
    assert "2 pending</a>" in detail and "1 failed</a>" in detail


def test_a_busy_banks_total_is_capped(root: Client, alpha: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from banks import admin as bank_admin

    monkeypatch.setattr(bank_admin, "COUNT_CAP", 2)
    make(), make(), make()
    html = root.get("/admin/tenancy/bank/").content.decode()
    assert '<a href="/admin/operations/operation/?bank__bank_id__exact=alpha">2+</a>' in html


def test_creating_an_api_key_shows_it_once_and_revoke_stops_it(root: Client) -> None:
    response = root.post("/admin/tenancy/apikey/add/", {"name": "ci", "bank_ids_text": "alpha, beta"})
    assert response.status_code == 200
    html = response.content.decode()
    raw = html.split('id="new-api-key"', 1)[1].split(">", 1)[1].split("<", 1)[0]
    key = ApiKey.objects.get(name="ci")
    assert raw.startswith("ops_") and raw not in str(key.__dict__)  # only the hash is stored
    assert key.bank_ids == ["alpha", "beta"] and not key.is_admin
    authenticated = api_key_authenticate(raw)
    assert authenticated is not None and authenticated.pk == key.pk
    assert raw not in root.get(f"/admin/tenancy/apikey/{key.pk}/change/").content.decode()
    assert raw not in root.get("/admin/tenancy/apikey/").content.decode()
    # Revoking: the key stops working at once, and the admin log says who did it.
    response = root.post(
        "/admin/tenancy/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk], "index": 0}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == ["Revoked 1 key."]
    assert api_key_authenticate(raw) is None
    assert LogEntry.objects.filter(object_id=str(key.pk), change_message="Revoked from the admin console").exists()


def test_an_api_key_must_reach_something(root: Client) -> None:
    response = root.post("/admin/tenancy/apikey/add/", {"name": "nothing", "bank_ids_text": ""})
    assert response.status_code == 200 and "Name at least one bank" in response.content.decode()
    response = root.post("/admin/tenancy/apikey/add/", {"name": "bad", "bank_ids_text": "no/slashes"})
    assert "no/slashes" in response.content.decode()
    assert not ApiKey.objects.exists()
    admin_key = root.post("/admin/tenancy/apikey/add/", {"name": "all", "is_admin": "on"})
    assert 'id="new-api-key"' in admin_key.content.decode()
    assert ApiKey.objects.get(name="all").is_admin


def test_mental_models_refresh_action_queues_one_operation(root: Client, alpha: Any) -> None:
    model = MentalModel.objects.create(bank=alpha, name="team", source_query="who works here")
    url = "/admin/banks/mentalmodel/"
    body = {"action": "refresh_models", "_selected_action": [str(model.pk)], "index": 0}
    first = root.post(url, body, follow=True)
    assert [str(m) for m in first.context["messages"]] == ["Queued 1 refresh."]
    again = root.post(url, body, follow=True)
    assert [str(m) for m in again.context["messages"]] == ["Queued 0 refreshes. 1 already had one pending."]
    assert Operation.objects.filter(operation_type="refresh_mental_model", mental_model_id=str(model.pk)).count() == 1


def test_unknown_ids_in_admin_urls_are_not_errors(root: Client) -> None:
    assert root.get(f"{CHANGELIST}{uuid.uuid4()}/change/").status_code == 302  # "doesn't exist" redirect
    assert root.get(CHANGELIST, {"parent": "not-a-uuid"}).status_code == 200
    assert root.post(f"{CHANGELIST}{uuid.uuid4()}/transition/cancel/", follow=True).status_code == 200


def test_a_staff_user_without_the_view_permission_gets_no_dashboard(alpha: Any) -> None:
    stranger = as_user(staff_user("stranger"))
    assert stranger.get("/admin/dashboard/").status_code == 403
    assert stranger.get("/admin/dashboard/panels/").status_code == 403
    assert "/admin/dashboard/" not in stranger.get("/admin/").content.decode()
    viewer = as_user(staff_user("viewer", "operations.view_operation"))
    assert viewer.get("/admin/dashboard/").status_code == 200


def test_select_all_is_processed_in_bounded_batches(root: Client, alpha: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from operations.admin import actions as admin_actions

    monkeypatch.setattr(admin_actions, "ACTION_LIMIT", 2)
    pending = [make() for _ in range(3)]
    body = {"action": "cancel_operations", "select_across": "1", "index": 0, "_selected_action": [str(pending[0].pk)]}
    response = root.post(CHANGELIST, body, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Cancelled 2 operations. Only the first 2 selected were processed; run the action again for the rest."
    ]
    # Oldest first, so running it again finishes the job.
    assert [status(o) for o in pending] == ["cancelled", "cancelled", "pending"]
    response = root.post(CHANGELIST, body, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Cancelled 1 operation. 1 refused: cannot cancel an operation that is cancelled (1)."
    ]
    assert [status(o) for o in pending] == ["cancelled"] * 3
