"""Cancel, retry and delete from the admin console, through the lifecycle service.

Each action calls `operations.lifecycle` once per selected operation (the
service owns every transition; the admin never writes a status), counts what
changed, groups the refusals by their reason, logs each change in the admin
log (LogEntry), and reports it all in one message:

    "Cancelled 3 operations; requested cancel of 1 running operation.
     2 refused: cannot cancel an operation that is completed (2)."
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from django.contrib import messages
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import capfirst

from operations import lifecycle
from operations.models import TERMINAL_STATUSES, Operation

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

# One request handles at most this many operations: "select all" over a
# million rows must not hold a request (and its locks) for minutes. The
# message says so, and running the action again continues.
ACTION_LIMIT = 1000


@dataclass
class ActionReport:
    """What one action did: outcome label -> count, refusal reason -> count."""

    done: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    truncated: bool = False

    def message(self, nothing: str) -> tuple[int, str]:
        """(messages level, text) for the operator."""
        parts = [f"{label.format(n=n, s='' if n == 1 else 's')}" for label, n in self.done.items() if n]
        text = "; ".join(parts) + "." if parts else nothing
        refused = sum(self.refused.values())
        if refused:
            reasons = ", ".join(f"{reason} ({n})" for reason, n in self.refused.most_common())
            text += f" {refused} refused: {reasons}."
        if self.truncated:
            text += f" Only the first {ACTION_LIMIT} selected were processed; run the action again for the rest."
        if not parts:
            return messages.WARNING, text
        return (messages.WARNING if refused or self.truncated else messages.SUCCESS), text


Step = Callable[[Operation], str]
"""Applies the transition to one operation; returns the outcome label (a
format string with {n} and {s}), or raises TransitionRefused / OperationNotFound."""


def run_action(
    model_admin: ModelAdmin[Operation],
    request: HttpRequest,
    queryset: QuerySet[Operation],
    *,
    step: Step,
    starts_from: frozenset[str],
    log_message: Callable[[Operation, str], str],
    deletes: bool = False,
    nothing: str = "Nothing changed.",
) -> ActionReport:
    report = ActionReport()
    # The rows the transition can start from come first, so that running a
    # truncated action again carries on where it stopped; the rest (up to the
    # limit) are still offered to the service, which says why it refuses them.
    ordered = queryset.order_by("created_at", "id")
    selected = list(ordered.filter(status__in=starts_from)[: ACTION_LIMIT + 1])
    if len(selected) > ACTION_LIMIT:
        selected, report.truncated = selected[:ACTION_LIMIT], True
    else:
        selected += list(ordered.exclude(status__in=starts_from)[: ACTION_LIMIT - len(selected)])
    for operation in selected:
        try:
            outcome = step(operation)
        except lifecycle.TransitionRefused as refused:
            report.refused[refused.reason] += 1
            continue
        except lifecycle.OperationNotFound:
            report.refused["it no longer exists"] += 1
            continue
        report.done[outcome] += 1
        _log(request, operation, log_message(operation, outcome), DELETION if deletes else CHANGE)
    level, text = report.message(nothing)
    model_admin.message_user(request, text, level)
    return report


def _log(request: HttpRequest, operation: Operation, message: str, flag: int) -> None:
    # Logged after the change: a deletion's LogEntry keeps the id and the
    # text of a row that is gone, which is all the admin log shows anyway.
    LogEntry.objects.log_actions(
        user_id=cast(int, request.user.pk),
        queryset=[operation],
        action_flag=flag,
        change_message=message,
        single_object=True,
    )


# --- the three steps ------------------------------------------------------------------

# The statuses each action can change (the service has the last word: it
# re-checks each one in its conditional UPDATE).
CANCELLABLE = frozenset({"pending", "processing"})
RETRYABLE = frozenset({"failed", "cancelled"})
DELETABLE = frozenset(str(status) for status in TERMINAL_STATUSES)

CANCELLED = "Cancelled {n} operation{s}"
REQUESTED = "requested cancel of {n} running operation{s} (they stop at their next checkpoint)"
RETRIED = "Queued {n} operation{s} again"
DELETED = "Deleted {n} finished operation{s}"


def cancel_step(operation: Operation) -> str:
    outcome = lifecycle.operation_cancel(operation_id=operation.pk)
    return CANCELLED if outcome is lifecycle.CancelOutcome.CANCELLED else REQUESTED


def retry_step(operation: Operation) -> str:
    lifecycle.operation_retry(operation_id=operation.pk)
    return RETRIED


def delete_step(operation: Operation) -> str:
    lifecycle.operation_delete(operation_id=operation.pk)
    return DELETED


def log_message_for(action: str) -> Callable[[Operation, str], str]:
    """The LogEntry text of an action's outcome (the admin log's "change message")."""

    def text(operation: Operation, outcome: str) -> str:
        if outcome is REQUESTED:
            return "Cancel requested from the admin console (it was processing)"
        return f"{capfirst(action)} from the admin console (it was {operation.status})"

    return text
