from __future__ import annotations

from django.apps import AppConfig


class BanksConfig(AppConfig):
    name = "banks"
    verbose_name = "Memory banks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Declares the built-in operation types in the registry.
        import banks.operation_types  # noqa: F401
        from banks.webhooks import WEBHOOK_FINISH_HOOK
        from operations import finish_hooks

        # Finished operations raise webhook events (banks.webhooks).
        finish_hooks.register(WEBHOOK_FINISH_HOOK)
