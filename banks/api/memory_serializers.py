"""Request and response shapes of the memory endpoints (Hindsight's)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from banks.api.serializers import PageSerializer, StrictBooleanField
from banks.extraction import EntityMention
from banks.memory import RetainItem
from banks.schedules import CRON_MAX_LENGTH, INTERVAL_MAX_SECONDS, InvalidCron, cron_validated
from core.api.validators import no_nul_characters

CONTENT_MAX_CHARS = 1_000_000


class TagField(serializers.CharField):
    """An operation's free-text label (`tag`), stored on the operation and its
    children and filterable in the operation lists."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("allow_blank", True)
        kwargs.setdefault("max_length", 200)
        kwargs.setdefault("help_text", "a label for the operation(s) this creates, filterable with ?tag=")
        super().__init__(**kwargs)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {"text": {"type": "string"}, "type": {"type": "string"}},
                "required": ["text"],
            },
        ]
    }
)
class EntityField(serializers.Field[Any, Any, Any, Any]):
    """An explicit entity: "Ada Lovelace" or {"text": "Ada Lovelace", "type": "person"}."""

    def to_internal_value(self, data: Any) -> EntityMention:
        no_nul_characters(data)  # PostgreSQL text cannot hold it (a 500 on the entity's INSERT)
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


class RetainItemSerializer(serializers.Serializer[Any]):
    content = serializers.CharField(max_length=CONTENT_MAX_CHARS, trim_whitespace=False)
    timestamp = serializers.DateTimeField(required=False, allow_null=True)
    context = serializers.CharField(  # type: ignore[assignment]  # Hindsight's field name
        required=False, allow_null=True, allow_blank=True, max_length=20_000
    )
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


class RetainRequestSerializer(serializers.Serializer[Any]):
    """POST banks/{bank_id}/memories. (`async` is added in get_fields: it is a Python keyword.)"""

    items = RetainItemSerializer(many=True, allow_empty=False, max_length=100_000)  # type: ignore[call-arg]  # the list's
    operation_id = serializers.UUIDField(required=False, allow_null=True)
    tag = TagField()
    document_tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, allow_null=True, max_length=100
    )

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
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


class RetainResponseSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    bank_id = serializers.CharField()
    items_count = serializers.IntegerField()
    operation_id = serializers.UUIDField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        fields["async"] = serializers.BooleanField()
        return fields


class FilesResponseSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    bank_id = serializers.CharField()
    operation_ids = serializers.ListField(child=serializers.UUIDField())


class FileMetadataSerializer(serializers.Serializer[Any]):
    """Per-file settings (Hindsight's `files_metadata` entries)."""

    context = serializers.CharField(  # type: ignore[assignment]  # Hindsight's field name
        required=False, allow_null=True, allow_blank=True, max_length=20_000
    )
    document_id = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=512)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, allow_null=True, max_length=100
    )
    metadata = serializers.DictField(required=False, allow_null=True, validators=[no_nul_characters])


class FilesRequestSerializer(serializers.Serializer[Any]):
    """multipart/form-data: `files` (one or more), and either plain fields
    (`tags`, `context`, `document_id`, `tag`) or Hindsight's `request`: a JSON
    object `{"files_metadata": [{context, document_id, tags, metadata}, …]}`
    with one entry per file."""

    files = serializers.ListField(child=serializers.FileField(), allow_empty=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    context = serializers.CharField(  # type: ignore[assignment]  # Hindsight's field name
        required=False, allow_blank=True, max_length=20_000
    )
    document_id = serializers.CharField(required=False, allow_blank=True, max_length=512)
    tag = TagField()
    request = serializers.CharField(
        required=False, allow_blank=True, help_text='JSON: {"files_metadata": [{...}, ...]} (Hindsight clients)'
    )


class FilesRequestJSONSerializer(serializers.Serializer[Any]):
    """The JSON of the multipart `request` field."""

    files_metadata = FileMetadataSerializer(many=True, required=False, allow_null=True)
    tag = TagField()


class ConsolidateRequestSerializer(serializers.Serializer[Any]):
    """POST banks/{bank_id}/consolidate. Without a scope every unconsolidated
    unit is consolidated; `observation_scopes` (Hindsight's) or `tags` (the
    older form) narrow it. An empty list is no scope."""

    tags = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        allow_null=True,
        max_length=100,
        help_text="only units carrying at least one of these tags",
    )
    observation_scopes = serializers.ListField(
        child=serializers.ListField(child=serializers.CharField(max_length=100), allow_empty=False, max_length=100),
        required=False,
        allow_null=True,
        max_length=100,
        help_text="lists of tags: only units carrying every tag of at least one list",
    )
    tag = TagField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("tags") and attrs.get("observation_scopes"):
            raise serializers.ValidationError(
                {"observation_scopes": ["send observation_scopes or tags, not both ([[t] for t in tags] is the same)"]}
            )
        return attrs

    def scopes(self) -> list[list[str]] | None:
        """The request's scope as observation scopes (None: every unit)."""
        data = self.validated_data
        if data.get("observation_scopes"):
            return [list(scope) for scope in data["observation_scopes"]]
        if data.get("tags"):
            return [[tag] for tag in data["tags"]]
        return None


class RefreshRequestSerializer(serializers.Serializer[Any]):
    """Optional body of a refresh. `mode` is Hindsight's ("full" is all this service does)."""

    tag = TagField()
    mode = serializers.ChoiceField(choices=["full", "delta"], required=False, allow_null=True)


class SubmittedSerializer(serializers.Serializer[Any]):
    operation_id = serializers.UUIDField()
    deduplicated = serializers.BooleanField()


class RefreshResponseSerializer(SubmittedSerializer):
    status = serializers.CharField()


class MemoryFilterSerializer(PageSerializer):
    document_id = serializers.CharField(required=False, max_length=512)


class DocumentSerializer(serializers.Serializer[Any]):
    document_id = serializers.CharField()
    content_hash = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    context = serializers.CharField(  # type: ignore[assignment]  # Hindsight's field name
    )
    metadata = serializers.DictField()
    unit_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DocumentListSerializer(serializers.Serializer[Any]):
    bank_id = serializers.CharField()
    items = DocumentSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class MemoryUnitSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    text = serializers.CharField()
    document_id = serializers.CharField(source="document.document_id")
    timestamp = serializers.DateTimeField()
    tags = serializers.ListField(child=serializers.CharField())
    context = serializers.CharField(  # type: ignore[assignment]  # Hindsight's field name
    )
    consolidated = serializers.BooleanField()
    entities = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_entities(self, unit: Any) -> list[str]:
        return [e.display_name for e in unit.entities.all()]


class MemoryListSerializer(serializers.Serializer[Any]):
    bank_id = serializers.CharField()
    items = MemoryUnitSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class DeletedSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    units_deleted = serializers.IntegerField()
    operation_id = serializers.UUIDField(help_text="the graph_maintenance operation queued")
    consolidation_operation_id = serializers.UUIDField(
        allow_null=True,
        help_text="the consolidation queued to rebuild observations built from the deleted units "
        "(null when none were, or the bank does not consolidate automatically)",
    )


class DocumentDeletedSerializer(DeletedSerializer):
    """Hindsight's DeleteDocumentResponse fields, then this service's."""

    message = serializers.CharField()
    document_id = serializers.CharField()
    memory_units_deleted = serializers.IntegerField()


class TriggerSerializer(serializers.Serializer[Any]):
    """Hindsight's mental-model trigger. The schedule fields are acted on; the
    others Hindsight clients send (`mode`, `refresh_after_consolidation`, …)
    are accepted and ignored. On update it patches key by key: a key sent
    replaces (null clears), a key left out stays."""

    refresh_cron = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=CRON_MAX_LENGTH,
        help_text='a 5-field UTC cron expression ("0 3 * * *": daily at 03:00) or @hourly, @daily, …',
    )
    refresh_interval_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=INTERVAL_MAX_SECONDS,
        help_text="refresh every this many seconds (instead of refresh_cron)",
    )
    min_refresh_interval_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=INTERVAL_MAX_SECONDS,
        help_text="at least this many seconds between two scheduled refreshes",
    )

    def validate_refresh_cron(self, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        try:
            return cron_validated(value)
        except InvalidCron as exc:
            raise serializers.ValidationError(f"not a valid cron expression: {exc}") from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("refresh_cron") and attrs.get("refresh_interval_seconds"):
            raise serializers.ValidationError(
                {"refresh_cron": ["a schedule is refresh_cron or refresh_interval_seconds, not both"]}
            )
        return attrs


class TriggerOutputSerializer(serializers.Serializer[Any]):
    mode = serializers.CharField()
    refresh_after_consolidation = serializers.BooleanField()
    refresh_cron = serializers.CharField(allow_null=True)
    refresh_interval_seconds = serializers.IntegerField(allow_null=True)
    min_refresh_interval_seconds = serializers.IntegerField(allow_null=True)


class MentalModelInputSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField(
        required=False, allow_null=True, help_text="the model's id (a UUID); generated when absent"
    )
    name = serializers.CharField(max_length=200)
    source_query = serializers.CharField(max_length=5000)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=10, max_value=100_000)
    tag = TagField(help_text="a label for the first refresh operation")
    trigger = TriggerSerializer(required=False, allow_null=True, help_text="the refresh schedule")


class MentalModelUpdateSerializer(serializers.Serializer[Any]):
    """PATCH banks/{bank_id}/mental-models/{id} (Hindsight's update_mental_model):
    the fields sent change; null or absent leaves a field as it is."""

    name = serializers.CharField(max_length=200, required=False, allow_null=True)
    source_query = serializers.CharField(max_length=5000, required=False, allow_null=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=10, max_value=100_000)
    trigger = TriggerSerializer(required=False, allow_null=True, help_text="patched key by key")

    def changes(self) -> dict[str, Any]:
        return {name: value for name, value in self.validated_data.items() if name != "trigger" and value is not None}


class MentalModelSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    bank_id = serializers.CharField()
    name = serializers.CharField()
    source_query = serializers.CharField()
    content = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    max_tokens = serializers.IntegerField()
    trigger = serializers.SerializerMethodField()
    next_refresh_at = serializers.DateTimeField(
        allow_null=True, help_text="when the next scheduled refresh is due (null: no schedule)"
    )
    last_refreshed_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(TriggerOutputSerializer)
    def get_trigger(self, model: Any) -> dict[str, Any]:
        # mode and refresh_after_consolidation: what this service does (a full
        # rewrite; no refresh after consolidation), in Hindsight's fields.
        return {
            "mode": "full",
            "refresh_after_consolidation": False,
            "refresh_cron": model.refresh_cron or None,
            "refresh_interval_seconds": model.refresh_interval_seconds,
            "min_refresh_interval_seconds": model.min_refresh_interval_seconds,
        }


class MentalModelCreatedSerializer(MentalModelSerializer):
    mental_model_id = serializers.UUIDField()
    operation_id = serializers.UUIDField()


class MentalModelListSerializer(serializers.Serializer[Any]):
    bank_id = serializers.CharField()
    items = MentalModelSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
