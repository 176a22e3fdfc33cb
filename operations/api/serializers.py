"""API input (query parameters) and output shapes for operations.

Field names are Hindsight's, so its generated client parses them.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from django.http import QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from operations import registry, selectors
from operations.models import Operation, OperationStatus


class ChoiceOf(serializers.ChoiceField):
    """A choice whose error names the valid ones (with their meaning where
    the value is a code), so a caller sees what to send instead."""

    def to_internal_value(self, data: Any) -> Any:
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            valid = ", ".join(
                str(key) if str(key) == str(label) else f"{key} ({label})" for key, label in self.choices.items()
            )
            raise serializers.ValidationError(f'"{data}" is not one of: {valid}', code="invalid_choice") from None


class CommaListField(serializers.ListField):
    """A query parameter that may repeat (`?status=a&status=b`) and/or hold a
    comma-separated list (`?status=a,b`)."""

    def get_value(self, dictionary: Any) -> Any:
        if isinstance(dictionary, QueryDict):
            if self.field_name not in dictionary:
                return serializers.empty
            values = dictionary.getlist(str(self.field_name))
        else:
            values = dictionary.get(self.field_name, serializers.empty)
            if values is serializers.empty:
                return values
            values = values if isinstance(values, list) else [values]
        return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


class OperationFilterSerializer(serializers.Serializer[Any]):
    """Query parameters of the operation lists."""

    status = CommaListField(
        child=ChoiceOf(choices=OperationStatus.values),
        required=False,
        help_text="only these statuses (repeatable or comma-separated)",
    )
    type = CommaListField(
        child=ChoiceOf(choices=[]),
        required=False,
        help_text="only these operation types (repeatable or comma-separated)",
    )
    tag = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text="empty: no filter")
    within_hours = serializers.FloatField(
        required=False, min_value=0.001, max_value=24 * 366 * 10, help_text="created in the last N hours"
    )
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    parent_id = serializers.UUIDField(required=False, help_text="only children of this operation")
    exclude_parents = serializers.BooleanField(
        required=False, default=False, help_text="leave out parent (batch) operations"
    )
    id_prefix = serializers.CharField(
        required=False,
        max_length=36,
        help_text="only operations whose id starts with these 8 to 32 hexadecimal digits (dashes ignored): "
        "the short ids the consoles show",
    )
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10_000_000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read the registry per instance: types may be declared after import.
        cast(serializers.ListField, self.fields["type"]).child.choices = registry.choices()  # type: ignore[attr-defined]

    def validate_id_prefix(self, value: str) -> tuple[uuid.UUID, uuid.UUID]:
        """The range of ids the prefix covers: an index range on the primary key."""
        bounds = selectors.id_prefix_range(value, shortest=8)
        if bounds is None:
            raise serializers.ValidationError(f"{value!r} is not 8 to 32 hexadecimal digits of an operation id")
        return bounds

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after and before and after > before:
            raise serializers.ValidationError({"created_after": ["must not be later than created_before"]})
        return attrs


class AllBanksOperationFilterSerializer(OperationFilterSerializer):
    bank_id = serializers.CharField(required=False, max_length=128, help_text="only this bank")


class OperationDetailsSerializer(serializers.Serializer[Any]):
    """Hindsight's `details`: the typed outcome of a type that reports one
    (today refresh_mental_model: RefreshMentalModelOperationDetails)."""

    operation_type = serializers.CharField()
    outcome = serializers.CharField()
    failure_reason = serializers.CharField(allow_null=True, required=False)


class ExecutionSerializer(serializers.Serializer[Any]):
    """What this service adds about a run: which worker holds it, its lease, a
    pending cancel request. (Not in `details`, which Hindsight clients parse.)"""

    worker = serializers.CharField(allow_null=True)
    max_retries = serializers.IntegerField()
    heartbeat_at = serializers.DateTimeField(allow_null=True)
    cancel_requested_at = serializers.DateTimeField(allow_null=True)


class ProgressSerializer(serializers.Serializer[Any]):
    """Hindsight's OperationProgress: `detail` is a few named counts, or null."""

    stage = serializers.CharField()
    at = serializers.CharField()
    processed = serializers.IntegerField(allow_null=True)
    total = serializers.IntegerField(allow_null=True)
    detail = serializers.DictField(child=serializers.IntegerField(), allow_null=True)


@extend_schema_field(ProgressSerializer(allow_null=True))
class ProgressField(serializers.JSONField):
    """The stored progress report, documented with its shape."""


class OperationSerializer(serializers.Serializer[Any]):
    """An operation in a list."""

    id = serializers.UUIDField()
    operation_id = serializers.UUIDField(source="id")
    bank_id = serializers.CharField()
    task_type = serializers.CharField(source="operation_type")
    operation_type = serializers.CharField()
    status = serializers.ChoiceField(choices=OperationStatus.values)
    items_count = serializers.IntegerField()
    document_id = serializers.CharField(allow_null=True)
    filename = serializers.CharField(allow_null=True)
    mental_model_id = serializers.CharField(allow_null=True)
    tag = serializers.CharField(allow_null=True)
    parent_id = serializers.UUIDField(allow_null=True)
    details = serializers.SerializerMethodField()
    execution = ExecutionSerializer(source="*")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    retry_count = serializers.IntegerField()
    next_retry_at = serializers.DateTimeField(allow_null=True)
    progress = ProgressField(allow_null=True)

    @extend_schema_field(OperationDetailsSerializer(allow_null=True))
    def get_details(self, operation: Operation) -> dict[str, Any] | None:
        try:
            describe = registry.get(operation.operation_type).details_function
        except registry.UnknownOperationType:
            return None
        return describe(operation.status, operation.result_metadata or {}) if describe else None


class ChildOperationSerializer(OperationSerializer):
    """A child in `child_operations`; `sub_batch_index` is its place in the batch."""

    sub_batch_index = serializers.IntegerField()


class OperationDetailSerializer(OperationSerializer):
    """One operation, in full. `task_payload` only with `include_payload=true`."""

    max_retries = serializers.IntegerField()
    result_metadata = serializers.JSONField()
    error_history = serializers.JSONField()
    child_operations = serializers.SerializerMethodField()
    task_payload = serializers.JSONField(required=False)

    @extend_schema_field(ChildOperationSerializer(many=True, allow_null=True))
    def get_child_operations(self, operation: Operation) -> list[dict[str, Any]] | None:
        children = self.context.get("children")
        if children is None:
            return None
        return [{**OperationSerializer(child).data, "sub_batch_index": index} for index, child in enumerate(children)]

    def to_representation(self, instance: Operation) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.context.get("include_payload"):
            data.pop("task_payload", None)
        return data


class OperationListSerializer(serializers.Serializer[Any]):
    bank_id = serializers.CharField(allow_null=True)
    total = serializers.IntegerField()
    total_is_estimate = serializers.BooleanField(
        help_text="true when more than 1,000 match: `total` is then the database's estimate"
    )
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    operations = OperationSerializer(many=True)
    items = OperationSerializer(
        many=True, help_text="the same entries as `operations` (what Hindsight's documentation examples read)"
    )


class OperationActionSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    message = serializers.CharField()
    operation_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=OperationStatus.values)


class BulkCancelInputSerializer(serializers.Serializer[Any]):
    type = serializers.ChoiceField(choices=[], required=False, allow_null=True, help_text="only this operation type")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(serializers.ChoiceField, self.fields["type"]).choices = registry.choices()


class BulkCancelSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    bank_id = serializers.CharField()
    cancelled_count = serializers.IntegerField()


class OperationStatsSerializer(serializers.Serializer[Any]):
    bank_id = serializers.CharField()
    total = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_type = serializers.DictField(child=serializers.IntegerField())
    oldest_pending_age_seconds = serializers.FloatField(allow_null=True)
