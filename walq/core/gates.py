"""The gates a retry passes besides backoff: a rate limit, the queue's retry budget, a breaker.

Pure, like walq.core.retry (time is the ``now`` argument), and not
thread-safe: the worker's scheduling loop owns these objects. Also the small
validators every retry-policy class uses.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

# -- validation -------------------------------------------------------------


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def int_at_least(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    real = finite(value)
    if real is None or real <= 0:
        name = f"{type(instance).__name__} {attribute.name}"
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    real = finite(value)
    if real is None or real < 0:
        name = f"{type(instance).__name__} {attribute.name}"
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not int_at_least(value, 1):
        name = f"{type(instance).__name__} {attribute.name}"
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


FROZEN: Final = attrs.setters.frozen  # configuration fields of the stateful classes


def check_attempt(attempt: int, *, first: int) -> None:
    if not int_at_least(attempt, first):
        raise ValueError(f"attempt must be an integer >= {first}, got {attempt!r}")


# -- per-task rate limit ----------------------------------------------------


@attrs.define(eq=False, kw_only=True)
class RateLimit:
    """A token bucket: ``per_second`` calls a second on average, ``burst`` at once.

    Kept as the generic cell rate algorithm (one number, the theoretical
    arrival time), so over any interval of ``t`` seconds at most
    ``burst + per_second * t`` calls are admitted. ``burst`` defaults to one
    second's worth (at least 1).
    """

    per_second: float = attrs.field(validator=positive, on_setattr=FROZEN)
    burst: float = attrs.field(validator=positive, on_setattr=FROZEN)
    _tat: float = attrs.field(default=-math.inf, init=False, repr=False)

    @burst.default
    def _one_second(self) -> float:
        return max(1.0, self.per_second)

    @burst.validator
    def _at_least_one(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < 1:
            raise ValueError(f"RateLimit burst must be >= 1, got {value!r}")

    def try_acquire(self, now: float) -> bool:
        """Take one call's token if there is one now."""
        if now < self._earliest():
            return False
        self._tat = max(self._tat, now) + 1.0 / self.per_second
        return True

    def next_available(self, now: float) -> float:
        """When ``try_acquire`` will next succeed (``now`` if it would now)."""
        return max(now, self._earliest())

    def tokens(self, now: float) -> float:
        """How many calls could be admitted at once right now (for stats)."""
        return max(0.0, min(self.burst, (now - self._tat) * self.per_second + self.burst))

    def _earliest(self) -> float:
        return self._tat - (self.burst - 1.0) / self.per_second


# -- the queue-wide retry budget --------------------------------------------

_SLICES: Final = 20  # a window is kept as at most this many slices (+1) per ledger


@attrs.define(eq=False)
class _Slice:
    """Events merged over a short stretch of time [start, end]."""

    start: float
    end: float
    firsts: int = 0
    refunds: int = 0
    retries: int = 0


@attrs.define(eq=False, kw_only=True)
class RetryBudget:
    """Retries allowed as a fraction of first attempts over a sliding window, plus a floor.

    One instance is shared by the whole queue (the worker owns it): a storm in
    any task spends the same budget. A retry is paid for from a ledger kept
    over the trailing ``window`` seconds, in units of one retry:

        credit = ratio * first_attempts + refunds - retries_paid_from_it

    while ``credit >= 1``, and otherwise from the floor: a trickle of
    ``floor`` retries a second (a token bucket holding one second's worth),
    which keeps probing a failing downstream gently and finds out soon when
    it is back. ``deposit`` records a first attempt; ``refund`` gives back the
    cost of a retry that succeeded, so retries that work cost nothing and,
    once the downstream recovers, the backlog drains at full speed instead of
    at the floor's pace. First-attempt successes earn nothing, so a long
    healthy spell does not bank a burst of retries for the next outage.

    Bound: retries in any window are at most ``ratio * first_attempts +
    refunds`` (counted over that window and the one before) ``+ floor *
    window + max(1, floor)``; with no refunds -- a downstream that keeps
    failing -- that is the retry storm's ceiling.

    Events are kept in slices of ``window / 20``; a deposit expires with the
    oldest event of its slice and a retry with the newest, so the slicing only
    ever errs on the strict side. ``now`` must not decrease between calls.
    """

    ratio: float = attrs.field(default=0.2, validator=non_negative, on_setattr=FROZEN)
    floor: float = attrs.field(default=10.0, validator=non_negative, on_setattr=FROZEN)
    window: float = attrs.field(default=10.0, validator=positive, on_setattr=FROZEN)
    _deposits: list[_Slice] = attrs.field(factory=list, init=False, repr=False)
    _withdrawals: list[_Slice] = attrs.field(factory=list, init=False, repr=False)
    _trickle: RateLimit | None = attrs.field(init=False, repr=False)

    @_trickle.default
    def _floor_bucket(self) -> RateLimit | None:
        floor = finite(self.floor)  # validators run after defaults: leave bad values to them
        if floor is None or floor <= 0:
            return None
        return RateLimit(per_second=floor, burst=max(1.0, floor))

    def deposit(self, now: float) -> None:
        """Record a first attempt: it earns ``ratio`` of a retry."""
        self._slice(self._deposits, now).firsts += 1

    def refund(self, now: float) -> None:
        """Record a retry that succeeded: its cost comes back."""
        self._slice(self._deposits, now).refunds += 1

    def try_withdraw(self, now: float) -> bool:
        """Spend one retry if the budget allows it now; False means wait, see ``wait_hint``."""
        if self._credit(now) >= 1:
            self._slice(self._withdrawals, now).retries += 1
            return True
        return self._trickle is not None and self._trickle.try_acquire(now)

    def balance(self, now: float) -> float:
        """Retries the budget would allow at once right now (for stats)."""
        floor = self._trickle.tokens(now) if self._trickle is not None else 0.0
        return max(0.0, self._credit(now)) + floor

    def available_at(self, now: float) -> float:
        """The earliest time a retry would be allowed if nothing else happens meanwhile."""
        at = self._ledger_at(now)
        if self._trickle is not None:
            at = min(at, self._trickle.next_available(now))
        return at if at < math.inf else now + self.window  # no floor, no deposits: poll later

    def wait_hint(self, now: float) -> float:
        """Seconds until a retry would be allowed if nothing else happens meanwhile."""
        return self.available_at(now) - now

    def _ledger_at(self, now: float) -> float:
        """When the ledger alone will pay for a retry, as its entries expire; inf if never."""
        if self._credit(now) >= 1:
            return now
        expiries = sorted(
            [(s.start + self.window, s, True) for s in self._deposits]
            + [(s.end + self.window, s, False) for s in self._withdrawals],
            key=lambda e: e[0],
        )
        deposits, withdrawals = list(self._deposits), list(self._withdrawals)
        for i, (at, item, is_deposit) in enumerate(expiries):
            (deposits if is_deposit else withdrawals).remove(item)
            later = expiries[i + 1][0] if i + 1 < len(expiries) else math.inf
            if later > at and self._sum(deposits, withdrawals) >= 1:
                return at
        return math.inf

    def _credit(self, now: float) -> float:
        self._deposits[:] = [s for s in self._deposits if now < s.start + self.window]
        self._withdrawals[:] = [s for s in self._withdrawals if now < s.end + self.window]
        return self._sum(self._deposits, self._withdrawals)

    def _sum(self, deposits: list[_Slice], withdrawals: list[_Slice]) -> float:
        firsts = sum(s.firsts for s in deposits)
        refunds = sum(s.refunds for s in deposits)
        return self.ratio * firsts + refunds - sum(s.retries for s in withdrawals)

    def _prune(self, now: float) -> None:
        """Drop the slices that have left the window: the oldest, at the head of each
        ledger (a slice is appended at `now`, which never decreases). O(1) per call:
        a first attempt's deposit, once per job, needs no credit computed."""
        window, deposits, withdrawals = self.window, self._deposits, self._withdrawals
        while deposits and now >= deposits[0].start + window:
            del deposits[0]
        while withdrawals and now >= withdrawals[0].end + window:
            del withdrawals[0]

    def _slice(self, ledger: list[_Slice], now: float) -> _Slice:
        self._prune(now)
        if ledger and now - ledger[-1].start < self.window / _SLICES:
            last = ledger[-1]
            last.start, last.end = min(last.start, now), max(last.end, now)
            return last
        ledger.append(_Slice(start=now, end=now))
        return ledger[-1]


# -- the per-task circuit breaker -------------------------------------------

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"

# state      event                              next state
# closed     success                            closed, consecutive failures = 0
# closed     failure, fewer than K in a row     closed, consecutive failures + 1
# closed     failure, the K-th in a row         open until now + cooldown
# open       now reaches opened + cooldown      half-open, no probe out
# open       success / failure                  open (late result of an older call)
# half-open  allow(), no probe out              half-open, probe out until now + cooldown
# half-open  allow(), probe out                 refused
# half-open  probe's deadline passes            half-open, no probe out (presumed lost)
# half-open  success                            closed, consecutive failures = 0
# half-open  failure                            open until now + cooldown
# half-open  neutral                            half-open, no probe out (next call probes)
# Any result reported while half-open is taken as the probe's; with no probe
# out it is a straggler and ignored, like results reported while open.


@attrs.define(eq=False, kw_only=True)
class CircuitBreaker:
    """Pauses a task after ``failures`` consecutive failures; one probe decides when to resume.

    One instance per task (``TaskPolicy`` makes a fresh one by default); tasks
    that share an instance share a downstream's fate, and trip together.
    """

    failures: int = attrs.field(default=5, validator=count, on_setattr=FROZEN)
    cooldown: float = attrs.field(default=30.0, validator=positive, on_setattr=FROZEN)
    _state: str = attrs.field(default=CLOSED, init=False)
    _consecutive: int = attrs.field(default=0, init=False)
    _reopen_at: float = attrs.field(default=0.0, init=False)
    _probe_until: float | None = attrs.field(default=None, init=False)

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row counted while closed (for stats)."""
        return self._consecutive

    def state(self, now: float) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        self._advance(now)
        return self._state

    def allow(self, now: float) -> bool:
        """Whether a call may start now; in half-open, admits the single probe."""
        if self.retry_at(now) > now:
            return False
        if self._state == HALF_OPEN:
            self._probe_until = now + self.cooldown
        return True

    def retry_at(self, now: float) -> float:
        """When ``allow`` will next say yes (``now`` if it would now), barring new results.

        While a probe is out this is the probe's deadline; its result usually
        comes sooner, and ``record_success`` closing the breaker is the moment
        to wake the task's waiting jobs.
        """
        self._advance(now)
        if self._state == OPEN:
            return self._reopen_at
        if self._state == HALF_OPEN and self._probe_until is not None:
            return self._probe_until
        return now

    def record_success(self, now: float) -> None:
        """A call succeeded."""
        self._advance(now)
        if self._state == CLOSED:
            self._consecutive = 0
        elif self._state == HALF_OPEN and self._probe_until is not None:
            self._state, self._consecutive, self._probe_until = CLOSED, 0, None

    def record_failure(self, now: float) -> None:
        """A call failed in a way that speaks of the downstream."""
        self._advance(now)
        if self._state == CLOSED:
            self._consecutive += 1
            if self._consecutive >= self.failures:
                self._open(now)
        elif self._state == HALF_OPEN and self._probe_until is not None:
            self._open(now)

    def record_neutral(self, now: float) -> None:
        """A call ended with no verdict on the downstream; a probe's slot is freed."""
        self._advance(now)
        if self._state == HALF_OPEN:
            self._probe_until = None

    def _open(self, now: float) -> None:
        self._state, self._reopen_at, self._probe_until = OPEN, now + self.cooldown, None

    def _advance(self, now: float) -> None:
        if self._state == OPEN and now >= self._reopen_at:
            self._state, self._probe_until = HALF_OPEN, None
        elif self._probe_until is not None and now >= self._probe_until:
            self._probe_until = None  # the probe is presumed lost
