from __future__ import annotations

from django.apps import AppConfig


class BanksConfig(AppConfig):
    name = "banks"
    verbose_name = "Memory banks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Declares the built-in operation types in the registry.
        import banks.operation_types  # noqa: F401
