"""Compatibility, proven by Hindsight's own Python client (hindsight-client 1.1.0).

The API is served for real (pytest-django's live server, on the test database)
and real workers run the operations. Everything goes through the client: each
response is parsed into the client's pydantic models, so a field it cannot
parse fails the test with its ValidationError.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hindsight_client import Hindsight
from hindsight_client_api.exceptions import ApiException
from hindsight_client_api.models import (
    AsyncOperationSubmitResponse,
    BankProfileResponse,
    BankStatsResponse,
    CancelOperationResponse,
    ConsolidationResponse,
    CreateMentalModelResponse,
    DeleteDocumentResponse,
    DeleteOperationResponse,
    FileRetainResponse,
    MentalModelListResponse,
    MentalModelResponse,
    OperationsListResponse,
    OperationStatusResponse,
    RetainResponse,
    RetryOperationResponse,
)

from tenancy.api_keys import api_key_create
from tests.conftest import wait_for

pytestmark = [pytest.mark.workers, pytest.mark.embedded]

T = TypeVar("T")
FAST = {"OPS_SWEEP_INTERVAL_SECONDS": "0.5", "OPS_LEASE_SECONDS": "10", "OPS_HEARTBEAT_SECONDS": "1"}
BANK = "hs-bank"
TERMINAL = {"completed", "failed", "cancelled"}


def sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one of the client's async low-level calls on the loop its sync
    helpers use (its aiohttp session belongs to that loop)."""
    return asyncio.get_event_loop().run_until_complete(coroutine)


@pytest.fixture
def hindsight(live_server: Any) -> Iterator[Hindsight]:
    raw_key = api_key_create(name="hindsight-client", admin=True)[1]
    client = Hindsight(base_url=live_server.url, api_key=raw_key, timeout=30)
    try:
        yield client
    finally:
        client.close()


def status_of(client: Hindsight, operation_id: str, **kwargs: Any) -> OperationStatusResponse:
    response = sync(client.operations.get_operation_status(BANK, operation_id, **kwargs))
    assert isinstance(response, OperationStatusResponse)
    return response


def finished(client: Hindsight, operation_id: str, timeout: float = 120) -> OperationStatusResponse:
    return wait_for(
        lambda: (s := status_of(client, operation_id)).status in TERMINAL and s,
        timeout=timeout,
        interval=0.2,
        message=f"operation {operation_id} to finish",
    )


def conflict(call: Coroutine[Any, Any, Any]) -> ApiException:
    with pytest.raises(ApiException) as raised:
        sync(call)
    assert raised.value.status == 409, raised.value.body
    return raised.value


def test_the_hindsight_client_drives_every_operation_flow(
    hindsight: Hindsight, start_workers: Any, tmp_path: Path
) -> None:
    client = hindsight
    profile = client.create_bank(
        BANK,
        name="Hindsight client",
        mission="prove compatibility",
        disposition={"skepticism": 4, "literalism": 2, "empathy": 3},
    )
    assert isinstance(profile, BankProfileResponse)
    assert profile.bank_id == BANK and profile.disposition.skepticism == 4

    # --- with no worker running, everything stays pending: cancel and retry ----------
    items = [
        {"content": f"Ada Lovelace wrote note {i} about the Analytical Engine.", "document_id": f"note-{i}"}
        for i in range(3)
    ]
    queued = client.retain_batch(BANK, items, retain_async=True, document_tags=["notes"])
    assert isinstance(queued, RetainResponse)
    assert queued.var_async and queued.items_count == 3 and queued.operation_id

    cancelled = sync(client.operations.cancel_operation(BANK, queued.operation_id))
    assert isinstance(cancelled, CancelOperationResponse) and cancelled.success
    assert status_of(client, queued.operation_id).status == "cancelled"
    conflict(client.operations.cancel_operation(BANK, queued.operation_id))
    retried = sync(client.operations.retry_operation(BANK, queued.operation_id))
    assert isinstance(retried, RetryOperationResponse) and retried.operation_id == queued.operation_id
    assert status_of(client, queued.operation_id).status == "pending"
    conflict(client.operations.retry_operation(BANK, queued.operation_id))  # pending: nothing to retry

    # An operation_id makes the async submission idempotent.
    replay_id = str(uuid.uuid4())
    first = client.retain_batch(
        BANK, [{"content": "Charles Babbage designed the engine."}], retain_async=True, operation_id=replay_id
    )
    again = client.retain_batch(
        BANK, [{"content": "Charles Babbage designed the engine."}], retain_async=True, operation_id=replay_id
    )
    assert first.operation_id == again.operation_id == replay_id

    # --- workers on: everything runs -------------------------------------------------------
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", **FAST)
    assert finished(client, queued.operation_id).status == "completed"
    assert finished(client, replay_id).status == "completed"

    batch = status_of(client, queued.operation_id, include_payload=True)
    assert batch.task_payload is not None and batch.task_payload["document_tags"] == ["notes"]
    assert batch.progress is not None and batch.progress.detail == {
        "pending": 0,
        "processing": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert [c.status for c in batch.child_operations or []] == ["completed"]
    assert batch.child_operations[0].sub_batch_index == 0 and batch.child_operations[0].items_count == 3
    assert status_of(client, queued.operation_id).task_payload is None  # only when asked

    synced = client.retain_batch(BANK, [{"content": "Grace Hopper wrote the first compiler.", "document_id": "hopper"}])
    assert isinstance(synced, RetainResponse) and not synced.var_async and synced.items_count == 1

    # A file that converts and one that cannot (a PDF that is not one).
    good, bad = tmp_path / "engine.md", tmp_path / "broken.pdf"
    good.write_text("# The engine\n\nAda Lovelace described loops for the Analytical Engine.\n")
    bad.write_bytes(b"%PDF-1.7 this is not really a PDF")
    uploaded = sync(client.aretain_files(BANK, [good, bad], context="uploaded docs"))
    assert isinstance(uploaded, FileRetainResponse) and len(uploaded.operation_ids) == 2
    good_id, bad_id = uploaded.operation_ids
    assert finished(client, good_id).status == "completed"
    failed = finished(client, bad_id)
    assert failed.status == "failed" and "PDF" in (failed.error_message or "")
    retried = sync(client.operations.retry_operation(BANK, bad_id))
    assert isinstance(retried, RetryOperationResponse)
    again_failed = finished(client, bad_id)
    assert again_failed.status == "failed" and again_failed.retry_count == 0
    conflict(client.operations.retry_operation(BANK, good_id))  # completed: nothing to retry

    consolidation = sync(client.banks.trigger_consolidation(BANK))
    assert isinstance(consolidation, ConsolidationResponse) and consolidation.deduplicated is False
    assert finished(client, consolidation.operation_id).status == "completed"

    created = client.create_mental_model(BANK, name="Engine notes", source_query="Analytical Engine")
    assert isinstance(created, CreateMentalModelResponse) and created.mental_model_id
    first_refresh = finished(client, created.operation_id)
    assert first_refresh.status == "completed"
    assert first_refresh.details is not None and first_refresh.details.outcome == "content_written"
    refreshed = client.refresh_mental_model(BANK, created.mental_model_id)
    assert isinstance(refreshed, AsyncOperationSubmitResponse)
    assert finished(client, refreshed.operation_id).details.outcome == "content_unchanged"
    model = client.get_mental_model(BANK, created.mental_model_id)
    assert isinstance(model, MentalModelResponse) and "Analytical Engine" in (model.content or "")
    models = client.list_mental_models(BANK)
    assert isinstance(models, MentalModelListResponse) and [m.id for m in models.items] == [created.mental_model_id]

    deleted_document = sync(client.documents.delete_document(BANK, "note-1"))
    assert isinstance(deleted_document, DeleteDocumentResponse) and deleted_document.memory_units_deleted >= 1
    maintenance = wait_for(
        lambda: sync(client.operations.list_operations(BANK, type="graph_maintenance")).operations,
        message="the graph_maintenance operation",
    )
    assert finished(client, maintenance[0].id).status == "completed"

    # --- lists: filters and paging over every type --------------------------------------------
    everything = sync(client.operations.list_operations(BANK, limit=100))
    assert isinstance(everything, OperationsListResponse)
    types = {o.task_type for o in everything.operations}
    assert types == {
        "retain_batch",
        "retain",
        "file_convert_retain",
        "consolidation",
        "refresh_mental_model",
        "graph_maintenance",
    }
    seen: list[str] = []
    for offset in range(0, everything.total, 3):
        page = sync(client.operations.list_operations(BANK, limit=3, offset=offset))
        assert page.total == everything.total and page.limit == 3 and page.offset == offset
        seen += [o.id for o in page.operations]
    assert seen == [o.id for o in everything.operations] and len(set(seen)) == everything.total
    failed_files = sync(client.operations.list_operations(BANK, status="failed", type="file_convert_retain"))
    assert [o.id for o in failed_files.operations] == [bad_id]
    assert failed_files.operations[0].progress is None or isinstance(failed_files.operations[0].progress.stage, str)
    no_parents = sync(client.operations.list_operations(BANK, exclude_parents=True, limit=100))
    assert "retain_batch" not in {o.task_type for o in no_parents.operations}
    refreshes = sync(client.operations.list_operations(BANK, type="refresh_mental_model"))
    assert {o.details.outcome for o in refreshes.operations if o.details} == {"content_written", "content_unchanged"}

    # --- delete: finished only -------------------------------------------------------------------
    removed = sync(client.operations.delete_operation(BANK, bad_id))
    assert isinstance(removed, DeleteOperationResponse) and removed.operation_id == bad_id
    with pytest.raises(ApiException) as gone:
        sync(client.operations.get_operation_status(BANK, bad_id))
    assert gone.value.status == 404

    stats = sync(client.banks.get_agent_stats(BANK))
    assert isinstance(stats, BankStatsResponse) and stats.total_documents >= 4 and stats.failed_operations == 0


def test_a_pending_operation_cancelled_through_the_client_never_runs(hindsight: Hindsight, start_workers: Any) -> None:
    client = hindsight
    client.create_bank(BANK)
    kept = client.retain_batch(BANK, [{"content": "Kept."}], retain_async=True)
    dropped = client.retain_batch(BANK, [{"content": "Dropped."}], retain_async=True)
    sync(client.operations.cancel_operation(BANK, dropped.operation_id))
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="2", **FAST)
    assert finished(client, kept.operation_id).status == "completed"
    assert status_of(client, dropped.operation_id).status == "cancelled"
    child = status_of(client, dropped.operation_id).child_operations[0]
    assert child.status == "cancelled" and child.error_message == "cancelled with its parent"
    listed = sync(client.operations.list_operations(BANK, status="cancelled", exclude_parents=True))
    assert [o.id for o in listed.operations] == [child.operation_id]


def test_the_client_sets_changes_and_clears_a_refresh_schedule_and_scopes_consolidation(
    hindsight: Hindsight, transactional_db: None
) -> None:
    from hindsight_client_api.models import ConsolidationRequest

    from banks.models import MentalModel
    from operations.models import Operation

    client = hindsight
    client.create_bank(BANK)
    created = client.create_mental_model(
        BANK, name="Daily digest", source_query="digest", trigger={"refresh_cron": "0 3 * * *"}
    )
    assert isinstance(created, CreateMentalModelResponse)
    model = client.get_mental_model(BANK, created.mental_model_id)
    assert isinstance(model, MentalModelResponse)
    assert model.trigger is not None and model.trigger.refresh_cron == "0 3 * * *"
    stored = MentalModel.objects.get(pk=created.mental_model_id)
    assert stored.next_refresh_at is not None and (stored.next_refresh_at.hour, stored.next_refresh_at.minute) == (3, 0)

    # The client patches the trigger with only the keys it names.
    changed = client.update_mental_model(
        BANK,
        created.mental_model_id,
        name="Digest",
        trigger={"refresh_cron": "*/30 * * * *", "min_refresh_interval_seconds": 3600},
    )
    assert isinstance(changed, MentalModelResponse) and changed.name == "Digest"
    assert changed.trigger.refresh_cron == "*/30 * * * *" and changed.trigger.min_refresh_interval_seconds == 3600
    with pytest.raises(ApiException) as refused:
        client.update_mental_model(BANK, created.mental_model_id, trigger={"refresh_cron": "every half hour"})
    assert refused.value.status == 400 and "trigger.refresh_cron" in (refused.value.body or "")
    cleared = client.update_mental_model(BANK, created.mental_model_id, trigger={"refresh_cron": None})
    assert cleared.trigger.refresh_cron is None and cleared.trigger.min_refresh_interval_seconds == 3600
    assert MentalModel.objects.get(pk=created.mental_model_id).next_refresh_at is None

    scoped = sync(
        client.banks.trigger_consolidation(
            BANK, consolidation_request=ConsolidationRequest(observation_scopes=[["user:ada", "topic:math"]])
        )
    )
    assert isinstance(scoped, ConsolidationResponse) and scoped.deduplicated is False
    assert Operation.objects.get(pk=scoped.operation_id).task_payload == {
        "observation_scopes": [["topic:math", "user:ada"]]
    }


def test_the_client_registers_lists_changes_and_reads_the_deliveries_of_webhooks(
    hindsight: Hindsight, settings: Any
) -> None:
    from hindsight_client_api.models import (
        CreateWebhookRequest,
        DeleteResponse,
        UpdateWebhookRequest,
        WebhookDeliveryListResponse,
        WebhookHttpConfig,
        WebhookListResponse,
        WebhookResponse,
    )

    from banks.models import Webhook, WebhookDelivery

    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True  # the URL is loopback (never contacted here)
    client = hindsight
    client.create_bank(BANK, name="Webhooks")
    created = sync(
        client.webhooks.create_webhook(
            BANK,
            CreateWebhookRequest(
                url="http://127.0.0.1:9/hook",
                secret="whsec-client",
                event_types=["retain.completed"],
                http_config=WebhookHttpConfig(timeout_seconds=5, headers={"X-Team": "blue"}),
            ),
        )
    )
    assert isinstance(created, WebhookResponse)
    assert created.bank_id == BANK and created.secret is None and created.enabled
    assert created.event_types == ["retain.completed"] and created.http_config.timeout_seconds == 5
    default = sync(client.webhooks.create_webhook(BANK, CreateWebhookRequest(url="http://127.0.0.1:9/other")))
    assert default.event_types == ["consolidation.completed"]

    listed = sync(client.webhooks.list_webhooks(BANK))
    assert isinstance(listed, WebhookListResponse) and listed.total == 2
    assert [w.id for w in listed.items] == [created.id, default.id]

    updated = sync(client.webhooks.update_webhook(BANK, created.id, UpdateWebhookRequest(enabled=False)))
    assert isinstance(updated, WebhookResponse) and updated.enabled is False and updated.url == created.url

    empty = sync(client.webhooks.list_webhook_deliveries(BANK, created.id))
    assert isinstance(empty, WebhookDeliveryListResponse) and empty.items == [] and empty.next_cursor is None
    webhook = Webhook.objects.get(pk=created.id)
    operation_id, event_id = uuid.uuid4(), uuid.uuid4()
    for attempt, (outcome, code, error) in enumerate(
        [("retrying", None, "timed out after 5s"), ("retrying", 503, "HTTP 503"), ("delivered", 200, "")], 1
    ):
        WebhookDelivery.objects.create(
            webhook=webhook,
            operation_id=operation_id,
            event_id=event_id,
            event_type="retain.completed",
            url=webhook.url,
            attempt=attempt,
            outcome=outcome,
            status_code=code,
            error=error,
            response_excerpt="ok" if code == 200 else "",
            duration_ms=12,
        )
    page = sync(client.webhooks.list_webhook_deliveries(BANK, created.id, limit=2))
    assert isinstance(page, WebhookDeliveryListResponse) and page.next_cursor
    assert [(d.attempts, d.status, d.last_response_status) for d in page.items] == [
        (3, "delivered", 200),
        (2, "retrying", 503),
    ]
    rest = sync(client.webhooks.list_webhook_deliveries(BANK, created.id, limit=2, cursor=page.next_cursor))
    [oldest] = rest.items
    assert rest.next_cursor is None and oldest.attempts == 1 and oldest.last_error == "timed out after 5s"
    assert oldest.event_id == str(event_id) and oldest.webhook_id == created.id

    deleted = sync(client.webhooks.delete_webhook(BANK, created.id))
    assert isinstance(deleted, DeleteResponse) and deleted.success
    assert sync(client.webhooks.list_webhooks(BANK)).total == 1
