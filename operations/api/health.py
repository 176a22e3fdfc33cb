"""Health and metrics endpoints (no authentication, like a load balancer expects)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework import serializers
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from operations.metrics import OperationsCollector

log = logging.getLogger(__name__)

# What an unauthenticated caller learns of a component: its state, never the
# exception (which may name hosts, users or paths); the detail goes to the log.
OK, UNAVAILABLE = "ok", "unavailable"


def check_database() -> bool:
    """True when the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # any failure means not ready
        log.warning("health: the database is unavailable", exc_info=True)
        connection.close()
        return False


def check_broker() -> bool:
    """True when the broker accepts a connection."""
    from opsproject.celery import app

    try:
        with app.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        log.warning("health: the broker is unavailable", exc_info=True)
        return False


HealthSerializer = inline_serializer(
    "Health",
    {
        "status": serializers.ChoiceField(choices=["healthy", "unhealthy"]),
        "database": serializers.ChoiceField(choices=[OK, UNAVAILABLE]),
        "broker": serializers.ChoiceField(choices=[OK, UNAVAILABLE]),
    },
)


def _readiness() -> tuple[dict[str, Any], int]:
    database, broker = check_database(), check_broker()
    healthy = database and broker
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "database": OK if database else UNAVAILABLE,
        "broker": OK if broker else UNAVAILABLE,
    }
    return body, 200 if healthy else 503


@extend_schema(
    summary="Readiness: database and broker reachable", responses={200: HealthSerializer, 503: HealthSerializer}
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def ready(request: Request) -> Response:
    body, status = _readiness()
    return Response(body, status=status)


@extend_schema(summary="Health (same as readiness)", responses={200: HealthSerializer, 503: HealthSerializer})
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def health(request: Request) -> Response:
    body, status = _readiness()
    return Response(body, status=status)


@extend_schema(
    summary="Liveness: the process answers",
    responses={200: inline_serializer("Live", {"status": serializers.CharField()})},
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def live(request: Request) -> Response:
    return Response({"status": "alive"})


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, computed from the database at scrape time, so every
    API process reports the same figures whatever process did the work."""
    registry = CollectorRegistry()
    registry.register(OperationsCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
