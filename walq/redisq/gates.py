"""The storm gates every host shares: a task's breaker, rate limit and concurrency cap,
and the queue's retry budget, kept on the server (scripts/gates_lib.lua).

They are the classes of walq.core.retry and walq.core.gates with the same
calls, so the worker drives them as it drives its own; each decision is one
atomic script on the server, in the server's time, so N hosts retry no harder
than one. A concurrency cap counts running attempts by holder (one per
worker), each holder with a lease: a dead host's count is dropped when its
lease ends (the task's timeout and a minute after its last admission).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import attrs

from walq.core.gates import CircuitBreaker, RateLimit, RetryBudget
from walq.core.retry import Admission, Decision, RandomSource, TaskPolicy
from walq.errors import BackendError
from walq.redisq.connection import text
from walq.redisq.lua import ms

if TYPE_CHECKING:
    from walq.redisq.queue import RedisQueue

log = logging.getLogger("walq.redisq")

LEASE_GRACE = 60.0  # a holder's lease: the task's timeout plus this, after its last admission


class SharedGates:
    """The shared gates of one queue; `share` turns a task's policy into its shared one."""

    def __init__(self, queue: RedisQueue) -> None:
        self._q = queue
        self.holder = uuid.uuid4().hex  # this worker, as a concurrency cap's holder
        self.unreleased: dict[str, int] = {}  # cap releases the server has not had yet

    def run(self, name: str, *args: Any) -> Any:
        """Run gate script `name` on the queue's server."""
        return self._q._run(name, *args)

    def quiet(self, name: str, *args: Any, default: Any) -> Any:
        """Run gate script `name`; `default` if the server cannot be reached.

        A result's report (a breaker's record, a refund) or a look at a gate
        must not stop a worker riding out an outage: a report missed is a
        gate slightly off for a moment, on the safe side.
        """
        try:
            return self.run(name, *args)
        except BackendError as exc:
            log.debug("shared gate %s: %s", name, exc)
            return default

    def release(self, task: str, n: int = 1) -> None:
        """`n` of this holder's attempts of `task` ended; kept for later if the server is away."""
        n += self.unreleased.pop(task, 0)
        if self.quiet("gate_release", task, self.holder, n, default=None) is None:
            self.unreleased[task] = n

    def budget(self, local: RetryBudget) -> SharedRetryBudget:
        """The queue-wide budget on the server, with `local`'s ratio, floor and window."""
        return SharedRetryBudget(self, ratio=local.ratio, floor=local.floor, window=local.window)

    def share(self, task: str, policy: TaskPolicy, timeout: float) -> TaskPolicy:
        """`policy` of `task`, its breaker, rate limit and concurrency cap shared."""
        breaker = policy.breaker
        rate = policy.rate
        return SharedTaskPolicy(
            retry=policy.retry,
            max_attempts=policy.max_attempts,
            retry_on=policy.retry_on,
            no_retry=policy.no_retry,
            concurrency=policy.concurrency,
            rate=None
            if rate is None
            else SharedRateLimit(per_second=rate.per_second, burst=rate.burst),
            breaker=None
            if breaker is None
            else SharedBreaker(self, task, failures=breaker.failures, cooldown=breaker.cooldown),
            gates=self,
            task=task,
            lease_ms=ms(timeout + LEASE_GRACE),
        )


class SharedRetryBudget(RetryBudget):
    """RetryBudget's calls on the queue's shared ledger (scripts/gate_budget.lua)."""

    def __init__(self, gates: SharedGates, **config: float) -> None:
        super().__init__(**config)
        self.gates = gates

    def args(self) -> list[Any]:
        """The budget's configuration as a script's arguments."""
        return [repr(float(self.ratio)), repr(float(self.floor)), ms(self.window)]

    def _call(self, event: str) -> tuple[bool, float, float]:
        if event == "withdraw":
            reply = self.gates.run("gate_budget", event, *self.args())
        else:
            reply = self.gates.quiet("gate_budget", event, *self.args(), default=(0, 0, 0))
        paid, wait_ms, credit = reply
        return bool(int(paid)), int(wait_ms) / 1000.0, int(credit) / 1000.0

    def deposit(self, now: float) -> None:
        self._call("deposit")

    def refund(self, now: float) -> None:
        self._call("refund")

    def try_withdraw(self, now: float) -> bool:
        return self._call("withdraw")[0]

    def balance(self, now: float) -> float:
        return max(0.0, self._call("peek")[2])

    def available_at(self, now: float) -> float:
        return now + self._call("peek")[1]


class SharedBreaker(CircuitBreaker):
    """CircuitBreaker's calls on the task's shared breaker (scripts/gate_breaker.lua)."""

    def __init__(self, gates: SharedGates, task: str, **config: Any) -> None:
        super().__init__(**config)
        self.gates, self.task = gates, task
        self._seen = 0

    def _call(self, event: str, now: float) -> tuple[str, float, str]:
        state, wait_ms, n, was = self.gates.quiet(
            "gate_breaker",
            self.task,
            event,
            self.failures,
            ms(self.cooldown),
            default=(b"closed", 0, self._seen, b"closed"),
        )
        self._seen = int(n)
        return text(state), now + max(0, int(wait_ms)) / 1000.0, text(was)

    def succeeded(self, now: float) -> bool:
        """Record a success (one call); True if it closed the breaker."""
        state, _, was = self._call("success", now)
        return was != "closed" and state == "closed"

    @property
    def consecutive_failures(self) -> int:
        return self._seen

    def state(self, now: float) -> str:
        return self._call("peek", now)[0]

    def allow(self, now: float) -> bool:
        """Only SharedTaskPolicy.admit takes a probe (atomically, with the other gates)."""
        return self.retry_at(now) <= now

    def retry_at(self, now: float) -> float:
        return self._call("peek", now)[1]

    def record_success(self, now: float) -> None:
        self._call("success", now)

    def record_failure(self, now: float) -> None:
        self._call("failure", now)

    def record_neutral(self, now: float) -> None:
        self._call("neutral", now)


class SharedRateLimit(RateLimit):
    """A task's rate limit on the server: taken only by SharedTaskPolicy.admit."""

    def __init__(self, **config: float) -> None:
        super().__init__(**config)
        self.shut_until = 0.0  # when the last refusal said it opens (the caller's clock)

    def try_acquire(self, now: float) -> bool:
        """Only SharedTaskPolicy.admit takes a token (atomically, with the other gates)."""
        return now >= self.shut_until

    def next_available(self, now: float) -> float:
        return max(now, self.shut_until)


@attrs.frozen(kw_only=True)
class SharedTaskPolicy(TaskPolicy):
    """A TaskPolicy whose gates are on the server: one script admits an attempt or not."""

    gates: SharedGates = attrs.field(eq=False, repr=False)
    task: str
    lease_ms: int

    def admit(
        self,
        now: float,
        *,
        attempt: int,
        running: int,
        budget: RetryBudget | None,
        rng: RandomSource,
    ) -> Admission:
        """As TaskPolicy.admit, every gate asked and taken in one script on the server."""
        if self.concurrency is not None and running >= self.concurrency:
            return Admission(ok=False, reason="concurrency", not_before=now)
        if self.gates.unreleased.get(self.task):
            self.gates.release(self.task, 0)  # ends the server missed, first
        b, r = self.breaker, self.rate
        shared = budget if isinstance(budget, SharedRetryBudget) else None
        ok, reason, wait_ms = self.gates.run(
            "gate_admit",
            self.task,
            attempt,
            "" if b is None else b.failures,
            "" if b is None else ms(b.cooldown),
            "" if r is None else repr(float(r.per_second)),
            "" if r is None else repr(float(r.burst)),
            *(["", "", ""] if shared is None else shared.args()),
            "" if self.concurrency is None else self.concurrency,
            self.gates.holder,
            self.lease_ms,
        )
        if int(ok):
            return Admission(ok=True, reason="ok", not_before=now)
        why = text(reason)
        at = now + int(wait_ms) / 1000.0
        if why == "budget":
            at += self.retry.delay(attempt - 2, rng)
        if why == "rate" and isinstance(r, SharedRateLimit):
            r.shut_until = at
        return Admission(ok=False, reason=why, not_before=at)

    def _release(self) -> None:
        if self.concurrency is not None:
            self.gates.release(self.task)

    def on_success(self, now: float, *, attempt: int, budget: RetryBudget | None) -> bool:
        """As TaskPolicy.on_success, the breaker told in one call."""
        if not isinstance(self.breaker, SharedBreaker):
            closed = super().on_success(now, attempt=attempt, budget=budget)
        else:
            if budget is not None and attempt > 1:
                budget.refund(now)
            closed = self.breaker.succeeded(now)
        self._release()
        return closed

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
        decision = super().on_failure(
            error, now, attempt=attempt, rng=rng, max_attempts=max_attempts, counts=counts
        )
        self._release()
        return decision

    def on_abandon(self, now: float) -> None:
        super().on_abandon(now)
        self._release()
