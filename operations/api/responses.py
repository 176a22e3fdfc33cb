"""The error responses every endpoint documents in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse

from operations.api.serializers import ConflictSerializer, ErrorSerializer

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
