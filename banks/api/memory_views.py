"""Memory endpoints: retain (sync and async), files, documents, memories,
consolidation and mental models. Views parse and authorize; the work is in
`banks.memory`, `banks.submissions` and the lifecycle service."""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.http import QueryDict
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from banks import follow_ups, memory, mental_models, submissions
from banks.api import memory_serializers as s
from banks.api.retain_input import retain_request
from banks.api.serializers import PageSerializer
from banks.models import Document, MemoryUnit, MentalModel
from banks.schedules import RefreshSchedule
from core.api.errors import Conflict, PayloadTooLarge
from core.api.parsers import parse_json
from core.api.responses import AUTH_ERRORS, BAD_INPUT, ErrorSerializer
from tenancy.models import Bank
from tenancy.scoping import BankScopedMixin
from tenancy.services import bank_ensure


def _validated(serializer_class: type, data: Any, **kwargs: Any) -> dict[str, Any]:
    if data is None:
        data = {}
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _uuid_or_400(raw: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationError({field: [f"{raw!r} is not a valid id (a UUID)"]}) from None


class MemoryViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    serializer_class = s.RetainRequestSerializer

    @extend_schema(
        summary="Retain items (sync, or async as a retain_batch operation)",
        request=s.RetainRequestSerializer,
        responses={
            200: s.RetainResponseSerializer,
            **BAD_INPUT,
            **AUTH_ERRORS,
            409: OpenApiResponse(ErrorSerializer, description="operation_id used by another bank or type"),
            413: OpenApiResponse(ErrorSerializer, description="too big for a sync request; use async"),
        },
    )
    def retain(self, request: Request, bank_id: str) -> Response:
        target = self.submission_bank_id()
        retain = retain_request(request.data)
        items, document_tags = retain.items, retain.document_tags
        if retain.is_async:
            # The bank is created only once the body is checked, so a refused
            # request leaves none behind; a client's operation_id may still name another bank's
            # operation (409), so with one the bank goes in the same transaction.
            with transaction.atomic() if retain.operation_id else nullcontext():
                bank = bank_ensure(bank_id=target)
                try:
                    parent, _ = submissions.retain_async(
                        bank=bank,
                        items=items,
                        document_tags=document_tags,
                        operation_id=retain.operation_id,
                        tag=retain.tag,
                    )
                except submissions.OperationIdConflict as exc:
                    raise Conflict(str(exc)) from None
            return Response(
                {
                    "success": True,
                    "bank_id": bank.pk,
                    "items_count": parent.items_count,
                    "async": True,
                    "operation_id": str(parent.pk),
                }
            )
        size = sum(len(item.content.encode()) for item in items)
        if len(items) > settings.OPS_SYNC_RETAIN_MAX_ITEMS or size > settings.OPS_SYNC_RETAIN_MAX_BYTES:
            raise PayloadTooLarge(
                f"a sync retain takes at most {settings.OPS_SYNC_RETAIN_MAX_ITEMS} items and "
                f"{settings.OPS_SYNC_RETAIN_MAX_BYTES} bytes of content (this one: {len(items)} items, "
                f'{size} bytes); send it with "async": true'
            )
        bank = bank_ensure(bank_id=target)
        request_id = uuid.uuid4()
        outcome = memory.retain_items(
            bank=bank,
            items=items,
            document_tags=document_tags,
            default_document_id=lambda i: f"{request_id}-{i}",
        )
        follow_ups.after_retain(bank=bank, outcome=outcome)
        return Response(
            {"success": True, "bank_id": bank.pk, "items_count": outcome.items, "async": False, "operation_id": None}
        )

    @extend_schema(
        summary="List memory units",
        parameters=[s.MemoryFilterSerializer],
        responses={200: s.MemoryListSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def index(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        query = _validated(s.MemoryFilterSerializer, request.query_params)
        units = MemoryUnit.objects.filter(bank=bank).select_related("document").prefetch_related("entities")
        if query.get("document_id"):
            units = units.filter(document__document_id=query["document_id"])
        units = units.order_by("-created_at", "position", "id")
        limit, offset = query["limit"], query["offset"]
        return Response(
            {
                "bank_id": bank.pk,
                "total": units.count(),
                "limit": limit,
                "offset": offset,
                "items": s.MemoryUnitSerializer(units[offset : offset + limit], many=True).data,
            }
        )

    @extend_schema(
        summary="Delete a memory unit (queues graph maintenance, and consolidation for stale observations)",
        responses={200: s.DeletedSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def destroy(self, request: Request, bank_id: str, memory_id: str) -> Response:
        bank = self.get_bank()
        unit_id = _uuid_or_400(memory_id, "memory_id")
        with transaction.atomic():
            if not memory.unit_delete(bank=bank, unit_id=unit_id):
                raise NotFound(f"memory {memory_id} not found")
            queued = follow_ups.after_delete(bank=bank)
        return Response({"success": True, "units_deleted": 1, **queued})


class FileViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    parser_classes = [MultiPartParser]
    serializer_class = s.FilesRequestSerializer

    @extend_schema(
        summary="Upload files to convert and retain (one operation per file)",
        request={"multipart/form-data": s.FilesRequestSerializer},
        responses={
            200: s.FilesResponseSerializer,
            **BAD_INPUT,
            **AUTH_ERRORS,
            413: OpenApiResponse(ErrorSerializer, description="a file is larger than OPS_MAX_UPLOAD_BYTES"),
            415: OpenApiResponse(ErrorSerializer, description="the body is not multipart/form-data"),
        },
    )
    def retain(self, request: Request, bank_id: str) -> Response:
        target = self.submission_bank_id()
        files = request.FILES.getlist("files")
        if not files:
            raise ValidationError({"files": ["upload one or more files in the 'files' field"]})
        for upload in files:
            if upload.size > settings.OPS_MAX_UPLOAD_BYTES:
                raise PayloadTooLarge(
                    f"{upload.name} is {upload.size} bytes; the limit is {settings.OPS_MAX_UPLOAD_BYTES}"
                )
        form = cast(QueryDict, request.data)  # files arrive as multipart: a form
        tags = [t.strip() for value in form.getlist("tags") for t in value.split(",") if t.strip()]
        fields = _validated(
            s.FilesRequestSerializer,
            {
                "files": files,
                "tags": tags,
                **{name: form[name] for name in ("context", "document_id", "tag", "request") if name in form},
            },
        )
        per_file = _files_metadata(fields.get("request"), count=len(files))
        tag = per_file.tag or fields.get("tag") or None
        if fields.get("document_id") and len(files) > 1:
            raise ValidationError({"document_id": ["document_id names one document; upload one file with it"]})
        uploads = []
        for upload, meta in zip(files, per_file.entries, strict=True):
            uploads.append(
                submissions.Upload(
                    filename=(upload.name or "upload")[:512],
                    content_type=upload.content_type or "",
                    data=upload.read(),
                    context=meta.get("context") or fields.get("context") or "",
                    document_id=meta.get("document_id") or fields.get("document_id") or None,
                    tags=tuple(meta.get("tags") or tags),
                    metadata=meta.get("metadata") or {},
                )
            )
        bank = bank_ensure(bank_id=target)
        operations = submissions.files_submit(bank=bank, uploads=uploads, tag=tag)
        return Response({"success": True, "bank_id": bank.pk, "operation_ids": [str(o.pk) for o in operations]})


@dataclass(frozen=True)
class _FilesMetadata:
    entries: list[dict[str, Any]]
    tag: str | None


def _files_metadata(raw: str | None, *, count: int) -> _FilesMetadata:
    """Hindsight's multipart `request` field: JSON with one `files_metadata`
    entry per file. Absent: no per-file settings."""
    if not raw:
        return _FilesMetadata([{} for _ in range(count)], None)
    parsed = parse_json(raw, what="the 'request' field")
    if not isinstance(parsed, dict):
        raise ValidationError({"request": ['a JSON object: {"files_metadata": [{...}, ...]}']})
    body = _validated(s.FilesRequestJSONSerializer, parsed)
    entries = [dict(entry) for entry in body.get("files_metadata") or []] or [{} for _ in range(count)]
    if len(entries) != count:
        raise ValidationError(
            {"request.files_metadata": [f"{len(entries)} entries for {count} files; send one entry per file"]}
        )
    return _FilesMetadata(entries, body.get("tag") or None)


class DocumentViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    serializer_class = s.DocumentSerializer

    @extend_schema(
        summary="List documents",
        parameters=[PageSerializer],
        responses={200: s.DocumentListSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def index(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        page = _validated(PageSerializer, request.query_params)
        documents = Document.objects.filter(bank=bank).annotate(unit_count=Count("units")).order_by("-updated_at", "id")
        limit, offset = page["limit"], page["offset"]
        return Response(
            {
                "bank_id": bank.pk,
                "total": documents.count(),
                "limit": limit,
                "offset": offset,
                "items": s.DocumentSerializer(documents[offset : offset + limit], many=True).data,
            }
        )

    @extend_schema(
        summary="Delete a document and its memories (queues graph maintenance, and "
        "consolidation for stale observations)",
        responses={200: s.DocumentDeletedSerializer, **AUTH_ERRORS},
    )
    def destroy(self, request: Request, bank_id: str, document_id: str) -> Response:
        bank = self.get_bank()
        if "\x00" in document_id:
            raise NotFound(f"document {document_id!r} not found")
        with transaction.atomic():
            deleted = memory.document_delete(bank=bank, document_id=document_id)
            if deleted is None:
                raise NotFound(f"document {document_id!r} not found")
            queued = follow_ups.after_delete(bank=bank)
        return Response(
            {
                "success": True,
                "message": f"document {document_id!r} deleted",
                "document_id": document_id,
                "memory_units_deleted": deleted,
                "units_deleted": deleted,
                **queued,
            }
        )


class ConsolidationViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    serializer_class = s.ConsolidateRequestSerializer

    @extend_schema(
        summary="Queue consolidation (deduplicated while one is pending)",
        request=s.ConsolidateRequestSerializer,
        responses={200: s.SubmittedSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def create(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        body = s.ConsolidateRequestSerializer(data={} if request.data is None else request.data)
        body.is_valid(raise_exception=True)
        submitted = follow_ups.queue_consolidation(
            bank=bank, scopes=body.scopes(), tag=body.validated_data.get("tag") or None
        )
        return Response({"operation_id": str(submitted.operation.pk), "deduplicated": submitted.deduplicated})


def _model_data(model: MentalModel) -> dict[str, Any]:
    return dict(s.MentalModelSerializer(model).data)


class MentalModelViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    serializer_class = s.MentalModelSerializer

    def get_model(self, bank: Bank) -> MentalModel:
        model_id = _uuid_or_400(self.kwargs["mental_model_id"], "mental_model_id")
        model = MentalModel.objects.filter(bank=bank, pk=model_id).first()
        if model is None:
            raise NotFound(f"mental model {model_id} not found")
        return model

    @extend_schema(
        summary="Create a mental model (and queue its first refresh)",
        request=s.MentalModelInputSerializer,
        responses={
            200: s.MentalModelCreatedSerializer,
            **BAD_INPUT,
            **AUTH_ERRORS,
            409: OpenApiResponse(ErrorSerializer, description="a mental model with this id exists"),
        },
    )
    def create(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        data = _validated(s.MentalModelInputSerializer, request.data)
        model_id = data.get("id") or uuid.uuid4()
        schedule = mental_models.schedule_patched(RefreshSchedule(), data.get("trigger") or {})
        try:
            created = mental_models.mental_model_create(
                bank=bank,
                model_id=model_id,
                name=data["name"],
                source_query=data["source_query"],
                tags=data.get("tags") or [],
                max_tokens=data.get("max_tokens") or 500,
                schedule=schedule,
                tag=data.get("tag") or None,
            )
        except IntegrityError:
            raise Conflict(f"mental model {model_id} already exists") from None
        return Response(
            {
                **_model_data(created.model),
                "mental_model_id": str(created.model.pk),
                "operation_id": str(created.refresh.operation.pk),
            }
        )

    @extend_schema(
        summary="List mental models",
        operation_id="list_mental_models",
        parameters=[PageSerializer],
        responses={200: s.MentalModelListSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def index(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        page = _validated(PageSerializer, request.query_params)
        limit, offset = page["limit"], page["offset"]
        models = MentalModel.objects.filter(bank=bank).order_by("name", "id")
        return Response(
            {
                "bank_id": bank.pk,
                "total": models.count(),
                "limit": limit,
                "offset": offset,
                "items": s.MentalModelSerializer(models[offset : offset + limit], many=True).data,
            }
        )

    @extend_schema(summary="Get a mental model", responses={200: s.MentalModelSerializer, **BAD_INPUT, **AUTH_ERRORS})
    def retrieve(self, request: Request, bank_id: str, mental_model_id: str) -> Response:
        return Response(_model_data(self.get_model(self.get_bank())))

    @extend_schema(
        summary="Update a mental model: name, query, tags, max_tokens, refresh schedule (trigger)",
        operation_id="update_mental_model",
        request=s.MentalModelUpdateSerializer,
        responses={200: s.MentalModelSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def update(self, request: Request, bank_id: str, mental_model_id: str) -> Response:
        model = self.get_model(self.get_bank())
        body = s.MentalModelUpdateSerializer(data={} if request.data is None else request.data)
        body.is_valid(raise_exception=True)
        updated = mental_models.mental_model_update(
            model=model, changes=body.changes(), trigger=body.validated_data.get("trigger")
        )
        return Response(_model_data(updated))

    @extend_schema(
        summary="Queue a refresh (deduplicated while one is pending)",
        request=s.RefreshRequestSerializer,
        responses={200: s.RefreshResponseSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def refresh(self, request: Request, bank_id: str, mental_model_id: str) -> Response:
        model = self.get_model(self.get_bank())
        data = _validated(s.RefreshRequestSerializer, request.data)
        submitted = mental_models.mental_model_refresh(
            model_id=model.pk, bank_id=model.bank_id, tag=data.get("tag") or None
        )
        return Response(
            {
                "operation_id": str(submitted.operation.pk),
                "status": submitted.operation.status,
                "deduplicated": submitted.deduplicated,
            }
        )
