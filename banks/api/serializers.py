from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.api.validators import no_nul_characters
from tenancy.models import Bank

TRAITS = ("skepticism", "literalism", "empathy")


class DispositionSerializer(serializers.Serializer[Any]):
    """Hindsight's DispositionTraits: each 1 (low) to 5 (high). On input any
    of them may be left out (it keeps its value)."""

    skepticism = serializers.IntegerField(min_value=1, max_value=5, required=False)
    literalism = serializers.IntegerField(min_value=1, max_value=5, required=False)
    empathy = serializers.IntegerField(min_value=1, max_value=5, required=False)


class BankSerializer(serializers.ModelSerializer[Any]):
    """A bank, as Hindsight's BankProfileResponse (plus this service's fields)."""

    disposition = DispositionSerializer()

    class Meta:
        model = Bank
        fields = [
            "bank_id",
            "name",
            "mission",
            "background",
            "disposition",
            "enable_observations",
            "enable_auto_consolidation",
            "config",
            "created_at",
            "updated_at",
        ]


class StrictBooleanField(serializers.BooleanField):
    """JSON true/false only: 0, "yes" or "on" are refused, as the schema says."""

    def to_internal_value(self, data: object) -> bool:
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)
        raise AssertionError("unreachable")


class BankInputSerializer(serializers.Serializer[Any]):
    """PUT/PATCH body. Every field is optional and may be null (unchanged);
    fields Hindsight clients send that this service does not use are ignored."""

    name = serializers.CharField(max_length=200, required=False, allow_null=True, allow_blank=True)
    mission = serializers.CharField(max_length=20_000, required=False, allow_null=True, allow_blank=True)
    background = serializers.CharField(max_length=20_000, required=False, allow_null=True, allow_blank=True)
    disposition = DispositionSerializer(required=False, allow_null=True)
    # Hindsight's flat form of the same traits; each overrides `disposition`'s.
    disposition_skepticism = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=5)
    disposition_literalism = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=5)
    disposition_empathy = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=5)
    enable_observations = StrictBooleanField(required=False, allow_null=True)
    enable_auto_consolidation = StrictBooleanField(required=False, allow_null=True)
    config = serializers.DictField(required=False, allow_null=True, validators=[no_nul_characters])

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """`disposition` and the flat `disposition_<trait>` fields become one
        `disposition_traits`: the traits to change (the flat ones win)."""
        traits = dict(attrs.pop("disposition", None) or {})
        for trait in TRAITS:
            value = attrs.pop(f"disposition_{trait}", None)
            if value is not None:
                traits[trait] = value
        if traits:
            attrs["disposition_traits"] = traits
        return attrs


class BankListSerializer(serializers.Serializer[Any]):
    banks = BankSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class PageSerializer(serializers.Serializer[Any]):
    """`limit` and `offset` of a paged list."""

    limit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=1000)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10_000_000)


class BankDeletedSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    message = serializers.CharField()
    bank_id = serializers.CharField()
    deleted_operations = serializers.IntegerField()


class BankStatsSerializer(serializers.Serializer[Any]):
    """Hindsight's BankStatsResponse fields, then this service's."""

    bank_id = serializers.CharField()
    total_nodes = serializers.IntegerField(help_text="memory units")
    total_links = serializers.IntegerField()
    total_documents = serializers.IntegerField()
    total_observations = serializers.IntegerField()
    nodes_by_fact_type = serializers.DictField(child=serializers.IntegerField())
    links_by_link_type = serializers.DictField(child=serializers.IntegerField())
    links_by_fact_type = serializers.DictField(child=serializers.IntegerField())
    links_breakdown = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
    pending_consolidation = serializers.IntegerField()
    total_operations = serializers.IntegerField()
    operations_by_status = serializers.DictField(child=serializers.IntegerField())
    pending_operations = serializers.IntegerField()
    failed_operations = serializers.IntegerField()
    documents = serializers.IntegerField()
    memory_units = serializers.IntegerField()
    unconsolidated_units = serializers.IntegerField()
    entities = serializers.IntegerField()
    observations = serializers.IntegerField()
    links = serializers.IntegerField()
    mental_models = serializers.IntegerField()
