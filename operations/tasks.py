"""Celery tasks, generated from the registry: `ops.<type>` for each type, plus
the system tasks beat runs. A task takes an operation id and nothing else."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from operations import dispatch, registry, runner, services
from operations.routing import SYSTEM_QUEUE


def _make_task(optype: registry.OperationType) -> Task:
    def run(self: Task, operation_id: str) -> str:
        return runner.execute(operation_id, worker=self.request.hostname or "", task_id=self.request.id)

    run.__name__ = run.__qualname__ = f"run_{optype.name}"
    task: Task = shared_task(
        name=optype.task_name,
        bind=True,
        queue=optype.queue,
        soft_time_limit=optype.soft_time_limit,
        time_limit=optype.hard_time_limit,
        ignore_result=True,
    )(run)
    return task


OPERATION_TASKS: dict[str, Task] = {
    optype.name: _make_task(optype) for optype in registry.all_types() if not optype.rollup
}


@shared_task(name="ops.sweep", queue=SYSTEM_QUEUE, ignore_result=True)
def sweep() -> dict[str, Any]:
    """Reap expired leases, then publish what is due. Safe to run concurrently:
    every step is a conditional UPDATE."""
    reaped = services.operations_reap()
    published = dispatch.publish_due()
    return {"reaped": reaped, "published": published}
