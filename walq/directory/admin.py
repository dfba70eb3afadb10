"""A directory queue's administration: status, cancel, dead jobs, requeue, purge and stats."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from walq.core import events as ev
from walq.core.job import DeadJob
from walq.core.jobspec import check_listing, check_seconds, check_task
from walq.core.state import DEAD, STATE_NAMES
from walq.directory import checkpoint as checkpoints
from walq.directory.base import QueueBase, chunks
from walq.directory.checkpoint import Written
from walq.directory.compactor import CompactionResult
from walq.directory.fs import file_size, open_fd
from walq.directory.opening import STATUS_FILE
from walq.errors import (
    CorruptionError,
    JobCancelled,
    JobFailed,
    ResultTimeout,
    StateError,
)

log = logging.getLogger("walq.queue")


class Administration(QueueBase):
    """The calls an operator makes on a directory queue (walq.backend.QueueBackend)."""

    def status(self, job_id: int) -> str:
        with self._mu:
            self._check_not_closed()
            self._tick(self._clock())
            return self._state.status(job_id)

    def result(self, job_id: int, timeout: float | None = None) -> Any:
        wait = None if timeout is None else check_seconds("timeout", timeout)
        with self._mu:
            now = self._clock()
            deadline = None if wait is None else now.mono + wait
            while True:
                self._check_not_closed()
                self._tick(now)
                status = self._state.status(job_id)
                if status == "done":
                    return self._kept_result(job_id, now.wall)
                if status == "dead":
                    raise JobFailed(job_id, self._dead_error(job_id))
                if status == "cancelled":
                    raise JobCancelled(job_id, self._state.causes.get(job_id, ""))
                left = None if deadline is None else deadline - now.mono
                if left is not None and left <= 0:
                    raise ResultTimeout(f"{self.path}: job {job_id} is {status} after {wait:g} s")
                self._changed.wait(1.0 if left is None else min(left, 1.0))
                now = self._clock()

    def _dead_error(self, job_id: int) -> str:
        """The last error of dead job `job_id` (lock held)."""
        err_loc = self._state.error_loc(job_id)
        if err_loc is None:
            return ""
        try:
            e = ev.decode(*self._read_raw(err_loc))
        except (ev.BadEvent, CorruptionError) as exc:
            return f"(the error record at offset {err_loc.offset} is damaged: {exc})"
        return e.error if isinstance(e, ev.Fail | ev.Job) else ""

    def cancel(self, job_id: int, *, sync: bool | None = None) -> bool:
        with self._mu:
            self._check_open()
            status = self._state.status(job_id)
            if status in ("done", "cancelled"):
                return False
            if status == "dead":
                raise StateError(f"job {job_id} is dead: purge or requeue it")
            readied = self._state.readied
            lsn = self._write([ev.Cancel(ids=(job_id,))], self._clock())
            self._forget([job_id])
            self._changed.notify_all()
            woke = self._state.readied != readied
        self._commit(lsn, sync)
        if woke:
            self._wake()
        if status == "running":
            for listener in list(self.cancel_listeners):
                listener(job_id)
        return True

    def dead_jobs(self) -> list[DeadJob]:
        with self._mu:
            self._check_open()
            infos = list(self._state.jobs(DEAD))
            locs = [(i, self._state.error_loc(i.id), self._state.key_of(i.id)) for i in infos]
            out = []
            for info, err_loc, key in locs:
                try:
                    payload = self._job(info.id, info.attempts).payload
                except CorruptionError as exc:
                    payload = None
                    log.error("%s", exc, extra={"job_id": info.id})
                error = ""
                if err_loc is not None:
                    try:
                        e = ev.decode(*self._read_raw(err_loc))
                    except ev.BadEvent as exc:
                        error = f"(the error record at offset {err_loc.offset} is damaged: {exc})"
                    else:
                        error = e.error if isinstance(e, ev.Fail | ev.Job) else ""
                out.append(
                    DeadJob(
                        id=info.id,
                        task=info.task,
                        payload=payload,
                        attempts=info.attempts,
                        error=error,
                        key=key,
                    )
                )
            return out

    def requeue(self, job_id: int, *, sync: bool | None = None) -> None:
        with self._mu:
            self._check_open()
            if self._state.status(job_id) != "dead":
                raise StateError(f"job {job_id} is {self._state.status(job_id)}, not dead")
            lsn = self._write([ev.Requeue(ids=(job_id,))], self._clock())
            self._changed.notify_all()
        self._commit(lsn, sync)
        self._wake()

    def purge(self, job_ids: Iterable[int] | None = None, *, sync: bool | None = None) -> int:
        with self._mu:
            self._check_open()
            if job_ids is None:
                ids = tuple(i.id for i in self._state.jobs(DEAD))
            else:
                ids = tuple(job_ids)
                for jid in ids:
                    if self._state.status(jid) != "dead":
                        raise StateError(f"job {jid} is {self._state.status(jid)}, not dead")
            if not ids:
                return 0
            lsn = self._write([ev.Purge(ids=chunk) for chunk in chunks(ids)], self._clock())
        self._commit(lsn, sync)
        return len(ids)

    def pause(self, task: str, *, sync: bool | None = None) -> bool:
        with self._mu:
            self._check_open()
            task = check_task(task)
            if task in self._state.paused:
                return False
            lsn = self._write([ev.Pause(task=task)], self._clock())
        self._commit(lsn, sync)
        return True

    def resume(self, task: str, *, sync: bool | None = None) -> bool:
        with self._mu:
            self._check_open()
            task = check_task(task)
            if task not in self._state.paused:
                return False
            lsn = self._write([ev.Resume(task=task)], self._clock())
            self._changed.notify_all()
        self._commit(lsn, sync)
        self._wake()
        return True

    def paused(self) -> list[str]:
        with self._mu:
            self._check_not_closed()
            return sorted(self._state.paused)

    def job_detail(self, job_id: int) -> dict[str, Any]:
        with self._mu:
            self._check_not_closed()
            now = self._clock()
            self._tick(now)
            status = self._state.status(job_id)
            out: dict[str, Any] = {"id": job_id, "status": status}
            if job_id not in self._state:
                return out
            info = self._state.info(job_id)
            out.update(
                task=info.task,
                attempts=info.attempts,
                max_attempts=info.max_attempts,
                priority=info.priority,
                key=self._state.key_of(job_id),
                error=self._last_error(job_id),
            )
            due = self._state.due_of(job_id)
            if due is not None:
                out["due_in"] = max(0.0, due - now.mono)
            lease = self._state.lease(job_id)
            if lease is not None:
                out["lease_left"] = max(0.0, lease[0] - now.mono)
            return out

    def find(self, key: str) -> int | None:
        with self._mu:
            self._check_not_closed()
            return self._state.key_holder(key)

    def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        *,
        limit: int = 100,
        after: int = 0,
    ) -> list[dict[str, Any]]:
        code = check_listing(state, limit, after)
        with self._mu:
            self._check_not_closed()
            self._tick(self._clock())
            out: list[dict[str, Any]] = []
            for info in self._state.jobs_after(after, code, task):
                out.append(
                    {
                        "id": info.id,
                        "task": info.task,
                        "status": STATE_NAMES[info.state],
                        "attempts": info.attempts,
                        "priority": info.priority,
                        "key": self._state.key_of(info.id),
                    }
                )
                if len(out) >= limit:
                    break
            return out

    def _last_error(self, job_id: int) -> str | None:
        """The last error recorded for a dead job (lock held); None for any other."""
        err_loc = self._state.error_loc(job_id)
        if err_loc is None:
            return None
        try:
            e = ev.decode(*self._read_raw(err_loc))
        except (ev.BadEvent, CorruptionError) as exc:
            return f"(the error record at offset {err_loc.offset} is damaged: {exc})"
        return e.error if isinstance(e, ev.Fail | ev.Job) else None

    def set_task_defaults(self, task: str, *, max_attempts: int) -> None:
        with self._mu:
            self._check_not_closed()
            self._state.set_task_max_attempts(check_task(task), max_attempts)

    def next_due_in(self) -> float | None:
        with self._mu:
            self._check_not_closed()
            now = self._clock()
            self._tick(now)  # what is already due moves now, so this is never stale-zero
            due = self._state.next_due()
            return None if due is None else max(0.0, due - now.mono)

    def stats(self) -> dict[str, Any]:
        """Also the log's segments, fsyncs, damage recovery handled, and the compactor's health."""
        with self._mu:
            self._check_not_closed()
            self._tick(self._clock())
            c = self._state.counts
            paths = self._log.segment_paths()
            disk = 0
            for p in paths:
                with contextlib.suppress(OSError):  # removed by a compaction a moment ago
                    disk += file_size(self.fs, p)
            return {
                "pending": c.pending,
                "scheduled": c.scheduled,
                "running": c.running,
                "dead": c.dead,
                "waiting": c.waiting,
                "done": self.done_seen + self.counters["acked"],
                "unfinished": self._state.unfinished,
                "bytes": self._state.live_bytes,
                "disk_bytes": disk,
                "segments": len(paths),
                "next_id": self._state.next_id,
                "damaged": sum(1 for d in self.damage if not d.torn_tail),
                "torn_tails_cut": sum(1 for d in self.damage if d.torn_tail),
                "fsyncs": self._log.fsyncs,
                "compactor": self._compactor.health(),
                "checkpoint": checkpoints.info(self.fs, self.path, self._clock().wall),
                # Which jobs skipped damage took (recovery="skip"); None if nothing.
                "lost": self.lost.as_dict() if self.lost.any else None,
                "tasks": {
                    t: {
                        "pending": n.pending,
                        "scheduled": n.scheduled,
                        "running": n.running,
                        "dead": n.dead,
                        "waiting": n.waiting,
                    }
                    for t, n in self._state.task_counts().items()
                    if n.pending or n.scheduled or n.running or n.dead or n.waiting
                },
                **self.counters,
            }

    def compactor_health(self) -> dict[str, Any] | None:
        """None while background compaction works; else since when and why it fails.

        A failing round (a full disk, say) is retried with backoff (up to a
        minute apart) until one succeeds; `stats()["compactor"]` says the same.
        """
        self._check_not_closed()
        return self._compactor.health()

    def compact(
        self, progress: Callable[[int, int], None] | None = None, *, seal: bool = False
    ) -> CompactionResult:
        """Rewrite the sealed segments keeping only live jobs (see walq.directory.compactor).

        seal=True first seals the active segment, so that it is compacted too
        (what `walq compact` does on a queue no owner is writing to).
        """
        self._check_open()
        if seal:
            with self._mu:
                self._log.seal()
        return self._compactor.compact(progress)

    def write_checkpoint(self) -> Written | None:
        """Write the queue's checkpoint now (the background writes one when due; docs/FORMAT.md).

        None when no checkpointer runs (walq.directory.compactor.Compactor.checkpointer).
        """
        self._check_open()
        return self._compactor.checkpoint()

    @property
    def sync_mode(self) -> str:
        """ "always", "interval" or "never", as opened."""
        return self._log.sync_mode

    def sync(self) -> None:
        self._log.flush()

    def shared_gates(self) -> None:
        """None: one host owns a directory queue, so a worker's own gates are the queue's."""
        self._check_not_closed()

    def record_worker_status(self, status: Mapping[str, Any], ttl: float = 30.0) -> None:
        """Written to STATUS_FILE, without fsync; a leftover .part is unlinked, not written to."""
        self._check_not_closed()
        path = posixpath.join(self.path, STATUS_FILE)
        tmp = path + ".part"
        with contextlib.suppress(OSError, CorruptionError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "w") as f:
                json.dump(dict(status), f)
            os.replace(tmp, path)
