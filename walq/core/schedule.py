"""Periodic schedules and remembered keys: the maths of time, with time as an argument.

A schedule is a timetable (ticks at wall times: `Every` here, cron in
walq.cron) and a misfire policy. `due` says which ticks to enqueue given the
last tick enqueued and the time now; `tick_key` names a tick's job, so the
same tick is one job whoever enqueues it. `TimeState` is what a queue's log
says about schedules and remembered keys (docs/FORMAT.md: schedule, unique,
keep records).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Container
from datetime import datetime, timezone
from typing import Any, Protocol

import attrs

from walq.core import events as ev
from walq.core.jobspec import MAX_DELAY, check_task
from walq.core.text import excerpt
from walq.errors import ArgumentError

MISFIRES = ("skip", "once", "all")
# misfire="all" enqueues at most this many missed ticks after downtime (the newest);
# older ones are skipped and logged, so a year-long outage is not a million jobs.
MAX_CATCHUP = 100
# A tick enqueued within this many seconds of its time is on time, not missed
# (misfire="skip" still runs it): the owner polls about once a second.
GRACE = 30.0
# The key of a tick's job: "schedule:NAME@2026-12-04T12:00:00Z".
KEY_PREFIX = "schedule:"
MIN_EVERY = 1.0


class Timetable(Protocol):
    """When a schedule's ticks fall, in wall-clock seconds (UTC epoch)."""

    def latest(self, at: float) -> float | None:
        """The latest tick at or before `at` (None: there is none)."""
        ...

    def before(self, tick: float) -> float | None:
        """The tick just before tick `tick` (None: there is none)."""
        ...

    def after(self, at: float) -> float | None:
        """The first tick strictly after `at` (None: there is none)."""
        ...


@attrs.frozen
class Every:
    """A tick every `seconds`, at whole multiples of it since the epoch (the same on every host)."""

    seconds: float

    def latest(self, at: float) -> float | None:
        return math.floor(at / self.seconds) * self.seconds

    def before(self, tick: float) -> float | None:
        return (round(tick / self.seconds) - 1) * self.seconds

    def after(self, at: float) -> float | None:
        return (math.floor(at / self.seconds) + 1) * self.seconds


@attrs.frozen
class Due:
    """Ticks to enqueue now (oldest first), the schedule's last tick after them, and how
    many due ticks the misfire policy skipped (at least that many, for cron past the bound)."""

    fire: tuple[float, ...]
    last: float | None
    skipped: int = 0

    def unchanged(self, last: float | None, stored_spec: str | None, spec: str) -> bool:
        """Whether nothing need be written: no tick due and the stored spec is current."""
        return self.last is None or (self.last == last and stored_spec == spec)

    def skip_note(self, name: str, misfire: str) -> str | None:
        """The line to log when the misfire policy skipped ticks, else None."""
        if not self.skipped:
            return None
        return f"schedule {name}: {self.skipped} missed ticks skipped (misfire={misfire})"


def due(table: Timetable, last: float | None, now: float, misfire: str) -> Due:
    """Which ticks to enqueue at wall time `now`, given the last tick enqueued.

    Due ticks are those in (last, now]. The newest is on time if at most GRACE
    seconds old; the others were missed (the owner was down or stalled):
    "skip" runs only an on-time tick, "once" runs the newest due tick (one
    catch-up run), "all" runs every due tick, the newest MAX_CATCHUP at most.
    A schedule seen for the first time (`last` None) starts at the newest tick
    and runs it only if it is on time.
    """
    latest = table.latest(now)
    if latest is None or (last is not None and latest <= last):
        return Due((), last)
    on_time = now - latest <= GRACE
    if last is None:
        return Due((latest,) if on_time else (), latest)
    if misfire == "all":
        ticks = [latest]
        t = table.before(latest)
        while t is not None and t > last and len(ticks) < MAX_CATCHUP:
            ticks.append(t)
            t = table.before(t)
        skipped = 0 if t is None or t <= last else _count_more(table, t, last)
        return Due(tuple(reversed(ticks)), latest, skipped)
    missed = _count_more(table, table.before(latest), last)
    if misfire == "once" or on_time:
        return Due((latest,), latest, missed)
    return Due((), latest, missed + 1)


def _count_more(table: Timetable, t: float | None, last: float) -> int:
    """How many ticks from `t` back to (not including) `last`, counted up to MAX_CATCHUP."""
    if isinstance(table, Every) and t is not None:
        return max(0, round((t - last) / table.seconds))
    n = 0
    while t is not None and t > last and n < MAX_CATCHUP:
        n += 1
        t = table.before(t)
    return n


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of schedule `name`'s job for `tick`: one job per tick."""
    stamp = datetime.fromtimestamp(tick, timezone.utc)
    spec = "seconds" if stamp.microsecond == 0 else "milliseconds"
    return f"{KEY_PREFIX}{name}@{stamp.isoformat(timespec=spec).replace('+00:00', 'Z')}"


def parse_tick_key(key: str) -> tuple[str, float] | None:
    """(schedule name, tick) of a tick's key, or None if `key` is not one."""
    if not key.startswith(KEY_PREFIX):
        return None
    name, at, stamp = key[len(KEY_PREFIX) :].rpartition("@")
    if not at or not name:
        return None
    try:
        return name, datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class Schedule:
    """A periodic job: task `task` with `payload` at each tick of `timetable`.

    `spec` is the JSON a tool lists (cron or every, tz, misfire); build one
    with walq.cron.schedule, which knows how to read a cron expression.
    """

    name: str
    task: str
    payload: Any
    timetable: Timetable
    misfire: str
    spec: str


def make_spec_text(
    *, cron: str | None, every: float | None, tz: str, misfire: str, task: str
) -> str:
    """The schedule's description as stored in its record (JSON, keys sorted)."""
    fields: dict[str, Any] = {"misfire": misfire, "task": task}
    if cron is not None:
        fields.update(cron=cron, tz=tz)
    else:
        fields["every"] = every
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def check_schedule(
    name: object, *, cron: object, every: object, misfire: object, tz: object
) -> None:
    """ArgumentError, one line, unless exactly one of cron/every is given and all is valid."""
    check_task(name)
    if misfire not in MISFIRES:
        raise ArgumentError(
            f"schedule {name!r}: misfire must be one of {', '.join(MISFIRES)}, "
            f"not {excerpt(misfire)}"
        )
    if (cron is None) == (every is None):
        raise ArgumentError(f"schedule {name!r}: give exactly one of cron= and every=")
    if cron is not None and not isinstance(cron, str):
        raise ArgumentError(f"schedule {name!r}: cron must be a string, not {excerpt(cron)}")
    if every is not None and (
        isinstance(every, bool)
        or not isinstance(every, int | float)
        or not math.isfinite(every)
        or not MIN_EVERY <= every <= MAX_DELAY
    ):
        raise ArgumentError(
            f"schedule {name!r}: every must be a number of seconds, "
            f"{MIN_EVERY:.0f}..{MAX_DELAY:.0f}, not {excerpt(every)}"
        )
    if not isinstance(tz, str) or not tz:
        raise ArgumentError(f"schedule {name!r}: tz must be a time zone name, not {excerpt(tz)}")


class TimeState:
    """What the log says about schedules (last tick, spec) and remembered keys.

    `unique`: live job -> seconds its key is kept once it is done; `kept`: key
    -> (done job, wall time it is forgotten). Expired keys are dropped as
    they are met and whenever a key is added, so memory holds only keys
    whose window is still open.
    """

    def __init__(self) -> None:
        self.schedules: dict[str, tuple[float, str]] = {}
        self.unique: dict[int, float] = {}
        self.kept: dict[str, tuple[int, float]] = {}
        self._expiry: list[tuple[float, str]] = []

    def apply(self, event: ev.Schedule | ev.Unique | ev.Keep, wall: float) -> None:
        """Apply one record (in replay or live); idempotent."""
        if isinstance(event, ev.Schedule):
            self.tick(event.name, event.last, event.spec)
        elif isinstance(event, ev.Unique):
            self.unique.update(event.items)
        else:
            self.keep(event.key, event.id, event.until, wall)

    def tick(self, name: str, last: float, spec: str = "") -> None:
        """Schedule `name` enqueued every tick up to `last` (never moves back)."""
        old = self.schedules.get(name)
        if old is None or last >= old[0] or (spec and not old[1]):
            self.schedules[name] = (
                last if old is None else max(last, old[0]),
                spec or (old[1] if old else ""),
            )

    def last_tick(self, name: str) -> float | None:
        """The last tick schedule `name` enqueued, if it ever did."""
        entry = self.schedules.get(name)
        return None if entry is None else entry[0]

    def keep(self, key: str, jid: int, until: float, wall: float) -> None:
        """Remember done job `jid` as holder of `key` until `until` (ignored if past)."""
        self.expire(wall)
        if until > wall:
            self.kept[key] = (jid, until)
            heapq.heappush(self._expiry, (until, key))

    def holder(self, key: str, wall: float) -> int | None:
        """The done job that still holds `key` at `wall`, if any."""
        entry = self.kept.get(key)
        if entry is None:
            return None
        if entry[1] <= wall:
            del self.kept[key]
            return None
        return entry[0]

    def expire(self, wall: float) -> None:
        """Forget the keys whose time has passed."""
        heap = self._expiry
        while heap and heap[0][0] <= wall:
            _, key = heapq.heappop(heap)
            entry = self.kept.get(key)
            if entry is not None and entry[1] <= wall:
                del self.kept[key]

    def records(self, wall: float, live: Container[int] | None = None) -> list[ev.Event]:
        """The records a compacted segment carries to say all this (expired keys dropped)."""
        self.expire(wall)
        out: list[ev.Event] = [
            ev.Schedule(name=n, last=last, spec=spec)
            for n, (last, spec) in sorted(self.schedules.items())
        ]
        items = sorted((jid, s) for jid, s in self.unique.items() if live is None or jid in live)
        if items:
            out.append(ev.Unique(items=tuple(items)))
        out += [
            ev.Keep(id=jid, key=key, until=until) for key, (jid, until) in sorted(self.kept.items())
        ]
        return out
