"""Start-up configuration: what the settings module refuses, and why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_DIR

SETUP = "import django; django.setup(); from django.conf import settings; print(len(settings.SECRET_KEY))"


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL")
    }
    environment.update(DJANGO_SETTINGS_MODULE="opsproject.settings", OPS_DATA_DIR=str(tmp_path / "var"), **env)
    return subprocess.run(
        [sys.executable, "-c", SETUP], cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=60
    )


def test_the_scaled_mode_refuses_to_start_without_a_shared_secret_key(tmp_path: Path) -> None:
    """Each node used to generate its own key: sessions broke across web replicas."""
    result = _start(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/ops")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "DJANGO_SECRET_KEY is not set" in result.stderr
    assert not (tmp_path / "var" / "secret_key").exists()


def test_the_scaled_mode_starts_with_a_secret_key(tmp_path: Path) -> None:
    result = _start(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/ops", DJANGO_SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "50"


def test_the_embedded_default_generates_and_keeps_its_key(tmp_path: Path) -> None:
    first = _start(tmp_path)
    assert first.returncode == 0, first.stderr
    stored = (tmp_path / "var" / "secret_key").read_text().strip()
    assert len(stored) >= 50 and first.stdout.strip() == str(len(stored))
    assert _start(tmp_path).returncode == 0
    assert (tmp_path / "var" / "secret_key").read_text().strip() == stored
