"""Durable enqueues per second from other processes, beside the in-process figures.

    python benchmarks/producers.py [--quick] [--rounds N] [--duration S] [--dir DIR] [--json FILE]

Rows, each a durable enqueue of a 1 KiB payload (sync="always"), measured in
round-robin rounds in one run on one disk, reported as the median of the rounds:

- in-process: Queue.enqueue from 1 thread and from 4 threads (the owner's own figure);
- socket: walq.connect(...).enqueue from 1 and 4 producer processes, an owner
  running in this process with its ProducerServer;
- spool: the same with no owner running (each enqueue is a spool file: write,
  fdatasync, rename, directory fsync);
- disk: a bare 1 KiB write + fdatasync loop, the floor of a single writer.

Every producer process is started and connected before the clock starts; each
then runs for the same `--duration` and reports how many enqueues returned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchutil import cpu_model, mount_of  # noqa: E402

import walq  # noqa: E402
from walq.producers.client import connect  # noqa: E402
from walq.producers.server import ProducerServer  # noqa: E402

PAYLOAD = (bytes(range(256)).hex() * 2).encode()[:1024]
BATCH = [("bench", PAYLOAD)] * 100


# CPU seconds per job the measuring process (the owner, if any) spent in the last row.
LAST_CPU: list[float | None] = [None]


def process_cpu() -> float:
    """CPU seconds (user + system) of this process so far, its children excluded."""
    t = os.times()
    return t.user + t.system


def open_owner(
    path: str, serve: bool, lock_timeout: float = 0.0
) -> tuple[walq.Queue, ProducerServer | None]:
    """The queue (compaction off, no server of its own) and, if `serve`, a started server."""
    kw: dict[str, object] = {"sync": "always", "lock_timeout": lock_timeout}
    for extra in ({"serve": False, "compaction": False}, {"compaction": False}, {}):
        try:
            q = walq.Queue.open(path, **kw, **extra)  # type: ignore[arg-type]
            break
        except TypeError:
            continue
    server = None
    if serve:
        server = ProducerServer(q)
        server.start()
    return q, server


# -- rows -------------------------------------------------------------------------------------


def in_process(path: str, threads: int, duration: float) -> float:
    """Queue.enqueue from `threads` threads of the owner's process."""
    q, _ = open_owner(path, serve=False)
    counts = [0] * threads
    go = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        go.wait()
        n = 0
        while time.perf_counter() < stop:
            q.enqueue("bench", PAYLOAD)
            n += 1
        counts[i] = n

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    cpu = process_cpu()
    start = time.perf_counter()
    stop = start + duration
    go.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    LAST_CPU[0] = (process_cpu() - cpu) / max(sum(counts), 1)
    q.close()
    return sum(counts) / elapsed


def producers(
    path: str, procs: int, duration: float, *, owner: bool, mode: str = "producer", backlog: int = 0
) -> float:
    """Enqueues per second from `procs` processes (see `child` for the modes)."""
    if backlog:
        filler, _ = open_owner(path, serve=False)
        for _ in range(0, backlog, 1000):
            filler.enqueue_many([("bench", PAYLOAD)] * 1000)
        filler.close()
    q: walq.Queue | None
    server: ProducerServer | None
    q, server = open_owner(path, serve=True) if owner else (None, None)
    try:
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--child", mode, path, str(duration)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(procs)
        ]
        for c in children:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        cpu = process_cpu()
        for c in children:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        total, longest = 0, 0.0
        for c in children:
            out, _ = c.communicate(timeout=duration + 120)
            n, elapsed, sent = json.loads(out)
            total += n
            longest = max(longest, elapsed)
            if mode != "lockopen":
                route = "socket" if owner else "spool"
                assert sent[route] == n, f"expected every enqueue via the {route}: {sent}"
        LAST_CPU[0] = (process_cpu() - cpu) / max(total, 1) if owner else None
        if q is not None:
            assert q.stats()["pending"] == total + backlog
        return total / longest
    finally:
        if server is not None:
            server.stop()
        if q is not None:
            q.close()


def child(mode: str, path: str, duration: float) -> None:
    """A producer process: set up, wait for "go", enqueue for `duration` s, report.

    modes: "producer" (one walq.connect producer, its connection kept),
    "batch100" (the same, enqueue_many of 100 jobs per call),
    "reconnect" (a new producer, so a new connection, per enqueue), "lockopen"
    (the alternative to a spool: take the lock, replay, enqueue, close),
    "aconnect" (walq.aconnect from ACONNECT_COROUTINES coroutines on one loop).
    """
    if mode == "aconnect":
        async_child(path, duration)
        return
    prod = connect(path)
    sent = {"socket": 0, "spool": 0}

    def one() -> None:
        if mode == "producer":
            prod.enqueue("bench", PAYLOAD)
        elif mode == "batch100":
            prod.enqueue_many(BATCH)
        elif mode == "reconnect":
            with connect(path) as p:
                p.enqueue("bench", PAYLOAD)
                for k, v in p.sent.items():
                    sent[k] += v
        else:
            q, _ = open_owner(path, serve=False, lock_timeout=60.0)
            q.enqueue("bench", PAYLOAD)
            q.close()

    if mode == "lockopen":
        one()  # warm up (imports, first open) before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    n = 0
    start = time.perf_counter()
    stop = start + duration
    per_call = len(BATCH) if mode == "batch100" else 1
    while time.perf_counter() < stop:
        one()
        n += per_call
    elapsed = time.perf_counter() - start
    if mode in ("producer", "batch100"):
        sent = dict.fromkeys(prod.sent, 0)
        for k, v in prod.sent.items():
            sent[k] = v * per_call
    elif mode == "lockopen":
        n += 1  # the warm-up job is in the queue too; counted so that the totals check holds
    print(json.dumps([n, elapsed, sent]), flush=True)
    prod.close()


ACONNECT_COROUTINES = 250


def async_child(path: str, duration: float) -> None:
    """A uvicorn-like producer process: ACONNECT_COROUTINES coroutines share one aconnect."""
    import asyncio

    async def run() -> tuple[int, float, dict[str, int]]:
        loop = asyncio.get_running_loop()
        async with await walq.aconnect(path) as prod:
            await prod.enqueue("bench", PAYLOAD)  # connected before the clock starts
            print("ready", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            counts = [0] * ACONNECT_COROUTINES
            start = time.perf_counter()
            stop = start + duration

            async def one(i: int) -> None:
                n = 0
                while time.perf_counter() < stop:
                    await prod.enqueue("bench", PAYLOAD)
                    n += 1
                counts[i] = n

            await asyncio.gather(*(one(i) for i in range(ACONNECT_COROUTINES)))
            elapsed = time.perf_counter() - start
            n = sum(counts) + 1  # the warm-up job is in the queue too
            # prod.sent counts requests (shared by many calls): every job went one way?
            if prod.sent["spool"] == 0:
                return n, elapsed, {"socket": n, "spool": 0}
            if prod.sent["socket"] == 0:
                return n, elapsed, {"socket": 0, "spool": n}
            return n, elapsed, dict(prod.sent)

    n, elapsed, sent = asyncio.run(run())
    print(json.dumps([n, elapsed, sent]), flush=True)


def fdatasync_loop(path: str, duration: float) -> float:
    """A bare 1 KiB append + fdatasync loop in one file."""
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, "floor"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            os.write(fd, PAYLOAD)
            os.fdatasync(fd)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)


def echo_round_trips(path: str, duration: float) -> float:
    """Round trips of a 1 KiB message to an echoing process over a Unix socket pair."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo process
        a.close()
        while data := b.recv(65536):
            b.sendall(data)
        os._exit(0)
    b.close()
    try:
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            a.sendall(PAYLOAD)
            got = 0
            while got < len(PAYLOAD):
                got += len(a.recv(65536))
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        a.close()
        os.waitpid(pid, 0)


ROWS: list[tuple[str, Callable[[str, float], float]]] = [
    ("in-process Queue.enqueue, 1 thread", lambda p, d: in_process(p, 1, d)),
    ("in-process Queue.enqueue, 4 threads", lambda p, d: in_process(p, 4, d)),
    ("producer via socket, 1 process", lambda p, d: producers(p, 1, d, owner=True)),
    ("producer via socket, 4 processes", lambda p, d: producers(p, 4, d, owner=True)),
    (
        f"aconnect via socket, 4 processes x {ACONNECT_COROUTINES} coroutines",
        lambda p, d: producers(p, 4, d, owner=True, mode="aconnect"),
    ),
    ("producer via spool (no owner), 1 process", lambda p, d: producers(p, 1, d, owner=False)),
    ("producer via spool (no owner), 4 processes", lambda p, d: producers(p, 4, d, owner=False)),
    ("disk: 1 KiB write + fdatasync loop", fdatasync_loop),
    ("socket: bare 1 KiB round trip to another process", echo_round_trips),
]
ALTERNATIVES: list[tuple[str, Callable[[str, float], float]]] = [
    (
        "socket, enqueue_many of 100 jobs, 1 proc (jobs/s)",
        lambda p, d: producers(p, 1, d, owner=True, mode="batch100"),
    ),
    (
        "alt: socket, new connection per enqueue, 1 proc",
        lambda p, d: producers(p, 1, d, owner=True, mode="reconnect"),
    ),
    (
        "alt: take the lock per enqueue, 1 proc",
        lambda p, d: producers(p, 1, d, owner=False, mode="lockopen"),
    ),
    (
        "alt: take the lock per enqueue, 4 procs",
        lambda p, d: producers(p, 4, d, owner=False, mode="lockopen"),
    ),
    (
        "alt: take the lock per enqueue, 1 proc, 20k queued",
        lambda p, d: producers(p, 1, d, owner=False, mode="lockopen", backlog=20_000),
    ),
]


RATIOS = [
    ("producer via socket, 1 process", "in-process Queue.enqueue, 1 thread"),
    ("producer via socket, 4 processes", "in-process Queue.enqueue, 4 threads"),
    ("producer via socket, 4 processes", "producer via socket, 1 process"),
    (
        f"aconnect via socket, 4 processes x {ACONNECT_COROUTINES} coroutines",
        "producer via socket, 4 processes",
    ),
    ("producer via spool (no owner), 1 process", "in-process Queue.enqueue, 1 thread"),
    ("in-process Queue.enqueue, 1 thread", "disk: 1 KiB write + fdatasync loop"),
    ("alt: socket, new connection per enqueue, 1 proc", "producer via socket, 1 process"),
    ("producer via spool (no owner), 1 process", "alt: take the lock per enqueue, 1 proc"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument(
        "--alternatives", action="store_true", help="also measure the designs not taken"
    )
    ap.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--dir", default=".", help="where the scratch directory goes")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]))
        return
    rounds, duration = (3, 0.5) if args.quick else (args.rounds, args.duration)
    scratch = Path(tempfile.mkdtemp(prefix=".walq-producers-", dir=args.dir))
    mount_point, fstype, device = mount_of(scratch)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "filesystem": f"{fstype} on {device} at {mount_point}",
        "python": sys.version.split()[0],
        "rounds": str(rounds),
        "duration": f"{duration} s",
    }
    rows = ROWS + (ALTERNATIVES if args.alternatives else [])
    samples: dict[str, list[float]] = {name: [] for name, _ in rows}
    cpu_us: dict[str, list[float]] = {name: [] for name, _ in rows}
    try:
        for r in range(rounds):
            for i, (name, fn) in enumerate(rows):
                path = str(scratch / f"r{r}-{i}")
                LAST_CPU[0] = None
                samples[name].append(fn(path, duration))
                if LAST_CPU[0] is not None:
                    cpu_us[name].append(LAST_CPU[0] * 1e6)
                shutil.rmtree(path, ignore_errors=True)
                print(
                    f"round {r + 1}/{rounds}: {name}: {samples[name][-1]:,.0f}/s", file=sys.stderr
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key, value in info.items():
        print(f"{key}: {value}")
    print()
    print(f"| {'row':<52} | {'median /s':>10} | {'min':>8} | {'max':>8} |")
    print(f"|{'-' * 54}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"| {name:<52} | {med:>10,.0f} | {min(values):>8,.0f} | {max(values):>8,.0f} |")
    print()
    print("CPU of the owner's process per job (median µs; producers' CPU not included):")
    for name, values in cpu_us.items():
        if values:
            print(f"  {name}: {statistics.median(values):.0f}")
    print()
    print("ratios (median over rounds of the ratio within a round):")
    for a, b in RATIOS:
        if a in samples and b in samples:
            within = [x / y for x, y in zip(samples[a], samples[b], strict=True) if y]
            print(f"  {a} / {b}: {statistics.median(within):.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "samples": samples, "owner_cpu_us": cpu_us}, indent=2)
        )


if __name__ == "__main__":
    main()
