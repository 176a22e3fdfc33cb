"""Work that rides on an operation's finishing transaction.

An app that must react to operations finishing (the banks app queues webhook
deliveries) registers a `Hook` here once, from its `ready()`. A hook has two
parts:

- `may_act`, an SQL condition on the finishing row (the operations table, by
  its name), which the finishing UPDATE returns beside its own result: the
  question costs no statement of its own, and a finish where no hook may act
  is that one UPDATE;
- `follower(bank_id, operation_type)`, asked only when `may_act` held (inside
  the finishing transaction): it may read more and returns what to do with
  the `Finished` outcome, or None. Whatever it writes commits or rolls back
  with the status change.

Why not Django signals: the contract is explicit (ask, then act in the
transaction), and the ask is what keeps the hot path free of queries for a
bank that never registered a webhook.
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


@dataclass(frozen=True)
class Hook:
    """`may_act`: an SQL boolean over the finishing row of the operations
    table, without parameters. `follower`: what to do, asked when it held."""

    may_act: str
    follower: Callable[[str, str], Follower | None]


_HOOKS: list[Hook] = []


def register(hook: Hook) -> Hook:
    """Add a hook (idempotent: registering an equal hook twice keeps one)."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)
    return hook


def conditions() -> dict[str, str]:
    """Each hook's `may_act`, named for a RETURNING clause."""
    return {f"hook_{index}": hook.may_act for index, hook in enumerate(_HOOKS)}


def followers_where(*, bank_id: str, operation_type: str, answers: dict[str, Any]) -> list[Follower]:
    """The followers of the hooks whose condition held (`answers`: the
    finishing row's values of `conditions()`)."""
    found = []
    for index, hook in enumerate(_HOOKS):
        if answers.get(f"hook_{index}"):
            follower = hook.follower(bank_id, operation_type)
            if follower is not None:
                found.append(follower)
    return found


def followers(*, bank_id: str, operation_type: str) -> list[Follower]:
    """What every hook wants to do when an operation of this bank and type
    finishes, asking each one (a parent's roll-up, which finishes outside
    the lifecycle's UPDATE)."""
    found = []
    for hook in _HOOKS:
        follower = hook.follower(bank_id, operation_type)
        if follower is not None:
            found.append(follower)
    return found


def run(found: list[Follower], finished: Finished) -> None:
    """Call the followers, inside the finishing transaction."""
    for follower in found:
        follower(finished)
