"""Run the whole platform on this machine: API server, workers and scheduler."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from operations.models import WorkerNode
from operations.slots import SlotPlanError, plan_from_settings
from operations.worker.supervisor import Child, Supervisor, celery_command

READY_WAIT_SECONDS = 120


class Command(BaseCommand):
    help = (
        "Start the API server (gunicorn), the worker slot plan (runworkers) and the beat "
        "scheduler as child processes; Ctrl-C or SIGTERM stops them together."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.OPS_BIND, help="address of the API server")
        parser.add_argument("--skip-migrate", action="store_true", help="do not apply migrations first")
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            plan = plan_from_settings()
        except SlotPlanError as exc:
            raise CommandError(f"invalid slot plan: {exc}") from None
        if not options["skip_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        bind = options["bind"]
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        children = [
            Child(
                "web",
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "opsproject.wsgi",
                    "--bind",
                    bind,
                    "--workers",
                    str(settings.OPS_WEB_WORKERS),
                    "--access-logfile",
                    "-",
                ],
            ),
            Child("workers", [*manage, "runworkers", "--loglevel", options["loglevel"]]),
            Child(
                "beat",
                celery_command(
                    "beat",
                    "--loglevel",
                    options["loglevel"],
                    "--schedule",
                    settings.CELERY_BEAT_SCHEDULE_FILENAME,
                ),
            ),
        ]
        mode = "embedded (SQLite + filesystem broker)" if settings.EMBEDDED_BROKER else "scaled"
        url = f"http://{bind}"

        launched = timezone.now()
        expected = [f"{w.name}@{settings.OPS_NODE_NAME}" for w in (*plan.workers, plan.system)]

        def banner() -> None:
            self.stdout.write(
                f"Platform running, {mode}.\n"
                f"  API:       {url}/v1/default/\n"
                f"  API docs:  {url}/v1/docs\n"
                f"  Admin:     {url}/admin/\n"
                f"  Dashboard: {url}/admin/dashboard/\n"
                + "".join(f"  {line}\n" for line in _credentials())
                + "Press Ctrl-C to stop."
            )

        def started() -> None:
            # Printed once every worker has reported itself ready (its node row),
            # after their start-up lines, where it stays in view.
            threading.Thread(target=_when_ready, args=(expected, launched, banner), daemon=True).start()

        code = Supervisor(children, out=self.stdout, stop_timeout=60).run(on_started=started)
        sys.exit(code)


def _when_ready(expected: list[str], launched: datetime, then: Callable[[], None]) -> None:
    """Call `then` once every expected worker has a node row from this start
    (or after READY_WAIT_SECONDS, so the banner is never lost)."""
    deadline = time.monotonic() + READY_WAIT_SECONDS
    try:
        while time.monotonic() < deadline:
            if WorkerNode.objects.filter(name__in=expected, started_at__gte=launched).count() >= len(expected):
                break
            time.sleep(0.5)
    finally:
        connection.close()
    then()


def _credentials() -> list[str]:
    """What `quickstart` keeps under DATA_DIR, printed again once everything
    is up (its own lines have scrolled away by then)."""
    lines = []
    password = settings.DATA_DIR / "admin-password"
    if password.exists():
        lines.append(f"Login:     admin / {password.read_text().strip()}")
    key = settings.DATA_DIR / "api-key"
    if key.exists():
        lines.append(f"API key:   {key.read_text().strip()}  (Authorization: Bearer <key>)")
    return lines
