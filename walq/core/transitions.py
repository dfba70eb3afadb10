"""The job state machine as data: which event may move a job from which state to which.

QueueState reads this table whenever it applies an event to a live queue (as
h11 reads its own), so the table cannot drift from the code; tests drive every
pair through each backend's public API (tests/test_transitions.py), which
checks the Redis scripts against the same table.

"new" is a job not yet enqueued; "done", "cancelled" and "purged" are the
ways a job leaves the queue. A claim either starts a job (running) or settles
it without running it: out of attempts or its record damaged (dead), or put
off by the claimer (scheduled; pending if the time it named has passed).
"expire" is a lease running out; "due" is a scheduled job's time coming.
A job enqueued after others is "waiting" until they are all done ("ready":
pending, or scheduled if its delay has not passed); a parent that dies or is
cancelled cancels it (or makes it ready, under after_policy="always").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from walq.errors import StateError

STATES = (
    "new", "waiting", "pending", "scheduled", "running", "dead", "done", "cancelled", "purged",
)  # fmt: skip
EVENTS = (
    "enqueue",
    "ready",
    "due",
    "claim",
    "ack",
    "fail",
    "release",
    "expire",
    "cancel",
    "requeue",
    "purge",
)

TRANSITIONS: Mapping[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        ("new", "enqueue"): frozenset({"pending", "scheduled", "waiting"}),
        ("waiting", "ready"): frozenset({"pending", "scheduled"}),
        ("waiting", "cancel"): frozenset({"cancelled"}),
        ("scheduled", "due"): frozenset({"pending"}),
        ("pending", "claim"): frozenset({"running", "dead", "scheduled", "pending"}),
        ("running", "ack"): frozenset({"done"}),
        ("running", "fail"): frozenset({"pending", "scheduled", "dead"}),
        ("running", "release"): frozenset({"pending"}),
        ("running", "expire"): frozenset({"pending"}),
        ("pending", "cancel"): frozenset({"cancelled"}),
        ("scheduled", "cancel"): frozenset({"cancelled"}),
        ("running", "cancel"): frozenset({"cancelled"}),
        ("dead", "requeue"): frozenset({"pending"}),
        ("dead", "purge"): frozenset({"purged"}),
    }
)


def next_states(job_id: int, state: str, event: str) -> frozenset[str]:
    """The states `event` may move job `job_id` to from `state`; StateError if none."""
    allowed = TRANSITIONS.get((state, event))
    if allowed is None:
        raise StateError(f"job {job_id} is {state}: {event} is not a transition from {state}")
    return allowed


def check(job_id: int, state: str, event: str, to: str) -> None:
    """StateError unless the table lets `event` move job `job_id` from `state` to `to`."""
    if to not in next_states(job_id, state, event):
        raise StateError(f"job {job_id} is {state}: {event} cannot make it {to}")
