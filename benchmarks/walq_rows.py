"""walq's rows, written against the public API in DESIGN.md only.

Any row whose code raises (walq not built yet, a missing method, a bug) shows
as "n/a (reason)" in the table; nothing here invents a number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchutil import PAYLOAD, ChildFailedError, Settings, marks, wait_for
from peers import PeerSpec

BENCH_DIR = Path(__file__).resolve().parent
LEASE = 60.0


class WalqQueue:
    """walq.Queue.open(path, sync="always") behind the peers' interface."""

    sync = "always"

    def __init__(self, path: Path) -> None:
        import walq

        self.q = walq.Queue.open(str(path / "queue"), sync=self.sync)

    def put(self, payload: bytes) -> None:
        self.q.enqueue("noop", payload)

    def put_many(self, payloads: list[bytes]) -> None:
        self.q.enqueue_many([("noop", p) for p in payloads])

    def get_ack(self) -> bool:
        job = self.q.claim(lease=LEASE)
        if job is None:
            return False
        self.q.ack(job.id)
        return True

    def describe(self) -> str:
        return f'sync="{self.sync}"'

    def close(self) -> None:
        self.q.close()


WALQ = PeerSpec(
    "walq",
    "walq",
    WalqQueue,
    durable=True,
    per_thread=False,
    batch="enqueue_many (one durable write)",
    get_ack="claim(lease=60) + ack: start and ack both durable",
)


class WalqNeverQueue(WalqQueue):
    """The same with sync="never": no fsync at all, so what is left is the threads' cost."""

    sync = "never"


WALQ_NEVER = PeerSpec(
    "walq-never",
    'walq sync="never"',
    WalqNeverQueue,
    durable=False,
    per_thread=False,
    batch="",
    get_ack="",
)


ASYNC_COROUTINES = 1000


def async_enqueue_rate(path: Path, s: Settings, coroutines: int = ASYNC_COROUTINES) -> float:
    """Durable enqueues/s from `coroutines` coroutines on one loop (walq.AsyncQueue).

    Each awaits its own durable enqueue (sync="always") in a loop for
    s.duration seconds; the group committer resolves them a batch at a time.
    """
    import asyncio

    import walq

    async def run() -> float:
        async with await walq.AsyncQueue.open(str(path / "queue"), sync="always") as q:
            counts = [0] * coroutines
            loop = asyncio.get_running_loop()
            start = loop.time()
            deadline = start + s.duration

            async def producer(i: int) -> None:
                n = 0
                while loop.time() < deadline:
                    await q.enqueue("noop", PAYLOAD)
                    n += 1
                counts[i] = n

            await asyncio.gather(*(producer(i) for i in range(coroutines)))
            return sum(counts) / (loop.time() - start)

    return asyncio.run(run())


def claim_many_rate(path: Path, s: Settings) -> float:
    """Jobs/s through claim_many(batch) + ack_many(ids); refills are not timed."""
    import walq

    q = walq.Queue.open(str(path / "queue"), sync="always")
    try:
        busy, count = 0.0, 0
        while busy < s.duration:
            q.enqueue_many([("noop", PAYLOAD)] * s.batch)
            start = time.perf_counter()
            jobs = q.claim_many(s.batch, lease=LEASE)
            q.ack_many([job.id for job in jobs])
            busy += time.perf_counter() - start
            if len(jobs) != s.batch:
                raise RuntimeError(f"claim_many returned {len(jobs)} of {s.batch} jobs")
            count += len(jobs)
        return count / busy
    finally:
        q.close()


# -- subprocess rows -----------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def run_child(args: list[str], timeout: float, env: dict[str, str] | None = None) -> Any:
    """Run child.py with `args`; its JSON answer, or ChildFailedError with its reason."""
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "child.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or child_env(),
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ChildFailedError(tail[0])
    out = json.loads(lines[-1])
    if "error" in out:
        raise ChildFailedError(out["error"])
    return out


def replay(path: Path, s: Settings) -> dict[str, list[float]]:
    """Fill a queue with `replay_n` pending jobs, then time Queue.open in fresh processes."""
    n, queue_dir = s.replay_n, str(path / "queue")
    fill = run_child(["walq-fill", queue_dir, str(n), str(s.batch)], s.timeout)
    out: dict[str, list[float]] = {
        "walq.fill": [n / fill["seconds"]],
        "walq.replay_rate": [],
        "walq.replay_seconds": [],
        "walq.replay_rss_per_job": [],
        "walq.replay_rss_peak": [],
    }
    for _ in range(min(3, s.repeats)):
        opened = run_child(["walq-open", queue_dir, str(n)], s.timeout)
        out["walq.replay_rate"].append(n / opened["seconds"])
        out["walq.replay_seconds"].append(opened["seconds"])
        out["walq.replay_rss_per_job"].append((opened["rss_peak"] - opened["rss_before"]) / n)
        out["walq.replay_rss_peak"].append(opened["rss_peak"] / 1e6)
    return out


ASYNC_POOL_FACTOR = 4  # the coroutine rows push this many times pool_jobs (they run faster)


def walq_pool(
    path: Path, s: Settings, processes: int, registry: str = "tasks", task: str = "noop"
) -> dict[str, float]:
    """Jobs/s through walq.Worker(q, bench_tasks.<registry>, processes=N), in a fresh
    process (no-op jobs, or `task` of the coroutine registry "atasks"), and the owner
    process's CPU per job (µs): {"rate": ..., "cpu": ...}."""
    env = child_env({"WALQ_BENCH_MARKER": str(path / "marker")})
    jobs = s.pool_jobs * (ASYNC_POOL_FACTOR if registry == "atasks" else 1)
    args = ["walq-pool", str(path / "queue"), str(jobs), str(processes), str(s.timeout)]
    args += [registry, task]
    out = run_child(args, s.timeout + 30, env)
    return {"rate": float(out["rate"]), "cpu": float(out["owner_cpu_us"])}


def huey_pool_rate(path: Path, s: Settings, workers: int) -> float:
    """No-op jobs/s through `huey_consumer -k process -w N` on SqliteHuey(fsync=True)."""
    marker = path / "marker"
    env = child_env({"WALQ_BENCH_HUEY_DB": str(path / "huey.db"), "WALQ_BENCH_MARKER": str(marker)})
    run_child(["huey-fill", str(s.pool_jobs)], s.timeout, env)
    command = [sys.executable, "-m", "huey.bin.huey_consumer", "huey_tasks.huey"]
    command += ["-k", "process", "-w", str(workers), "-n", "-q"]
    with open(path / "consumer.log", "w") as log:
        consumer = subprocess.Popen(
            command, cwd=path, env=env, stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.monotonic() + s.timeout

        def done(count: int) -> bool:
            if consumer.poll() is not None:
                raise ChildFailedError(f"huey_consumer exited with status {consumer.returncode}")
            return marks(marker) >= count

        first = wait_for(lambda: done(1), deadline)
        last = wait_for(lambda: done(s.pool_jobs), deadline)
    finally:
        stop(consumer)
    return (s.pool_jobs - 1) / (last - first)


def stop(proc: subprocess.Popen[Any]) -> None:
    """Graceful SIGINT, then SIGKILL to its process group (its own session) after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
