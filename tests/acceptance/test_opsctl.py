"""opsctl, the installed console script, against a live test server (and real
workers where work has to run): every command, its --json output parsed,
and its exit codes (0 done, 1 API error with its message, 2 usage)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from operations import lifecycle
from operations.models import Operation
from opsctl.cli import local_key_file
from tenancy.api_keys import api_key_create
from tests.conftest import wait_for
from tests.consoles import make

OPSCTL = str(Path(sys.executable).parent / "opsctl")


class Opsctl:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key

    def __call__(
        self,
        *args: str,
        key: str | None = None,
        timeout: float = 120,
        columns: int = 220,
        terminal: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_") and k != "DATABASE_URL"}
        env.update(OPS_URL=self.url, OPS_API_KEY=self.key if key is None else key, COLUMNS=str(columns), NO_COLOR="1")
        if terminal:  # rich then draws as on a terminal of `columns` (its escape codes stripped below)
            env["TTY_COMPATIBLE"] = "1"
        if key == "":
            env.pop("OPS_API_KEY")
        done = subprocess.run([OPSCTL, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if terminal:
            done.stdout = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", done.stdout)
        return done

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def opsctl(live_server: Any, alpha: Any, beta: Any) -> Opsctl:
    assert Path(OPSCTL).exists(), "opsctl is not installed: pip install -e . declares it in [project.scripts]"
    return Opsctl(live_server.url, api_key_create(name="cli", admin=True)[1])


def test_a_list_past_the_count_cap_shows_its_total_as_an_estimate(opsctl: Opsctl) -> None:
    from operations.selectors import COUNT_CAP

    Operation.objects.bulk_create(
        [Operation(bank_id="alpha", operation_type="test_echo") for _ in range(COUNT_CAP + 1)]
    )
    listed = opsctl.json("operations", "list", "alpha", "--limit", "1")
    table = opsctl("operations", "list", "alpha", "--limit", "1")
    assert table.returncode == 0, table.stderr
    if listed["total_is_estimate"]:  # PostgreSQL; SQLite counts them all
        assert f"1–1 of about {listed['total']:,}" in table.stdout
    else:
        assert listed["total"] == COUNT_CAP + 1 and f"1–1 of {COUNT_CAP + 1}" in table.stdout


def test_banks_and_operations_list_and_get(opsctl: Opsctl) -> None:
    pending = make(tag="nightly")
    failed = make(status="failed")
    other = make(operation_type="test_sleep", status="completed")
    make(bank="beta")
    banks = opsctl.json("banks", "list")
    assert [b["bank_id"] for b in banks["banks"]] == ["alpha", "beta"]
    table = opsctl("banks", "list")
    assert table.returncode == 0 and "alpha" in table.stdout and "2 of 2" in table.stdout

    listed = opsctl.json("operations", "list", "alpha")
    assert {o["id"] for o in listed["operations"]} == {str(pending.pk), str(failed.pk), str(other.pk)}
    only_failed = opsctl.json("operations", "list", "alpha", "--status", "failed")
    assert [o["id"] for o in only_failed["operations"]] == [str(failed.pk)]
    by_type = opsctl.json("operations", "list", "alpha", "--type", "test_sleep", "--status", "completed,failed")
    assert [o["id"] for o in by_type["operations"]] == [str(other.pk)]
    limited = opsctl.json("operations", "list", "alpha", "--limit", "1")
    assert len(limited["operations"]) == 1 and limited["total"] == 3
    table = opsctl("operations", "list", "alpha")
    assert table.returncode == 0
    assert str(failed.pk) in table.stdout and "boom: the extractor gave up" in table.stdout
    assert "1–3 of 3" in table.stdout

    detail = opsctl.json("operations", "get", "alpha", str(failed.pk))
    assert detail["status"] == "failed" and detail["error_history"][0]["stage"] == "extract"
    shown = opsctl("operations", "get", "alpha", str(failed.pk), "--payload")
    assert shown.returncode == 0 and "error history" in shown.stdout and "extract" in shown.stdout


def test_cancel_retry_delete_and_their_refusals(opsctl: Opsctl) -> None:
    pending = make()
    done = opsctl("operations", "cancel", "alpha", str(pending.pk))
    assert done.returncode == 0 and f"cancelled {pending.pk}" in done.stdout
    assert Operation.objects.get(pk=pending.pk).status == "cancelled"
    again = opsctl("operations", "cancel", "alpha", str(pending.pk))
    assert again.returncode == 1
    assert "cannot cancel an operation that is cancelled" in again.stderr and "HTTP 409" in again.stderr

    retried = opsctl.json("operations", "retry", "alpha", str(pending.pk))
    assert retried["success"] is True and retried["status"] == "pending"
    refused = opsctl("operations", "retry", "alpha", str(pending.pk))
    assert refused.returncode == 1 and "cannot retry an operation that is pending" in refused.stderr

    still_pending = opsctl("operations", "delete", "alpha", str(pending.pk))
    assert still_pending.returncode == 1 and "HTTP 409" in still_pending.stderr
    finished = make(status="completed")
    deleted = opsctl("operations", "delete", "alpha", str(finished.pk))
    assert deleted.returncode == 0 and f"deleted {finished.pk}" in deleted.stdout
    assert not Operation.objects.filter(pk=finished.pk).exists()

    make(), make(operation_type="test_sleep"), make(bank="beta")
    by_type = opsctl.json("operations", "cancel", "alpha", "--all-pending", "--type", "test_sleep")
    assert by_type["cancelled_count"] == 1
    rest = opsctl("operations", "cancel", "alpha", "--all-pending")
    assert rest.returncode == 0 and "cancelled 2 pending operation(s)" in rest.stdout
    assert Operation.objects.filter(bank_id="alpha", status="pending").count() == 0
    assert Operation.objects.filter(bank_id="beta", status="pending").count() == 1


def test_usage_errors_exit_2_and_api_errors_exit_1(opsctl: Opsctl, tmp_path: Path) -> None:
    operation = make()
    usage = [
        ("operations", "list"),  # no bank
        ("operations", "cancel", "alpha"),  # neither an id nor --all-pending
        ("operations", "cancel", "alpha", str(operation.pk), "--all-pending"),  # both
        ("operations", "cancel", "alpha", str(operation.pk), "--type", "test_echo"),
        ("operations", "list", "alpha", "--status", "bogus"),
        ("operations", "list", "alpha", "--limit", "0"),
        ("tasks", "--status", "X"),
        ("retain", "alpha", "--files", "/nonexistent/*.md"),
        ("nonsense",),
        ("operations", "get", "alpha", "not-a-uuid"),  # neither an id nor a prefix of one
        ("operations", "get", "alpha", str(operation.pk)[:7]),  # too short a prefix
    ]
    for args in usage:
        done = opsctl(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Error" in done.stderr and "Traceback" not in done.stderr
    missing_key = opsctl("banks", "list", key="", cwd=tmp_path)  # no var/api-key here
    assert missing_key.returncode == 2 and "OPS_API_KEY" in missing_key.stderr and "var/api-key" in missing_key.stderr

    api_errors: list[tuple[tuple[str, ...], dict[str, Any], str]] = [
        (("banks", "list"), {"key": "ops_not-a-key"}, "invalid or revoked API key (HTTP 401)"),
        (("operations", "list", "nosuchbank"), {}, "HTTP 404"),
        (("operations", "get", "beta", str(operation.pk)), {}, "HTTP 404"),
    ]
    for args, options, message in api_errors:
        done = opsctl(*args, **options)
        assert done.returncode == 1, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr
    scoped = api_key_create(name="alice", bank_ids=["alpha"])[1]
    forbidden = opsctl("workers", key=scoped)
    assert forbidden.returncode == 1 and "admin API key (HTTP 403)" in forbidden.stderr
    unreachable = Opsctl("http://127.0.0.1:9", opsctl.key)("banks", "list")
    assert unreachable.returncode == 1 and "cannot reach http://127.0.0.1:9" in unreachable.stderr


def test_the_key_make_run_wrote_is_read_from_the_project_directory(
    opsctl: Opsctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPS_DATA_DIR", raising=False)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "api-key").write_text(opsctl.key + "\n")
    done = opsctl("banks", "list", key="", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout
    # Another machine's URL never gets this machine's key (checked without sending it anything).
    monkeypatch.chdir(tmp_path)
    assert local_key_file("http://[::1]:8000") == opsctl.key
    for elsewhere in (
        "http://192.0.2.1:8000",
        "https://ops.example.com",
        "http://localhost.example.com",
        "http://[::1",
    ):
        assert local_key_file(elsewhere) is None, elsewhere
    (tmp_path / "var" / "api-key").write_text("\n")  # an empty file is no key
    assert local_key_file("http://127.0.0.1:8000") is None


def test_short_ids_options_after_the_subcommand_and_one_line_rows(opsctl: Opsctl) -> None:
    failed = make(status="failed")
    first = make(operation_id="abcdef01-0000-4000-8000-000000000001")
    second = make(operation_id="abcdef01-ffff-4000-8000-000000000002")
    # The 8 characters the admin and the dashboard show name an operation.
    short = str(failed.pk)[:8]
    assert opsctl.json("operations", "get", "alpha", short)["id"] == str(failed.pk)
    retried = opsctl("operations", "retry", "alpha", short)
    assert retried.returncode == 0 and f"queued {failed.pk} again" in retried.stdout
    ambiguous = opsctl("operations", "cancel", "alpha", "abcdef01")
    assert ambiguous.returncode == 1 and "starts 2 operation ids of bank 'alpha'" in ambiguous.stderr
    assert "give more of the id" in ambiguous.stderr
    assert {Operation.objects.get(pk=o.pk).status for o in (first, second)} == {"pending"}
    cancelled = opsctl("operations", "cancel", "alpha", "abcdef01-0")
    assert cancelled.returncode == 0 and f"cancelled {first.pk}" in cancelled.stdout
    assert Operation.objects.get(pk=second.pk).status == "pending"
    missing = opsctl("operations", "get", "alpha", "0123456789ab")
    assert missing.returncode == 1 and "no operation of bank 'alpha' has an id starting with" in missing.stderr
    assert opsctl("operations", "get", "beta", short).returncode == 1  # another bank's

    # The root's options work after the subcommand too, and win over the environment.
    after = opsctl("operations", "list", "alpha", "--json", "--api-key", opsctl.key, key="")
    assert after.returncode == 0 and json.loads(after.stdout)["total"] == 3
    overridden = opsctl("banks", "list", "--api-key", "ops_not-a-key")
    assert overridden.returncode == 1 and "HTTP 401" in overridden.stderr

    # A long error ends in an ellipsis: each operation stays on one line.
    Operation.objects.filter(pk=failed.pk).update(status="failed", error_message="the extractor gave up; " * 20)
    table = opsctl("operations", "list", "alpha", columns=130)
    assert table.returncode == 0 and "…" in table.stdout
    rows = [line for line in table.stdout.splitlines() if "extractor" in line]
    assert len(rows) == 1 and str(failed.pk) in rows[0] and len(rows[0]) <= 130
    # On an 80-column terminal the type and status stay whole: ids show their
    # first 8 characters (what every command takes), the tag and error give way.
    narrow = opsctl("operations", "list", "alpha", columns=80, terminal=True)
    lines = [line for line in narrow.stdout.splitlines() if str(failed.pk)[:8] in line]
    assert len(lines) == 1 and len(lines[0]) <= 80 and str(failed.pk) not in lines[0]
    assert lines[0].split()[1:3] == ["test_echo", "failed"], lines[0]
    shown = opsctl.json("operations", "get", "alpha", lines[0].split()[0])
    assert shown["id"] == str(failed.pk)
    # Into a pipe, ids stay whole whatever the width (a script reads them).
    piped = opsctl("operations", "list", "alpha", columns=80)
    assert str(failed.pk) in piped.stdout


def test_tasks_view(opsctl: Opsctl, live_server: Any) -> None:
    pending = make(tag="nightly")
    failed = make(status="failed", tag="nightly")
    make(bank="beta", operation_type="test_sleep")
    everything = opsctl.json("tasks")
    assert {t["id"] for t in everything} >= {str(pending.pk), str(failed.pk)}
    only_failed = opsctl.json("tasks", "--status", "F", "--type", "test_echo")
    assert [t["id"] for t in only_failed] == [str(failed.pk)] and only_failed[0]["task_status"] == "F"
    by_name = opsctl.json("tasks", "--status", "pending", "--tag", "nightly")
    assert [t["id"] for t in by_name] == [str(pending.pk)] and by_name[0]["end_date"] is None
    table = opsctl("tasks", "--within-hours", "2")
    assert table.returncode == 0 and str(failed.pk) in table.stdout


@pytest.mark.workers
def test_work_runs_while_watched_retained_and_listed_by_workers(
    opsctl: Opsctl, start_workers: Any, tmp_path: Path
) -> None:
    start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    # workers: the plan and the live nodes.
    workers = opsctl.json("workers")
    assert {n["name"] for n in workers["nodes"]} == {"shared@testnode", "system@testnode"}
    nodes = {n["name"]: n for n in workers["nodes"]}
    assert nodes["shared@testnode"]["concurrency"] == 2  # the workers' OPS_WORKER_MAX_SLOTS
    assert workers["plan"]["max_slots"] >= 1 and workers["plan_error"] is None  # the API server's own plan
    table = opsctl("workers")
    assert table.returncode == 0 and "shared@testnode" in table.stdout

    # retain: files from a glob, uploaded and (without --async) waited for.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Alice\nAlice works on the platform with Bob.\n")
    (notes / "b.txt").write_text("Bob maintains the workers. Carol reviews the dashboards.\n")
    (notes / "skip.bin").write_bytes(b"\x00")
    retained = opsctl.json("retain", "alpha", "--files", str(notes / "*.md"), "--files", str(notes / "*.txt"))
    assert len(retained["operation_ids"]) == 2
    assert [o["status"] for o in retained["operations"]] == ["completed", "completed"]
    uploaded = opsctl("retain", "alpha", "--files", str(notes / "a.md"), "--async")
    assert uploaded.returncode == 0 and "queued" in uploaded.stdout
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"this is not a pdf")
    failed = opsctl("retain", "alpha", "--files", str(broken))
    assert failed.returncode == 1 and "did not complete" in failed.stderr

    # watch: the live view ends by itself once the work has drained.
    sleepers = [
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 1.5}).operation
        for _ in range(3)
    ]
    lines = opsctl("operations", "watch", "alpha", "--json", "--interval", "0.3")
    assert lines.returncode == 0, lines.stderr
    frames = [json.loads(line) for line in lines.stdout.splitlines()]
    assert any(f["stats"]["by_status"]["processing"] for f in frames)  # it saw them run
    assert frames[-1]["stats"]["by_status"]["pending"] == 0
    assert frames[-1]["stats"]["by_status"]["processing"] == 0
    assert {Operation.objects.get(pk=s.pk).status for s in sleepers} == {"completed"}

    # The table view ends the same way; --all shows finished ones too.
    lifecycle.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 1})
    live = opsctl("operations", "watch", "alpha", "--all", "--interval", "0.3")
    assert live.returncode == 0 and "nothing pending or running in bank alpha" in live.stdout
    assert str(sleepers[0].pk) in live.stdout
    # Not on a terminal, it prints plain lines: one per refresh, one per operation that changed.
    assert re.search(r"^\d\d:\d\d:\d\d bank alpha: 0 pending, 1 processing, \d+ completed", live.stdout, re.M)
    assert re.search(rf"^\d\d:\d\d:\d\d   {sleepers[0].pk} test_sleep completed", live.stdout, re.M)

    # cancel of a running operation: requested, then it stops at a checkpoint.
    long_one = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_sleep", payload={"seconds": 60}
    ).operation
    wait_for(lambda: Operation.objects.get(pk=long_one.pk).status == "processing", message="the sleeper to run")
    requested = opsctl("operations", "cancel", "alpha", str(long_one.pk))
    assert requested.returncode == 0 and "cancel requested" in requested.stdout
    wait_for(lambda: Operation.objects.get(pk=long_one.pk).status == "cancelled", message="the cancel to land")


def test_webhooks_list_and_deliveries(opsctl: Opsctl, alpha: Any, settings: Any) -> None:
    import uuid

    from banks import webhooks
    from banks.models import WebhookDelivery

    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True
    webhook = webhooks.webhook_create(
        bank=alpha,
        url="http://127.0.0.1:9/hook",
        secret="whsec-cli",
        event_types=["operation.failed"],
        enabled=True,
        http_config={},
    )
    operation_id, event_id = uuid.uuid4(), uuid.uuid4()
    for attempt, outcome, code in [(1, "retrying", 502), (2, "delivered", 200)]:
        WebhookDelivery.objects.create(
            webhook=webhook,
            operation_id=operation_id,
            event_id=event_id,
            event_type="operation.failed",
            url=webhook.url,
            attempt=attempt,
            outcome=outcome,
            status_code=code,
            error="HTTP 502" if code == 502 else "",
            duration_ms=40,
        )
    listed = opsctl.json("webhooks", "list", "alpha")
    assert [w["id"] for w in listed["items"]] == [str(webhook.pk)]
    table = opsctl("webhooks", "list", "alpha")
    assert table.returncode == 0 and "http://127.0.0.1:9/hook" in table.stdout and "operation.failed" in table.stdout
    assert "whsec-cli" not in table.stdout

    page = opsctl.json("webhooks", "deliveries", "alpha", str(webhook.pk), "--limit", "1")
    assert [d["attempts"] for d in page["items"]] == [2] and page["next_cursor"]
    older = opsctl.json("webhooks", "deliveries", "alpha", str(webhook.pk), "--cursor", page["next_cursor"])
    assert [d["status"] for d in older["items"]] == ["retrying"]
    shown = opsctl("webhooks", "deliveries", "alpha", str(webhook.pk))
    assert shown.returncode == 0 and "delivered" in shown.stdout and "HTTP 502" in shown.stdout
    missing = opsctl("webhooks", "deliveries", "beta", str(webhook.pk))
    assert missing.returncode == 1 and "not found" in missing.stderr
