"""Helpers of the console tests (admin, dashboard, opsctl): operations in a
given status made through the lifecycle service, staff users, and the
headless browser."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from operations import lifecycle
from operations.models import Operation

CHROMIUM = "/usr/bin/chromium"
# No network beyond loopback, nothing persistent: the flags keep Chromium from
# phoning home (updates, sync, QUIC probes) while the tests drive it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make(
    bank: str = "alpha",
    operation_type: str = "test_echo",
    status: str = "pending",
    progress: dict[str, Any] | None = None,
    **fields: Any,
) -> Operation:
    """An operation brought to `status` through the lifecycle service."""
    operation = lifecycle.operation_submit(bank_id=bank, operation_type=operation_type, **fields).operation
    if status == "cancelled":
        lifecycle.operation_cancel(operation_id=operation.pk)
    elif status != "pending":
        lease = lifecycle.operation_claim(operation_id=str(operation.pk), worker="shared@node1", task_id="t")
        assert lease is not None
        if progress is not None:
            lifecycle.operation_progress(lease=lease, progress=progress)
        if status == "completed":
            lifecycle.operation_complete(lease=lease, result={"units": 3, "entities": ["Alice"]})
        elif status == "failed":
            lifecycle.operation_fail(lease=lease, error="boom: the extractor gave up", permanent=True, stage="extract")
    return Operation.objects.get(pk=operation.pk)


def staff_user(username: str, *permissions: str, superuser: bool = False) -> Any:
    """A staff user holding `permissions` ("operations.cancel_operation", …)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    User = get_user_model()
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw-" + username)
    user = User.objects.create_user(username, f"{username}@example.com", "pw-" + username, is_staff=True)
    for dotted in permissions:
        app_label, codename = dotted.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return User.objects.get(pk=user.pk)  # a fresh instance: no stale permission cache


def require_chromium() -> str:
    """Debian's Chromium, which `make test` installs; fail (not skip) without it."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: the console tests need Debian's chromium "
            "(`make test` installs it with apt-get; or run `apt-get install -y chromium`)"
        )
    return CHROMIUM
