"""Refresh-schedule arithmetic and cron validation: pure functions, exact answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from banks.schedules import InvalidCron, RefreshSchedule, cron_validated, next_cron_run


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_valid_cron_expressions_are_normalized() -> None:
    assert cron_validated("  0   3 * *  * ") == "0 3 * * *"
    assert cron_validated("*/15 9-17 * * mon-fri") == "*/15 9-17 * * mon-fri"
    assert cron_validated("@Daily") == "@daily"
    assert cron_validated("0 0 29 2 *") == "0 0 29 2 *"  # rare, but it fires


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("61 * * * *", "out of range"),
        ("* * * *", "5 fields"),
        ("0 * * * * *", "5 fields"),  # croniter would read a seconds column
        ("0 0 1 1 * 2030", "5 fields"),
        ("a b c d e", "not acceptable"),
        ("*/0 * * * *", "not acceptable"),
        ("0 0 30 2 *", "failed to find next date"),  # parses, never fires
        ("H * * * *", "hash"),
        ("@reboot", "unknown nickname"),
        ("@fortnightly", "unknown nickname"),
        ("* " * 150, "longer than"),
    ],
)
def test_invalid_cron_expressions_say_why(expression: str, reason: str) -> None:
    with pytest.raises(InvalidCron) as raised:
        cron_validated(expression)
    assert reason.lower() in str(raised.value).lower()


def test_cron_runs_are_utc_and_strictly_after() -> None:
    assert next_cron_run("0 3 * * *", at("2026-03-01T02:59:59")) == at("2026-03-01T03:00:00")
    assert next_cron_run("0 3 * * *", at("2026-03-01T03:00:00")) == at("2026-03-02T03:00:00")
    assert next_cron_run("@hourly", at("2026-03-01T03:00:01")) == at("2026-03-01T04:00:00")


def test_first_run_is_one_period_away_and_ignores_the_floor() -> None:
    now = at("2026-03-01T10:20:30")
    assert RefreshSchedule(interval_seconds=90, min_interval_seconds=3600).first_run(now) == now + timedelta(seconds=90)
    assert RefreshSchedule(cron="*/15 * * * *").first_run(now) == at("2026-03-01T10:30:00")
    assert RefreshSchedule().first_run(now) is None
    assert not RefreshSchedule().active and RefreshSchedule(cron="@daily").active


def test_an_interval_stays_on_its_grid() -> None:
    schedule = RefreshSchedule(interval_seconds=60)
    due = at("2026-03-01T10:00:00")
    # Claimed on time, or a little late: the next run is one period after the due one.
    assert schedule.run_after(due, due) == at("2026-03-01T10:01:00")
    assert schedule.run_after(due, due + timedelta(seconds=59)) == at("2026-03-01T10:01:00")
    # Exactly one period late: that run is now, so the next is the one after.
    assert schedule.run_after(due, due + timedelta(seconds=60)) == at("2026-03-01T10:02:00")
    # After an outage of an hour and a half: one run now, the next on the grid; nothing replayed.
    assert schedule.run_after(due, at("2026-03-01T11:30:10")) == at("2026-03-01T11:31:00")


def test_cron_skips_the_runs_missed_in_an_outage() -> None:
    schedule = RefreshSchedule(cron="*/10 * * * *")
    due = at("2026-03-01T10:00:00")
    assert schedule.run_after(due, due) == at("2026-03-01T10:10:00")
    assert schedule.run_after(due, at("2026-03-01T13:42:00")) == at("2026-03-01T13:50:00")


def test_the_floor_delays_a_run_that_would_come_too_soon() -> None:
    due = at("2026-03-01T10:00:00")
    every_minute = RefreshSchedule(cron="* * * * *", min_interval_seconds=300)
    assert every_minute.run_after(due, due) == at("2026-03-01T10:05:00")
    # A floor shorter than the period changes nothing.
    hourly = RefreshSchedule(cron="@hourly", min_interval_seconds=300)
    assert hourly.run_after(due, due) == at("2026-03-01T11:00:00")
    # The floor counts from when the run was claimed, not when it was due.
    late = RefreshSchedule(interval_seconds=60, min_interval_seconds=120)
    assert late.run_after(due, due + timedelta(seconds=30)) == due + timedelta(seconds=150)
    assert RefreshSchedule(interval_seconds=60, min_interval_seconds=0).run_after(due, due) == due + timedelta(
        minutes=1
    )


def test_a_schedule_is_one_kind() -> None:
    with pytest.raises(ValueError):
        RefreshSchedule(cron="@daily", interval_seconds=60)
    with pytest.raises(ValueError):
        RefreshSchedule().run_after(at("2026-03-01T10:00:00"), at("2026-03-01T10:00:00"))
