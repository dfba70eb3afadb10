"""Job hashes and counters read back as Python values: dead jobs, stats."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from walq.core.job import COUNTERS
from walq.core.jobspec import decode_payload
from walq.errors import StateError
from walq.redisq.connection import text
from walq.redisq.lua import check_job_id

if TYPE_CHECKING:
    from walq.redisq.queue import RedisQueue


def pairs(flat: Sequence[Any]) -> dict[str, int]:
    """A flat [field, value, ...] reply (HGETALL) as a dict."""
    it = iter(flat)
    return {text(k): int(v) for k, v in zip(it, it, strict=True)}


def shape_stats(counts: dict[str, int], per_task: dict[str, int], seq: int) -> dict[str, Any]:
    """stats() from the counts in P:n and P:tn and the last id issued."""
    states = ("pending", "scheduled", "running", "dead", "waiting")
    tasks: dict[str, dict[str, int]] = {}
    for field, n in per_task.items():
        state, _, task = field.partition(":")
        if n and state in states:
            tasks.setdefault(task, dict.fromkeys(states, 0))[state] = n
    out: dict[str, Any] = {s: counts.get(s, 0) for s in states}
    out["done"] = counts.get("done", 0)
    out["unfinished"] = out["pending"] + out["scheduled"] + out["running"] + out["waiting"]
    out["bytes"] = counts.get("bytes", 0)
    out["next_id"] = seq + 1
    out["tasks"] = dict(sorted(tasks.items()))
    out.update({c: counts.get(c, 0) for c in COUNTERS})
    return out


def decode_or_raw(kind: int, data: bytes) -> Any:
    """The payload, or its raw bytes if it does not decode (a dead job is shown, not run)."""
    try:
        return decode_payload(kind, data)
    except ValueError:
        return data


def dead_rows(q: RedisQueue, ids: Iterable[int] | None) -> list[dict[str, Any]]:
    """Dead jobs' fields (all, or `ids`: StateError if one is not dead), read in chunks."""
    q._check_open()
    p = q.prefix
    if ids is None:
        wanted = [int(x) for x in q._read(lambda c: c.zrange(f"{p}:dead", 0, -1))]
    else:
        wanted = [check_job_id(i) for i in ids]
    out = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]

        def fetch(c: Any, chunk: list[int] = chunk) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for jid in chunk:
                pipe.hmget(f"{p}:j:{jid}", "s", "t", "k", "p", "a", "e", "key", "c")
            return list(pipe.execute())

        for jid, row in zip(chunk, q._read(fetch), strict=True):
            state, task, kind, data, attempts, error, key, created = row
            if state != b"dead":
                if ids is None:
                    continue  # requeued or purged since the listing
                status = q.status(jid)  # UnknownJobError if it never existed
                raise StateError(f"job {jid} is {status}, not dead")
            out.append(
                {
                    "id": jid,
                    "task": text(task),
                    "kind": int(kind),
                    "payload": bytes(data),
                    "attempts": int(attempts),
                    "error": text(error or b""),
                    "key": None if key is None else text(key),
                    "created": int(created) / 1000.0,
                }
            )
    return out
