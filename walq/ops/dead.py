"""Dead-lettered jobs as operators see them (`walq dead list|show`), for either backend."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from walq import backends
from walq.core import events as ev
from walq.core.state import DEAD, QueueState
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import NotAQueueError, StateError
from walq.ops.owner import owner
from walq.ops.replay import replay
from walq.ops.scan import RACE_RETRIES, Progress, read_record


@attrs.frozen
class DeadInfo:
    """A dead-lettered job as the files hold it, with its last error (and traceback)."""

    id: int
    task: str
    attempts: int
    error: str
    key: str | None
    payload_kind: str
    payload: bytes
    created: float

    def summary(self) -> dict[str, Any]:
        """For `dead list --json`: everything but the payload's bytes."""
        return {
            "id": self.id,
            "task": self.task,
            "attempts": self.attempts,
            "key": self.key,
            "error": self.error.split("\n", 1)[0],
            "created": self.created,
            "payload_kind": self.payload_kind,
            "payload_bytes": len(self.payload),
        }

    def detail(self) -> dict[str, Any]:
        """For `dead show --json`: everything, the payload as JSON or hex."""
        out = self.summary()
        out["error"] = self.error
        out["payload"] = self.payload_text()
        return out

    def payload_text(self) -> str:
        """The payload: its JSON text, or hex for bytes."""
        if self.payload_kind == "bytes":
            return self.payload.hex()
        return self.payload.decode("utf-8", "replace")


def payload_kind(kind: int) -> str:
    """How a record's payload kind is shown: "bytes" or "json"."""
    return "bytes" if kind == ev.PAYLOAD_BYTES else "json"


def dead_jobs(
    path: str,
    fs: FileSystem | None = None,
    *,
    ids: Iterable[int] | None = None,
    progress: Progress | None = None,
) -> list[DeadInfo]:
    """Every dead job (or those in `ids`: UnknownJobError/StateError if one is not dead).

    `path` is a queue directory (read without the lock) or a server's URL.
    """
    if backends.is_url(path):
        from walq.redisq import admin  # noqa: PLC0415 - only a server's queue needs it

        return [
            DeadInfo(
                id=row["id"],
                task=row["task"],
                attempts=row["attempts"],
                error=row["error"],
                key=row["key"],
                payload_kind=payload_kind(row["kind"]),
                payload=row["payload"],
                created=row["created"],
            )
            for row in admin.dead_jobs(path, ids=ids)
        ]
    if ids is None and owner(path).running is not False:
        live = _owner_dead(path)
        if live is not None:
            return live
    fs = fs or OsFileSystem()
    for _ in range(RACE_RETRIES):
        r = replay(path, fs, owner_running=owner(path).running, progress=progress)
        if ids is None:
            wanted = r.state.ids_in(DEAD)
        else:
            wanted = list(ids)
            for jid in wanted:
                status = r.state.status(jid)  # UnknownJobError if it never existed
                status = "running" if jid in r.running else status
                if status != "dead":
                    raise StateError(f"job {jid} is {status}, not dead")
        out = [_dead_info(path, r.state, jid, fs) for jid in wanted]
        if all(d is not None for d in out):
            return [d for d in out if d is not None]
    raise NotAQueueError(f"{path}: compactions kept moving the dead jobs while reading; retry")


def _owner_dead(path: str) -> list[DeadInfo] | None:
    """The running owner's dead jobs (from its memory and its open files), or None."""
    from walq.ops.live import ask_owner  # noqa: PLC0415 - the control channel's client

    asked, rows = ask_owner(path, "dead")
    if not asked:
        return None
    return [
        DeadInfo(
            id=row["id"],
            task=row["task"],
            attempts=row["attempts"],
            error=row["error"],
            key=row["key"],
            payload_kind=row["payload_kind"],
            payload=(
                bytes.fromhex(row["payload"])
                if row["payload_kind"] == "bytes"
                else row["payload"].encode()
            ),
            created=0.0,  # the owner does not keep it in memory
        )
        for row in rows
    ]


def _dead_info(path: str, state: QueueState, jid: int, fs: FileSystem) -> DeadInfo | None:
    info = state.info(jid)
    e = read_record(path, info.loc, fs)
    if not isinstance(e, ev.Enqueue | ev.Job):
        return None
    error = ""
    err_loc = state.error_loc(jid)
    if err_loc is not None:
        fail = read_record(path, err_loc, fs)
        if not isinstance(fail, ev.Fail | ev.Job):
            return None
        error = fail.error
    return DeadInfo(
        id=jid,
        task=e.task,
        attempts=info.attempts,
        error=error,
        key=e.key,
        payload_kind=payload_kind(e.kind),
        payload=e.payload,
        created=e.created,
    )
