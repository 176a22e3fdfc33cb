"""Work that rides on an operation's finishing transaction.

An app that must react to operations finishing (the banks app queues webhook
deliveries) registers a hook here once, from its `ready()`. The lifecycle
service asks every hook *before* the finishing UPDATE whether it has anything
to do for this bank and type (`hook(bank_id, operation_type)`); a hook that
has nothing to do answers None, and then the finish stays the single UPDATE it
always was. A hook that answers with a follower gets it called with the
`Finished` outcome inside the same transaction as the UPDATE, only if the
UPDATE won, so whatever it writes commits or rolls back with the status change.

Why not Django signals: the contract is explicit (ask first, then act in the
transaction), and the ask is what keeps the hot path at one cheap query for a
deployment that never registered a webhook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finished:
    """An operation that has just become completed or failed."""

    operation_id: str
    bank_id: str
    operation_type: str
    status: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    document_id: str | None = None
    tag: str | None = None
    parent_id: str | None = None


Follower = Callable[[Finished], None]
Hook = Callable[[str, str], "Follower | None"]

_HOOKS: list[Hook] = []


def register(hook: Hook) -> Hook:
    """Add a hook (idempotent: registering the same function twice keeps one)."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)
    return hook


def followers(*, bank_id: str, operation_type: str) -> list[Follower]:
    """What the registered hooks want to do when an operation of this bank and
    type finishes; empty when none has anything to do. Call before the
    finishing transaction starts (it may read the database)."""
    found = []
    for hook in _HOOKS:
        follower = hook(bank_id, operation_type)
        if follower is not None:
            found.append(follower)
    return found


def run(found: list[Follower], finished: Finished) -> None:
    """Call the followers, inside the finishing transaction."""
    for follower in found:
        follower(finished)
