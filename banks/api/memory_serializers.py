"""Request and response shapes of the memory endpoints (Hindsight's)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from banks.api.serializers import PageSerializer, StrictBooleanField
from banks.extraction import EntityMention
from banks.memory import RetainItem
from operations.api.validators import no_nul_characters

CONTENT_MAX_CHARS = 1_000_000


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "object", "properties": {"text": {"type": "string"}, "type": {"type": "string"}},
             "required": ["text"]},
        ]
    }
)
class EntityField(serializers.Field):
    """An explicit entity: "Ada Lovelace" or {"text": "Ada Lovelace", "type": "person"}."""

    def to_internal_value(self, data: Any) -> EntityMention:
        if isinstance(data, str) and data.strip():
            return EntityMention(data.strip()[:200])
        if isinstance(data, dict):
            name = data.get("text") or data.get("name")
            kind = data.get("type") or ""
            if isinstance(name, str) and name.strip() and isinstance(kind, str):
                return EntityMention(name.strip()[:200], kind[:50])
        raise serializers.ValidationError('an entity is a name or {"text": name, "type": type}')

    def to_representation(self, value: EntityMention) -> Any:
        return {"text": value.name, "type": value.entity_type}


class RetainItemSerializer(serializers.Serializer):
    content = serializers.CharField(max_length=CONTENT_MAX_CHARS, trim_whitespace=False)
    timestamp = serializers.DateTimeField(required=False, allow_null=True)
    context = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=20_000)
    metadata = serializers.DictField(required=False, allow_null=True, validators=[no_nul_characters])
    document_id = serializers.CharField(required=False, allow_null=True, max_length=512)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, allow_null=True, max_length=100
    )
    entities = serializers.ListField(child=EntityField(), required=False, allow_null=True, max_length=200)
    # Sent by Hindsight clients; accepted and not used by this service.
    resolve_entities = serializers.JSONField(required=False, allow_null=True)
    observation_scopes = serializers.JSONField(required=False, allow_null=True)
    strategy = serializers.JSONField(required=False, allow_null=True)
    update_mode = serializers.JSONField(required=False, allow_null=True)

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("content is empty")
        return value

    def to_item(self, data: dict[str, Any]) -> RetainItem:
        return RetainItem(
            content=data["content"],
            timestamp=data.get("timestamp"),
            context=data.get("context") or "",
            metadata=data.get("metadata") or {},
            document_id=data.get("document_id") or None,
            tags=data.get("tags") or [],
            entities=data.get("entities") or [],
        )


class RetainRequestSerializer(serializers.Serializer):
    """POST banks/{bank_id}/memories. (`async` is added in get_fields: it is a Python keyword.)"""

    items = RetainItemSerializer(many=True, allow_empty=False, max_length=100_000)
    operation_id = serializers.UUIDField(required=False, allow_null=True)
    document_tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, allow_null=True, max_length=100
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["async"] = StrictBooleanField(required=False, allow_null=True, default=False)
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, int] = {}
        errors: dict[str, list[str]] = {}
        for index, item in enumerate(attrs["items"]):
            document_id = item.get("document_id")
            if not document_id:
                continue
            if document_id in seen:
                errors[f"items.{index}.document_id"] = [
                    f"duplicate document_id {document_id!r} (also item {seen[document_id]}); "
                    "send each document once per request"
                ]
            seen.setdefault(document_id, index)
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class RetainResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    bank_id = serializers.CharField()
    items_count = serializers.IntegerField()
    operation_id = serializers.UUIDField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["async"] = serializers.BooleanField()
        return fields


class FilesResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    bank_id = serializers.CharField()
    operation_ids = serializers.ListField(child=serializers.UUIDField())


class FilesRequestSerializer(serializers.Serializer):
    files = serializers.ListField(child=serializers.FileField(), allow_empty=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    context = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    document_id = serializers.CharField(required=False, allow_blank=True, max_length=512)


class ConsolidateRequestSerializer(serializers.Serializer):
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, allow_null=True)


class SubmittedSerializer(serializers.Serializer):
    operation_id = serializers.UUIDField()
    deduplicated = serializers.BooleanField()


class RefreshResponseSerializer(SubmittedSerializer):
    status = serializers.CharField()


class MemoryFilterSerializer(PageSerializer):
    document_id = serializers.CharField(required=False, max_length=512)


class DocumentSerializer(serializers.Serializer):
    document_id = serializers.CharField()
    content_hash = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    context = serializers.CharField()
    metadata = serializers.DictField()
    unit_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DocumentListSerializer(serializers.Serializer):
    bank_id = serializers.CharField()
    items = DocumentSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class MemoryUnitSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    text = serializers.CharField()
    document_id = serializers.CharField(source="document.document_id")
    timestamp = serializers.DateTimeField()
    tags = serializers.ListField(child=serializers.CharField())
    context = serializers.CharField()
    consolidated = serializers.BooleanField()
    entities = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_entities(self, unit: Any) -> list[str]:
        return [e.display_name for e in unit.entities.all()]


class MemoryListSerializer(serializers.Serializer):
    bank_id = serializers.CharField()
    items = MemoryUnitSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class DeletedSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    units_deleted = serializers.IntegerField()
    operation_id = serializers.UUIDField(help_text="the graph_maintenance operation queued")


class MentalModelInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    source_query = serializers.CharField(max_length=5000)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=10, max_value=100_000)


class MentalModelSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    bank_id = serializers.CharField()
    name = serializers.CharField()
    source_query = serializers.CharField()
    content = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    max_tokens = serializers.IntegerField()
    last_refreshed_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MentalModelCreatedSerializer(MentalModelSerializer):
    operation_id = serializers.UUIDField()


class MentalModelListSerializer(serializers.Serializer):
    bank_id = serializers.CharField()
    items = MentalModelSerializer(many=True)
    total = serializers.IntegerField()
