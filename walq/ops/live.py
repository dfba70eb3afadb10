"""Asking a queue directory's running owner, and the same answers read from the files.

With an owner running, `walq stats`, `status`, `jobs` and `dead list` ask it
over its socket (walq.producers.control): its state is in memory, so the
answer takes milliseconds instead of a replay of the whole log. With none,
they read the files without the lock, as every read-only tool does.
"""

from __future__ import annotations

from typing import Any

from walq import backends
from walq.core import events as ev
from walq.core.jobspec import check_listing
from walq.core.state import STATE_NAMES
from walq.directory.fs import FileSystem
from walq.errors import NoOwnerError, ProtocolError
from walq.ops import lookup
from walq.ops.owner import owner
from walq.ops.replay import replay
from walq.ops.scan import check_queue_dir, read_record
from walq.producers.control import Admin

# Seconds to wait for an owner's answer before giving up on it.
OWNER_TIMEOUT = 10.0


def ask_owner(path: str, action: str, **args: Any) -> tuple[bool, Any]:
    """(True, the running owner's answer), or (False, None) when no owner answers.

    An owner too old to know the control channel counts as none (its files
    are read instead); the errors it replies with (an unknown job) are raised.
    """
    if backends.is_url(path):
        return False, None
    check_queue_dir(path)
    try:
        return True, Admin(path, require_owner=True, timeout=OWNER_TIMEOUT).call(action, **args)
    except NoOwnerError:
        return False, None
    except ProtocolError as exc:
        if "unknown op" in str(exc):
            return False, None
        raise


def job_status(path: str, job_id: int, fs: FileSystem | None = None) -> dict[str, Any]:
    """One job's detail (QueueBackend.job_detail's keys): the owner's, or read from the files."""
    if backends.is_url(path):
        return dict(Admin(path).status(job_id))
    asked, answer = ask_owner(path, "status", id=job_id)
    if asked:
        out: dict[str, Any] = answer
        out["source"] = "owner"
        return out
    return files_job_status(path, job_id, fs)


def files_job_status(path: str, job_id: int, fs: FileSystem | None = None) -> dict[str, Any]:
    """One job's detail read from the files without the lock (UnknownJobError if none).

    From the job's own records (walq.ops.lookup: no replay), or, where those
    cannot tell, a replay of the whole log.
    """
    who = owner(path)
    try:
        out = dict(lookup.job_state(path, job_id, fs, owner_running=who.running))
    except lookup.Unsure:
        return replayed_job_status(path, job_id, fs)
    out["source"] = "files"
    return out


def replayed_job_status(path: str, job_id: int, fs: FileSystem | None = None) -> dict[str, Any]:
    """One job's detail from a replay of the whole log (UnknownJobError if none)."""
    who = owner(path)
    r = replay(path, fs, owner_running=who.running)
    state = r.state
    out: dict[str, Any] = {"id": job_id, "status": state.status(job_id), "source": "files"}
    if job_id not in state:
        return out
    info = state.info(job_id)
    if job_id in r.running:
        out["status"] = "running"
    out.update(
        task=info.task,
        attempts=info.attempts,
        max_attempts=info.max_attempts,
        priority=info.priority,
        key=state.key_of(job_id),
        error=None,
    )
    err_loc = state.error_loc(job_id)
    if err_loc is not None:
        e = read_record(path, err_loc, fs)
        if isinstance(e, ev.Fail | ev.Job):
            out["error"] = e.error
    return out


def list_jobs(
    path: str,
    state: str | None = None,
    task: str | None = None,
    *,
    limit: int = 100,
    after: int = 0,
    fs: FileSystem | None = None,
) -> list[dict[str, Any]]:
    """A page of live jobs (QueueBackend.jobs): the owner's, a server's, or read from the files."""
    check_listing(state, limit, after)  # ArgumentError before any work
    if backends.is_url(path):
        return Admin(path).jobs(state, task, limit=limit, after=after)
    asked, answer = ask_owner(path, "jobs", state=state, task=task, limit=limit, after=after)
    if asked:
        rows: list[dict[str, Any]] = answer
        return rows
    r = replay(path, fs, owner_running=owner(path).running)
    out = []
    for info in r.state.jobs_after(after, None, task):
        status = "running" if info.id in r.running else STATE_NAMES[info.state]
        if state is not None and status != state:
            continue
        out.append(
            {
                "id": info.id,
                "task": info.task,
                "status": status,
                "attempts": info.attempts,
                "priority": info.priority,
                "key": r.state.key_of(info.id),
            }
        )
        if len(out) >= limit:
            break
    return out
