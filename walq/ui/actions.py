"""What the dashboard's buttons do: one small interface, and the log of who asked what.

`Actions` is all the web layer knows. `make_actions` chooses its
implementation: `ControlActions`, through the owner's control channel
(walq.producers.control.Admin: a running owner acts at once and a cancel
stops its handler; with no owner the call takes the queue's lock; a server
acts at once). `OfflineActions` (walq.ops.admin, the lock only, no pause)
stays for queues whose owner predates the control channel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from walq import backends
from walq.errors import ArgumentError, StateError, WalqError
from walq.ops import admin
from walq.producers.control import Admin

log = logging.getLogger("walq.ui")

NAMES = ("requeue", "cancel", "purge", "pause", "resume")
KEPT = 100  # actions remembered for the page


class Actions(Protocol):
    """The operator's actions on one queue; each returns a one-line result or raises WalqError."""

    can_pause: bool  # whether pause/resume can work here

    def requeue(self, ids: Sequence[int]) -> str: ...

    def cancel(self, ids: Sequence[int]) -> str: ...

    def purge(self, ids: Sequence[int] | None) -> str: ...

    def pause(self, task: str) -> str: ...

    def resume(self, task: str) -> str: ...


class OfflineActions:
    """Actions through walq.ops.admin: a directory's lock (no owner running), or a server."""

    can_pause = False

    def __init__(self, target: str) -> None:
        self.target = target

    def requeue(self, ids: Sequence[int]) -> str:
        done = admin.requeue(self.target, ids)
        return f"requeued {_jobs(done)}"

    def cancel(self, ids: Sequence[int]) -> str:
        done = admin.cancel(self.target, ids)
        left = [jid for jid in ids if jid not in done]
        tail = f"; {_jobs(left)} had already finished" if left else ""
        return f"cancelled {_jobs(done)}{tail}" if done else f"{_jobs(left)} had already finished"

    def purge(self, ids: Sequence[int] | None) -> str:
        n = admin.purge(self.target, ids)
        return f"purged {n} dead job{'' if n == 1 else 's'}"

    def pause(self, task: str) -> str:
        raise StateError(f"pausing {task} needs a running owner's control channel, not here yet")

    def resume(self, task: str) -> str:
        raise StateError(f"resuming {task} needs a running owner's control channel, not here yet")


def _jobs(ids: Sequence[int]) -> str:
    shown = ", ".join(str(j) for j in ids[:10]) + (", ..." if len(ids) > 10 else "")
    return f"job{'' if len(ids) == 1 else 's'} {shown}"


class ControlActions:
    """Actions through the owner's control channel, or the lock when no owner runs."""

    can_pause = True

    def __init__(self, target: str) -> None:
        self.admin = Admin(target)
        self.server = backends.is_url(target)  # a server acts at once: no owner, no lock

    def _how(self) -> str:
        """How the last call was carried out, as the result says it."""
        route = "" if self.server else self.admin.last_route
        return {"owner": " (by the running owner)", "lock": " (the queue's lock taken)"}.get(
            route, ""
        )

    def requeue(self, ids: Sequence[int]) -> str:
        done = self.admin.requeue(ids)
        return f"requeued {_jobs(done)}{self._how()}"

    def cancel(self, ids: Sequence[int]) -> str:
        done = [jid for jid in ids if self.admin.cancel(jid)]
        left = [jid for jid in ids if jid not in done]
        tail = f"; {_jobs(left)} had already finished" if left and done else ""
        if not done:
            return f"{_jobs(left)} had already finished{self._how()}"
        return f"cancelled {_jobs(done)}{tail}{self._how()}"

    def purge(self, ids: Sequence[int] | None) -> str:
        n = self.admin.purge(ids)
        return f"purged {n} dead job{'' if n == 1 else 's'}{self._how()}"

    def pause(self, task: str) -> str:
        changed = self.admin.pause(task)
        return f"{'paused' if changed else 'was already paused:'} {task}{self._how()}"

    def resume(self, task: str) -> str:
        changed = self.admin.resume(task)
        return f"{'resumed' if changed else 'was not paused:'} {task}{self._how()}"


def make_actions(target: str) -> Actions:
    """The actions for the queue at `target` (the one place an implementation is chosen)."""
    return ControlActions(target)


@attrs.frozen
class Done:
    """One action as the page's log shows it."""

    at: float
    who: str
    action: str
    target: str  # the job ids or task it was about
    ok: bool
    result: str


class Ledger:
    """Runs actions, logs each with who asked and its result, and keeps the last few."""

    def __init__(self, actions: Actions, *, read_only: bool = False) -> None:
        self.actions = actions
        self.read_only = read_only
        self._done: deque[Done] = deque(maxlen=KEPT)
        self._lock = threading.Lock()

    def run(self, who: str, action: str, args: dict[str, Any]) -> Done:
        """Do `action` with `args` (ids, task) for `who`; the result, never an exception."""
        about = ""
        try:
            if action not in NAMES:
                raise ArgumentError(f"unknown action {action!r}: one of {', '.join(NAMES)}")
            about, call = self._call(action, args)
            if self.read_only:
                raise StateError("the dashboard is read-only (--read-only)")
            result, ok = call(), True
        except WalqError as exc:
            result, ok = str(exc), False
        done = Done(time.time(), who, action, about, ok, result)
        log.info(
            "action %s %s asked by %s: %s%s",
            action, about, who, "" if ok else "refused: ", result,
        )  # fmt: skip
        with self._lock:
            self._done.appendleft(done)
        return done

    def _call(self, action: str, args: dict[str, Any]) -> tuple[str, Any]:
        a = self.actions
        if action in ("pause", "resume"):
            task = args.get("task")
            if not isinstance(task, str) or not task:
                raise ArgumentError(f"{action} needs a task name")
            return task, (lambda: a.pause(task)) if action == "pause" else (lambda: a.resume(task))
        raw = args.get("ids")
        if action == "purge" and raw is None:
            return "all dead jobs", lambda: a.purge(None)
        ids = _ids(raw)
        about = " ".join(str(j) for j in ids)
        if action == "requeue":
            return about, lambda: a.requeue(ids)
        if action == "cancel":
            return about, lambda: a.cancel(ids)
        return about, lambda: a.purge(ids)

    def recent(self) -> list[dict[str, Any]]:
        """The last actions, newest first."""
        with self._lock:
            return [attrs.asdict(d) for d in self._done]


def _ids(raw: object) -> list[int]:
    """Job ids from a request: a non-empty list of positive integers."""
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(j, int) and not isinstance(j, bool) and j > 0 for j in raw)
    ):
        raise ArgumentError("ids must be a non-empty list of job ids")
    return list(raw)
