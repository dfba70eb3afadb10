"""A job's attempts, drawn from its records in the log (the rows `walq dump --job` prints).

Pure. A `claim` record starts an attempt; the job's next `fail`, `release`,
`ack`, `finish` or `cancel` record ends it, with that outcome. The `attempt`
record a worker writes with the outcome says how the attempt ran: its start,
duration, process and owner (docs/FORMAT.md). Logs written before it, and
outcomes written without it (a program's own ack), leave the worker and time
to the workers' reports (`with_reports`); the running attempt's come from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Why an attempt has no outcome record, when another attempt started after it.
NO_OUTCOME = "no outcome recorded: its owner stopped or its lease expired"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _attempt_of(row: Mapping[str, Any], jid: int, one: str, many: str) -> int | None:
    """The attempt number a claim or release row gives job `jid` (rows may hold many jobs)."""
    if row.get("job") == jid and one in row:
        return int(row[one])
    jobs = list(row.get("jobs") or ())
    numbers = list(row.get(many) or ())
    if jid in jobs and len(numbers) == len(jobs):
        return int(numbers[jobs.index(jid)])
    return None


def attempts(jid: int, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The job's life as steps, oldest first: its creation, each attempt and its outcome,
    and the operator's actions (requeue, cancel, purge); each with the record's position.

    An attempt: {"kind": "attempt", "attempt", "at" (claim position), "outcome",
    "error", "retry_at", "ended_at"}; outcome is "running" while no record ends it.
    """
    steps: list[dict[str, Any]] = []
    open_step: dict[str, Any] | None = None

    def close(outcome: str, at: str, **more: Any) -> None:
        nonlocal open_step
        if open_step is None:
            return
        open_step.update(outcome=outcome, ended_at=at, **more)
        open_step = None

    for row in rows:
        kind = row.get("type")
        at = f"{row.get('seq')}:{row.get('offset')}"
        if kind in ("enqueue", "job", "after"):
            step: dict[str, Any] = {"kind": "created", "at": at, "record": kind}
            for field in ("task", "key", "priority", "created", "due", "max_attempts"):
                if row.get(field) not in (None, ""):
                    step[field] = row[field]
            if kind == "job":  # a compaction rewrote the job: what it had done by then
                step.update(compacted=True, state=row.get("state"), attempts=row.get("attempt"))
                if row.get("error"):
                    step["error"] = row["error"]
            if row.get("after"):
                step["after"] = row["after"]
            steps.append(step)
        elif kind == "claim":
            number = _attempt_of(row, jid, "attempt", "attempts")
            close("lost", at, note=NO_OUTCOME)
            open_step = {"kind": "attempt", "attempt": number, "at": at, "outcome": "running"}
            steps.append(open_step)
        elif kind == "fail":
            more: dict[str, Any] = {"error": row.get("error", ""), "summary": ""}
            more["summary"] = _last_line(str(more["error"]))
            if not row.get("dead") and row.get("due"):
                more["retry_at"] = row["due"]
            outcome = "dead" if row.get("dead") else "failed"
            if open_step is None:  # its claim was compacted away
                open_step = {"kind": "attempt", "attempt": row.get("attempt"), "at": None}
                steps.append(open_step)
            close(outcome, at, **more)
        elif kind == "release":
            counted = _attempt_of(row, jid, "counted", "counts")
            close("released", at, note=f"handed back uncharged (attempts counted: {counted})")
        elif kind in ("ack", "finish"):
            if open_step is None:
                steps.append({"kind": "done", "at": at})
            close("acked", at)
        elif kind == "cancel":
            if open_step is not None:
                close("cancelled", at)
            else:
                steps.append({"kind": "cancelled", "at": at})
        elif kind in ("requeue", "purge"):
            close("lost", at, note=NO_OUTCOME)
            steps.append({"kind": f"{kind}d", "at": at})
        elif kind == "attempt":
            _how_it_ran(jid, row, steps)
    return steps


def _how_it_ran(jid: int, row: Mapping[str, Any], steps: list[dict[str, Any]]) -> None:
    """Give the attempt an `attempt` row describes how it ran (the latest of its number)."""
    jobs = list(row.get("jobs") or ())
    if jid not in jobs:
        return
    i = jobs.index(jid)
    try:
        number = int(row["attempts"][i])
        started, seconds = float(row["starts"][i]), float(row["durations"][i])
        pid = int(row["pids"][i])
    except (KeyError, IndexError, TypeError, ValueError):
        return
    for step in reversed(steps):
        if step.get("kind") == "attempt" and step.get("attempt") == number:
            step["reported"] = {
                "worker": row.get("owner"), "host": row.get("host"), "process": pid or None,
                "started": started, "seconds": seconds, "ended": round(started + seconds, 3),
                "cause": None, "source": "log",
            }  # fmt: skip
            return


def with_reports(steps: list[dict[str, Any]], reports: Iterable[Mapping[str, Any]]) -> None:
    """Add to each attempt what its worker reported (worker, process, seconds, ended), in place.

    An attempt the log already describes (its `attempt` record) keeps that.

    A requeue starts the attempts again from 1, so an attempt number may occur
    twice: each report goes to the latest attempt of its number not yet matched
    (the reports are of attempts that ended lately).
    """
    left = sorted(reports, key=lambda r: float(r.get("ended") or 0.0))
    for step in reversed(steps):
        if step.get("kind") != "attempt" or step.get("outcome") == "running":
            continue
        if "reported" in step:  # from the log: drop the report of it, if any
            for i in range(len(left) - 1, -1, -1):
                if left[i].get("attempt") == step.get("attempt"):
                    left.pop(i)
                    break
            continue
        for i in range(len(left) - 1, -1, -1):
            if left[i].get("attempt") == step.get("attempt"):
                r = left.pop(i)
                step["reported"] = {
                    k: r.get(k) for k in ("worker", "host", "process", "seconds", "ended", "cause")
                }
                break


def reported_steps(reports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Attempts from the workers' reports alone (a server's queue keeps no log), oldest first."""
    steps = []
    for r in sorted(reports, key=lambda r: float(r.get("ended") or 0.0)):
        outcome = "acked" if r.get("ok") else "failed"
        steps.append({"kind": "attempt", "attempt": r.get("attempt"), "outcome": outcome})
    with_reports(steps, reports)
    return steps
