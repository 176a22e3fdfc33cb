"""Launch this node's slot plan as Celery worker processes and supervise them."""

from __future__ import annotations

import json
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations import registry
from operations.slots import (
    SlotPlan,
    SlotPlanError,
    WorkerSpec,
    check_visibility_timeout,
    plan_from_settings,
)
from operations.worker.supervisor import Child, Supervisor, celery_command


def worker_argv(spec: WorkerSpec, *, pool: str, loglevel: str) -> list[str]:
    return celery_command(
        "worker",
        "--queues",
        ",".join(spec.queues),
        "--concurrency",
        str(spec.concurrency),
        "--hostname",
        f"{spec.name}@{settings.OPS_NODE_NAME}",
        "--pool",
        pool,
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel,
        # Node discovery goes through the database, not broker broadcasts.
        "--without-mingle",
        "--without-gossip",
    )


def plan_children(plan: SlotPlan, *, loglevel: str) -> list[Child]:
    children = [
        Child(
            f"worker {w.name}",
            worker_argv(w, pool="prefork", loglevel=loglevel),
            restart=True,
            nice=settings.OPS_WORKER_NICE,
        )
        for w in plan.workers
    ]
    # The sweeper runs in its own process so it is never starved by operations.
    children.append(Child("worker system", worker_argv(plan.system, pool="solo", loglevel=loglevel), restart=True))
    return children


class Command(BaseCommand):
    help = "Start one Celery worker per reserved operation type plus a shared worker (the slot plan)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--print-plan", action="store_true", help="print the plan as JSON and exit")
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            plan = plan_from_settings()
            check_visibility_timeout(
                cast("float | None", settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")),
                registry.all_types(),
            )
        except (SlotPlanError, ImproperlyConfigured) as exc:
            raise CommandError(f"cannot start the workers: {exc}") from None
        if options["print_plan"]:
            self.stdout.write(json.dumps(plan.as_dict(), indent=2))
            return
        for worker in plan.workers:
            self.stdout.write(f"{worker.name}: {worker.concurrency} slot(s) on {', '.join(worker.queues)}")
        if settings.OPS_WORKER_NICE:
            self.stdout.write(f"operation workers run at nice {settings.OPS_WORKER_NICE} (OPS_WORKER_NICE)")
        code = Supervisor(plan_children(plan, loglevel=options["loglevel"]), out=self.stdout).run()
        if code:
            raise CommandError(f"a worker exited with status {code}")
