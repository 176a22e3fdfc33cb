"""The unified task view, `GET /tasks`: every operation the caller can see, in
the shape of Vectorize's background-task guide (one-letter status codes,
`task_type`, `end_date`). A JSON array, newest first, paged in the database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.responses import BAD_INPUT, UNAUTHORIZED
from operations import registry
from operations.api.serializers import ChoiceOf, CommaListField
from operations.models import Operation, OperationQuerySet, OperationStatus
from tenancy.auth import access_of

# The guide's status codes: queued, running, done, failed, cancelled.
STATUS_CODES: dict[str, str] = {
    "Q": OperationStatus.PENDING,
    "R": OperationStatus.PROCESSING,
    "D": OperationStatus.COMPLETED,
    "F": OperationStatus.FAILED,
    "C": OperationStatus.CANCELLED,
}
CODE_OF_STATUS = {status: code for code, status in STATUS_CODES.items()}


class TaskFilterSerializer(serializers.Serializer[Any]):
    task_type = CommaListField(
        child=ChoiceOf(choices=[]),
        required=False,
        help_text="only these operation types (repeatable)",
    )
    status = CommaListField(
        child=ChoiceOf(choices=list(STATUS_CODES.items())),
        required=False,
        help_text="only these statuses (repeatable): Q pending, R processing, D completed, F failed, C cancelled",
    )
    within_hours = serializers.IntegerField(
        required=False, default=1, min_value=1, max_value=24 * 366 * 10, help_text="created in the last N hours"
    )
    tag = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text="empty: no filter")
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10_000_000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(serializers.ListField, self.fields["task_type"]).child.choices = registry.choices()  # type: ignore[attr-defined]


class TaskSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    task_type = serializers.CharField(source="operation_type")
    task_status = serializers.SerializerMethodField(help_text="Q, R, D, F or C")
    tag = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    end_date = serializers.DateTimeField(source="completed_at", allow_null=True, help_text="when it finished")

    def get_task_status(self, operation: Operation) -> str:
        return CODE_OF_STATUS[operation.status]


def tasks_filtered(queryset: OperationQuerySet, filters: dict[str, Any]) -> OperationQuerySet:
    queryset = queryset.created_since(timezone.now() - timedelta(hours=filters["within_hours"]))
    if filters.get("task_type"):
        queryset = queryset.filter(operation_type__in=filters["task_type"])
    if filters.get("status"):
        queryset = queryset.filter(status__in=[STATUS_CODES[code] for code in filters["status"]])
    if filters.get("tag"):
        queryset = queryset.filter(tag=filters["tag"])
    return queryset.order_by("-created_at", "-id")


class TaskViewSet(viewsets.GenericViewSet[Any]):
    serializer_class = TaskSerializer

    @extend_schema(
        summary="Every operation the caller can see (the unified task view)",
        operation_id="list_tasks",
        parameters=[TaskFilterSerializer],
        responses={200: TaskSerializer(many=True), **BAD_INPUT, 401: UNAUTHORIZED},
    )
    def index(self, request: Request) -> Response:
        access = access_of(request)
        filters = TaskFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        rows = Operation.objects.all() if access.is_admin else Operation.objects.filter(bank_id__in=access.bank_ids)
        limit, offset = filters.validated_data["limit"], filters.validated_data["offset"]
        page = tasks_filtered(rows, filters.validated_data)[offset : offset + limit]
        return Response(TaskSerializer(page, many=True).data)
