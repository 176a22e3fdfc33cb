"""Create an API key; the key itself is printed once, on the last line."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.api_keys import api_key_create


class Command(BaseCommand):
    help = "Create an admin API key (--admin) or one scoped to banks (--bank, repeatable)."

    def add_arguments(self, parser: CommandParser) -> None:
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--admin", action="store_true", help="the key reaches every bank")
        scope.add_argument("--bank", action="append", metavar="BANK", help="a bank the key reaches")
        parser.add_argument("--name", default="", help="a label shown in the admin")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key, raw = api_key_create(name=options["name"], admin=options["admin"], bank_ids=options["bank"] or [])
        except (ValueError, ValidationError) as exc:
            message = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            raise CommandError(message) from None
        scope = "every bank" if key.is_admin else ", ".join(key.bank_ids)
        self.stdout.write(f"Created API key {key.prefix}… for {scope}. It is shown only once:")
        self.stdout.write(raw)
