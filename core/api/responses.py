"""The error responses every endpoint documents in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    # The error body's field (only described: this serializer never validates).
    errors = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()), required=False
    )


class ConflictSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    status = serializers.CharField()
    operation_id = serializers.CharField()


UNAUTHORIZED = OpenApiResponse(ErrorSerializer, description="no API key, or a bad one")
FORBIDDEN = OpenApiResponse(ErrorSerializer, description="not an admin key")
AUTH_ERRORS: dict[int, Any] = {
    401: UNAUTHORIZED,
    404: OpenApiResponse(ErrorSerializer, description="no such bank or id (or not reachable with this key)"),
}
BAD_INPUT: dict[int, Any] = {
    400: OpenApiResponse(ErrorSerializer, description="invalid input; `errors` names the fields")
}
CONFLICT: dict[int, Any] = {
    409: OpenApiResponse(ConflictSerializer, description="the operation's status does not allow it")
}
