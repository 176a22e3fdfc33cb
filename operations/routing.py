"""Celery routing derived from the registry: task `ops.<type>` goes to queue `ops.<type>`."""

from __future__ import annotations

from typing import Any

from operations import registry

SYSTEM_QUEUE = "ops.system"


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str] | None:
    if not name.startswith("ops."):
        return None
    try:
        return {"queue": registry.get(name.removeprefix("ops.")).queue}
    except registry.UnknownOperationType:
        return {"queue": SYSTEM_QUEUE}
