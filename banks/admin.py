from __future__ import annotations

from django.contrib import admin

from banks.models import ApiKey, Bank


@admin.register(Bank)
class BankAdmin(admin.ModelAdmin):
    list_display = ("bank_id", "name", "enable_observations", "enable_auto_consolidation", "created_at")
    search_fields = ("bank_id", "name")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "is_admin", "bank_ids", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
