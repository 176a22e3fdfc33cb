"""Run the whole platform on this machine: API server, workers and scheduler."""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from operations.supervisor import Child, Supervisor, celery_command


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
        if not options["skip_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        bind = options["bind"]
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        children = [
            Child(
                "web",
                [
                    sys.executable, "-m", "gunicorn", "opsproject.wsgi",
                    "--bind", bind,
                    "--workers", str(settings.OPS_WEB_WORKERS),
                    "--access-logfile", "-",
                ],
            ),
            Child("workers", [*manage, "runworkers", "--loglevel", options["loglevel"]]),
            Child(
                "beat",
                celery_command(
                    "beat", "--loglevel", options["loglevel"],
                    "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
                ),
            ),
        ]
        mode = "embedded (SQLite + filesystem broker)" if settings.EMBEDDED_BROKER else "scaled"
        url = f"http://{bind}"

        def started() -> None:
            self.stdout.write(
                f"Platform running, {mode}.\n"
                f"  API:   {url}/v1/default/\n"
                f"  Admin: {url}/admin/\n"
                "Press Ctrl-C to stop."
            )

        code = Supervisor(children, out=self.stdout, stop_timeout=60).run(on_started=started)
        sys.exit(code)
