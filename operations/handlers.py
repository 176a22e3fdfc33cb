"""The handler contract: what a handler receives and how it talks back.

A handler is a function `handle(ctx: OperationContext) -> dict | None`, declared
in the registry by its dotted path. It:

- reads its input from `ctx.payload` (JSON primitives) and the operation's
  fields (`ctx.bank_id`, `ctx.document_id`, …), never from model instances
  passed in;
- reports progress with `ctx.progress(stage, processed=…, total=…, detail={name: count})`, which also
  checks for cancellation; between items with no progress to report it calls
  `ctx.checkpoint()`;
- returns a JSON-able dict (stored as `result_metadata`) or None;
- raises `PermanentError` for a failure a retry cannot fix (bad input, an
  unreadable file); any other exception is transient and retried with backoff;
- must be idempotent: after a crash or a lost lease the operation runs again
  from the start (or, for a `resumable` type, from its last progress), so a
  second run must converge on the same rows.

`ctx.progress` and `ctx.checkpoint` raise `OperationCancelled` when a cancel was
requested and `LeaseLost` when another worker now owns the operation; handlers
let both propagate. A type declared `resumable` may also see `OperationYielded`
(its bank is over its fair share while another bank waits): it propagates too,
and the next run starts from `ctx.resumed`, the last progress recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from django.utils import timezone


class PermanentError(Exception):
    """A failure that retrying cannot fix: the operation fails at once."""


class OperationCancelled(Exception):
    """Raised at a checkpoint when a cancel was requested for the operation."""


class LeaseLost(Exception):
    """Raised at a checkpoint when the worker no longer owns the operation."""


class OperationYielded(Exception):
    """Raised at a checkpoint of a resumable operation whose bank holds more
    than its share of the pool while another bank waits: the operation goes
    back to pending with its progress and resumes there (`fair_share`)."""


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one operation; every write it makes is fenced by `lease_id`."""

    operation_id: str
    lease_id: str
    operation_type: str
    bank_id: str
    worker: str
    task_id: str
    attempt: int
    payload: dict[str, Any]
    document_id: str | None = None
    filename: str | None = None
    mental_model_id: str | None = None
    tag: str | None = None
    parent_id: str | None = None
    serial_key: str | None = None
    # The progress the operation had when claimed (a resumed run starts there).
    progress: dict[str, Any] | None = None
    resumable: bool = False


# Checkpoints between items can be very frequent; the cancellation flag is read
# from the database at most this often, and the fair share checked this often.
CHECKPOINT_INTERVAL_SECONDS = 0.2
FAIR_SHARE_INTERVAL_SECONDS = 0.25
# Progress within one stage is written at most this often (a retain reports
# before every item); a new stage is written at once.
PROGRESS_INTERVAL_SECONDS = 0.25


# What a checkpoint finds of its lease.
LeaseState = Literal["ok", "cancel_requested", "lost"]


class LeaseKeeper(Protocol):
    """What a context asks of the lifecycle about its lease (the runner
    passes `operations.lifecycle`): the contract stays a leaf that imports
    none of the lifecycle."""

    def operation_progress(self, *, lease: Lease, progress: dict[str, Any]) -> bool: ...

    def operation_lease_state(self, *, lease: Lease) -> LeaseState: ...

    def operation_over_share(self, *, lease: Lease) -> bool: ...


@dataclass
class OperationContext:
    lease: Lease
    lifecycle: LeaseKeeper
    stage: str = "started"
    _last_check: float = field(default=0.0, repr=False)
    _last_share_check: float = field(default_factory=time.monotonic, repr=False)
    _last_write: float = field(default=0.0, repr=False)
    _written_stage: str | None = field(default=None, repr=False)
    # The latest progress reported, written or not (a yield records it).
    last_report: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def operation_id(self) -> str:
        return self.lease.operation_id

    @property
    def bank_id(self) -> str:
        return self.lease.bank_id

    @property
    def payload(self) -> dict[str, Any]:
        return self.lease.payload

    @property
    def document_id(self) -> str | None:
        return self.lease.document_id

    @property
    def filename(self) -> str | None:
        return self.lease.filename

    @property
    def mental_model_id(self) -> str | None:
        return self.lease.mental_model_id

    @property
    def resumed(self) -> dict[str, Any] | None:
        """A resumable operation run again: the last progress it recorded
        (`processed` items were done and committed), else None."""
        return self.lease.progress if self.lease.resumable else None

    @property
    def attempt(self) -> int:
        """0 on the first run, n on the n-th retry."""
        return self.lease.attempt

    def progress(
        self,
        stage: str,
        *,
        processed: int | None = None,
        total: int | None = None,
        detail: dict[str, int] | None = None,
    ) -> None:
        """Record progress, then check for cancellation (see `checkpoint`).
        `detail` is a few named counts (Hindsight's shape), e.g. {"units": 12}.
        Within a stage, written at most every PROGRESS_INTERVAL_SECONDS: the
        row may show an earlier count, never a later one (a resumed run
        starts from what is written)."""
        self.stage = stage
        self.last_report = {
            "stage": stage,
            "at": timezone.now().isoformat(),
            "processed": processed,
            "total": total,
            "detail": detail,
        }
        now = time.monotonic()
        if stage == self._written_stage and now - self._last_write < PROGRESS_INTERVAL_SECONDS:
            self.checkpoint()
            return
        if not self.lifecycle.operation_progress(lease=self.lease, progress=self.last_report):
            raise LeaseLost(self.operation_id)
        self._written_stage, self._last_write = stage, now
        self.checkpoint(force=True)

    def checkpoint(self, *, force: bool = False) -> None:
        """Raise OperationCancelled if a cancel was requested, LeaseLost if the
        operation is no longer ours; otherwise return at once."""
        now = time.monotonic()
        if not force and now - self._last_check < CHECKPOINT_INTERVAL_SECONDS:
            return
        self._last_check = now
        state = self.lifecycle.operation_lease_state(lease=self.lease)
        if state == "lost":
            raise LeaseLost(self.operation_id)
        if state == "cancel_requested":
            raise OperationCancelled(self.operation_id)
        if self.lease.resumable and now - self._last_share_check >= FAIR_SHARE_INTERVAL_SECONDS:
            self._last_share_check = now
            if self.lifecycle.operation_over_share(lease=self.lease):
                raise OperationYielded(self.operation_id)
