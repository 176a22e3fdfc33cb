from __future__ import annotations

from rest_framework import serializers

from banks.models import Bank
from operations.api.validators import no_nul_characters


class BankSerializer(serializers.ModelSerializer):
    class Meta:
        model = Bank
        fields = [
            "bank_id", "name", "mission", "enable_observations", "enable_auto_consolidation",
            "config", "created_at", "updated_at",
        ]


class StrictBooleanField(serializers.BooleanField):
    """JSON true/false only: 0, "yes" or "on" are refused, as the schema says."""

    def to_internal_value(self, data: object) -> bool:
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)
        raise AssertionError("unreachable")


class BankInputSerializer(serializers.Serializer):
    """PUT/PATCH body. Every field is optional and may be null (unchanged);
    fields Hindsight clients send that this service does not use are ignored."""

    name = serializers.CharField(max_length=200, required=False, allow_null=True, allow_blank=True)
    mission = serializers.CharField(max_length=20_000, required=False, allow_null=True, allow_blank=True)
    enable_observations = StrictBooleanField(required=False, allow_null=True)
    enable_auto_consolidation = StrictBooleanField(required=False, allow_null=True)
    config = serializers.DictField(required=False, allow_null=True, validators=[no_nul_characters])


class BankListSerializer(serializers.Serializer):
    banks = BankSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class PageSerializer(serializers.Serializer):
    """`limit` and `offset` of a paged list."""

    limit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=1000)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10_000_000)


class BankDeletedSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    message = serializers.CharField()
    bank_id = serializers.CharField()
    deleted_operations = serializers.IntegerField()


class BankStatsSerializer(serializers.Serializer):
    bank_id = serializers.CharField()
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
