"""Every backend follows the one transition table (walq.core.transitions.TRANSITIONS).

For every (state, event) pair: drive a fresh job into `state` through the
public queue API, apply `event`, and check where the job went. A pair in the
table must land in one of its states; a pair not in it must be refused
(StateError, LeaseLost, UnknownJobError for a job that is gone) or, for the
events time drives (due, expire) and claim, leave the job as it was. Run with
WALQ_REDIS_URL set, this checks the Redis scripts against the same table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.test_contract import Backend, backend  # noqa: F401 (a fixture)
from walq.core.transitions import EVENTS, STATES, TRANSITIONS
from walq.errors import StateError, UnknownJobError

PATIENCE = 60.0  # seconds to wait for a lease or a delay to run out on a loaded machine
LONG = 600.0  # a lease or delay that does not run out during a test
SHORT = 1.0  # one that does (yet outlives the steps that check the state first)


def wait_for(predicate: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Job:
    """One job on a queue, driven through the public API only."""

    def __init__(self, q: Any) -> None:
        self.q = q
        self.id = 10**9  # "new": no job has this id yet
        self.attempt: int | None = None
        self.purged = False
        self.parent: int | None = None  # what a waiting job waits for

    def state(self) -> str:
        if self.purged:
            with pytest.raises(UnknownJobError):
                self.q.status(self.id)
            return "purged"
        try:
            return str(self.q.status(self.id))
        except UnknownJobError:
            return "new"

    def into(self, state: str, *, event: str) -> None:
        """Drive this job into `state`, with a short lease or delay if `event` is time's."""
        if state == "new":
            return
        q = self.q
        delay = SHORT if event == "due" else LONG
        if state == "scheduled":
            self.id = q.enqueue("t", 1, delay=delay)
            return
        if state == "waiting":  # after a parent that never falls due by itself
            self.parent = q.enqueue("p", 1, delay=LONG)
            self.id = q.enqueue("t", 1, after=[self.parent], after_policy="always")
            return
        self.id = q.enqueue("t", 1, max_attempts=1)
        if state in ("pending", "cancelled"):
            if state == "cancelled":
                assert q.cancel(self.id) is True
            return
        job = q.claim(lease=SHORT if event == "expire" else LONG)
        assert job is not None and job.id == self.id
        self.attempt = job.attempt
        if state == "done":
            q.ack(self.id, attempt=self.attempt)
        elif state in ("dead", "purged"):
            assert q.fail(self.id, "boom", attempt=self.attempt) == "dead"
            if state == "purged":
                assert q.purge([self.id]) == 1
                self.purged = True

    def apply(self, event: str) -> None:
        """Apply `event` through the API (for due and expire: wait until the time has passed)."""
        q, jid = self.q, self.id
        if event == "enqueue":
            if self.state() == "new":
                self.id = q.enqueue("t", 1)
            else:  # a job that exists cannot be enqueued: an enqueue makes another one
                assert q.enqueue("t", 1) != jid
        elif event == "ready":  # the parent settles: the waiting job may go on
            if self.parent is not None:
                q.cancel(self.parent)
        elif event in {"due", "expire"}:
            time.sleep(SHORT)
            q.stats()  # a backend may move due jobs and expired leases only when asked
        elif event == "claim":
            job = q.claim(lease=LONG)
            if job is not None:
                assert job.id == jid
        elif event == "ack":
            q.ack(jid)
        elif event == "fail":
            q.fail(jid, "boom")
        elif event == "release":
            q.release(jid)
        elif event == "cancel":
            if not q.cancel(jid):
                raise StateError(f"job {jid} had already finished")
        elif event == "requeue":
            q.requeue(jid)
        elif event == "purge":
            q.purge([jid])
            self.purged = True
        else:
            raise AssertionError(event)


PAIRS = [(state, event) for state in STATES for event in EVENTS]


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_the_backend_follows_the_table(backend: Backend, state: str, event: str) -> None:  # noqa: F811
    q = backend.open()
    try:
        job = Job(q)
        job.into(state, event=event)
        assert job.state() == state
        allowed = TRANSITIONS.get((state, event))
        if allowed is not None:
            job.apply(event)
            if event in ("due", "expire"):
                assert wait_for(lambda: job.state() != state), f"still {state} after {event}"
            assert job.state() in allowed
            return
        if event in ("due", "expire", "claim", "enqueue", "ready"):
            job.apply(event)  # nothing to refuse: the job must simply stay as it is
        else:
            with pytest.raises((StateError, UnknownJobError)):
                job.apply(event)
            job.purged = state == "purged"
        assert job.state() == state
    finally:
        q.close()


def test_every_pair_is_tested() -> None:
    """The table names only known states and events (so PAIRS covers all of it)."""
    for (state, event), targets in TRANSITIONS.items():
        assert state in STATES and event in EVENTS
        assert targets and targets <= set(STATES)
