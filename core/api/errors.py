"""One JSON error shape for every API error.

    {"detail": "<what went wrong, for a human>", "errors": {"<field>": ["<reason>", ...]}}

`errors` is present for validation errors (400) and names each bad field
(query parameter or body field; nested fields as `items.3.content`). Refused
transitions are 409 and add the operation's current `status`.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core import errors as domain


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "request body too large"


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        errors: dict[str, list[str]] = {}
        for key, value in detail.items():
            # A nested serializer's own errors belong to the field that holds it.
            if key == "non_field_errors" and prefix:
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            errors.update(_flatten(value, name))
        return errors
    if isinstance(detail, list):
        if all(not isinstance(v, (dict, list)) for v in detail):
            return {prefix or "non_field_errors": [str(v) for v in detail]}
        errors = {}
        for index, value in enumerate(detail):
            if value:
                errors.update(_flatten(value, f"{prefix}.{index}" if prefix else str(index)))
        return errors
    return {prefix or "non_field_errors": [str(detail)]}


def _summary(errors: dict[str, list[str]]) -> str:
    field, reasons = next(iter(errors.items()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = "" if field == "non_field_errors" else f"{field}: "
    return f"invalid input: {where}{reasons[0]}{more}"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, domain.Conflict):
        return Response(exc.body(), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, domain.Missing):
        exc = exceptions.NotFound(exc.detail())
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(f"request body too large: {exc}")
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError(str(exc) or "malformed request")
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        return Response({"detail": _summary(errors), "errors": errors}, status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"detail": str(response.data["detail"])}
    return response


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/v1/", "/health", "/metrics", "/tasks"))


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _wants_json(request):
        return JsonResponse({"detail": f"no such endpoint: {request.path}"}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def json_server_error(request: HttpRequest) -> Any:
    if _wants_json(request):
        return JsonResponse({"detail": "internal error; it has been logged"}, status=500)
    from django.views.defaults import server_error

    return server_error(request)


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> Any:
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse({"detail": "request body too large"}, status=413)
    if _wants_json(request):
        return JsonResponse({"detail": "malformed request"}, status=400)
    from django.views.defaults import bad_request

    return bad_request(request, exception or SuspiciousOperation())


def json_forbidden(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _wants_json(request):
        return JsonResponse({"detail": "forbidden"}, status=403)
    from django.views.defaults import permission_denied

    return permission_denied(request, exception or PermissionDenied())
