"""Refresh schedules of mental models: validation and next-run arithmetic.

Pure functions of their arguments (no database, no clock), so the rules can be
tested exactly. A schedule is Hindsight's trigger: `refresh_cron` (a 5-field
UTC cron expression) or, this service's addition, `refresh_interval_seconds`;
never both. `min_refresh_interval_seconds` is Hindsight's floor between two
automatic refreshes: a run that would come sooner waits until it has passed.

Runs missed while nothing was watching (no beat, a long outage) are not
replayed: the next run is the first one after "now", so an outage costs one
refresh, not one per missed period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import CroniterError, croniter

# The @-nicknames croniter understands that mean a recurring time (@reboot does not).
CRON_NICKNAMES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
CRON_MAX_LENGTH = 200
# An interval no shorter than a second and no longer than a year.
INTERVAL_MAX_SECONDS = 366 * 24 * 3600


class InvalidCron(ValueError):
    """The expression is not a 5-field cron expression that ever fires."""


def cron_validated(expression: str) -> str:
    """The expression with its whitespace normalized; raises InvalidCron
    (its message says why) when it is not a 5-field cron expression, or an
    @-nickname, that fires at some time."""
    normalized = " ".join(expression.split())
    if not normalized:
        raise InvalidCron("empty; clear the schedule with null instead")
    if len(normalized) > CRON_MAX_LENGTH:
        raise InvalidCron(f"longer than {CRON_MAX_LENGTH} characters")
    if normalized.startswith("@"):
        if normalized.lower() not in CRON_NICKNAMES:
            raise InvalidCron(f"unknown nickname {normalized!r}; use one of {', '.join(sorted(CRON_NICKNAMES))}")
        normalized = normalized.lower()
    elif len(normalized.split(" ")) != 5:
        # croniter also takes seconds and years columns; Hindsight's schedules
        # are minute-grained, and a 6-field expression read as 5 would mean
        # something else entirely.
        raise InvalidCron("a cron expression has 5 fields: minute hour day-of-month month day-of-week")
    try:
        # Computing one run proves more than parsing: "0 0 30 2 *" parses but never fires.
        croniter(normalized, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError as exc:
        raise InvalidCron(str(exc) or "not a valid cron expression") from None
    return normalized


def next_cron_run(expression: str, after: datetime) -> datetime:
    """The first time strictly after `after` that the expression names (in
    `after`'s time zone: UTC for aware datetimes from Django)."""
    run: datetime = croniter(expression, after).get_next(datetime)
    return run


@dataclass(frozen=True)
class RefreshSchedule:
    """A mental model's schedule; inactive when it has neither cron nor interval."""

    cron: str = ""
    interval_seconds: int | None = None
    min_interval_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.cron and self.interval_seconds:
            raise ValueError("a schedule is a cron expression or an interval, not both")

    @property
    def active(self) -> bool:
        return bool(self.cron or self.interval_seconds)

    def first_run(self, now: datetime) -> datetime | None:
        """When the first refresh is due, for a schedule set at `now`; None
        when inactive. The floor does not apply: nothing ran automatically yet."""
        if self.cron:
            return next_cron_run(self.cron, now)
        if self.interval_seconds:
            return now + timedelta(seconds=self.interval_seconds)
        return None

    def run_after(self, due: datetime, now: datetime) -> datetime:
        """The run after the one due at `due`, claimed at `now` (≥ due).

        An interval stays on its grid (due + k × interval, the first after
        now), so a late beat does not make every later run late too; a cron
        expression names its own grid. Either way the result is after `now`,
        and at least `min_interval_seconds` after it.
        """
        if self.cron:
            following = next_cron_run(self.cron, max(due, now))
        elif self.interval_seconds:
            step = self.interval_seconds
            periods = int((now - due).total_seconds() // step) + 1
            following = due + timedelta(seconds=periods * step)
            if following <= now:  # float rounding at an exact multiple
                following += timedelta(seconds=step)
        else:
            raise ValueError("an inactive schedule has no next run")
        if self.min_interval_seconds:
            following = max(following, now + timedelta(seconds=self.min_interval_seconds))
        return following
