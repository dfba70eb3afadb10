"""`walq demo`: enqueue jobs, run a pool, kill -9 the owner midway, restart, count.

Needs nothing but the package. Each job appends its id to a ledger file when it
runs, so the tour can show that every job ran at least once after the crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from walq.core.job import Job
from walq.directory.queue import Queue
from walq.worker.tasks import Tasks

tasks = Tasks()
LEDGER = "demo-ledger.txt"


@tasks.task(timeout=30.0)
def record(payload: Any, job: Job) -> None:
    """Pretend to work a little, then write this job's id to the ledger."""
    time.sleep(payload.get("work", 0.002))
    fd = os.open(os.path.join(payload["dir"], LEDGER), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{job.id} {job.attempt}\n".encode())
    finally:
        os.close(fd)


def _owner(directory: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "walq", "worker", directory, "--tasks", "walq.demo:tasks",
           "--processes", "2", "--log-level", "ERROR"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ledger(directory: str) -> dict[int, int]:
    runs: dict[int, int] = {}
    with open(os.path.join(directory, LEDGER)) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                runs[int(parts[0])] = runs.get(int(parts[0]), 0) + 1
    return runs


def run_demo(jobs: int = 300, echo: Callable[[str], None] = print) -> int:
    """The tour; returns 0 when no job was lost."""
    base = tempfile.mkdtemp(prefix="walq-demo-")
    directory = os.path.join(base, "queue")
    echo(f"queue directory: {directory}")
    with Queue.open(directory) as q:
        ids = q.enqueue_many([("record", {"dir": base, "n": i, "work": 0.01}) for i in range(jobs)])
    open(os.path.join(base, LEDGER), "a").close()
    echo(f"enqueued {len(ids)} jobs (durable: each batch fsynced before returning)")

    owner = _owner(directory)
    echo(f"started an owner (pid {owner.pid}) running 2 worker processes")
    deadline = time.monotonic() + 60
    while len(_ledger(base)) < jobs // 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    done_before = len(_ledger(base))
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    echo(f"kill -9 of the owner after {done_before} jobs had run")

    owner = _owner(directory)
    echo(f"restarted the owner (pid {owner.pid}); it replays the log and carries on")
    while len(_ledger(base)) < jobs and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    time.sleep(0.5)  # let the last acks land
    owner.send_signal(signal.SIGTERM)
    owner.wait(timeout=60)

    runs = _ledger(base)
    with Queue.open(directory) as q:
        stats = q.stats()
    lost = [i for i in ids if i not in runs]
    dupes = sum(n - 1 for n in runs.values() if n > 1)
    rows = [
        ("jobs enqueued", len(ids)),
        ("jobs that ran", len(runs)),
        ("lost", len(lost)),
        ("ran twice (at-least-once after the kill)", dupes),
        ("left unfinished in the queue", stats["unfinished"]),
        ("dead-lettered", stats["dead"]),
    ]
    width = max(len(name) for name, _ in rows)
    echo("")
    for name, value in rows:
        echo(f"  {name:<{width}}  {value:>6}")
    echo("")
    ok = not lost and stats["unfinished"] == 0
    echo("nothing was lost." if ok else "SOMETHING WAS LOST: this is a bug, please report it.")
    return 0 if ok else 1
