from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from operations import registry

        # Types declared outside the installed apps (e.g. by a deployment or the tests).
        registry.load_type_modules(settings.OPS_OPERATION_TYPE_MODULES)
