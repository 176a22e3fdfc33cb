"""Uploaded files, kept until their conversion completes."""

from __future__ import annotations

from django.db import models


class StoredFile(models.Model):
    """An uploaded file, kept in the database (every node can read it) until
    its operation completes; a failed one keeps it so a retry can run."""

    # No constraint: the partitioned operations table has no unique `id` alone
    # to refer to (see operations.partitions); the prune deletes these with its day.
    operation = models.OneToOneField(
        "operations.Operation", on_delete=models.CASCADE, related_name="stored_file", db_constraint=False
    )
    filename = models.CharField(max_length=512)
    content_type = models.CharField(max_length=200, blank=True, default="")
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
