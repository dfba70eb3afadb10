"""The Redis queue beside the file queue, in one run, on one disk.

    python benchmarks/redis_bench.py [--quick] [--url redis://...] [--dir DIR] [--json FILE]
    python benchmarks/redis_bench.py --scale [--url URL] [--cluster URL] [--sentinel URL]

Without --url it starts its own redis-server (loopback, a free port) with
`appendonly yes`, `appendfsync always` and no RDB snapshots, its files in the
same scratch directory as the file queue's, and stops it at the end. With
--url it uses that server (and says whether it is durable). Rows, each the
median of n interleaved runs with 1 KiB payloads:

- enqueue, one caller: one job per call, durable on return;
- enqueue, 16 threads: concurrent callers (the file queue's group commit; for
  Redis one fsync per event-loop turn serves every client in it);
- enqueue_many, 1,000 per call;
- claim + ack, one job per call each (both recorded durably);
- claim_many(100) + ack_many.

Standard library and walq (with redis-py) only; prints a table.

--scale prints benchmarks/redis_scale.py's table instead: no-op jobs drained by
1, 2 and 4 owner processes on one server and on a cluster, beside RQ and huey
on the same server, and what min_replicas=1 costs behind Sentinel (the peers:
`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PAYLOAD = (bytes(range(256)).hex() * 2).encode()[:1024]
THREADS = 16
BATCH = 1000


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A durable redis-server of our own on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it (bash .ci/redis.sh start) or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = workdir / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


class Subject:
    """One backend: opens a fresh queue per measurement."""

    def __init__(self, name: str, opener: Callable[[str], Any]) -> None:
        self.name = name
        self.opener = opener
        self.n = 0

    @contextlib.contextmanager
    def fresh(self) -> Iterator[Any]:
        self.n += 1
        q = self.opener(f"m{self.n}")
        try:
            yield q
        finally:
            q.close()


def rate_enqueue(q: Any, duration: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        q.enqueue("noop", PAYLOAD)
        n += 1
    return n / elapsed


def rate_enqueue_threads(q: Any, duration: float) -> float:
    counts = [0] * THREADS
    stop = threading.Event()

    def run(i: int) -> None:
        while not stop.is_set():
            q.enqueue("noop", PAYLOAD)
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def rate_enqueue_many(q: Any, duration: float) -> float:
    batch = [("noop", PAYLOAD)] * BATCH
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        q.enqueue_many(batch)
        n += BATCH
    return n / elapsed


def rate_claim_ack(q: Any, duration: float) -> float:
    q.enqueue_many([("noop", PAYLOAD)] * backlog_for(duration))
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        job = q.claim(lease=60.0)
        if job is None:
            break
        q.ack(job.id, attempt=job.attempt)
        n += 1
    return n / elapsed


def rate_claim_many(q: Any, duration: float) -> float:
    q.enqueue_many([("noop", PAYLOAD)] * backlog_for(duration) * 4)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        jobs = q.claim_many(100, lease=60.0)
        if not jobs:
            break
        q.ack_many([j.id for j in jobs], attempts=[j.attempt for j in jobs])
        n += len(jobs)
    return n / elapsed


def backlog_for(duration: float) -> int:
    return int(20_000 * duration) + 1000


ROWS: list[tuple[str, Callable[[Any, float], float]]] = [
    ("enqueue, one caller", rate_enqueue),
    (f"enqueue, {THREADS} threads", rate_enqueue_threads),
    (f"enqueue_many, {BATCH} per call", rate_enqueue_many),
    ("claim + ack, one job each", rate_claim_ack),
    ("claim_many(100) + ack_many", rate_claim_many),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of 0.25 s (else 7 of 0.5)")
    parser.add_argument("--url", default=None, help="use this Redis server instead of our own")
    parser.add_argument("--dir", default=".", help="where the scratch directory goes")
    parser.add_argument("--json", default=None, help="also write every sample to this file")
    parser.add_argument("--scale", action="store_true", help="owner processes, RQ and huey")
    parser.add_argument("--cluster", default=None, help="--scale: a redis+cluster:// URL too")
    parser.add_argument("--sentinel", default=None, help="--scale: a redis+sentinel:// URL")
    parser.add_argument("--jobs", type=int, default=20000, help="--scale: jobs per row")
    args = parser.parse_args()
    if args.scale:
        import redis_scale

        scratch = Path(tempfile.mkdtemp(prefix=".walq-redis-bench-", dir=args.dir))
        own: subprocess.Popen[bytes] | None = None
        try:
            if args.url is None:
                own, url = start_server(scratch)
            else:
                url = args.url
            print(f"# {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; redis {url}")
            redis_scale.scale(url, args.cluster, args.sentinel, args.jobs)
        finally:
            if own is not None:
                own.terminate()
                own.wait(10)
            shutil.rmtree(scratch, ignore_errors=True)
        return
    repeats, duration = (3, 0.25) if args.quick else (7, 0.5)

    import walq
    from walq.redisq.queue import RedisQueue

    scratch = Path(tempfile.mkdtemp(prefix=".walq-redis-bench-", dir=args.dir))
    server: subprocess.Popen[bytes] | None = None
    try:
        if args.url is None:
            server, url = start_server(scratch)
        else:
            url = args.url
        sep = "&" if "?" in url else "?"
        probe = RedisQueue.open(f"{url}{sep}prefix=walq-bench-probe")
        durable, version = probe.durable, probe.server_version
        probe.close()
        subjects = [
            Subject("file", lambda n: walq.Queue.open(str(scratch / n), sync="always")),
            Subject("redis", lambda n: RedisQueue.open(f"{url}{sep}prefix=walq-bench-{n}")),
        ]
        samples: dict[tuple[str, str], list[float]] = {}
        for round_ in range(repeats):
            for row, fn in ROWS:
                for subject in subjects:
                    with subject.fresh() as q:
                        samples.setdefault((row, subject.name), []).append(fn(q, duration))
            print(f"round {round_ + 1}/{repeats} done", file=sys.stderr)
        report(samples, url, durable, version, scratch, repeats, duration, args.json)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        elif args.url is not None:
            wipe(args.url)
        shutil.rmtree(scratch, ignore_errors=True)


def wipe(url: str) -> None:
    """Delete the benchmark's keys from a server we did not start."""
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    names = list(client.scan_iter(match="{walq-bench-*", count=1000))
    for i in range(0, len(names), 1000):
        client.delete(*names[i : i + 1000])
    client.close()


def report(
    samples: dict[tuple[str, str], list[float]],
    url: str,
    durable: bool | None,
    version: str,
    scratch: Path,
    repeats: int,
    duration: float,
    json_path: str | None,
) -> None:
    fs = subprocess.run(
        ["df", "-T", str(scratch)], capture_output=True, text=True, check=False
    ).stdout.splitlines()[-1:]
    print(f"# walq: file queue vs Redis queue ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(
        f"# disk: {' '.join(fs[0].split()[:2]) if fs else '?'}; Python {platform.python_version()}"
    )
    print(
        f"# redis: {version} at {url}, "
        + ("appendonly yes + appendfsync always" if durable else "NOT durable (see stats)")
    )
    print(f"# medians of {repeats} interleaved runs of {duration:g} s; 1 KiB payloads; jobs/s")
    print(f"{'row':<32} {'file (sync=always)':>22} {'redis':>22} {'redis/file':>11}")
    for row, _ in ROWS:
        cells = []
        meds = []
        for name in ("file", "redis"):
            xs = samples[(row, name)]
            med = statistics.median(xs)
            meds.append(med)
            cells.append(f"{med:>9,.0f} ({min(xs):,.0f}..{max(xs):,.0f})")
        print(f"{row:<32} {cells[0]:>22} {cells[1]:>22} {meds[1] / meds[0]:>10.2f}x")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "url": url,
                    "durable": durable,
                    "redis_version": version,
                    "repeats": repeats,
                    "duration": duration,
                    "rows": [
                        {"row": r, "backend": b, "samples": xs, "median": statistics.median(xs)}
                        for (r, b), xs in samples.items()
                    ],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
