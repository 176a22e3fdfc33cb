"""Periodic housekeeping of the memory-bank domain (run by beat on the system worker)."""

from __future__ import annotations

from celery import shared_task

from banks import scheduler
from banks.models import StoredFile
from operations.models import OperationStatus


@shared_task(name="ops.delete_finished_files", ignore_result=True)
def delete_finished_files() -> int:
    """Uploaded files whose operation completed are no longer needed."""
    deleted, _ = StoredFile.objects.filter(operation__status=OperationStatus.COMPLETED).delete()
    return deleted


@shared_task(name="ops.refresh_scheduled_mental_models", ignore_result=True)
def refresh_scheduled_mental_models() -> int:
    """Queue the scheduled mental-model refreshes that are due. Safe to run
    from several beats at once: each due run is claimed by one of them."""
    return scheduler.refreshes_queue_due()
