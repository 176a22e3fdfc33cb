"""Periodic housekeeping of the memory-bank domain (run by beat on the system worker)."""

from __future__ import annotations

from celery import shared_task

from banks.models import StoredFile
from operations.models import OperationStatus


@shared_task(name="ops.delete_finished_files", ignore_result=True)
def delete_finished_files() -> int:
    """Uploaded files whose operation completed are no longer needed."""
    deleted, _ = StoredFile.objects.filter(operation__status=OperationStatus.COMPLETED).delete()
    return deleted
