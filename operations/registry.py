"""The registry of operation types: each type is declared once, here or by an app.

Model choices, Celery task names and routes, queues, the slot plan, API and
admin filters all derive from this registry. Adding a type is one handler
module plus one `register(OperationType(...))` call, made from an app's
`ready()` or from a module listed in `OPS_OPERATION_TYPE_MODULES`.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from operations.handlers import OperationContext

Handler = Callable[["OperationContext"], "dict[str, Any] | None"]
Details = Callable[[str, "dict[str, Any]"], "dict[str, Any] | None"]


def _import(dotted: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


class Scope(enum.Enum):
    """What a dedupe or serialization rule is keyed on, besides the type."""

    BANK = "bank"
    DOCUMENT = "document"
    MENTAL_MODEL = "mental_model"


@dataclass(frozen=True)
class OperationType:
    """How operations of one type are run.

    name            the type's name; its Celery task is `ops.<name>` on queue `ops.<name>`
    handler         dotted path of the handler function (imported on first use)
    max_retries     automatic retries after a transient error (None: OPS_WORKER_MAX_RETRIES)
    retry_delays    explicit delays in seconds for attempts 1, 2, …; when empty,
                    exponential backoff with full jitter (OPS_RETRY_BACKOFF_*) is used
    soft_time_limit seconds before the handler is interrupted and the operation fails
    time_limit      seconds before the process running it is killed (default soft + 30)
    dedupe          while one operation of this type and scope is pending, submitting
                    another returns it instead (`deduplicated: true`)
    serialize       at most one operation of this type and scope is processing
    reserved_slots  default reservation in the slot plan (OPS_WORKER_<NAME>_RESERVED_SLOTS)
    rollup          a parent type: it never runs, its status is the roll-up of its children
    resumable       the handler resumes from `ctx.resumed` (its last progress) when run
                    again, so it may give its slot back mid-run (fair share, see
                    `operations.fair_share`) and after a crash skips work already done
    details         dotted path of `details(status, result_metadata) -> dict | None`: the
                    typed outcome the API reports as the operation's `details`
                    (Hindsight's field; null for types that declare none)
    """

    name: str
    handler: str = ""
    description: str = ""
    max_retries: int | None = None
    retry_delays: tuple[float, ...] = ()
    soft_time_limit: float = 600.0
    time_limit: float | None = None
    dedupe: Scope | None = None
    serialize: Scope | None = None
    reserved_slots: int = 0
    rollup: bool = False
    resumable: bool = False
    details: str = ""

    @property
    def queue(self) -> str:
        return f"ops.{self.name}"

    @property
    def task_name(self) -> str:
        return f"ops.{self.name}"

    @property
    def hard_time_limit(self) -> float:
        return self.time_limit if self.time_limit is not None else self.soft_time_limit + 30

    @property
    def env_prefix(self) -> str:
        return f"OPS_WORKER_{self.name.upper()}"

    @cached_property
    def handler_function(self) -> Handler:
        function: Handler = _import(self.handler)
        return function

    @cached_property
    def details_function(self) -> Details | None:
        return _import(self.details) if self.details else None

    def key_for(
        self, scope: Scope | None, *, bank_id: str, document_id: str | None, mental_model_id: str | None
    ) -> str | None:
        """The dedupe or serialization key of an operation, or None when the rule
        does not apply (no rule, or the operation lacks the scoped field)."""
        if scope is None:
            return None
        prefix = f"{self.name}:{escape_key_part(bank_id)}"
        if scope is Scope.BANK:
            return prefix
        value = document_id if scope is Scope.DOCUMENT else mental_model_id
        return f"{prefix}:{value}" if value else None


def escape_key_part(part: str) -> str:
    """A key component that contains no ':', so `type:bank:value` keys are
    unambiguous whatever the bank id holds ('%' first, so it stays reversible).
    Migration 0004 applies the same escaping to stored keys in SQL."""
    return part.replace("%", "%25").replace(":", "%3A")


_TYPES: dict[str, OperationType] = {}


class UnknownOperationType(LookupError):
    pass


def register(operation_type: OperationType) -> OperationType:
    """Declare a type. Declaring the same name twice is an error, unless it is
    the very same declaration (modules may be imported more than once)."""
    existing = _TYPES.get(operation_type.name)
    if existing is not None and existing != operation_type:
        raise ValueError(f"operation type {operation_type.name!r} is already registered")
    if not operation_type.name.isidentifier() or operation_type.name != operation_type.name.lower():
        raise ValueError(f"operation type name {operation_type.name!r} must be a lowercase identifier")
    _TYPES[operation_type.name] = operation_type
    return operation_type


def get(name: str) -> OperationType:
    try:
        return _TYPES[name]
    except KeyError:
        raise UnknownOperationType(name) from None


def all_types() -> list[OperationType]:
    return sorted(_TYPES.values(), key=lambda t: t.name)


def names() -> list[str]:
    return [t.name for t in all_types()]


def parent_type_names() -> list[str]:
    """The roll-up (parent) types: their status follows their children."""
    return [t.name for t in all_types() if t.rollup]


def runnable_types() -> list[OperationType]:
    """The types a worker runs (every type but the parents): each has a task,
    a queue and a place in the slot plan."""
    return [t for t in all_types() if not t.rollup]


def is_parent(name: str) -> bool:
    """Whether operations of this type are parents (never run; see `rollup`)."""
    return get(name).rollup


def choices() -> list[tuple[str, str]]:
    """Model field choices; a callable, so adding a type needs no migration."""
    return [(t.name, t.name) for t in all_types()]


def load_type_modules(modules: list[str]) -> None:
    for module in modules:
        importlib.import_module(module)
