"""Prepare the embedded platform for a first look: an admin login and an admin API key."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from banks.api_keys import api_key_create
from banks.models import ApiKey

QUICKSTART_KEY_NAME = "quickstart"


class Command(BaseCommand):
    help = "Ensure an 'admin' superuser exists and issue a fresh admin API key (the previous quickstart key is revoked)."

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
        ApiKey.objects.filter(name=QUICKSTART_KEY_NAME, revoked_at__isnull=True).delete()
        _, raw = api_key_create(name=QUICKSTART_KEY_NAME, admin=True)
        self.stdout.write(f"Admin login: {login}")
        self.stdout.write(f"Admin API key (use as 'Authorization: Bearer <key>'): {raw}")
