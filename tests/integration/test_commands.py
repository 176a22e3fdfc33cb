"""Management commands: create_api_key, quickstart, and the compose file's commands."""

from __future__ import annotations

import hashlib
import io
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.utils import timezone

from tenancy.api_keys import api_key_authenticate
from tenancy.models import ApiKey
from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.django_db


def run(*args: str) -> list[str]:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_create_admin_key_prints_it_last_and_stores_a_hash() -> None:
    raw = run("create_api_key", "--admin", "--name", "ci")[-1]
    key = ApiKey.objects.get()
    assert key.is_admin and key.name == "ci"
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in str(ApiKey.objects.values().get())
    assert api_key_authenticate(raw) == key
    assert api_key_authenticate(raw + "x") is None


def test_create_bank_scoped_key() -> None:
    raw = run("create_api_key", "--bank", "alpha", "--bank", "beta")[-1]
    key = api_key_authenticate(raw)
    assert key is not None and not key.is_admin
    assert key.bank_ids == ["alpha", "beta"]
    assert key.can_access("alpha") and not key.can_access("gamma")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bank", "not a bank!"], "A bank id is 1-128 characters"),
        ([], "one of the arguments --admin --bank is required"),
    ],
)
def test_create_api_key_refuses_bad_arguments(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *args)
    assert ApiKey.objects.count() == 0


def test_quickstart_keeps_its_admin_key_across_restarts_until_rotated(settings: Any, tmp_path: Path) -> None:
    settings.DATA_DIR = tmp_path
    first = run("quickstart")
    second = run("quickstart")
    assert first[0].startswith("Admin login: admin / ") and first[0] == second[0]
    key_one, key_two = first[-1].split()[-1], second[-1].split()[-1]
    assert key_one == key_two and api_key_authenticate(key_one).is_admin  # a restart revokes nothing
    assert (tmp_path / "api-key").stat().st_mode & 0o777 == 0o600
    rotated = run("quickstart", "--rotate")[-1].split()[-1]
    assert rotated != key_one and api_key_authenticate(key_one) is None
    assert api_key_authenticate(rotated).is_admin
    # A kept key that was revoked meanwhile is replaced, not printed.
    ApiKey.objects.filter(name="quickstart").update(revoked_at=timezone.now())
    fresh = run("quickstart")[-1].split()[-1]
    assert fresh != rotated and api_key_authenticate(fresh).is_admin
    assert (tmp_path / "api-key").read_text().strip() == fresh
    assert ApiKey.objects.filter(name="quickstart", revoked_at__isnull=True).count() == 1
    from django.contrib.auth import authenticate

    assert authenticate(username="admin", password=first[0].split()[-1]) is not None


def test_docker_compose_services_run_real_project_commands() -> None:
    compose = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "rabbitmq", "web", "worker", "beat", "flower"}
    assert services["flower"]["profiles"] == ["flower"]  # started only on request
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    manage_commands = set(get_commands())
    for name in ("web", "worker", "beat", "flower"):
        service = services[name]
        command = service["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if argv[:2] == ["python", "manage.py"]:
            assert argv[2] in manage_commands, f"{name}: no manage.py command {argv[2]}"
        elif argv[0] == "gunicorn":
            assert argv[1] == "opsproject.wsgi"
        else:
            assert argv[:3] == ["celery", "-A", "opsproject"] and argv[3] in ("worker", "beat", "flower"), name
        environment = service["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://")
        # Redis unless the environment names another broker (RabbitMQ).
        assert environment["CELERY_BROKER_URL"] == "${CELERY_BROKER_URL:-redis://redis:6379/0}"
        assert set(service["depends_on"]) >= {"postgres", "redis"}
        # No secret in the file (compose refuses to start without one from the
        # environment) and no wildcard host.
        assert environment["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?"), name
        assert "*" not in environment["DJANGO_ALLOWED_HOSTS"], name
