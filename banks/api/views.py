"""Bank endpoints: banks, banks/{bank_id}, banks/{bank_id}/stats."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from banks.api.serializers import (
    BankDeletedSerializer,
    BankInputSerializer,
    BankListSerializer,
    BankSerializer,
    BankStatsSerializer,
    PageSerializer,
)
from banks.models import LinkKind, MemoryLink
from core.api.responses import AUTH_ERRORS, BAD_INPUT, UNAUTHORIZED
from operations.selectors import operation_stats
from tenancy import services
from tenancy.auth import access_of
from tenancy.models import Bank, bank_id_validator
from tenancy.scoping import BankScopedMixin, bank_not_found


def _body(request: Request) -> dict[str, Any]:
    if request.data is None or request.data == {}:
        return {}
    if not isinstance(request.data, dict):
        raise ValidationError({"non_field_errors": ["the body must be a JSON object"]})
    return request.data


class BankViewSet(BankScopedMixin, viewsets.GenericViewSet[Any]):
    serializer_class = BankSerializer

    def get_queryset(self) -> Any:
        access = access_of(self.request)
        banks = Bank.objects.order_by("bank_id")
        return banks if access.is_admin else banks.filter(bank_id__in=access.bank_ids)

    @extend_schema(
        summary="List the banks this key reaches",
        operation_id="list_banks",
        parameters=[PageSerializer],
        responses={200: BankListSerializer, **BAD_INPUT, 401: UNAUTHORIZED},
    )
    def index(self, request: Request) -> Response:
        page = PageSerializer(data=request.query_params)
        page.is_valid(raise_exception=True)
        limit, offset = page.validated_data["limit"], page.validated_data["offset"]
        banks = self.get_queryset()
        return Response(
            {
                "banks": BankSerializer(banks[offset : offset + limit], many=True).data,
                "total": banks.count(),
                "limit": limit,
                "offset": offset,
            }
        )

    @extend_schema(summary="Get a bank", responses={200: BankSerializer, **AUTH_ERRORS})
    def retrieve(self, request: Request, bank_id: str) -> Response:
        return Response(BankSerializer(self.get_bank()).data)

    @extend_schema(
        summary="Create or update a bank",
        request=BankInputSerializer,
        responses={200: BankSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def upsert(self, request: Request, bank_id: str) -> Response:
        if not access_of(request).can_access(bank_id):
            raise bank_not_found(bank_id)
        try:
            bank_id_validator(bank_id)
        except DjangoValidationError as exc:
            raise ValidationError({"bank_id": exc.messages}) from None
        body = BankInputSerializer(data=_body(request))
        body.is_valid(raise_exception=True)
        bank, _ = services.bank_put(bank_id=bank_id, fields=body.validated_data)
        return Response(BankSerializer(bank).data)

    @extend_schema(
        summary="Update some fields of a bank",
        request=BankInputSerializer,
        responses={200: BankSerializer, **BAD_INPUT, **AUTH_ERRORS},
    )
    def partial_update(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        body = BankInputSerializer(data=_body(request), partial=True)
        body.is_valid(raise_exception=True)
        bank, _ = services.bank_put(bank_id=bank.pk, fields=body.validated_data)
        return Response(BankSerializer(bank).data)

    @extend_schema(
        summary="Delete a bank and everything in it",
        responses={200: BankDeletedSerializer, **AUTH_ERRORS},
    )
    def destroy(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        count = services.bank_delete(bank=bank)
        return Response(
            {"success": True, "message": f"bank '{bank_id}' deleted", "bank_id": bank_id, "deleted_operations": count}
        )

    @extend_schema(summary="Statistics of a bank", responses={200: BankStatsSerializer, **AUTH_ERRORS})
    def stats(self, request: Request, bank_id: str) -> Response:
        bank = self.get_bank()
        ops = operation_stats(bank_id=bank.pk)
        units, observations = bank.memory_units.count(), bank.observations.count()
        # Through the units: links have no index on their bank.
        links = dict(
            MemoryLink.objects.filter(source__bank=bank).values_list("kind").annotate(n=Count("id")).order_by()
        )
        links_by_kind = {kind: links.get(kind, 0) for kind in LinkKind.values}
        unconsolidated = bank.memory_units.filter(consolidated=False).count()
        documents = bank.documents.count()
        return Response(
            {
                "bank_id": bank.pk,
                # Hindsight's names: its "world" facts are this service's memory units.
                "total_nodes": units,
                "total_links": sum(links_by_kind.values()),
                "total_documents": documents,
                "total_observations": observations,
                "nodes_by_fact_type": {"world": units, "observation": observations},
                "links_by_link_type": links_by_kind,
                "links_by_fact_type": {"world": sum(links_by_kind.values())},
                "links_breakdown": {"world": links_by_kind},
                "pending_consolidation": unconsolidated,
                "total_operations": ops["total"],
                "operations_by_status": ops["by_status"],
                "pending_operations": ops["by_status"]["pending"],
                "failed_operations": ops["by_status"]["failed"],
                "documents": documents,
                "memory_units": units,
                "unconsolidated_units": unconsolidated,
                "entities": bank.entities.count(),
                "observations": observations,
                "links": sum(links_by_kind.values()),
                "mental_models": bank.mental_models.count(),
            }
        )
