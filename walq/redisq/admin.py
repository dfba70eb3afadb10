"""Operator functions on a Redis URL, for the CLI: stats, dead jobs, requeue, purge, enqueue,
and moving a queue of the untagged layout to its hash-tagged prefix.

The read-only ones open the queue without creating it (NotAQueueError if none
lives under the prefix) and change nothing.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterable
from typing import Any

from walq.errors import DurabilityWarning, NotAQueueError, WalqError
from walq.redisq import connection
from walq.redisq.queue import RedisQueue
from walq.redisq.records import dead_rows, pairs, shape_stats
from walq.redisq.url import CLUSTER, key_prefix, parse_url


def _open_quiet(url: str) -> RedisQueue:
    """Open for the CLI: a weak durability setting is reported by `stats`, not warned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DurabilityWarning)
        return RedisQueue.open(url, create=False)


def inspect_stats(url: str) -> dict[str, Any]:
    """`walq stats URL`: counts, due work and workers, read without changing anything.

    Unlike RedisQueue.stats, nothing is moved: jobs due or leases expired are
    counted as such (the next claim moves them).
    """
    with _open_quiet(url) as q:
        p = q.prefix

        def snapshot(c: Any) -> list[Any]:
            now_s, now_us = c.time()
            now = now_s * 1000 + now_us // 1000
            pipe = c.pipeline(transaction=True)
            pipe.hgetall(f"{p}:n")
            pipe.hgetall(f"{p}:tn")
            pipe.get(f"{p}:seq")
            pipe.zcount(f"{p}:sch", "-inf", now)
            pipe.zcount(f"{p}:run", "-inf", now)
            pipe.zrange(f"{p}:sch", 0, 0, withscores=True)
            pipe.zrange(f"{p}:run", 0, 0, withscores=True)
            return [now, *pipe.execute()]

        now, counts, per_task, seq, due, expired, sch, run = q._read(snapshot)

        def flat(d: dict[Any, Any]) -> list[Any]:
            return [x for kv in d.items() for x in kv]

        st = shape_stats(pairs(flat(counts)), pairs(flat(per_task)), int(seq or 0))
        nexts = [int(s) for _, s in sch + run]

        def reports(c: Any) -> list[Any]:
            names = list(c.scan_iter(match=f"{p}:w:*", count=500))
            return list(c.mget(names)) if names else []

        workers = []
        for body in q._read(reports):
            if body:
                with contextlib.suppress(ValueError):
                    workers.append(json.loads(body))
        st.update(
            backend="redis",
            url=q.path,
            server_version=q.server_version,
            durable=q.durable,
            persistence=q.persistence,
            due_now=int(due),
            expired_leases=int(expired),
            next_due_in=max(0.0, (min(nexts) - now) / 1000.0) if nexts else None,
            workers=workers,
            paused=q.paused(),
        )
        return st


def dead_jobs(url: str, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """`walq dead list|show URL`: dead jobs' fields as plain rows (read-only).

    Each row: id, task, kind (the payload's), payload (bytes), attempts,
    error, key, created; walq.ops.dead turns them into what the CLI shows.
    """
    with _open_quiet(url) as q:
        return dead_rows(q, ids)


def requeue(url: str, ids: Iterable[int]) -> list[int]:
    """`walq dead requeue URL ID...`: no lock to take; every id must be dead."""
    done = []
    with _open_quiet(url) as q:
        for jid in ids:
            q.requeue(jid)
            done.append(jid)
    return done


def purge(url: str, ids: Iterable[int] | None = None) -> int:
    """`walq dead purge URL [ID...]`: delete dead jobs (all of them by default)."""
    with _open_quiet(url) as q:
        return q.purge(ids)


def enqueue(
    url: str,
    task: str,
    payload: Any = None,
    *,
    key: str | None = None,
    delay: float = 0.0,
    priority: int = 0,
) -> int:
    """`walq enqueue URL TASK ...`: add one job; return its id."""
    with RedisQueue.open(url) as q:
        return q.enqueue(task, payload, key=key, delay=delay, priority=priority)


def inspect_schedules(url: str) -> list[dict[str, Any]]:
    """`walq schedules URL`: every schedule the server records (name, last tick, spec)."""
    with _open_quiet(url) as q:
        return q.schedules()


def migrate_untagged(url: str) -> int:
    """Move the queue at `url` from its untagged keys (NAME:*) to {NAME}:*; how many keys.

    For a queue written by walq before Cluster support, on one server or
    Sentinel (a cluster never held that layout). Run it with the queue's
    workers and producers stopped. Each key is renamed (RENAMENX: never over a
    key of the new layout) and NAME:meta last, so an interrupted run is
    finished by running it again.
    """
    target = parse_url(url)
    if target.kind == CLUSTER:
        raise WalqError(f"{target.shown}: a cluster never held the untagged layout")
    name, tagged = target.prefix, key_prefix(target.prefix)
    client = connection.connect(target, 30.0)
    try:
        old_meta = f"{name}:meta"
        if not connection.read(client, target.shown, lambda c: c.exists(old_meta)):
            raise NotAQueueError(f"{target.shown}: no untagged queue under prefix {name!r}")
        if connection.read(client, target.shown, lambda c: c.exists(f"{tagged}:meta")):
            raise WalqError(
                f"{target.shown}: both {old_meta} and {tagged}:meta exist; "
                "refusing to merge two queues"
            )
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in name) + ":*"
        names = connection.read(
            client, target.shown, lambda c: list(c.scan_iter(match=pattern, count=1000))
        )
        moved = 0

        def rename(old: bytes, new: bytes) -> bool:
            return bool(connection.write(client, target.shown, lambda c: c.renamenx(old, new)))

        for key in sorted(names, key=lambda k: bytes(k) == old_meta.encode()):
            new = tagged.encode() + bytes(key)[len(name.encode()) :]
            if not rename(bytes(key), new):
                raise WalqError(f"{target.shown}: {new.decode(errors='replace')} already exists")
            moved += 1
        return moved
    finally:
        client.close()
