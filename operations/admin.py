from __future__ import annotations

from django.contrib import admin

from operations.models import Operation


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("id", "bank", "operation_type", "status", "retry_count", "created_at", "completed_at")
    list_filter = ("status", "operation_type", "created_at")
    search_fields = ("=id", "document_id", "tag")
    readonly_fields = [f.name for f in Operation._meta.fields]
