"""The slot plan: how a node's worker concurrency is split between operation types.

`OPS_WORKER_MAX_SLOTS` is the node's total. `OPS_WORKER_<TYPE>_RESERVED_SLOTS`
(default: the type's declared `reserved_slots`) is capacity only that type may
use. The remainder is a shared pool every type may use, so a type with a
reservation overflows into the shared pool when its own slots are busy.

On Celery this is one worker process per reserved type (consuming `ops.<type>`,
concurrency = its reservation) plus one shared worker consuming every type's
queue (concurrency = the remainder). Beside the plan runs a one-slot system
worker for the sweeper: it is not an operation and must run even when every
slot is busy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from operations import registry
from operations.routing import SYSTEM_QUEUE
from opsproject.env import env_int


class SlotPlanError(ValueError):
    pass


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queues: list[str]
    concurrency: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "queues": self.queues, "concurrency": self.concurrency}


@dataclass(frozen=True)
class SlotPlan:
    max_slots: int
    reserved: dict[str, int]
    shared: int
    workers: list[WorkerSpec] = field(default_factory=list)
    system: WorkerSpec = field(default_factory=lambda: WorkerSpec("system", [SYSTEM_QUEUE], 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_slots": self.max_slots,
            "reserved": dict(self.reserved),
            "shared": self.shared,
            "workers": [w.as_dict() for w in self.workers],
            "system_worker": self.system.as_dict(),
        }


def build_plan(*, max_slots: int, reserved: dict[str, int], types: list[registry.OperationType]) -> SlotPlan:
    """The plan for a node; raises SlotPlanError when it cannot run every type."""
    runnable = [t for t in types if not t.rollup]
    names = {t.name for t in runnable}
    unknown = sorted(set(reserved) - names)
    if unknown:
        raise SlotPlanError(f"slots reserved for unknown operation types: {', '.join(unknown)}")
    reserved = {name: n for name, n in sorted(reserved.items()) if n > 0}
    total_reserved = sum(reserved.values())
    if total_reserved > max_slots:
        detail = ", ".join(f"{name}={n}" for name, n in reserved.items())
        raise SlotPlanError(
            f"reserved slots ({total_reserved}: {detail}) exceed OPS_WORKER_MAX_SLOTS ({max_slots}); "
            "lower the reservations or raise the total"
        )
    shared = max_slots - total_reserved
    unreserved = sorted(names - set(reserved))
    if shared == 0 and unreserved:
        raise SlotPlanError(
            f"reservations use all {max_slots} slots, leaving none for {', '.join(unreserved)}; "
            "leave at least one shared slot"
        )
    workers = [WorkerSpec(name, [f"ops.{name}"], n) for name, n in reserved.items()]
    if shared:
        workers.append(WorkerSpec("shared", [t.queue for t in sorted(runnable, key=lambda t: t.name)], shared))
    return SlotPlan(max_slots=max_slots, reserved=reserved, shared=shared, workers=workers)


def plan_from_settings() -> SlotPlan:
    """The plan this node runs, from OPS_WORKER_MAX_SLOTS and the reservations."""
    types = registry.all_types()
    reserved = {
        t.name: env_int(f"{t.env_prefix}_RESERVED_SLOTS", t.reserved_slots, minimum=0) for t in types if not t.rollup
    }
    return build_plan(max_slots=settings.OPS_WORKER_MAX_SLOTS, reserved=reserved, types=types)


def check_visibility_timeout(visibility_timeout: float | None, types: list[registry.OperationType]) -> None:
    """A Redis message a worker holds unacknowledged comes back after the
    visibility timeout; it must outlast the longest run, or every long run gets
    a (dropped, but wasted) redelivery. Raises SlotPlanError otherwise."""
    if visibility_timeout is None:
        return
    runnable = [t for t in types if not t.rollup]
    if not runnable:
        return
    longest = max(runnable, key=lambda t: t.hard_time_limit)
    if visibility_timeout <= longest.hard_time_limit:
        raise SlotPlanError(
            f"OPS_BROKER_VISIBILITY_TIMEOUT ({visibility_timeout:g}s) must be longer than the "
            f"longest hard time limit ({longest.name}: {longest.hard_time_limit:g}s)"
        )
