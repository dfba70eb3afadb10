"""Retry policy: backoff, a queue-wide retry budget, circuit breakers, rate limits.

Pure: no IO, no clock, no global randomness. Time is always an argument ``now``
(seconds on whatever non-decreasing clock the caller uses) and randomness comes
from a source passed in (``random.Random`` or anything with ``random()``), so
the worker runs these classes on the real clock and the tests on a simulated one.

Attempts are numbered from 1: ``attempt`` is the number of the run in question,
1 for a job's first run. The worker drives one job through a ``TaskPolicy``:

    adm = policy.admit(now, attempt=job.attempt, running=n, budget=budget, rng=rng)
    not adm.ok      -> put the job back, attempt not charged, until adm.not_before;
                       if adm.pauses_task, the task's other jobs wait as well
    handler returns -> policy.on_success(now, attempt=job.attempt, budget=budget)
    handler raises  -> d = policy.on_failure(exc, now, attempt=job.attempt, rng=rng)
                       d.retry: run again d.delay seconds from now; else dead-letter
    no outcome      -> policy.on_abandon(now)   (cancelled, lease lost, shutdown)

Not thread-safe: the worker's scheduling loop owns these objects. The maths and
the defaults are explained in docs/RETRY.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, Protocol

import attrs

from walq.core.format import MAX_DELAY

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "Admission",
    "Backoff",
    "CircuitBreaker",
    "Decision",
    "Permanent",
    "RandomSource",
    "RateLimit",
    "RetryAfter",
    "RetryBudget",
    "TaskPolicy",
    "decide",
]

DEFAULT_MAX_ATTEMPTS: Final = 10


class RandomSource(Protocol):
    """Where jitter comes from: ``random.Random`` fits."""

    def random(self) -> float:
        """Return a float in [0, 1)."""
        ...


class Permanent(Exception):
    """Raise from a handler to dead-letter the job at once: retrying cannot help."""


class RetryAfter(Exception):
    """Raise from a handler to run the job again ``delay`` seconds from now.

    For a downstream that says when to come back (``Retry-After`` on a 429 or
    503): ``raise walq.RetryAfter(30.0, "rate limited")``. The delay replaces
    the backoff draw; everything else still applies: the attempt is charged
    (``max_attempts`` still dead-letters), the retry needs the retry budget,
    and the failure counts toward the task's circuit breaker.
    """

    def __init__(self, delay: float, message: str = "") -> None:
        real = _real(delay)
        if real is None or real < 0:
            raise ValueError(f"RetryAfter delay must be finite seconds >= 0, got {delay!r}")
        super().__init__(delay, message)  # both in args, so it survives pickling
        self.delay = real
        self.message = message

    def __str__(self) -> str:
        text = f"retry after {self.delay:g} s"
        return f"{text}: {self.message}" if self.message else text


# -- validation -------------------------------------------------------------


def _real(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int_at_least(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    real = _real(value)
    if real is None or real <= 0:
        name = f"{type(instance).__name__} {attribute.name}"
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    real = _real(value)
    if real is None or real < 0:
        name = f"{type(instance).__name__} {attribute.name}"
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _int_at_least(value, 1):
        name = f"{type(instance).__name__} {attribute.name}"
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


_FROZEN: Final = attrs.setters.frozen  # configuration fields of the stateful classes


def _check_attempt(attempt: int, *, first: int) -> None:
    if not _int_at_least(attempt, first):
        raise ValueError(f"attempt must be an integer >= {first}, got {attempt!r}")


# -- backoff ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with full jitter, capped.

    The delay before retry number ``attempt`` (0 for the first retry) is drawn
    uniformly from ``[0, min(cap, base * 2**attempt))`` seconds.
    """

    base: float = attrs.field(default=1.0, validator=_positive)
    cap: float = attrs.field(default=300.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.cap < self.base:
            raise ValueError(f"Backoff cap ({self.cap!r}) must be >= base ({self.base!r})")

    def ceiling(self, attempt: int) -> float:
        """The largest delay retry number ``attempt`` (0-based) can draw."""
        _check_attempt(attempt, first=0)
        # 2.0**1023 is the largest power that does not raise; the product may be inf.
        return min(self.cap, self.base * 2.0 ** min(attempt, 1023))

    def delay(self, attempt: int, rng: RandomSource) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return rng.random() * self.ceiling(attempt)


# -- what to do after a failure ---------------------------------------------

_DOWNSTREAM_FAILURES: Final = frozenset({"backoff", "retry_after", "exhausted"})


@attrs.frozen
class Decision:
    """What happens to a job whose attempt failed, and why.

    ``reason`` is one of: ``"backoff"`` or ``"retry_after"`` (retry, after
    ``delay`` seconds); ``"exhausted"`` (``max_attempts`` reached),
    ``"permanent"`` (``Permanent`` raised), ``"no_retry"`` (a type the task
    lists in ``no_retry``), ``"not_retry_on"`` (a type missing from the task's
    ``retry_on``) -- all dead. Plain data, so a worker process can compute it
    and hand it to the parent.
    """

    retry: bool
    delay: float
    reason: str

    @property
    def dead(self) -> bool:
        """Whether the job goes to the dead-letter state."""
        return not self.retry

    @property
    def downstream_failure(self) -> bool:
        """Whether the failure speaks of the task's downstream, so counts for its breaker.

        A verdict about the job itself (permanent, listed in no_retry, outside
        retry_on) says nothing about the downstream's health.
        """
        return self.reason in _DOWNSTREAM_FAILURES


def decide(
    error: BaseException | type[BaseException],
    *,
    attempt: int,
    max_attempts: int,
    backoff: Backoff,
    rng: RandomSource,
    retry_on: tuple[type[BaseException], ...] = (),
    no_retry: tuple[type[BaseException], ...] = (),
) -> Decision:
    """Decide the fate of a job whose attempt number ``attempt`` (1-based) raised ``error``.

    In order: ``Permanent`` and ``no_retry`` types are dead; with a non-empty
    ``retry_on``, other types are dead (``RetryAfter`` always counts as
    listed); then ``attempt >= max_attempts`` is dead; then a ``RetryAfter``
    instance retries after its delay, and anything else after a backoff draw.
    """
    _check_attempt(attempt, first=1)
    if not _int_at_least(max_attempts, 1):
        raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    kind = error if isinstance(error, type) else type(error)
    if issubclass(kind, Permanent):
        return Decision(retry=False, delay=0.0, reason="permanent")
    if no_retry and issubclass(kind, no_retry):
        return Decision(retry=False, delay=0.0, reason="no_retry")
    if retry_on and not issubclass(kind, (RetryAfter, *retry_on)):
        return Decision(retry=False, delay=0.0, reason="not_retry_on")
    if attempt >= max_attempts:
        return Decision(retry=False, delay=0.0, reason="exhausted")
    # A retry is due at most MAX_DELAY from now, as any job (walq.core.jobspec.check_delay).
    if isinstance(error, RetryAfter):
        return Decision(retry=True, delay=min(error.delay, MAX_DELAY), reason="retry_after")
    delay = min(backoff.delay(attempt - 1, rng), MAX_DELAY)
    return Decision(retry=True, delay=delay, reason="backoff")


# -- per-task rate limit ----------------------------------------------------


@attrs.define(eq=False, kw_only=True)
class RateLimit:
    """A token bucket: ``per_second`` calls a second on average, ``burst`` at once.

    Kept as the generic cell rate algorithm (one number, the theoretical
    arrival time), so over any interval of ``t`` seconds at most
    ``burst + per_second * t`` calls are admitted. ``burst`` defaults to one
    second's worth (at least 1).
    """

    per_second: float = attrs.field(validator=_positive, on_setattr=_FROZEN)
    burst: float = attrs.field(validator=_positive, on_setattr=_FROZEN)
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

    ratio: float = attrs.field(default=0.2, validator=_non_negative, on_setattr=_FROZEN)
    floor: float = attrs.field(default=10.0, validator=_non_negative, on_setattr=_FROZEN)
    window: float = attrs.field(default=10.0, validator=_positive, on_setattr=_FROZEN)
    _deposits: list[_Slice] = attrs.field(factory=list, init=False, repr=False)
    _withdrawals: list[_Slice] = attrs.field(factory=list, init=False, repr=False)
    _trickle: RateLimit | None = attrs.field(init=False, repr=False)

    @_trickle.default
    def _floor_bucket(self) -> RateLimit | None:
        floor = _real(self.floor)  # validators run after defaults: leave bad values to them
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

    def _slice(self, ledger: list[_Slice], now: float) -> _Slice:
        self._credit(now)  # drops expired slices
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

    failures: int = attrs.field(default=5, validator=_count, on_setattr=_FROZEN)
    cooldown: float = attrs.field(default=30.0, validator=_positive, on_setattr=_FROZEN)
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


# -- one task's policy ------------------------------------------------------


def _to_rate(value: RateLimit | float | None) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        return value
    return RateLimit(per_second=value)


def _to_types(
    value: type[BaseException] | Iterable[type[BaseException]],
) -> tuple[type[BaseException], ...]:
    items = (value,) if isinstance(value, type) else tuple(value)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"expected exception classes, got {item!r}")
    return items


@attrs.frozen
class Admission:
    """Whether an attempt may start now; if not, until when it waits and why.

    ``reason``: ``"ok"``, or the gate that refused: ``"concurrency"`` (wait
    for one of the task's running jobs to finish; ``not_before`` is now),
    ``"breaker"``, ``"rate"`` (the whole task waits), or ``"budget"`` (only
    this retry waits; first attempts go on).
    """

    ok: bool
    reason: str
    not_before: float

    @property
    def pauses_task(self) -> bool:
        """Whether the refusal holds for every job of the task, not just this one."""
        return self.reason in ("concurrency", "breaker", "rate")


@attrs.frozen(kw_only=True)
class TaskPolicy:
    """Everything that governs one task's retries; the fields mirror ``@tasks.task`` options.

    With no options a task is already storm-safe: backoff with full jitter
    (1 s base, 300 s cap), ``DEFAULT_MAX_ATTEMPTS`` attempts, its own
    ``CircuitBreaker()`` (5 failures, 30 s), and the queue's ``RetryBudget``
    passed in by the worker. ``rate`` takes calls per second or a
    ``RateLimit``; ``breaker=None`` turns the breaker off; ``concurrency`` and
    ``rate`` are unlimited unless set. The breaker and rate limit are live
    state owned by this task: the fields are never rebound, their contents
    change.
    """

    retry: Backoff = attrs.field(factory=Backoff, validator=attrs.validators.instance_of(Backoff))
    max_attempts: int = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=_count)
    retry_on: tuple[type[BaseException], ...] = attrs.field(default=(), converter=_to_types)
    no_retry: tuple[type[BaseException], ...] = attrs.field(default=(), converter=_to_types)
    concurrency: int | None = attrs.field(default=None, validator=attrs.validators.optional(_count))
    rate: RateLimit | None = attrs.field(default=None, converter=_to_rate)
    breaker: CircuitBreaker | None = attrs.field(
        factory=CircuitBreaker,
        validator=attrs.validators.optional(attrs.validators.instance_of(CircuitBreaker)),
    )

    def admit(
        self,
        now: float,
        *,
        attempt: int,
        running: int,
        budget: RetryBudget | None,
        rng: RandomSource,
    ) -> Admission:
        """Ask every gate whether attempt ``attempt`` (1-based) may start; take from all or none.

        ``running`` is how many of this task's jobs run now. A first attempt
        deposits into ``budget``; a retry withdraws from it. A retry refused by
        the budget waits until the budget would allow it plus a fresh backoff
        draw, so a crowd of refused retries does not return all at once.
        """
        _check_attempt(attempt, first=1)
        if self.concurrency is not None and running >= self.concurrency:
            return Admission(ok=False, reason="concurrency", not_before=now)
        retry = attempt > 1
        gates = [
            ("breaker", self.breaker.retry_at(now) if self.breaker else now),
            ("rate", self.rate.next_available(now) if self.rate else now),
            ("budget", budget.available_at(now) if budget is not None and retry else now),
        ]
        reason, at = max(gates, key=lambda gate: gate[1])
        if at > now:
            if reason == "budget":
                at += self.retry.delay(attempt - 2, rng)
            return Admission(ok=False, reason=reason, not_before=at)
        # Every gate is open, so each of these takes its token.
        if self.breaker is not None:
            admitted = self.breaker.allow(now)
            assert admitted, "breaker refused after retry_at said yes"
        if self.rate is not None:
            admitted = self.rate.try_acquire(now)
            assert admitted, "rate limit refused after next_available said yes"
        if budget is not None:
            if retry:
                admitted = budget.try_withdraw(now)
                assert admitted, "budget refused after available_at said yes"
            else:
                budget.deposit(now)
        return Admission(ok=True, reason="ok", not_before=now)

    def on_success(self, now: float, *, attempt: int, budget: RetryBudget | None) -> bool:
        """Record a success; True if it closed the breaker (wake the task's waiting jobs)."""
        if budget is not None and attempt > 1:
            budget.refund(now)
        if self.breaker is None:
            return False
        was = self.breaker.state(now)
        self.breaker.record_success(now)
        return was != CLOSED and self.breaker.state(now) == CLOSED

    def on_failure(
        self,
        error: BaseException | type[BaseException],
        now: float,
        *,
        attempt: int,
        rng: RandomSource,
        max_attempts: int | None = None,
    ) -> Decision:
        """Record a failure of attempt ``attempt`` and decide the job's fate.

        ``max_attempts`` overrides the task's for this job (``enqueue``'s
        option). A handler that timed out or whose process died can be passed
        as an exception type, e.g. ``TimeoutError``.
        """
        decision = decide(
            error,
            attempt=attempt,
            max_attempts=self.max_attempts if max_attempts is None else max_attempts,
            backoff=self.retry,
            rng=rng,
            retry_on=self.retry_on,
            no_retry=self.no_retry,
        )
        if self.breaker is not None:
            if decision.downstream_failure:
                self.breaker.record_failure(now)
            else:
                self.breaker.record_neutral(now)
        return decision

    def on_abandon(self, now: float) -> None:
        """An admitted attempt ended with no outcome (cancelled, lease lost, shutdown)."""
        if self.breaker is not None:
            self.breaker.record_neutral(now)
