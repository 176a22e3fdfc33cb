"""The Celery application: configured from Django settings, tasks from the registry.

`celery -A opsproject worker` works as Celery users expect; `manage.py runworkers`
launches the slot plan with the same app.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsproject.settings")

app = Celery("opsproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Routes come from the registry of operation types (see operations.routing).
app.conf.task_routes = ("operations.routing.route_task",)
app.autodiscover_tasks()
