"""Submitting memory work through the API: retain (sync and async), files,
consolidate; idempotent client ids, limits and bad input."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from banks.models import Document, MemoryUnit, StoredFile
from operations.lifecycle import rollup
from operations.models import Operation
from operations.worker import runner
from tenancy.models import Bank

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def make_pdf(text: str) -> bytes:
    """A real one-page PDF with `text` on it, offsets and all."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def make_docx(*paragraphs: str) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def run_all_pending() -> None:
    pending = Operation.objects.filter(status="pending").exclude(operation_type="retain_batch")
    for pk, operation_type in pending.values_list("pk", "operation_type"):
        runner.execute(str(pk), operation_type=operation_type, worker="test@here", task_id="t")


# --- retain ----------------------------------------------------------------------------------


def test_sync_retain_runs_inline(admin: Any) -> None:
    response = admin.post(
        "banks/newbank/memories",
        {
            "items": [
                {
                    "content": "Ada Lovelace wrote the first program.",
                    "document_id": "ada",
                    "timestamp": None,
                    "context": None,
                    "metadata": None,
                    "tags": None,
                    "entities": ["Analytical Engine", {"text": "Babbage", "type": "person"}],
                    "resolve_entities": True,
                    "observation_scopes": None,
                    "strategy": "default",
                    "update_mode": "replace",
                },
            ]
        },
    )
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "bank_id": "newbank",
        "items_count": 1,
        "async": False,
        "operation_id": None,
    }
    assert Bank.objects.filter(pk="newbank").exists()  # created on first use
    assert MemoryUnit.objects.filter(bank_id="newbank").count() == 1
    assert Operation.objects.count() == 0


def test_sync_retain_limits_are_413(admin: Any, settings: Any) -> None:
    settings.OPS_SYNC_RETAIN_MAX_ITEMS = 2
    settings.OPS_SYNC_RETAIN_MAX_BYTES = 1024
    many = admin.post("banks/alpha/memories", {"items": [{"content": f"Fact {i}."} for i in range(3)]})
    assert many.status_code == 413 and '"async": true' in many.json()["detail"]
    big = admin.post("banks/alpha/memories", {"items": [{"content": "x" * 2000}]})
    assert big.status_code == 413
    assert MemoryUnit.objects.count() == 0
    accepted = admin.post("banks/alpha/memories", {"items": [{"content": "x" * 2000}], "async": True})
    assert accepted.status_code == 200 and accepted.json()["async"] is True


def test_async_retain_makes_a_parent_and_children(admin: Any, settings: Any) -> None:
    settings.OPS_RETAIN_BATCH_ITEMS = 4
    items = [{"content": f"Fact number {i} about Project Apollo.", "document_id": f"doc-{i}"} for i in range(10)]
    response = admin.post("banks/alpha/memories", {"items": items, "async": True, "document_tags": ["apollo"]})
    assert response.status_code == 200
    body = response.json()
    assert body["async"] is True and body["items_count"] == 10
    parent = Operation.objects.get(pk=body["operation_id"])
    assert parent.operation_type == "retain_batch" and parent.items_count == 10
    children = list(parent.children.order_by("created_at"))
    assert [c.items_count for c in children] == [4, 4, 2]
    assert all(c.operation_type == "retain" and c.status == "pending" for c in children)
    # Written already rolled up: a roll-up now changes nothing but the time.
    assert parent.status == "pending" and parent.started_at is None
    submitted = {key: value for key, value in parent.progress.items() if key != "at"}
    assert submitted["total"] == 3 and submitted["detail"]["pending"] == 3
    with transaction.atomic():
        assert rollup.roll_up(parent.pk) == "pending"
    parent.refresh_from_db()
    assert {key: value for key, value in parent.progress.items() if key != "at"} == submitted
    run_all_pending()
    parent.refresh_from_db()
    assert parent.status == "completed" and parent.progress["processed"] == 3
    assert Document.objects.filter(bank_id="alpha").count() == 10
    assert all(tags == ["apollo"] for tags in Document.objects.values_list("tags", flat=True))
    detail = admin.get(f"banks/alpha/operations/{parent.pk}").json()
    assert [c["status"] for c in detail["child_operations"]] == ["completed"] * 3


def test_client_operation_id_is_idempotent(admin: Any, alpha: Any, beta: Any) -> None:
    operation_id = str(uuid.uuid4())
    body = {"items": [{"content": "Once."}], "async": True, "operation_id": operation_id}
    first = admin.post("banks/alpha/memories", body)
    again = admin.post("banks/alpha/memories", {**body, "items": [{"content": "Different."}]})
    assert first.status_code == again.status_code == 200
    assert first.json()["operation_id"] == again.json()["operation_id"] == operation_id
    assert Operation.objects.filter(operation_type="retain").count() == 1
    other_bank = admin.post("banks/beta/memories", body)
    assert other_bank.status_code == 409 and "another bank" in other_bank.json()["detail"]
    consolidation = admin.post("banks/alpha/consolidate").json()["operation_id"]
    other_type = admin.post("banks/alpha/memories", {**body, "operation_id": consolidation})
    assert other_type.status_code == 409 and "consolidation" in other_type.json()["detail"]
    bad = admin.post("banks/alpha/memories", {**body, "operation_id": "not-a-uuid"})
    assert bad.status_code == 400 and "operation_id" in bad.json()["errors"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_of_one_client_id_make_one_batch(alpha: Any) -> None:
    from tenancy.api_keys import api_key_create
    from tests.conftest import Caller, race

    key = api_key_create(admin=True)[1]
    operation_id = str(uuid.uuid4())
    body = {"items": [{"content": "Once."}], "async": True, "operation_id": operation_id}
    responses = race(*[lambda: Caller(key).post("banks/alpha/memories", body) for _ in range(4)])
    assert [r.status_code for r in responses] == [200] * 4
    assert Operation.objects.filter(operation_type="retain_batch").count() == 1
    assert Operation.objects.filter(operation_type="retain").count() == 1


def test_duplicate_document_ids_in_one_request_are_400(admin: Any, alpha: Any) -> None:
    items = [{"content": "A.", "document_id": "same"}, {"content": "B."}, {"content": "C.", "document_id": "same"}]
    response = admin.post("banks/alpha/memories", {"items": items, "async": True})
    assert response.status_code == 400
    assert "items.2.document_id" in response.json()["errors"]
    assert Operation.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "items"),
        ({"items": []}, "items"),
        ({"items": "text"}, "items"),
        ({"items": [{}]}, "items.0.content"),
        ({"items": [{"content": "   "}]}, "items.0.content"),
        ({"items": [{"content": "x", "timestamp": "yesterday"}]}, "items.0.timestamp"),
        ({"items": [{"content": "x", "tags": "a,b"}]}, "items.0.tags"),
        ({"items": [{"content": "x", "entities": [42]}]}, "items.0.entities.0"),
        ({"items": [{"content": "x"}], "async": "yes"}, "async"),
    ],
)
def test_bad_retain_bodies_are_400(admin: Any, alpha: Any, body: dict[str, Any], field: str) -> None:
    response = admin.post("banks/alpha/memories", body)
    assert response.status_code == 400
    assert field in response.json()["errors"], response.json()
    assert Operation.objects.count() == 0 and MemoryUnit.objects.count() == 0


def test_a_refused_submission_leaves_no_bank_behind(admin: Any, settings: Any) -> None:
    settings.OPS_SYNC_RETAIN_MAX_ITEMS = 1
    refused = [
        admin.post("banks/fresh/memories", {"items": [{"content": "   "}], "async": True}),
        admin.post("banks/fresh/memories", {"items": [{"content": "a"}, {"content": "b"}]}),
        admin.client.post("/v1/default/banks/fresh/files/retain", {"tags": "x"}, format="multipart"),
    ]
    # A client's operation id that names another bank's operation.
    taken = admin.post("banks/other/memories", {"items": [{"content": "a"}], "async": True}).json()["operation_id"]
    body = {"items": [{"content": "a"}], "async": True, "operation_id": taken}
    refused.append(admin.post("banks/fresh/memories", body))
    assert [r.status_code for r in refused] == [400, 413, 400, 409]
    assert not Bank.objects.filter(pk="fresh").exists()
    assert admin.post("banks/fresh/memories", {"items": [{"content": "a"}], "async": True}).status_code == 200
    assert Bank.objects.filter(pk="fresh").exists()


def test_scoped_key_cannot_create_a_bank_outside_its_scope(alice: Any) -> None:
    response = alice.post("banks/beta/memories", {"items": [{"content": "x"}]})
    assert response.status_code == 404 and not Bank.objects.filter(pk="beta").exists()
    assert alice.post("banks/alpha/memories", {"items": [{"content": "x"}]}).status_code == 200


# --- consolidate ---------------------------------------------------------------------------------


def test_consolidate_is_deduplicated_while_pending(admin: Any, alpha: Any) -> None:
    first = admin.post("banks/alpha/consolidate").json()
    second = admin.post("banks/alpha/consolidate", {"tags": ["x"]}).json()
    assert first["deduplicated"] is False and second == {"operation_id": first["operation_id"], "deduplicated": True}
    assert admin.post("banks/alpha/consolidate", {"tags": "x"}).status_code == 400
    assert admin.post("banks/missing/consolidate").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_consolidate_requests_make_one_operation(alpha: Any) -> None:
    from tenancy.api_keys import api_key_create
    from tests.conftest import Caller, race

    key = api_key_create(admin=True)[1]
    answers = [r.json() for r in race(*[lambda: Caller(key).post("banks/alpha/consolidate") for _ in range(20)])]
    assert len({a["operation_id"] for a in answers}) == 1
    assert sum(not a["deduplicated"] for a in answers) == 1
    assert Operation.objects.filter(operation_type="consolidation").count() == 1


# --- files ------------------------------------------------------------------------------------


def upload(admin: Any, *files: SimpleUploadedFile, **fields: Any) -> Any:
    return admin.client.post(
        "/v1/default/banks/alpha/files/retain", {"files": list(files), **fields}, format="multipart"
    )


def test_files_of_every_supported_type(admin: Any, alpha: Any) -> None:
    files = [
        SimpleUploadedFile("notes.txt", b"Plain text about Kepler.", content_type="text/plain"),
        SimpleUploadedFile("readme.md", b"# Title\n\nMarkdown about **Galileo**.", content_type="text/markdown"),
        SimpleUploadedFile(
            "page.html", b"<html><script>x()</script><p>HTML about Newton.</p></html>", content_type="text/html"
        ),
        SimpleUploadedFile("paper.pdf", make_pdf("A PDF about Copernicus."), content_type="application/pdf"),
        SimpleUploadedFile(
            "report.docx",
            make_docx("A DOCX about Brahe.", "Second paragraph."),
            content_type="application/octet-stream",
        ),
    ]
    response = upload(admin, *files, tags="science,astronomy", context="uploads")
    assert response.status_code == 200, response.json()
    ids = response.json()["operation_ids"]
    assert len(ids) == 5 and StoredFile.objects.count() == 5
    run_all_pending()
    texts = {
        op.filename: " ".join(
            MemoryUnit.objects.filter(document__document_id=op.document_id).values_list("text", flat=True)
        )
        for op in Operation.objects.filter(pk__in=ids)
    }
    for op in Operation.objects.filter(pk__in=ids):
        assert op.status == "completed", (op.filename, op.error_message)
    assert texts == {
        "notes.txt": "Plain text about Kepler.",
        "readme.md": "Title Markdown about Galileo.",
        "page.html": "HTML about Newton.",
        "paper.pdf": "A PDF about Copernicus.",
        "report.docx": "A DOCX about Brahe. Second paragraph.",
    }
    assert Document.objects.get(document_id="paper.pdf").tags == ["astronomy", "science"]
    from banks.tasks import delete_finished_files

    assert delete_finished_files() == 5 and StoredFile.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "data", "content_type", "message"),
    [
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "application/pdf", "not a valid PDF"),
        (
            "broken.docx",
            b"PK\x03\x04 not a zip",
            DOCX := "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "not a valid DOCX file",
        ),
        ("data.foo", b"\x00\x01", "text/x-foo", "unsupported type text/x-foo"),
        ("latin.txt", "café".encode("latin-1"), "text/plain", "not valid UTF-8 text"),
        ("empty.txt", b"   ", "text/plain", "contains no text"),
    ],
)
def test_conversion_errors_fail_at_once(
    admin: Any, alpha: Any, name: str, data: bytes, content_type: str, message: str
) -> None:
    operation_id = upload(admin, SimpleUploadedFile(name, data, content_type=content_type)).json()["operation_ids"][0]
    run_all_pending()
    failed = Operation.objects.get(pk=operation_id)
    assert failed.status == "failed" and failed.retry_count == 0
    assert message in failed.error_message
    assert StoredFile.objects.filter(operation_id=operation_id).exists()  # kept for a manual retry


def test_upload_errors(admin: Any, alpha: Any, settings: Any) -> None:
    assert upload(admin).status_code == 400
    json_body = admin.post("banks/alpha/files/retain", {"files": []})
    assert json_body.status_code == 415
    settings.OPS_MAX_UPLOAD_BYTES = 1024
    big = upload(admin, SimpleUploadedFile("big.txt", b"x" * 2048, content_type="text/plain"))
    assert big.status_code == 413 and "big.txt" in big.json()["detail"]
    two = upload(admin, SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b"), document_id="one")
    assert two.status_code == 400 and "document_id" in two.json()["errors"]
    assert Operation.objects.count() == 0


# --- tag -----------------------------------------------------------------------------------


def test_every_submission_stores_its_tag_on_the_operation_and_its_children(
    admin: Any, alpha: Any, settings: Any
) -> None:
    settings.OPS_RETAIN_BATCH_ITEMS = 2
    items = [{"content": f"Fact {i}."} for i in range(3)]
    batch = admin.post("banks/alpha/memories", {"items": items, "async": True, "tag": "import-7"}).json()
    tagged = Operation.objects.filter(tag="import-7")
    assert tagged.filter(pk=batch["operation_id"]).exists()
    assert tagged.filter(parent_id=batch["operation_id"]).count() == 2

    upload = SimpleUploadedFile("a.txt", b"Some text.", content_type="text/plain")
    files = admin.post("banks/alpha/files/retain", {"files": [upload], "tag": "uploads"}, format="multipart")
    assert Operation.objects.get(pk=files.json()["operation_ids"][0]).tag == "uploads"
    # Hindsight's form: the tag inside the `request` JSON, with per-file metadata.
    upload = SimpleUploadedFile("b.txt", b"More text.", content_type="text/plain")
    request = '{"files_metadata": [{"document_id": "b-doc", "tags": ["x"]}], "tag": "hs-uploads"}'
    files = admin.post("banks/alpha/files/retain", {"files": [upload], "request": request}, format="multipart")
    operation = Operation.objects.get(pk=files.json()["operation_ids"][0])
    assert operation.tag == "hs-uploads" and operation.document_id == "b-doc"
    assert operation.task_payload["tags"] == ["x"]

    consolidation = admin.post("banks/alpha/consolidate", {"tag": "nightly"}).json()
    assert Operation.objects.get(pk=consolidation["operation_id"]).tag == "nightly"

    created = admin.post("banks/alpha/mental-models", {"name": "M", "source_query": "fact", "tag": "first"}).json()
    assert Operation.objects.get(pk=created["operation_id"]).tag == "first"
    assert created["mental_model_id"] == created["id"]
    runner.execute(created["operation_id"], operation_type="refresh_mental_model", worker="w", task_id="t")
    refresh = admin.post(f"banks/alpha/mental-models/{created['id']}/refresh", {"tag": "manual"}).json()
    assert Operation.objects.get(pk=refresh["operation_id"]).tag == "manual"
    listed = admin.get("banks/alpha/operations", {"tag": "import-7"}).json()
    assert listed["total"] == 3


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("banks/alpha/memories", {"items": [{"content": "x"}], "async": True}),
        ("banks/alpha/consolidate", {}),
    ],
)
def test_a_tag_over_200_characters_is_400_and_writes_nothing(
    admin: Any, alpha: Any, url: str, body: dict[str, Any]
) -> None:
    response = admin.post(url, {**body, "tag": "t" * 201})
    assert response.status_code == 400 and "tag" in response.json()["errors"]
    assert not Operation.objects.exists()
