"""Claims on the Redis backend: which claim this handle holds on each job, and
claim_many's ask-first path (reserve candidates, ask `accept`, then commit)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from walq.core.state import PENDING, JobInfo, Loc
from walq.errors import WalqError
from walq.redisq.connection import text
from walq.redisq.lua import ms

if TYPE_CHECKING:
    from walq.redisq.queue import RedisQueue

log = logging.getLogger("walq.redisq")

# How long claim_many's reservation of candidates lasts if its claimer dies
# between asking `accept` and recording the outcome (the reaper returns them).
RESERVATION = 30.0
_NOWHERE = Loc(0, 0, 0)
_HELD_CAP = 100_000


class Held:
    """The (attempt, claim token) of each job this handle claimed (the newest 100,000)."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        """A fresh lock: the parent's may have been held by its other threads."""
        self._lock = threading.Lock()

    def add(self, job_id: int, attempt: int, gen: int) -> None:
        """This handle claimed `job_id` as `attempt`, with claim token `gen`."""
        with self._lock:
            self._held[job_id] = (attempt, gen)
            if len(self._held) > _HELD_CAP:
                self._held.pop(next(iter(self._held)))

    def forget(self, job_ids: Iterable[int]) -> None:
        """These jobs are finished, handed back or cancelled: no claim of ours is left."""
        with self._lock:
            for jid in job_ids:
                self._held.pop(jid, None)

    def token(self, job_id: int, attempt: int | None) -> tuple[str, str]:
        """(attempt, claim token) for a script: whose result or heartbeat this is.

        With `attempt`, that attempt (and this handle's token for it, if it
        claimed it). Without, this handle's own newest claim on the job; if it
        holds none, 'none', which the scripts refuse for a running job
        (LeaseLost): only cancel and requeue act without a claim.
        """
        with self._lock:
            held = self._held.get(job_id)
        if attempt is None:
            if held is None:
                return "", "none"
            return str(held[0]), str(held[1])
        if held is None or held[0] != attempt:
            return str(int(attempt)), ""
        return str(int(attempt)), str(held[1])


def claim_accepted(
    q: RedisQueue,
    n: int,
    lease_ms: int,
    accept: Callable[[JobInfo], bool | float],
    only: str | None,
) -> tuple[list[Any], int]:
    """Reserve candidates, ask `accept` about each, then start, defer or put back.

    The claimed rows, and how many jobs were dead-lettered or deferred.
    """
    token = uuid.uuid4().hex
    refused: set[str] = set()
    take: list[int] = []
    defer: list[list[float | int]] = []
    back: list[int] = []
    reserved: list[int] = []
    try:
        for _ in range(64):
            want = n - len(take)
            if want <= 0:
                break
            found = q._run(
                "reserve",
                want,
                token,
                ms(RESERVATION),
                json.dumps(sorted(refused)),
                only or "",
            )
            if not found:
                break
            reserved += [int(row[0]) for row in found]
            for jid, task_b, attempts, priority, own in found:
                task = text(task_b)
                if task in refused or len(take) >= n:
                    back.append(int(jid))
                    continue
                info = JobInfo(
                    id=int(jid),
                    task=task,
                    state=PENDING,
                    attempts=int(attempts),
                    max_attempts=int(own) or q._max_for(task),
                    priority=int(priority),
                    loc=_NOWHERE,
                )
                verdict = accept(info)
                if verdict is True:
                    take.append(info.id)
                elif verdict is False:
                    refused.add(task)
                    back.append(info.id)
                else:
                    wait = max(0.0, float(verdict) - time.monotonic())
                    defer.append([info.id, ms(wait)])
            if len(found) < want:
                break  # nothing more is pending (but the refused tasks' jobs)
    except BaseException:
        # accept raised, or the server failed: hand every reserved job back.
        with contextlib.suppress(WalqError):
            _commit(q, token, [], [], reserved, 1)
        raise
    if not (take or defer or back):
        return [], 0
    rows, buried = _commit(q, token, take, defer, back, lease_ms)
    return rows, buried + len(defer)


def _commit(
    q: RedisQueue,
    token: str,
    take: list[int],
    defer: list[list[float | int]],
    back: list[int],
    lease_ms: int,
) -> tuple[list[Any], int]:
    reply = q._run(
        "commit",
        token,
        q._defaults_json,
        q.default_max_attempts,
        lease_ms,
        json.dumps(take),
        json.dumps(defer),
        json.dumps(back),
    )
    rows, buried, lost = list(reply[0]), int(reply[1]), list(reply[2])
    if lost:
        # Only if this process stalled for longer than the reservation.
        log.warning(
            "claim: jobs %s were reserved for over %.0f s and went back to pending",
            [int(x) for x in lost],
            RESERVATION,
        )
    return rows, buried
