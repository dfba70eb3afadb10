"""The retry policy inside the worker: concurrency caps, breakers, rate limits, Retry-After."""

from __future__ import annotations

import time
from pathlib import Path

import walq
from tests import worker_tasks
from tests.test_worker import kind, ledger_lines, no_leftover_processes, registry, run_until_done
from walq.worker.pool import Worker

# The autouse fixture applies here too; the tests run for plain and coroutine handlers.
__all__ = ["kind", "no_leftover_processes", "registry"]


def test_concurrency_cap_never_runs_two_at_once(
    qdir: str, tmp_path: Path, registry: walq.Tasks
) -> None:
    """concurrency=1: with two worker processes the task's jobs still never overlap."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        q.enqueue_many([("exclusive", {"ledger": str(ledger)}) for _ in range(8)])
        run_until_done(q, Worker(q, registry, processes=2, prefetch=1))
    running = 0
    for line in ledger_lines(ledger):
        running += 1 if line[3] == "start" else -1
        assert running <= 1
    assert len(ledger_lines(ledger)) == 16


def test_breaker_opens_and_pauses_the_task(qdir: str, tmp_path: Path, registry: walq.Tasks) -> None:
    """After 3 consecutive failures the breaker opens: no new attempt during the cool-down.

    Attempts already running when the third failure lands may still finish:
    at most failures + (jobs run at once: 2 processes x 2 coroutines) - 1 run.
    """
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        q.enqueue_many([("flaky_downstream", {"ledger": str(ledger)}) for _ in range(10)])
        w = Worker(q, registry, processes=2, prefetch=1, async_concurrency=2)
        import threading

        def stop_after_the_breaker_opened() -> None:
            # Three failures (however slowly the worker processes start), then a
            # second of cool-down in which nothing may start.
            deadline = time.monotonic() + 60
            while len(ledger_lines(ledger)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            w.stop()

        threading.Thread(target=stop_after_the_breaker_opened).start()
        w.run()
        assert 3 <= len(ledger_lines(ledger)) <= 3 + 2 * w._runs - 1
        assert w.status()["tasks"]["flaky_downstream"]["breaker"] == "open"
        assert q.stats()["dead"] == 0  # paused, never dropped


def test_rate_limit_spaces_the_task_out(qdir: str, tmp_path: Path, registry: walq.Tasks) -> None:
    """rate=20/s with burst 1: jobs start 50 ms apart once the workers are up.

    (While the two workers are still starting, the first jobs can bunch.)
    """
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        q.enqueue_many([("rate_limited", {"ledger": str(ledger)}) for _ in range(10)])
        run_until_done(q, Worker(q, registry, processes=2))
    times = sorted(float(line[3]) for line in ledger_lines(ledger))
    # Unlimited, ten such jobs take ~10 ms; limited, at least ~0.45 s minus start-up bunching
    # and scheduling jitter on a busy machine.
    assert len(times) == 10 and times[-1] - times[0] >= 0.3


def test_retry_after_is_honoured(qdir: str, tmp_path: Path, registry: walq.Tasks) -> None:
    """A handler raising RetryAfter(0.5) runs again no sooner than 0.5 s later."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        jid = q.enqueue("asks_for_delay", {"ledger": str(ledger)})
        started = time.monotonic()
        run_until_done(q, Worker(q, registry, processes=1))
        assert q.status(jid) == "done"
        assert time.monotonic() - started >= 0.5
    assert [line[1] for line in ledger_lines(ledger)] == ["1", "2"]


def test_spent_budget_defers_retries_without_charging(qdir: str) -> None:
    """A retry the budget cannot pay for is rescheduled, its attempt not charged."""
    from walq.core.job import Job
    from walq.core.retry import RetryBudget
    from walq.worker.outcomes import Outcome

    with walq.Queue.open(qdir) as q:
        budget = RetryBudget(ratio=0.0, floor=0.001, window=10.0)
        w = Worker(q, worker_tasks.tasks, processes=1, retry_budget=budget)
        jid = q.enqueue("raises", {"n": 1})
        job = q.claim()
        assert job is not None
        w._runtime["raises"].running = 1
        report = {"cause": "exception", "type": "ValueError", "message": "x", "traceback": ""}
        job = Job(id=jid, task="raises", payload={}, attempt=1, max_attempts=2)
        w._record([Outcome(job, worker_tasks.tasks["raises"], False, report)])
        budget.try_withdraw(time.monotonic())  # spend the floor
        # Make the retry due now, then let the worker's admission look at it.
        q._state.tick(walq.Now(time.time() + 10_000, time.monotonic() + 10_000))
        claimed = q.claim_many(1, accept=w._admit(time.monotonic(), 1))
        assert claimed == []
        assert q.status(jid) == "scheduled" and w.counters["deferred"] == 1
        assert q._state.info(jid).attempts == 1
