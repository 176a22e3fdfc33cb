"""Prepare the embedded platform for a first look: an admin login and an admin API key."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from tenancy.api_keys import api_key_authenticate, api_key_create
from tenancy.models import ApiKey

QUICKSTART_KEY_NAME = "quickstart"


class Command(BaseCommand):
    help = (
        "Ensure an 'admin' superuser and an admin API key exist and print them. The key is kept in "
        "DATA_DIR/api-key (mode 0600) and reused while it is live, so a restart does not revoke it; "
        "--rotate issues a fresh one and revokes the previous quickstart key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rotate", action="store_true", help="issue a fresh key, revoking the previous one")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        password_file = settings.DATA_DIR / "admin-password"
        user = User.objects.filter(username="admin").first()
        if user is None:
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "", password)
            settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            login = f"admin / {password}"
        elif password_file.exists():
            login = f"admin / {password_file.read_text().strip()}"
        else:
            login = "admin (password unchanged; reset it with `manage.py changepassword admin`)"
        raw = _kept_key(settings.DATA_DIR / "api-key", rotate=options["rotate"])
        self.stdout.write(f"Admin login: {login}")
        self.stdout.write(f"Admin API key (use as 'Authorization: Bearer <key>'): {raw}")


def _kept_key(key_file: Path, *, rotate: bool) -> str:
    """The quickstart key kept in `key_file` while it is a live admin key;
    otherwise (or when rotating) a fresh one, written there, the previous
    quickstart keys revoked (kept listed, as any revoked key)."""
    if not rotate and key_file.exists():
        raw = key_file.read_text().strip()
        key = api_key_authenticate(raw)
        if key is not None and key.is_admin:
            return raw
    ApiKey.objects.filter(name=QUICKSTART_KEY_NAME, revoked_at__isnull=True).update(revoked_at=timezone.now())
    _, raw = api_key_create(name=QUICKSTART_KEY_NAME, admin=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.chmod(0o600)  # before the key is written: never readable by others
    key_file.write_text(raw + "\n")
    return raw
