"""Cron timetables (through cronsim, the optional extra `walq[cron]`) and building a Schedule.

cronsim follows cron's own rules across daylight-saving changes: a time
that a spring-forward skips runs once, right after the gap, and a time that
a fall-back repeats runs once, at its first occurrence (croniter runs a
daily 02:30 job twice on the night clocks go back).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from walq.core.jobspec import encode_payload
from walq.core.schedule import Every, Schedule, Timetable, check_schedule, make_spec_text
from walq.core.text import excerpt
from walq.errors import ArgumentError

CRON_EXTRA = "cron= needs the cronsim package: pip install 'walq[cron]'"


@attrs.frozen
class Cron:
    """The ticks of cron expression `expr` in time zone `tz`."""

    expr: str
    tz: ZoneInfo

    def _iter(self, at: float, reverse: bool) -> datetime | None:
        from cronsim import CronSim  # noqa: PLC0415 - an optional extra (walq[cron])

        start = datetime.fromtimestamp(at, self.tz)
        try:
            return next(iter(CronSim(self.expr, start, reverse=reverse)))
        except StopIteration:  # an expression with no tick ever (30 February)
            return None

    # cronsim's ticks are strictly after (before, in reverse) its start, on whole seconds.
    def latest(self, at: float) -> float | None:
        tick = self._iter(float(math.floor(at) + 1), reverse=True)
        return None if tick is None else tick.timestamp()

    def before(self, tick: float) -> float | None:
        prev = self._iter(tick, reverse=True)
        return None if prev is None else prev.timestamp()

    def after(self, at: float) -> float | None:
        nxt = self._iter(at, reverse=False)
        return None if nxt is None else nxt.timestamp()


def cron(expr: str, tz: str = "UTC") -> Cron:
    """A cron timetable, its expression and zone checked (ArgumentError, one line)."""
    try:
        from cronsim import CronSim, CronSimError  # noqa: PLC0415 - optional (walq[cron])
    except ImportError:
        raise ArgumentError(CRON_EXTRA) from None
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ArgumentError(
            f"unknown time zone {excerpt(tz)} (an IANA name, say Europe/Berlin)"
        ) from None
    try:
        CronSim(expr, datetime.now(timezone.utc))
    except CronSimError as exc:
        raise ArgumentError(f"bad cron expression {expr!r}: {exc}") from None
    return Cron(expr, zone)


def schedule(
    name: str,
    task: str,
    *,
    cron: str | None = None,
    every: float | None = None,
    payload: Any = None,
    misfire: str = "once",
    tz: str = "UTC",
) -> Schedule:
    """A checked Schedule (ArgumentError/PayloadError naming what is wrong)."""
    check_schedule(name, cron=cron, every=every, misfire=misfire, tz=tz)
    encode_payload(payload)  # refused now, not at the first tick
    table: Timetable = Every(float(every)) if every is not None else _cron(cron or "", tz)
    spec = make_spec_text(cron=cron, every=every, tz=tz, misfire=misfire, task=task)
    return Schedule(
        name=name, task=task, payload=payload, timetable=table, misfire=misfire, spec=spec
    )


_cron = cron


def timetable_of(spec: str) -> Timetable | None:
    """The timetable a stored spec describes (None if it cannot be read here: no cronsim,
    or a spec from another version)."""
    try:
        fields = json.loads(spec)
        if "every" in fields:
            return Every(float(fields["every"]))
        return cron(fields["cron"], fields.get("tz", "UTC"))
    except (ValueError, KeyError, TypeError, ArgumentError):
        return None
