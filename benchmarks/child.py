"""Measurements that need a fresh process; run.py starts them and reads one JSON line.

    python benchmarks/child.py walq-fill DIR N BATCH   enqueue_many N 1 KiB jobs, close
    python benchmarks/child.py walq-open DIR N         time Queue.open, read peak RSS
    python benchmarks/child.py walq-pool DIR N PROCS TIMEOUT [TASKS TASK]
                                   no-op jobs through walq.Worker ($WALQ_BENCH_MARKER);
                                   TASKS: bench_tasks' registry (tasks, atasks), TASK its task
    python benchmarks/child.py huey-fill N             enqueue N no-op huey tasks

A failure prints {"error": "..."} and exits 1.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchutil import PAYLOAD, marks, reason, wait_for


def walq_fill(path: str, n: int, batch: int) -> dict[str, Any]:
    import walq

    start = time.perf_counter()
    # No checkpoint: the open rows time a full replay (restart.py times the checkpoint).
    q = walq.Queue.open(path, sync="always", checkpoint=False)
    try:
        for first in range(0, n, batch):
            q.enqueue_many([("noop", PAYLOAD)] * min(batch, n - first))
    finally:
        q.close()
    return {"seconds": time.perf_counter() - start}


def walq_open(path: str, n: int) -> dict[str, Any]:
    import walq

    before = current_rss()
    start = time.perf_counter()
    q = walq.Queue.open(path, sync="always", checkpoint=False)  # none written for the next
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        pending = q.stats()["pending"]
        from_checkpoint = q.checkpoint_opened is not None
    finally:
        q.close()
    if pending != n:
        raise RuntimeError(f"reopened queue has {pending} pending jobs, expected {n}")
    if from_checkpoint:
        raise RuntimeError("the queue opened from a checkpoint, not by a full replay")
    # ru_maxrss is in KiB on Linux.
    return {"seconds": seconds, "rss_before": before, "rss_peak": peak * 1024}


def current_rss() -> int:
    """Resident bytes now (ru_maxrss would include import-time peaks already freed)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def owner_cpu() -> float:
    """CPU seconds this process has used so far (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drained(q: Any) -> bool:
    stats = q.stats()
    return bool(stats.get("pending", 0) == 0 and stats.get("running", 0) == 0)


def walq_pool(
    path: str, n: int, procs: int, timeout: float, registry: str = "tasks", task: str = "noop"
) -> dict[str, Any]:
    """Jobs/s from the first completion until every job is done and acked."""
    import bench_tasks

    import walq

    marker = Path(os.environ["WALQ_BENCH_MARKER"])
    q = walq.Queue.open(path, sync="always")
    for first in range(0, n, 1000):
        q.enqueue_many([(task, {"i": i}) for i in range(first, min(n, first + 1000))])
    worker = walq.Worker(q, getattr(bench_tasks, registry), processes=procs)
    result: dict[str, Any] = {}

    def monitor() -> None:
        deadline = time.monotonic() + timeout
        try:
            first_done = wait_for(lambda: marks(marker) >= 1, deadline)
            cpu = owner_cpu()
            wait_for(lambda: marks(marker) >= n, deadline)
            all_done = wait_for(lambda: drained(q), deadline)
            result["rate"] = (n - 1) / (all_done - first_done)
            # The owner process's CPU (all its threads, not the workers'), per job.
            result["owner_cpu_us"] = (owner_cpu() - cpu) / (n - 1) * 1e6
        except BaseException as exc:
            result["error"] = reason(exc)
        finally:
            worker.stop()

    threading.Thread(target=monitor, daemon=True).start()
    try:
        worker.run()
    finally:
        q.close()
    return result


def huey_fill(n: int) -> dict[str, Any]:
    import huey_tasks

    start = time.perf_counter()
    for i in range(n):
        huey_tasks.noop({"i": i})
    return {"seconds": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    try:
        command, args = argv[0], argv[1:]
        if command == "walq-fill":
            out = walq_fill(args[0], int(args[1]), int(args[2]))
        elif command == "walq-open":
            out = walq_open(args[0], int(args[1]))
        elif command == "walq-pool":
            out = walq_pool(args[0], int(args[1]), int(args[2]), float(args[3]), *args[4:6])
        elif command == "huey-fill":
            out = huey_fill(int(args[0]))
        else:
            raise SystemExit(f"unknown command {command!r}")
    except Exception as exc:
        out = {"error": reason(exc)}
    print(json.dumps(out))
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
