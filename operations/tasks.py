"""Celery tasks, generated from the registry: `ops.<type>` for each type, plus
the system tasks beat runs. A task takes an operation id and nothing else."""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, task_prerun
from django.conf import settings
from django.db import close_old_connections, connections

from operations import lifecycle, registry
from operations.lifecycle import dispatch
from operations.worker import nodes, runner  # noqa: F401 (nodes: signal handlers)

log = logging.getLogger(__name__)


class OperationFailed(Exception):
    """Raised by an operation's task once the run has recorded its operation
    failed, so that Celery's task state (and Flower) say so; the operation's
    row holds the error. Declared expected (`throws`): logged without a traceback."""


def _make_task(optype: registry.OperationType) -> Task[Any, Any]:
    def run(self: Task[Any, Any], operation_id: str) -> str:
        outcome = runner.execute(
            operation_id, operation_type=optype.name, worker=self.request.hostname or "", task_id=self.request.id or ""
        )
        if outcome in runner.FAILED_OUTCOMES:
            raise OperationFailed(f"operation {operation_id} {outcome}: its error_message says why")
        return outcome

    run.__name__ = run.__qualname__ = f"run_{optype.name}"
    task: Task[Any, Any] = shared_task(  # type: ignore[call-overload]  # float seconds: Celery takes them, its stubs say int
        name=optype.task_name,
        bind=True,
        soft_time_limit=optype.soft_time_limit,
        time_limit=optype.hard_time_limit,
        ignore_result=True,
        throws=(OperationFailed,),
    )(run)
    return task


OPERATION_TASKS: dict[str, Task[Any, Any]] = {optype.name: _make_task(optype) for optype in registry.runnable_types()}


@task_prerun.connect
def _keep_database_connections(**_: Any) -> None:
    """Before each task, what Django does before each request: close a
    connection that is broken or older than CONN_MAX_AGE (Celery's fixup no
    longer closes it every time: CELERY_DB_REUSE_MAX). Unlike a request, no
    health check round trip before every task: a connection is checked after
    an error (just above), and one that died meanwhile fails the claim, whose
    operation the sweeper publishes again."""
    close_old_connections()
    for connection in connections.all(initialized_only=True):
        connection.health_check_done = True  # type: ignore[attr-defined]  # Django's own flag, not in the stubs


@task_failure.connect
def _settle_lost_run(
    sender: Task[Any, Any] | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **_: Any,
) -> None:
    """In the worker's main process: the pool process running an operation died
    or was killed at its hard time limit. Settle the row at once; if this fails
    too, the lease reaper does it later."""
    if sender is None or sender.name not in {t.task_name for t in registry.all_types()}:
        return
    if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)) or not args or not task_id:
        return
    timed_out = isinstance(exception, TimeLimitExceeded)
    reason = (
        f"timed out: killed at the hard time limit of {registry.get(sender.name.removeprefix('ops.')).hard_time_limit:g}s"
        if timed_out
        else f"worker process lost ({exception})"
    )
    try:
        outcome = lifecycle.operation_abandoned(
            operation_id=str(args[0]), task_id=task_id, timed_out=timed_out, reason=reason
        )
        log.warning("operation %s: %s; now %s", args[0], reason, outcome)
    except Exception:
        log.exception("could not settle operation %s; the reaper will", args[0])


@shared_task(name="ops.sweep", ignore_result=True)
def sweep() -> dict[str, Any]:
    """Reap expired leases, roll up stranded parents, file finished operations
    under their week (PostgreSQL), publish what is due.
    Safe to run concurrently (several beats): every step is a conditional UPDATE."""
    return {
        "reaped": lifecycle.operations_reap(),
        "parents": lifecycle.operations_roll_up_stranded(),
        "filed": lifecycle.operations_file_finished(),
        "published": dispatch.publish_due(),
    }


@shared_task(name="ops.prune", ignore_result=True)
def prune() -> dict[str, Any]:
    """Delete terminal operations older than OPS_OPERATION_RETENTION_DAYS: on
    PostgreSQL drop the partitions past it and make the coming days'
    (OPS_PARTITIONS_AHEAD_DAYS), then delete what is left row by row."""
    days = settings.OPS_OPERATION_RETENTION_DAYS
    kept = lifecycle.operations_partitions_keep(older_than_days=days)
    return {**kept, "deleted": lifecycle.operations_prune(older_than_days=days)}
