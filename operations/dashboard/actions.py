"""The dashboard's bulk actions: retry the failed operations of a filter,
cancel a bank's pending work, pause or resume the dispatch of a type.

Each is asked for twice: a GET shows what it would do (how many operations)
and a POST, with the admin's CSRF token, does it. Each needs its own
permission, the same the admin's row actions ask for, and each is recorded
(`ConsoleAction`: who, when, what, how many) and shown on the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.db.models import QuerySet

from operations import lifecycle, registry
from operations.models import ConsoleAction, Operation, OperationStatus
from tenancy.models import Bank

WINDOWS = [("1", "the last hour"), ("24", "the last day"), ("168", "the last week"), ("", "any time")]


def _type_choices(blank: str) -> list[tuple[str, str]]:
    return [("", blank), *((name, name) for name in registry.names() if not registry.is_parent(name))]


class RetryFailedForm(forms.Form):
    operation_type = forms.ChoiceField(required=False, label="type")
    bank_id = forms.CharField(required=False, max_length=128, label="bank")
    within_hours = forms.ChoiceField(choices=WINDOWS, required=False, initial="24", label="failed in")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["operation_type"].choices = _type_choices("every type")  # type: ignore[attr-defined]

    def clean_bank_id(self) -> str:
        bank_id = str(self.cleaned_data["bank_id"]).strip()
        if bank_id and not Bank.objects.filter(pk=bank_id).exists():
            raise forms.ValidationError(f"no bank {bank_id!r}")
        return bank_id


class CancelPendingForm(forms.Form):
    bank_id = forms.CharField(max_length=128, label="bank")
    operation_type = forms.ChoiceField(required=False, label="type")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["operation_type"].choices = _type_choices("every type")  # type: ignore[attr-defined]

    clean_bank_id = RetryFailedForm.clean_bank_id


class TypeForm(forms.Form):
    operation_type = forms.ChoiceField(label="type")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["operation_type"].choices = _type_choices("")[1:]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Action:
    name: str
    title: str
    permission: str
    form: type[forms.Form]
    # What it would change (for the confirmation), and doing it: how many changed.
    affected: Callable[[dict[str, Any]], QuerySet[Operation]]
    perform: Callable[[dict[str, Any], str], int]
    describe: Callable[[dict[str, Any]], str]


def _filters(data: dict[str, Any]) -> str:
    parts = [f"type {data['operation_type']}" if data.get("operation_type") else "every type"]
    if data.get("bank_id"):
        parts.append(f"bank {data['bank_id']}")
    return ", ".join(parts)


def _failed(data: dict[str, Any]) -> QuerySet[Operation]:
    return lifecycle.failed_matching(
        operation_type=data.get("operation_type") or None,
        bank_id=data.get("bank_id") or None,
        within_hours=int(data["within_hours"]) if data.get("within_hours") else None,
    )


def _pending(data: dict[str, Any]) -> QuerySet[Operation]:
    rows = Operation.objects.filter(status=OperationStatus.PENDING, bank_id=data["bank_id"])
    return rows.filter(operation_type=data["operation_type"]) if data.get("operation_type") else rows


def _pending_of_type(data: dict[str, Any]) -> QuerySet[Operation]:
    return Operation.objects.filter(status=OperationStatus.PENDING, operation_type=data["operation_type"])


ACTIONS = {
    action.name: action
    for action in [
        Action(
            "retry-failed",
            "Retry failed operations",
            "operations.retry_operation",
            RetryFailedForm,
            _failed,
            lambda data, user: lifecycle.operations_retry_failed(
                operation_type=data.get("operation_type") or None,
                bank_id=data.get("bank_id") or None,
                within_hours=int(data["within_hours"]) if data.get("within_hours") else None,
            ),
            lambda data: (
                f"the failed operations of {_filters(data)}, failed in " + dict(WINDOWS)[data.get("within_hours") or ""]
            ),
        ),
        Action(
            "cancel-pending",
            "Cancel a bank's pending operations",
            "operations.cancel_operation",
            CancelPendingForm,
            _pending,
            lambda data, user: lifecycle.operations_cancel_pending(
                bank_id=data["bank_id"], operation_type=data.get("operation_type") or None
            ),
            lambda data: f"the pending operations of {_filters(data)}",
        ),
        Action(
            "pause",
            "Pause the dispatch of a type",
            "operations.pause_dispatch",
            TypeForm,
            _pending_of_type,
            lambda data, user: int(lifecycle.dispatch_pause(operation_type=data["operation_type"], by=user)),
            lambda data: (
                f"type {data['operation_type']}: nothing of it is published or claimed until it is resumed; "
                "what runs finishes"
            ),
        ),
        Action(
            "resume",
            "Resume the dispatch of a type",
            "operations.pause_dispatch",
            TypeForm,
            _pending_of_type,
            lambda data, user: int(lifecycle.dispatch_resume(operation_type=data["operation_type"])),
            lambda data: f"type {data['operation_type']}: its pending operations are published again",
        ),
    ]
}


def record(action: Action, user: str, data: dict[str, Any], count: int) -> ConsoleAction:
    filters = {key: value for key, value in data.items() if value not in ("", None)}
    return ConsoleAction.objects.create(user=user, action=action.name, filters=filters, count=count)
