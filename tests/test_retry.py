"""Retry policy maths (walq.core.retry), on a simulated clock."""

from __future__ import annotations

import ast
import copy
import pickle
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walq.core import retry
from walq.core.retry import (
    Backoff,
    CircuitBreaker,
    Permanent,
    RateLimit,
    RetryAfter,
    RetryBudget,
    TaskPolicy,
    decide,
)

seconds = st.floats(0.001, 1000.0, allow_nan=False)
seeds = st.integers(0, 2**32 - 1)
steps = st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 3.0, 11.0])


class Flaky(Exception):
    """A retryable failure."""


class Fatal(Exception):
    """A failure a task lists as not worth retrying."""


def times(increments: list[float], start: float = 0.0) -> list[float]:
    """Running sums: a non-decreasing simulated clock."""
    out, now = [], start
    for dt in increments:
        now += dt
        out.append(now)
    return out


class TestCoreHasNoIO:
    """The retry maths takes time and randomness as arguments."""

    def test_module_imports_no_os_io_time_or_threads(self) -> None:
        """walq.core.retry imports none of os, io, time, threading, random, socket."""
        tree = ast.parse(Path(retry.__file__).read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert not names & {"os", "io", "time", "threading", "random", "socket", "asyncio"}


class TestBackoff:
    """Exponential backoff with full jitter."""

    @given(base=seconds, cap=seconds, attempt=st.integers(0, 2000), seed=seeds)
    def test_delay_is_within_zero_and_the_capped_exponential(
        self, base: float, cap: float, attempt: int, seed: int
    ) -> None:
        """Every draw lies in [0, min(cap, base * 2**attempt)]."""
        base, cap = min(base, cap), max(base, cap)
        delay = Backoff(base=base, cap=cap).delay(attempt, random.Random(seed))
        assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 1023))

    def test_ceiling_doubles_until_the_cap(self) -> None:
        """The ceilings go base, 2 base, 4 base ... then stay at the cap."""
        b = Backoff(base=0.5, cap=5.0)
        assert [b.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]

    def test_huge_attempt_numbers_are_capped_not_overflowing(self) -> None:
        """2**attempt never overflows: past the cap it is the cap."""
        assert Backoff(base=7.0, cap=9.0).ceiling(10**6) == 9.0

    def test_draws_spread_over_the_whole_range(self) -> None:
        """Full jitter: draws reach near 0 and near the ceiling, averaging half of it."""
        rng, b = random.Random(7), Backoff(base=1.0, cap=300.0)
        draws = [b.delay(3, rng) for _ in range(4000)]
        assert min(draws) < 0.05 and max(draws) > 7.95
        assert 3.8 < sum(draws) / len(draws) < 4.2

    def test_defaults(self) -> None:
        """One second base, five minutes cap."""
        assert Backoff() == Backoff(base=1.0, cap=300.0)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"base": 0}, "Backoff base must be a positive finite number, got 0"),
            ({"base": -1.0}, "Backoff base must be a positive"),
            ({"cap": float("inf")}, "Backoff cap must be a positive finite number, got inf"),
            ({"base": float("nan")}, "got nan"),
            ({"base": True}, "got True"),
            ({"base": "1"}, "got '1'"),
            ({"base": 10.0, "cap": 5.0}, r"Backoff cap \(5.0\) must be >= base \(10.0\)"),
        ],
    )
    def test_bad_arguments_raise_value_error_naming_the_field(
        self, kwargs: dict[str, object], message: str
    ) -> None:
        """Validation says which field is wrong and what it got."""
        with pytest.raises(ValueError, match=message):
            Backoff(**kwargs)  # type: ignore[arg-type]

    def test_negative_attempt_is_refused(self) -> None:
        """Retry numbers start at 0."""
        with pytest.raises(ValueError, match="attempt must be an integer >= 0"):
            Backoff().delay(-1, random.Random(0))

    def test_backoff_is_keyword_only_and_frozen(self) -> None:
        """Values, not holders: no positional arguments, no mutation."""
        with pytest.raises(TypeError):
            Backoff(1.0, 2.0)  # type: ignore[call-arg]
        with pytest.raises(AttributeError):
            Backoff().base = 3.0  # type: ignore[misc]


class TestHandlerSignals:
    """Permanent and RetryAfter, raised by handlers."""

    def test_permanent_carries_its_message(self) -> None:
        """Permanent("bad payload") reads as its message."""
        assert str(Permanent("bad payload")) == "bad payload"
        assert isinstance(Permanent(), Exception)

    def test_retry_after_reads_well_and_keeps_its_delay(self) -> None:
        """RetryAfter(30, msg) says when and why."""
        exc = RetryAfter(30, "rate limited")
        assert exc.delay == 30.0 and str(exc) == "retry after 30 s: rate limited"
        assert str(RetryAfter(1.5)) == "retry after 1.5 s"

    def test_retry_after_survives_pickling(self) -> None:
        """Worker processes send exceptions back; delay and message survive."""
        exc = pickle.loads(pickle.dumps(RetryAfter(2.5, "later")))
        assert (exc.delay, exc.message, str(exc)) == (2.5, "later", "retry after 2.5 s: later")

    @pytest.mark.parametrize("delay", [-1.0, float("inf"), float("nan"), "5"])
    def test_retry_after_refuses_a_bad_delay(self, delay: object) -> None:
        """Negative, infinite or non-numeric delays are a ValueError."""
        with pytest.raises(ValueError, match="RetryAfter delay must be finite seconds >= 0"):
            RetryAfter(delay)  # type: ignore[arg-type]


def _decide(error: BaseException | type[BaseException], attempt: int = 1, **kw: object) -> str:
    d = decide(
        error,
        attempt=attempt,
        max_attempts=kw.pop("max_attempts", 5),  # type: ignore[arg-type]
        backoff=Backoff(),
        rng=random.Random(0),
        **kw,  # type: ignore[arg-type]
    )
    assert d.retry == (d.reason in ("backoff", "retry_after"))
    assert d.dead == (not d.retry)
    return d.reason


class TestDecide:
    """The fate of a job whose attempt failed."""

    def test_permanent_is_dead_at_once(self) -> None:
        """Permanent (and subclasses) skip every remaining attempt."""

        class Gone(Permanent):
            pass

        assert _decide(Permanent("x")) == "permanent"
        assert _decide(Gone) == "permanent"
        assert _decide(Permanent, retry_on=(Permanent,)) == "permanent"

    def test_no_retry_types_and_their_subclasses_are_dead(self) -> None:
        """A type listed in no_retry, or a subclass of one, is dead."""
        assert _decide(Fatal(), no_retry=(Fatal,)) == "no_retry"
        assert _decide(KeyError("k"), no_retry=(LookupError,)) == "no_retry"
        assert _decide(Flaky(), no_retry=(Fatal,)) == "backoff"

    def test_with_retry_on_other_types_are_dead(self) -> None:
        """retry_on is an allow-list: anything else is dead."""
        assert _decide(Flaky(), retry_on=(Flaky,)) == "backoff"
        assert _decide(Fatal(), retry_on=(Flaky,)) == "not_retry_on"

    def test_no_retry_wins_over_retry_on(self) -> None:
        """Listed in both: not retried."""
        assert _decide(Flaky(), retry_on=(Exception,), no_retry=(Flaky,)) == "no_retry"

    def test_retry_after_counts_as_listed_in_retry_on(self) -> None:
        """A handler's explicit RetryAfter is retried even outside retry_on."""
        assert _decide(RetryAfter(3), retry_on=(Flaky,)) == "retry_after"

    @given(attempt=st.integers(1, 50), max_attempts=st.integers(1, 50), seed=seeds)
    def test_retried_exactly_while_attempts_remain(
        self, attempt: int, max_attempts: int, seed: int
    ) -> None:
        """Attempt n of max m retries iff n < m, with a delay within the backoff ceiling."""
        b = Backoff(base=0.1, cap=60.0)
        d = decide(
            Flaky(), attempt=attempt, max_attempts=max_attempts, backoff=b, rng=random.Random(seed)
        )
        assert d.retry == (attempt < max_attempts)
        if d.retry:
            assert 0.0 <= d.delay <= b.ceiling(attempt - 1)
        else:
            assert d.reason == "exhausted" and d.delay == 0.0

    def test_retry_after_uses_its_delay_but_not_past_max_attempts(self) -> None:
        """RetryAfter replaces the backoff draw; max_attempts still dead-letters."""
        d = decide(
            RetryAfter(42.0), attempt=2, max_attempts=3, backoff=Backoff(), rng=random.Random(0)
        )
        assert (d.retry, d.delay, d.reason) == (True, 42.0, "retry_after")
        assert _decide(RetryAfter(42.0), attempt=3, max_attempts=3) == "exhausted"

    def test_exception_type_is_accepted_for_timeouts_and_crashes(self) -> None:
        """A type works where no instance exists (a timed-out handler)."""
        assert _decide(TimeoutError) == "backoff"
        assert _decide(RetryAfter) == "backoff"  # no instance, so no delay to honour

    def test_first_retry_waits_at_most_base(self) -> None:
        """After attempt 1 the draw is within [0, base]; after attempt 3, [0, 4 base]."""
        b, rng = Backoff(base=2.0, cap=100.0), random.Random(3)
        first = [decide(Flaky, attempt=1, max_attempts=9, backoff=b, rng=rng) for _ in range(500)]
        third = [decide(Flaky, attempt=3, max_attempts=9, backoff=b, rng=rng) for _ in range(500)]
        assert max(d.delay for d in first) <= 2.0 < max(d.delay for d in third) <= 8.0

    def test_only_retryable_failures_speak_of_the_downstream(self) -> None:
        """Verdicts about the job do not count toward a breaker."""
        d = decide(Fatal, attempt=1, max_attempts=2, backoff=Backoff(), rng=random.Random(0))
        assert d.downstream_failure
        no_retry: tuple[type[BaseException], ...] = (Fatal,)
        for error in (Permanent, Fatal):
            d = decide(
                error, attempt=1, max_attempts=2, backoff=Backoff(), rng=random.Random(0),
                no_retry=no_retry,
            )  # fmt: skip
            assert not d.downstream_failure
        d = decide(Flaky, attempt=2, max_attempts=2, backoff=Backoff(), rng=random.Random(0))
        assert d.reason == "exhausted" and d.downstream_failure

    @pytest.mark.parametrize(("attempt", "max_attempts"), [(0, 3), (1, 0), (True, 3)])
    def test_bad_attempt_numbers_raise(self, attempt: int, max_attempts: int) -> None:
        """Attempts count from 1; max_attempts is at least 1."""
        with pytest.raises(ValueError, match="attempt"):
            decide(
                Flaky,
                attempt=attempt,
                max_attempts=max_attempts,
                backoff=Backoff(),
                rng=random.Random(0),
            )


# One budget event: a time step, then what happens.
budget_events = st.lists(
    st.tuples(steps, st.sampled_from(["first", "first", "refund", "retry", "retry", "retry"])),
    max_size=300,
)


def run_budget(budget: RetryBudget, events: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Feed the events; return the log of what happened, with refused retries left out."""
    log = []
    for now, (_, kind) in zip(times([dt for dt, _ in events]), events, strict=True):
        if kind == "first":
            budget.deposit(now)
        elif kind == "refund":
            budget.refund(now)
        elif not budget.try_withdraw(now):
            continue
        log.append((now, kind))
    return log


def in_window(log: list[tuple[float, str]], kind: str, end: float, window: float) -> int:
    """Events of one kind in (end - window, end], on the same rule as the budget's expiry."""
    return sum(1 for t, k in log if k == kind and t <= end < t + window)


class TestRetryBudget:
    """The queue-wide retry budget."""

    def test_defaults_follow_finagle(self) -> None:
        """20 % of first attempts, 10 retries a second floor, 10 s window."""
        b = RetryBudget()
        assert (b.ratio, b.floor, b.window) == (0.2, 10.0, 10.0)

    @given(
        ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 3.0]),
        window=st.sampled_from([0.5, 1.0, 10.0, 60.0]),
        events=budget_events,
    )
    def test_without_floor_retries_never_exceed_ratio_times_first_attempts_plus_refunds(
        self, ratio: float, window: float, events: list[tuple[float, str]]
    ) -> None:
        """With no floor: at every retry, retries over the trailing window <= ratio*F + refunds."""
        log = run_budget(RetryBudget(ratio=ratio, floor=0.0, window=window), events)
        for now, kind in log:
            if kind == "retry":
                allowed = ratio * in_window(log, "first", now, window)
                allowed += in_window(log, "refund", now, window)
                assert in_window(log, "retry", now, window) <= allowed + 1e-9

    @given(
        ratio=st.sampled_from([0.0, 0.2, 1.0]),
        floor=st.sampled_from([0.0, 0.1, 1.0, 2.5, 10.0]),
        window=st.sampled_from([0.5, 2.0, 10.0]),
        events=budget_events,
    )
    def test_retries_over_any_window_stay_within_the_budget(
        self, ratio: float, floor: float, window: float, events: list[tuple[float, str]]
    ) -> None:
        """Retries in (t-W, t] <= ratio*F + refunds over (t-2W, t] + floor*W + max(1, floor)."""
        log = run_budget(RetryBudget(ratio=ratio, floor=floor, window=window), events)
        for now, _ in log:
            allowed = ratio * in_window(log, "first", now, 2 * window)
            allowed += in_window(log, "refund", now, 2 * window)
            allowed += floor * window + (max(1.0, floor) if floor else 0.0)
            assert in_window(log, "retry", now, window) <= allowed + 1e-9

    def test_a_failing_downstream_gets_the_floor_as_a_trickle(self) -> None:
        """No first attempts, no successes: about `floor` retries a second, never a burst."""
        b = RetryBudget(ratio=0.2, floor=10.0, window=10.0)
        granted = [t for t in times([0.01] * 3000) if b.try_withdraw(t)]
        assert len(granted) <= 10 + 10 * 30.0  # one second's burst plus 10/s
        assert len(granted) >= 10 * 29.0
        assert sum(1 for t in granted if t < 1.0) <= 20

    def test_first_attempts_buy_ratio_of_a_retry_each(self) -> None:
        """With no floor, 100 first attempts at 20 % pay for exactly 20 retries."""
        b = RetryBudget(ratio=0.2, floor=0.0, window=10.0)
        for _ in range(100):
            b.deposit(1.0)
        assert sum(b.try_withdraw(2.0) for _ in range(50)) == 20

    def test_deposits_expire_after_the_window(self) -> None:
        """First attempts older than the window no longer pay for retries."""
        b = RetryBudget(ratio=1.0, floor=0.0, window=10.0)
        for _ in range(5):
            b.deposit(0.0)
        assert b.try_withdraw(9.9)
        assert not b.try_withdraw(10.0)

    def test_slicing_expires_deposits_early_and_retries_late(self) -> None:
        """Events merged into one slice never make the budget looser than exact bookkeeping."""
        b = RetryBudget(ratio=1.0, floor=0.0, window=10.0)  # slices of 0.5 s
        b.deposit(0.0)
        b.deposit(0.0)
        assert b.try_withdraw(0.0) and b.try_withdraw(0.4)  # one slice, 0.0 .. 0.4
        b.deposit(9.9)
        b.deposit(9.9)
        # Exact books at 10.2: deposits at 9.9 alive (2), the retry at 0.4 alive (1): 1 left.
        assert b.try_withdraw(10.2) + b.try_withdraw(10.2) <= 1
        # Once the whole slice has expired, the books agree again.
        assert b.try_withdraw(10.4) and b.try_withdraw(10.4)
        b = RetryBudget(ratio=1.0, floor=0.0, window=10.0)
        b.deposit(0.0)
        b.deposit(0.4)  # one slice: expires with its oldest event, at 10.0
        assert not b.try_withdraw(10.2)  # exactly, one deposit (0.4) would still be alive

    def test_refused_retry_is_told_when_to_come_back(self) -> None:
        """A refusal comes with a positive wait, and at that moment the retry is allowed."""
        b = RetryBudget(ratio=0.0, floor=2.0, window=10.0)
        assert b.try_withdraw(0.0) and b.try_withdraw(0.0) and not b.try_withdraw(0.0)
        wait = b.wait_hint(0.0)
        assert wait == pytest.approx(0.5)
        assert b.try_withdraw(wait)

    @given(
        ratio=st.sampled_from([0.0, 0.2, 1.0]),
        floor=st.sampled_from([0.0, 0.3, 10.0]),
        events=budget_events,
        later=steps,
    )
    def test_available_at_is_exact(
        self, ratio: float, floor: float, events: list[tuple[float, str]], later: float
    ) -> None:
        """available_at(now) is now iff a retry is allowed now; at the time it names, it is."""
        b = RetryBudget(ratio=ratio, floor=floor, window=5.0)
        run_budget(b, events)
        now = sum(dt for dt, _ in events) + later
        at = b.available_at(now)
        assert at >= now
        assert (at == now) == copy.deepcopy(b).try_withdraw(now)
        if at > now and b.floor == 0 and at == now + b.window:
            return  # nothing will pay: "ask again after a window"
        assert copy.deepcopy(b).try_withdraw(at)
        assert b.wait_hint(now) == at - now

    def test_refunds_let_a_recovered_backlog_drain_at_full_speed(self) -> None:
        """After an outage spent the budget, successful retries pay for the next ones."""
        b = RetryBudget(ratio=0.2, floor=10.0, window=10.0)
        now = 0.0
        while now < 60.0:  # the outage: every retry fails, the budget is spent
            b.try_withdraw(now)
            now += 0.01
        started = 0
        slots: list[float] = []  # finish times of retries in flight, 16 slots, 50 ms each
        while now < 65.0:  # recovered: retries succeed and are refunded
            for done in [t for t in slots if t <= now]:
                slots.remove(done)
                b.refund(done)
            while len(slots) < 16 and b.try_withdraw(now):
                slots.append(now + 0.05)
                started += 1
            now += 0.001
        # The floor alone would allow ~50 in 5 s; 16 slots at 50 ms allow ~1600.
        assert started > 1000

    def test_first_attempt_successes_do_not_bank_retries(self) -> None:
        """A healthy spell (first attempts succeeding) earns only the ratio, nothing more."""
        b = RetryBudget(ratio=0.2, floor=0.0, window=10.0)
        for i in range(1000):
            b.deposit(i * 0.001)
        assert b.balance(1.0) == pytest.approx(200.0)

    def test_balance_reports_ledger_and_floor(self) -> None:
        """Stats: what could be spent at once right now."""
        b = RetryBudget(ratio=0.5, floor=4.0, window=10.0)
        b.deposit(0.0)
        b.deposit(0.0)
        assert b.balance(0.0) == pytest.approx(1.0 + 4.0)

    def test_memory_stays_bounded(self) -> None:
        """Events are merged into at most window/20-second slices."""
        b = RetryBudget(window=10.0)
        for now in times([0.001] * 50_000):
            b.deposit(now)
            b.try_withdraw(now)
        assert len(b._deposits) <= 21 and len(b._withdrawals) <= 21

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"ratio": -0.1}, "RetryBudget ratio must be a finite number >= 0"),
            ({"floor": float("inf")}, "RetryBudget floor must be a finite number >= 0"),
            ({"window": 0}, "RetryBudget window must be a positive finite number"),
        ],
    )
    def test_bad_arguments_raise_value_error(self, kwargs: dict[str, float], message: str) -> None:
        """Validation names the field."""
        with pytest.raises(ValueError, match=message):
            RetryBudget(**kwargs)

    def test_configuration_cannot_change_under_a_running_budget(self) -> None:
        """Config fields are frozen; the ledger is the only state."""
        with pytest.raises(AttributeError):
            RetryBudget().floor = 1.0


# One breaker event: a time step, then a call.
breaker_events = st.lists(
    st.tuples(
        steps, st.sampled_from(["allow", "allow", "success", "failure", "failure", "neutral"])
    ),
    max_size=200,
)


class TestCircuitBreaker:
    """The per-task circuit breaker."""

    def test_opens_after_k_consecutive_failures(self) -> None:
        """Closed until the K-th failure in a row, then open."""
        b = CircuitBreaker(failures=3, cooldown=10.0)
        for now in (0.0, 1.0):
            b.record_failure(now)
            assert b.state(now) == "closed" and b.allow(now)
        b.record_failure(2.0)
        assert b.state(2.0) == "open" and not b.allow(2.0)
        assert b.retry_at(2.0) == 12.0

    def test_a_success_resets_the_count(self) -> None:
        """Failures must be consecutive."""
        b = CircuitBreaker(failures=2, cooldown=10.0)
        b.record_failure(0.0)
        b.record_success(0.1)
        b.record_failure(0.2)
        assert b.state(0.2) == "closed" and b.consecutive_failures == 1

    def test_neutral_outcomes_neither_count_nor_reset(self) -> None:
        """A permanent error says nothing about the downstream."""
        b = CircuitBreaker(failures=2, cooldown=10.0)
        b.record_failure(0.0)
        b.record_neutral(0.1)
        b.record_failure(0.2)
        assert b.state(0.2) == "open"

    def test_half_open_after_the_cooldown_admits_exactly_one_probe(self) -> None:
        """After the cooldown one call is let through; the rest wait for its verdict."""
        b = CircuitBreaker(failures=1, cooldown=30.0)
        b.record_failure(0.0)
        assert not b.allow(29.999)
        assert b.state(30.0) == "half-open"
        assert [b.allow(30.0 + i * 0.001) for i in range(100)] == [True] + [False] * 99
        assert b.retry_at(30.5) == 60.0  # the probe's deadline

    def test_probe_success_closes(self) -> None:
        """A successful probe closes the breaker."""
        b = CircuitBreaker(failures=1, cooldown=5.0)
        b.record_failure(0.0)
        assert b.allow(5.0)
        b.record_success(5.1)
        assert b.state(5.1) == "closed" and b.allow(5.1) and b.allow(5.1)

    def test_probe_failure_reopens_for_a_full_cooldown(self) -> None:
        """A failed probe opens the breaker again, counted from the failure."""
        b = CircuitBreaker(failures=1, cooldown=5.0)
        b.record_failure(0.0)
        assert b.allow(5.0)
        b.record_failure(5.2)
        assert b.state(5.2) == "open" and b.retry_at(5.2) == 10.2

    def test_a_lost_probe_is_replaced_after_a_cooldown(self) -> None:
        """A probe that never reports does not wedge the task."""
        b = CircuitBreaker(failures=1, cooldown=5.0)
        b.record_failure(0.0)
        assert b.allow(5.0)
        assert not b.allow(9.99)
        assert b.allow(10.0)

    def test_a_neutral_probe_frees_the_slot(self) -> None:
        """A probe ending without a verdict lets the next call probe."""
        b = CircuitBreaker(failures=1, cooldown=5.0)
        b.record_failure(0.0)
        assert b.allow(5.0)
        b.record_neutral(5.1)
        assert b.state(5.1) == "half-open" and b.allow(5.1)

    def test_results_reported_while_open_are_ignored(self) -> None:
        """Stragglers from calls started before the breaker opened change nothing."""
        b = CircuitBreaker(failures=1, cooldown=5.0)
        b.record_failure(0.0)
        b.record_success(1.0)
        b.record_failure(2.0)
        assert b.state(4.9) == "open" and b.retry_at(4.9) == 5.0

    @given(failures=st.integers(1, 4), events=breaker_events)
    def test_the_transition_table_holds_for_any_sequence(
        self, failures: int, events: list[tuple[float, str]]
    ) -> None:
        """Any sequence follows the table: one probe per half-open turn; allow matches retry_at."""
        b = CircuitBreaker(failures=failures, cooldown=2.0)
        probe_at: float | None = None  # when the current half-open probe was admitted
        streak = 0  # consecutive failures while closed
        for now, (_, kind) in zip(times([dt for dt, _ in events]), events, strict=True):
            before = b.state(now)
            if before != "half-open" or (probe_at is not None and now >= probe_at + 2.0):
                probe_at = None  # no probe out, or it is presumed lost
            if kind == "allow":
                expected = before == "closed" or (before == "half-open" and probe_at is None)
                assert (b.retry_at(now) <= now) == expected
                assert b.allow(now) == expected
                if before == "half-open" and expected:
                    probe_at = now
                continue
            getattr(b, f"record_{kind}")(now)
            after = b.state(now)
            if before == "closed":
                streak = 0 if kind == "success" else streak + (kind == "failure")
                assert after == ("open" if streak >= failures else "closed")
                streak = 0 if after == "open" else streak
            elif before == "open":
                assert after == "open"  # a straggler's result
            elif kind == "neutral" or probe_at is None:
                assert after == "half-open"
                probe_at = None
            else:
                assert after == ("closed" if kind == "success" else "open")
                probe_at, streak = None, 0

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"failures": 0}, "CircuitBreaker failures must be an integer >= 1, got 0"),
            ({"failures": 2.5}, "CircuitBreaker failures must be an integer >= 1"),
            ({"cooldown": -1.0}, "CircuitBreaker cooldown must be a positive finite number"),
        ],
    )
    def test_bad_arguments_raise_value_error(self, kwargs: dict[str, float], message: str) -> None:
        """Validation names the field."""
        with pytest.raises(ValueError, match=message):
            CircuitBreaker(**kwargs)  # type: ignore[arg-type]


class TestRateLimit:
    """The per-task token bucket."""

    @given(
        per_second=st.sampled_from([0.5, 1.0, 3.0, 100.0]),
        burst=st.sampled_from([1.0, 1.5, 4.0, 20.0]),
        increments=st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.2, 1.0, 5.0]), max_size=300),
    )
    def test_never_exceeds_burst_plus_rate_times_t(
        self, per_second: float, burst: float, increments: list[float]
    ) -> None:
        """Over any interval of t seconds, at most burst + per_second * t calls are admitted."""
        limit = RateLimit(per_second=per_second, burst=burst)
        granted = [t for t in times(increments) if limit.try_acquire(t)]
        for i, first in enumerate(granted):
            for j in range(i, len(granted)):
                assert j - i + 1 <= burst + per_second * (granted[j] - first) + 1e-6

    @given(
        per_second=st.sampled_from([0.5, 3.0, 100.0]),
        increments=st.lists(st.sampled_from([0.0, 0.001, 0.2, 1.0]), max_size=50),
    )
    def test_next_available_is_exact(self, per_second: float, increments: list[float]) -> None:
        """next_available(now) is now iff a call is allowed; at the time it names, it is."""
        limit = RateLimit(per_second=per_second, burst=2.0)
        for now in times(increments):
            at = limit.next_available(now)
            assert (at == now) == copy.deepcopy(limit).try_acquire(now)
            assert limit.try_acquire(at)

    def test_sustained_rate_and_burst(self) -> None:
        """From idle, a burst at once; then one call per 1/rate seconds."""
        limit = RateLimit(per_second=10.0, burst=3.0)
        assert [limit.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
        assert limit.next_available(0.0) == pytest.approx(0.1)
        assert limit.tokens(0.0) == pytest.approx(0.0)
        assert limit.tokens(100.0) == 3.0

    def test_burst_defaults_to_one_second_worth(self) -> None:
        """burst = max(1, per_second) unless given."""
        assert RateLimit(per_second=50.0).burst == 50.0
        assert RateLimit(per_second=0.2).burst == 1.0

    def test_burst_below_one_is_refused(self) -> None:
        """A bucket must hold at least one call."""
        with pytest.raises(ValueError, match="RateLimit burst must be >= 1"):
            RateLimit(per_second=5.0, burst=0.5)


class TestTaskPolicy:
    """One task's bundle, and the sequence the worker follows."""

    def test_a_task_with_no_options_is_storm_safe(self) -> None:
        """Backoff on, attempts capped, a breaker of its own; no limits unless asked."""
        p = TaskPolicy()
        assert p.retry == Backoff() and p.max_attempts == retry.DEFAULT_MAX_ATTEMPTS
        assert isinstance(p.breaker, CircuitBreaker)
        assert (p.breaker.failures, p.breaker.cooldown) == (5, 30.0)
        assert p.concurrency is None and p.rate is None

    def test_each_task_gets_its_own_breaker(self) -> None:
        """Default breakers are not shared: one task tripping leaves the others running."""
        assert TaskPolicy().breaker is not TaskPolicy().breaker

    def test_options_are_converted(self) -> None:
        """rate takes calls per second; retry_on takes one type or several."""
        p = TaskPolicy(rate=5, retry_on=Flaky, no_retry=[Fatal, KeyError], breaker=None)
        assert isinstance(p.rate, RateLimit) and p.rate.per_second == 5
        assert p.retry_on == (Flaky,) and p.no_retry == (Fatal, KeyError)
        assert p.breaker is None

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"max_attempts": 0}, ValueError),
            ({"concurrency": 0}, ValueError),
            ({"retry_on": ["Flaky"]}, TypeError),
            ({"retry": 1.0}, TypeError),
            ({"breaker": 5}, TypeError),
        ],
    )
    def test_bad_options_are_refused(self, kwargs: dict[str, object], error: type) -> None:
        """Wrong values or types fail when the task is declared."""
        with pytest.raises(error):
            TaskPolicy(**kwargs)  # type: ignore[arg-type]

    def test_first_attempt_deposits_and_retry_withdraws(self) -> None:
        """admit charges the budget for retries only, and pays into it for first runs."""
        p, budget, rng = TaskPolicy(), RetryBudget(ratio=1.0, floor=0.0), random.Random(0)
        assert not p.admit(0.0, attempt=2, running=0, budget=budget, rng=rng).ok
        assert p.admit(0.0, attempt=1, running=0, budget=budget, rng=rng).ok
        assert p.admit(0.0, attempt=2, running=0, budget=budget, rng=rng).ok
        assert not p.admit(0.0, attempt=2, running=0, budget=budget, rng=rng).ok

    def test_budget_refusal_defers_only_that_job_and_later_than_the_budget_says(self) -> None:
        """A refused retry waits for the budget plus a backoff draw; first runs go on."""
        p, budget, rng = TaskPolicy(), RetryBudget(ratio=0.0, floor=1.0), random.Random(0)
        assert p.admit(0.0, attempt=3, running=0, budget=budget, rng=rng).ok
        adm = p.admit(0.0, attempt=3, running=0, budget=budget, rng=rng)
        assert (adm.ok, adm.reason, adm.pauses_task) == (False, "budget", False)
        assert 1.0 <= adm.not_before <= 1.0 + Backoff().ceiling(1)
        assert p.admit(0.0, attempt=1, running=0, budget=budget, rng=rng).ok

    def test_a_refusal_takes_no_token_from_any_gate(self) -> None:
        """All or nothing: a budget refusal does not use up the half-open probe or a rate token."""
        p = TaskPolicy(
            rate=RateLimit(per_second=1.0, burst=1.0), breaker=CircuitBreaker(failures=1)
        )
        budget, rng = RetryBudget(ratio=0.0, floor=0.0), random.Random(0)
        assert p.breaker is not None and p.rate is not None
        p.breaker.record_failure(0.0)
        adm = p.admit(30.0, attempt=2, running=0, budget=budget, rng=rng)
        assert adm.reason == "budget"
        assert p.breaker.allow(30.0) and p.rate.try_acquire(30.0)

    def test_breaker_and_rate_pause_the_whole_task(self) -> None:
        """Refusals by task-wide gates say until when, and that the task waits."""
        p = TaskPolicy(
            rate=RateLimit(per_second=2.0, burst=1.0), breaker=CircuitBreaker(failures=1)
        )
        rng = random.Random(0)
        assert p.admit(0.0, attempt=1, running=0, budget=None, rng=rng).ok
        adm = p.admit(0.0, attempt=1, running=0, budget=None, rng=rng)
        assert (adm.reason, adm.not_before, adm.pauses_task) == ("rate", 0.5, True)
        p.on_failure(Flaky(), 0.05, attempt=1, rng=rng)
        adm = p.admit(1.0, attempt=1, running=0, budget=None, rng=rng)
        assert (adm.reason, adm.not_before, adm.pauses_task) == ("breaker", 30.05, True)

    def test_concurrency_cap(self) -> None:
        """At the cap, the task waits for one of its jobs to finish."""
        p, rng = TaskPolicy(concurrency=2), random.Random(0)
        assert p.admit(0.0, attempt=1, running=1, budget=None, rng=rng).ok
        adm = p.admit(0.0, attempt=1, running=2, budget=None, rng=rng)
        assert (adm.ok, adm.reason, adm.not_before, adm.pauses_task) == (
            False,
            "concurrency",
            0.0,
            True,
        )

    def test_on_failure_trips_the_breaker_only_for_downstream_failures(self) -> None:
        """Permanent errors dead-letter the job but leave the breaker closed."""
        p, rng = TaskPolicy(breaker=CircuitBreaker(failures=2)), random.Random(0)
        assert p.breaker is not None
        for now in range(5):
            assert p.on_failure(Permanent("bad"), float(now), attempt=1, rng=rng).dead
        assert p.breaker.state(5.0) == "closed"
        p.on_failure(Flaky(), 5.0, attempt=1, rng=rng)
        p.on_failure(RetryAfter(1.0), 5.0, attempt=1, rng=rng)
        assert p.breaker.state(5.0) == "open"

    def test_job_max_attempts_overrides_the_task(self) -> None:
        """enqueue(max_attempts=) wins over the task's."""
        p, rng = TaskPolicy(max_attempts=10), random.Random(0)
        assert p.on_failure(Flaky(), 0.0, attempt=2, rng=rng, max_attempts=2).reason == "exhausted"
        assert p.on_failure(Flaky(), 0.0, attempt=2, rng=rng).retry

    def test_on_success_refunds_retries_and_says_when_the_breaker_closed(self) -> None:
        """A successful probe returns True so the worker wakes the task's waiting jobs."""
        p, rng = TaskPolicy(breaker=CircuitBreaker(failures=1, cooldown=5.0)), random.Random(0)
        budget = RetryBudget(ratio=0.0, floor=0.0)
        p.on_failure(Flaky(), 0.0, attempt=1, rng=rng)
        assert p.admit(5.0, attempt=1, running=0, budget=budget, rng=rng).ok  # the probe
        assert p.on_success(5.1, attempt=2, budget=budget) is True
        assert p.on_success(5.2, attempt=1, budget=budget) is False
        assert budget.balance(5.2) == 1.0  # the retry's refund; the first run earned 0 %

    def test_on_abandon_frees_the_probe(self) -> None:
        """An attempt that ends with no outcome does not hold the half-open slot."""
        p, rng = TaskPolicy(breaker=CircuitBreaker(failures=1, cooldown=5.0)), random.Random(0)
        p.on_failure(Flaky(), 0.0, attempt=1, rng=rng)
        assert p.admit(5.0, attempt=1, running=0, budget=None, rng=rng).ok
        assert not p.admit(5.0, attempt=1, running=0, budget=None, rng=rng).ok
        p.on_abandon(5.0)
        assert p.admit(5.0, attempt=1, running=0, budget=None, rng=rng).ok
