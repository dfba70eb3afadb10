"""`walq schedules`: every schedule a queue records, with its last and next tick (read-only)."""

from __future__ import annotations

import json
import time
from typing import Any

from walq import backends
from walq.core.schedule import GRACE
from walq.cron import timetable_of
from walq.directory.fs import FileSystem
from walq.ops.replay import replay


def read(
    target: str, *, fs: FileSystem | None = None, now: float | None = None
) -> list[dict[str, Any]]:
    """Rows of name, task, spec fields, last and next tick (wall seconds; next None if
    unknown here) and whether the next is overdue, for a directory (read without its
    lock) or a URL."""
    if backends.is_url(target):
        from walq.redisq import admin  # noqa: PLC0415 - only a server's queue needs it

        rows = admin.inspect_schedules(target)
    else:
        state = replay(target, fs).state
        rows = [
            {"name": name, "last": last, "spec": spec}
            for name, (last, spec) in sorted(state.timed.schedules.items())
        ]
    now = time.time() if now is None else now
    out = []
    for row in rows:
        table = timetable_of(row["spec"])
        try:
            fields = json.loads(row["spec"]) if row["spec"] else {}
        except ValueError:
            fields = {}
        # The tick due after the last one enqueued: in the past, it is overdue (no owner runs).
        nxt = None if table is None else table.after(row["last"])
        overdue = nxt is not None and nxt < now - GRACE
        out.append(
            {"name": row["name"], **fields, "last": row["last"], "next": nxt, "overdue": overdue}
        )
    return out
