"""Retry policy: backoff with jitter, the retry decision, and each task's whole policy.

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

from collections.abc import Iterable
from typing import Final, Protocol

import attrs

from walq.core.format import MAX_DELAY
from walq.core.gates import CLOSED, CircuitBreaker, RateLimit, RetryBudget
from walq.core.gates import check_attempt as _check_attempt
from walq.core.gates import count as _count
from walq.core.gates import finite as _real
from walq.core.gates import int_at_least as _int_at_least
from walq.core.gates import positive as _positive

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
        # The gate that opens last decides (the first of equals: breaker, rate, budget).
        reason, at = "breaker", self.breaker.retry_at(now) if self.breaker else now
        if self.rate is not None:
            rate_at = self.rate.next_available(now)
            if rate_at > at:
                reason, at = "rate", rate_at
        if budget is not None and retry:
            budget_at = budget.available_at(now)
            if budget_at > at:
                reason, at = "budget", budget_at
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
        if was == CLOSED:  # the usual case, once per job: nothing to wake
            return False
        return self.breaker.state(now) == CLOSED

    def on_failure(
        self,
        error: BaseException | type[BaseException],
        now: float,
        *,
        attempt: int,
        rng: RandomSource,
        max_attempts: int | None = None,
        counts: bool = True,
    ) -> Decision:
        """Record a failure of attempt ``attempt`` and decide the job's fate.

        ``max_attempts`` overrides the task's for this job (``enqueue``'s
        option). A handler that timed out or whose process died can be passed
        as an exception type, e.g. ``TimeoutError``. ``counts=False``: the
        failure may not be this job's own doing (its process died while other
        jobs ran in it), so it is charged but left out of the breaker.
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
            if decision.downstream_failure and counts:
                self.breaker.record_failure(now)
            else:
                self.breaker.record_neutral(now)
        return decision

    def on_abandon(self, now: float) -> None:
        """An admitted attempt ended with no outcome (cancelled, lease lost, shutdown)."""
        if self.breaker is not None:
            self.breaker.record_neutral(now)
