"""What each of `walq ui`'s reads costs beside the owner of a big queue, and the replay
they replace:

    python benchmarks/ui_big.py [--jobs N]

A queue of N pending jobs (of a task no worker runs, so they stay) and 60
dead ones, its owner a real `walq worker`. Each read is timed as the
dashboard makes it (walq.ui.source.DirectorySource), median of 5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import walq
from tests.procs import wait_for
from tests.ui_procs import start_worker, stop
from walq.ops import stats as ops_stats
from walq.ui.source import DirectorySource


def timed(name: str, fn: Callable[[], Any], n: int = 5) -> None:
    """Print the median and least time of `n` calls of `fn`."""
    took = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        took.append(time.perf_counter() - began)
    took.sort()
    print(f"{name}: median {took[len(took) // 2] * 1000:.1f} ms (least {took[0] * 1000:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    path = os.path.join(tempfile.mkdtemp(prefix="walq-ui-big-"), "queue")
    began = time.perf_counter()
    with walq.Queue.open(path) as q:
        for _ in range(max(1, args.jobs // 10_000)):
            q.enqueue_many([("bulk", {"n": i}) for i in range(10_000)])
        dead = [q.enqueue("report", {"n": i}, max_attempts=1) for i in range(60)]
        for _ in dead:
            job = q.claim(tasks=["report"])
            assert job is not None
            q.fail(job.id, "LookupError: gone")
    print(f"{args.jobs:,} pending and 60 dead jobs made in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    ops_stats.directory_snapshot(path)
    print(f"a replay of the files (each refresh, before): {time.perf_counter() - began:.2f} s")
    worker = start_worker(path)
    try:
        source = DirectorySource(path)
        wait_for(lambda: source.read().data.get("source") == "owner", timeout=300)
        deep = int(args.jobs * 0.9)
        timed("a read of the numbers (the owner's stats, the worker's status)", source.read)
        timed("the first page of pending jobs", lambda: source.jobs("pending", 0, 50))
        timed(
            f"the page of pending jobs after id {deep:,}", lambda: source.jobs("pending", deep, 50)
        )
        timed("the first page of dead jobs (60 among all)", lambda: source.jobs("dead", 0, 50))
        timed("one job", lambda: source.job(dead[0]))
        timed(
            "one job's records and attempts (found by seeking)",
            lambda: source.history(dead[0], None, 200),
        )
    finally:
        stop(worker)


if __name__ == "__main__":
    main()
