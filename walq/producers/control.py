"""Operating a queue: administrative requests on the owner's socket, and `walq.connect(DIR).admin`.

A request is a socket message like a producer's (walq.producers.wire) with
header `{"op": "admin", "action": NAME, "args": {...}}` and no items; the
reply is `{"ok": true, "result": ...}` or an error. The owner's server admits
only peers of its own uid (SO_PEERCRED), as for producers, and logs every
action that changes the queue with the peer's uid and pid.

`Admin` asks the owner when one listens; when none does, it takes the queue's
lock, opens the queue and answers from it, the same `Control` doing the work
either way. Actions (docs/OPERATIONS.md, "Operating a running queue"):

    status(id)  find(key)  jobs(state, task, limit, after)  dead()  stats()
    requeue(ids)  cancel(id)  purge(ids)  pause(task)  resume(task)  paused()
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from walq import backends, errors
from walq.backend import QueueBackend
from walq.core.jobspec import check_task
from walq.core.text import excerpt
from walq.errors import ArgumentError, LockedError, NoOwnerError, ProtocolError, StateError
from walq.producers import wire

log = logging.getLogger("walq.admin")

# Actions that change the queue: logged at INFO with the peer's uid.
CHANGES = frozenset({"requeue", "cancel", "purge", "pause", "resume"})
READS = frozenset({"status", "find", "jobs", "dead", "stats", "paused"})
ACTIONS = CHANGES | READS
# Error names a reply may carry, mapped back to their classes.
_ERRORS: dict[str, type[errors.WalqError]] = {
    cls.__name__: cls
    for cls in (
        errors.ArgumentError,
        errors.UnknownJobError,
        errors.StateError,
        errors.LeaseLost,
        errors.ProtocolError,
        errors.ClosedError,
        errors.LogFailedError,
        errors.QueueFull,
        errors.WalqError,
    )
}


def _int(name: str, value: object, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ArgumentError(f"{name} must be an integer >= {low}, not {excerpt(value)}")
    return value


def _ids(value: object) -> list[int]:
    if not isinstance(value, list | tuple):
        raise ArgumentError(f"ids must be a list of job ids, not {excerpt(value)}")
    return [_int("a job id", v, low=1) for v in value]


class Control:
    """Answers administrative actions on an open queue (its owner's, or opened with its lock)."""

    def __init__(self, queue: QueueBackend) -> None:
        self.queue = queue

    def handle(self, action: object, args: object, *, uid: int | None, pid: int) -> Any:
        """The result of one action (raises WalqError); a change is logged with the peer."""
        if not isinstance(action, str) or action not in ACTIONS:
            raise ProtocolError(f"unknown admin action {excerpt(action)}")
        if not isinstance(args, dict):
            raise ProtocolError("admin 'args' must be an object")
        method: Callable[..., Any] = getattr(self, f"_{action}")
        try:
            result = method(**args)
        except TypeError as exc:
            raise ArgumentError(f"admin action {action}: {exc}") from None
        if action in CHANGES:
            who = "uid unknown" if uid is None else f"uid {uid}"
            log.info(
                "%s: admin %s %s by %s (pid %d): %s",
                self.queue.path,
                action,
                json.dumps(args, sort_keys=True),
                who,
                pid,
                json.dumps(result),
                extra={"admin_action": action, "peer_uid": uid, "peer_pid": pid},
            )
        return result

    # -- reads -----------------------------------------------------------------------

    def _status(self, id: object) -> dict[str, Any]:
        out = self.queue.job_detail(_int("id", id, low=1))
        if out["status"] == "running":
            out["worker"] = os.getpid()  # the owner whose worker pool runs it
        out["progress"] = None  # no progress is reported yet
        return out

    def _find(self, key: object) -> int | None:
        if not isinstance(key, str):
            raise ArgumentError(f"key must be a string, not {excerpt(key)}")
        return self.queue.find(key)

    def _jobs(
        self, state: object = None, task: object = None, limit: object = 100, after: object = 0
    ) -> list[dict[str, Any]]:
        if state is not None and not isinstance(state, str):
            raise ArgumentError(f"state must be a string, not {excerpt(state)}")
        return self.queue.jobs(
            state,
            None if task is None else check_task(task),
            limit=_int("limit", limit, low=1),
            after=_int("after", after),
        )

    def _dead(self) -> list[dict[str, Any]]:
        out = []
        for d in self.queue.dead_jobs():
            raw = d.payload
            if isinstance(raw, bytes):
                kind, payload = "bytes", raw.hex()
            else:
                kind, payload = "json", json.dumps(raw, ensure_ascii=False)
            out.append(
                {
                    "id": d.id,
                    "task": d.task,
                    "attempts": d.attempts,
                    "error": d.error,
                    "key": d.key,
                    "payload_kind": kind,
                    "payload": payload,
                }
            )
        return out

    def _stats(self) -> dict[str, Any]:
        out = dict(self.queue.stats())
        out["path"] = self.queue.path
        out["paused"] = self.queue.paused()
        return out

    def _paused(self) -> list[str]:
        return self.queue.paused()

    # -- changes ---------------------------------------------------------------------

    def _requeue(self, ids: object) -> list[int]:
        """All or none: every job must be dead before any is requeued."""
        wanted = _ids(ids)
        for jid in wanted:
            status = self.queue.status(jid)
            if status != "dead":
                raise StateError(f"job {jid} is {status}, not dead")
        for jid in wanted:
            self.queue.requeue(jid, sync=True)
        return wanted

    def _cancel(self, id: object) -> bool:
        return self.queue.cancel(_int("id", id, low=1), sync=True)

    def _purge(self, ids: object = None) -> int:
        if ids is None:
            return self.queue.purge(None, sync=True)
        wanted = _ids(ids)
        for jid in wanted:
            self.queue.status(jid)  # UnknownJobError for an id that never existed
        return self.queue.purge(wanted, sync=True)

    def _pause(self, task: object) -> bool:
        return self.queue.pause(check_task(task), sync=True)

    def _resume(self, task: object) -> bool:
        return self.queue.resume(check_task(task), sync=True)


def result_reply(result: Any) -> dict[str, Any]:
    """The reply carrying an action's result."""
    return {"ok": True, "result": result}


class Admin:
    """Administration of the queue in directory `path`, from any process of its owner's uid.

    Each call asks the running owner over its socket (its state is in memory:
    answers in milliseconds, and a cancel stops a running handler); with no
    owner running it takes the queue's lock for the call and acts on the
    files. `require_owner=True` raises NoOwnerError instead of taking the lock.
    `path` may also be a server's URL (Redis): each call then acts on the
    server at once, as any worker's queue handle would.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        require_owner: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.require_owner = require_owner
        # A server's queue has no single owner: every call goes to the backend itself.
        self.address = None if backends.is_url(self.path) else wire.socket_address(self.path)
        self.last_route = ""  # "owner" or "lock": how the last call was answered

    # -- the actions -------------------------------------------------------------------

    def status(self, job_id: int) -> dict[str, Any]:
        """QueueBackend.job_detail: status, task, attempts, key, last error, due, lease."""
        result: dict[str, Any] = self.call("status", id=job_id)
        return result

    def find(self, key: str) -> int | None:
        """The unfinished job holding idempotency key `key`, if any."""
        result: int | None = self.call("find", key=key)
        return result

    def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        *,
        limit: int = 100,
        after: int = 0,
    ) -> list[dict[str, Any]]:
        """QueueBackend.jobs: a page of live jobs in id order (pass the last id as `after`)."""
        result: list[dict[str, Any]] = self.call(
            "jobs", state=state, task=task, limit=limit, after=after
        )
        return result

    def dead(self) -> list[dict[str, Any]]:
        """Every dead job: id, task, attempts, error, key, payload_kind, payload (text or hex)."""
        result: list[dict[str, Any]] = self.call("dead")
        return result

    def stats(self) -> dict[str, Any]:
        """The queue's own stats (QueueBackend.stats), with its path and paused tasks."""
        result: dict[str, Any] = self.call("stats")
        return result

    def requeue(self, job_ids: Iterable[int]) -> list[int]:
        """Give dead jobs a fresh start; all or none (StateError if one is not dead)."""
        result: list[int] = self.call("requeue", ids=list(job_ids))
        return result

    def cancel(self, job_id: int) -> bool:
        """Cancel an unfinished job (a running one's handler is killed); False if finished."""
        return bool(self.call("cancel", id=job_id))

    def purge(self, job_ids: Iterable[int] | None = None) -> int:
        """Delete dead jobs (all, or `job_ids`); how many."""
        return int(self.call("purge", ids=None if job_ids is None else list(job_ids)))

    def pause(self, task: str) -> bool:
        """Stop claims of `task` durably (running jobs finish); False if already paused."""
        return bool(self.call("pause", task=task))

    def resume(self, task: str) -> bool:
        """Let `task` be claimed again; False if it was not paused."""
        return bool(self.call("resume", task=task))

    def paused(self) -> list[str]:
        """The paused tasks."""
        result: list[str] = self.call("paused")
        return result

    # -- routing -----------------------------------------------------------------------

    def call(self, action: str, **args: Any) -> Any:
        """Run `action` through the owner, or (none running) with the queue's lock."""
        if action not in ACTIONS:
            raise ArgumentError(f"unknown admin action {excerpt(action)}")
        for _ in range(3):
            answered, result = self._ask(action, args)
            if answered:
                self.last_route = "owner"
                return result
            if self.require_owner and self.address is not None:
                raise NoOwnerError(f"{self._where()}: no owner is running")
            try:
                result = self._with_lock(action, args)
            except LockedError:
                time.sleep(0.1)  # an owner started meanwhile: ask it
                continue
            self.last_route = "lock"
            return result
        raise LockedError(
            f"{self.path}: an owner holds the lock but does not answer on {self._where()}"
        )

    def _with_lock(self, action: str, args: dict[str, Any]) -> Any:
        options: dict[str, Any] = {"create": False}
        if not backends.is_url(self.path):
            options.update(compaction=False, serve=False)
        with warnings.catch_warnings():  # weak durability is for `walq stats` to report
            warnings.simplefilter("ignore", errors.DurabilityWarning)
            q = backends.open(self.path, **options)
        with q:
            return Control(q).handle(action, args, uid=os.geteuid(), pid=os.getpid())

    def _ask(self, action: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """(True, the owner's result), or (False, None) if no owner listens.

        Raises the error the owner replied with.
        """
        if self.address is None:
            return False, None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout)
        try:
            try:
                conn.connect(self.address)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                    return False, None
                raise OSError(exc.errno, exc.strerror, self._where()) from exc
            uid = wire.peer_uid(conn)
            if uid is not None and uid != os.geteuid():
                raise ProtocolError(
                    f"{self._where()}: served by uid {uid}, not this user ({os.geteuid()})"
                )
            body = wire.encode_body({"op": "admin", "action": action, "args": args}, [])
            try:
                conn.sendall(wire.frame(body))
            except OSError as exc:
                # The owner stopped reading: it refused the connection (its reply waits).
                reply = self._read(conn, action, 1.0)
                if reply is None:
                    raise ProtocolError(f"{self._where()}: admin {action} failed: {exc}") from None
            else:
                reply = self._read(conn, action, self.timeout)
                if reply is None:
                    raise ProtocolError(f"{self._where()}: the owner closed without a reply")
        finally:
            conn.close()
        if not reply["ok"]:
            name, text = str(reply.get("error")), str(reply.get("message", ""))
            raise _ERRORS.get(name, errors.WalqError)(text or name)
        if "result" not in reply:
            raise ProtocolError(f"{self._where()}: reply to admin {action} has no result")
        return True, reply["result"]

    def _read(self, conn: socket.socket, action: str, timeout: float) -> dict[str, Any] | None:
        """The reply on `conn`, or None if the connection ended without one."""
        conn.settimeout(timeout)
        try:
            reader = wire.Reader(conn)
            length = reader.length()
            if length is None:
                return None
            if length > wire.MAX_REPLY:
                raise ProtocolError(f"{self._where()}: reply of {length} bytes is too large")
            return wire.decode_reply(reader.body(length))
        except TimeoutError:
            raise ProtocolError(
                f"{self._where()}: no reply to admin {action} within {timeout}s"
            ) from None
        except OSError:
            return None

    def _where(self) -> str:
        address = self.address or ""
        return f"abstract socket @{address[1:]}" if address.startswith("\0") else address

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def args_of(header: Mapping[str, Any]) -> tuple[object, object]:
    """(action, args) of an admin request header."""
    return header.get("action"), header.get("args", {})
