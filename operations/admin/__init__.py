"""The operator's admin console: the pages (`pages`, registered on import),
the lifecycle actions they offer (`actions`), the badges and bars the
dashboard shares (`display`) and the paginator that never counts a whole
table (`paging`)."""

from operations.admin import pages  # noqa: F401  (registers the ModelAdmins)
