"""Bare Celery for the embedded comparison: the same filesystem broker, a
no-op task that appends one byte to a file (so the benchmark can count runs
without a result backend)."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

_broker = Path(os.environ.get("OPS_DATA_DIR", "var")).resolve() / "bare-broker"
for _folder in ("queue", "processed", "control"):
    (_broker / _folder).mkdir(parents=True, exist_ok=True)

app = Celery("bench", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(_broker / "queue"),
        "data_folder_out": str(_broker / "queue"),
        "processed_folder": str(_broker / "processed"),
        "control_folder": str(_broker / "control"),
        "polling_interval": 0.02,  # as the platform's embedded default
    },
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


def marks_file() -> Path:
    return _broker.parent / "bare-marks"


@app.task(name="bench.noop")
def noop() -> None:
    with open(marks_file(), "ab") as marks:
        marks.write(b".")
