"""Operations endpoints. Views parse and authorize; transitions are the
lifecycle service's, reads are the selectors'."""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.responses import AUTH_ERRORS, BAD_INPUT, CONFLICT, FORBIDDEN, UNAUTHORIZED
from operations import lifecycle, registry, selectors
from operations.api import representation
from operations.api.serializers import (
    AllBanksOperationFilterSerializer,
    BulkCancelInputSerializer,
    BulkCancelSerializer,
    OperationActionSerializer,
    OperationDetailSerializer,
    OperationFilterSerializer,
    OperationListSerializer,
    OperationSerializer,
    OperationStatsSerializer,
)
from operations.models import Operation
from operations.slots import SlotPlanError, plan_from_settings
from operations.worker import nodes
from tenancy.auth import IsAdminAccess
from tenancy.scoping import BankScopedMixin


class IncludePayloadSerializer(serializers.Serializer[Any]):
    include_payload = serializers.BooleanField(required=False, default=False)


def parse_operation_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationError({"operation_id": [f"{raw!r} is not a valid operation id (a UUID)"]}) from None


def _action_response(operation_id: Any, message: str, http_status: int = 200) -> Response:
    current = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    return Response(
        {"success": True, "message": message, "operation_id": str(operation_id), "status": current},
        status=http_status,
    )


class BankOperationViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    """Operations of one bank: banks/{bank_id}/operations…"""

    serializer_class = OperationSerializer

    def get_queryset(self) -> Any:
        return Operation.objects.filter(bank=self.get_bank())

    def get_operation(self) -> Operation:
        queryset = self.get_queryset()  # the bank check comes first
        operation_id = parse_operation_id(self.kwargs["operation_id"])
        operation: Operation | None = queryset.filter(pk=operation_id).first()
        if operation is None:
            raise NotFound(f"operation {operation_id} not found")
        return operation

    @extend_schema(
        summary="List a bank's operations",
        operation_id="list_bank_operations",
        parameters=[OperationFilterSerializer],
        responses={200: OperationListSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def index(self, request: Request, bank_id: str) -> Response:
        queryset = self.get_queryset()
        filters = OperationFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        limit, offset = filters.validated_data["limit"], filters.validated_data["offset"]
        page = selectors.operation_page(
            selectors.operations_filtered(queryset, filters.validated_data), limit=limit, offset=offset
        )
        return Response(_page_body(bank_id, page, limit, offset))

    @extend_schema(
        summary="Get one operation",
        parameters=[IncludePayloadSerializer],
        responses={200: OperationDetailSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def retrieve(self, request: Request, bank_id: str, operation_id: str) -> Response:
        queryset = self.get_queryset()  # the bank check comes first
        options = IncludePayloadSerializer(data=request.query_params)
        options.is_valid(raise_exception=True)
        row = queryset.filter(pk=parse_operation_id(operation_id)).values(*selectors.DETAIL_FIELDS).first()
        if row is None:
            raise NotFound(f"operation {operation_id} not found")
        children = None
        if _is_parent_type(row["operation_type"]):
            children = list(
                Operation.objects.filter(parent_id=row["id"])
                .order_by("created_at", "id")
                .values(*selectors.LIST_FIELDS)
            )
        return Response(
            representation.operation_detail(
                row, children=children, include_payload=options.validated_data["include_payload"]
            )
        )

    @extend_schema(
        summary="Cancel an operation",
        description="200: it was pending and is now cancelled. 202: it is running; it stops at its "
        "next checkpoint (or is stopped after the grace period). 409: it already finished.",
        request=None,
        responses={
            200: OperationActionSerializer,
            202: OperationActionSerializer,
            **BAD_INPUT,
            **AUTH_ERRORS,
            **CONFLICT,
        },
    )
    def cancel(self, request: Request, bank_id: str, operation_id: str) -> Response:
        operation = self.get_operation()
        outcome = lifecycle.operation_cancel(operation_id=operation.pk)
        if outcome is lifecycle.CancelOutcome.CANCELLED:
            return _action_response(operation.pk, "operation cancelled")
        return _action_response(
            operation.pk, "cancel requested; the operation stops at its next checkpoint", status.HTTP_202_ACCEPTED
        )

    @extend_schema(
        summary="Retry a failed or cancelled operation",
        request=None,
        responses={200: OperationActionSerializer, **BAD_INPUT, **AUTH_ERRORS, **CONFLICT},
    )
    def retry(self, request: Request, bank_id: str, operation_id: str) -> Response:
        operation = self.get_operation()
        lifecycle.operation_retry(operation_id=operation.pk)
        return _action_response(operation.pk, "operation queued again")

    @extend_schema(
        summary="Delete a finished operation",
        request=None,
        responses={
            200: inline_serializer(
                "DeletedOperation",
                {
                    "success": serializers.BooleanField(),
                    "message": serializers.CharField(),
                    "operation_id": serializers.UUIDField(),
                },
            ),
            **BAD_INPUT,
            **AUTH_ERRORS,
            **CONFLICT,
        },
    )
    def remove(self, request: Request, bank_id: str, operation_id: str) -> Response:
        operation = self.get_operation()
        lifecycle.operation_delete(operation_id=operation.pk)
        return Response({"success": True, "message": "operation deleted", "operation_id": str(operation.pk)})

    @extend_schema(
        summary="Cancel every pending operation of the bank",
        request=BulkCancelInputSerializer,
        responses={200: BulkCancelSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def bulk_cancel(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        body = BulkCancelInputSerializer(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        count = lifecycle.operations_cancel_pending(bank_id=bank.pk, operation_type=body.validated_data.get("type"))
        return Response({"success": True, "bank_id": bank.pk, "cancelled_count": count})

    @extend_schema(summary="Operation counts of the bank", responses={200: OperationStatsSerializer, **AUTH_ERRORS})
    def stats(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        return Response(selectors.operation_stats(bank_id=bank.pk))


def _is_parent_type(operation_type: str) -> bool:
    try:
        return registry.is_parent(operation_type)
    except registry.UnknownOperationType:
        return False


def _page_body(bank_id: str | None, page: selectors.Page, limit: int, offset: int) -> dict[str, Any]:
    items = representation.operation_items(page.rows)
    return {
        "bank_id": bank_id,
        "total": page.total,
        # This service's: `total` is PostgreSQL's estimate past COUNT_CAP rows.
        "total_is_estimate": page.total_is_estimate,
        "limit": limit,
        "offset": offset,
        "operations": items,
        # The same entries, under the name Hindsight's documentation examples read.
        "items": items,
    }


class AllOperationViewSet(viewsets.GenericViewSet[Any]):
    """Operations across banks (admin keys)."""

    permission_classes = [IsAdminAccess]
    serializer_class = OperationSerializer

    @extend_schema(
        summary="List operations across banks (admin)",
        parameters=[AllBanksOperationFilterSerializer],
        responses={
            200: OperationListSerializer,
            **BAD_INPUT,
            401: UNAUTHORIZED,
            403: FORBIDDEN,
        },
    )
    def index(self, request: Request) -> Response:
        filters = AllBanksOperationFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        limit, offset = filters.validated_data["limit"], filters.validated_data["offset"]
        page = selectors.operation_page(
            selectors.operations_filtered(Operation.objects.all(), filters.validated_data),
            limit=limit,
            offset=offset,
        )
        return Response(_page_body(filters.validated_data.get("bank_id"), page, limit, offset))


class WorkersSerializer(serializers.Serializer[Any]):
    plan = serializers.JSONField(help_text="this node's slot plan (runworkers --print-plan)")
    plan_error = serializers.CharField(allow_null=True)
    nodes = serializers.ListField(child=serializers.JSONField(), help_text="live worker nodes")


class WorkerViewSet(viewsets.GenericViewSet[Any]):
    permission_classes = [IsAdminAccess]
    serializer_class = WorkersSerializer

    @extend_schema(
        summary="The slot plan and the live worker nodes with what they run (admin)",
        responses={200: WorkersSerializer, 401: UNAUTHORIZED, 403: FORBIDDEN},
    )
    def index(self, request: Request) -> Response:
        try:
            plan, error = plan_from_settings().as_dict(), None
        except SlotPlanError as exc:
            plan, error = None, str(exc)
        return Response({"plan": plan, "plan_error": error, "nodes": nodes.live_nodes()})
