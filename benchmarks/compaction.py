"""Compaction: enqueue latency with and without a compaction running, and the disk bound.

    python benchmarks/compaction.py [--quick] [--dir DIR]

1. Latency: one producer thread enqueues durably (sync="always") while a
   consumer claims and acks; 20,000 live jobs sit in the queue so that every
   compaction has real work to copy. The same run is made twice, side by
   side: with compaction off, and with a thread compacting back to back. It
   prints p50 and p99 enqueue latency for both and their ratio (target: p99
   within 2x), and their throughputs' ratio (target: at least 0.8x).
2. Disk bound: a steady enqueue + ack loop over 1M jobs (batches of 100, with
   the background compaction policy on) samples the directory's size; it
   prints the peak and final disk use beside live bytes + 2 segments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time

import walq
from walq.directory.compactor import Policy

PAYLOAD = b"x" * 1024


def du(path: str) -> int:
    """Bytes the queue's files take on disk (allocated blocks)."""
    total = 0
    for entry in os.scandir(path):
        try:
            if entry.is_file():
                total += entry.stat().st_blocks * 512
        except FileNotFoundError:
            pass  # renamed or removed by a compaction while we looked
    return total


def latency_run(base: str, compact: bool, seconds: float, segment: int) -> list[float]:
    """Enqueue latencies (seconds) with a consumer running, compacting or not."""
    path = os.path.join(base, f"lat-{compact}")
    q = walq.Queue.open(path, segment_size=segment, compaction=False)
    q.enqueue_many([("live", PAYLOAD)] * 20_000)
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            jobs = q.claim_many(50, timeout=0.05, accept=lambda i: i.task == "t")
            if jobs:
                q.ack_many([j.id for j in jobs])

    def compactor() -> None:
        while not stop.is_set():
            q.compact()
            time.sleep(0.01)

    threads = [threading.Thread(target=consume)]
    if compact:
        threads.append(threading.Thread(target=compactor))
    for t in threads:
        t.start()
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        q.enqueue("t", PAYLOAD)
        lat.append(time.perf_counter() - start)
    stop.set()
    for t in threads:
        t.join()
    runs = q._compactor.runs
    q.close()
    print(f"  compaction {'on ' if compact else 'off'}: {len(lat)} enqueues, {runs} compactions")
    return lat


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def disk_bound(base: str, jobs: int, segment: int) -> None:
    path = os.path.join(base, "steady")
    policy = Policy(interval=0.05)
    q = walq.Queue.open(path, segment_size=segment, compaction=policy)
    peak = 0
    batch = 100
    started = time.monotonic()
    for i in range(jobs // batch):
        q.enqueue_many([("t", PAYLOAD)] * batch)
        claimed = q.claim_many(batch)
        q.ack_many([j.id for j in claimed])
        if i % 20 == 0:
            peak = max(peak, du(path))
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    final = du(path)
    live = q.stats()["bytes"]
    runs = q._compactor.runs
    q.close()
    print(f"steady loop: {jobs} jobs enqueued and acked in {elapsed:.1f} s, {runs} compactions")
    print(f"  segment size {segment} B; live bytes at the end {live}")
    print(f"  peak disk use  {peak:>12} B = {peak / segment:.2f} segments")
    print(f"  final disk use {final:>12} B = {final / segment:.2f} segments")
    print(f"  bound: live + 2 segments + slack (one segment) = {live + 3 * segment} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (CI)")
    parser.add_argument("--dir", default=".", help="where to put the scratch queues")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="walq-compaction-", dir=args.dir)
    try:
        seconds = 2.0 if args.quick else 8.0
        segment = 1 << 20
        print(f"enqueue latency, {seconds:.0f} s each, 1 KiB payloads, sync=always:")
        rows = []
        for rnd in range(1 if args.quick else 3):
            off = latency_run(base, False, seconds, segment)
            on = latency_run(base, True, seconds, segment)
            rows.append((off, on))
            del rnd
        off_all = [x for off, _ in rows for x in off]
        on_all = [x for _, on in rows for x in on]
        for name, lat in (("without compaction", off_all), ("with compaction", on_all)):
            p50, p99 = pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3
            mean = statistics.fmean(lat) * 1e3
            print(f"  {name:<20} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   mean {mean:7.3f} ms")
        print(f"  p99 ratio: {pct(on_all, 0.99) / pct(off_all, 0.99):.2f}x (target <= 2x)")
        # Each run lasts `seconds`: its enqueue count is its throughput; rounds side by side.
        ratios = [len(on) / len(off) for off, on in rows]
        print(
            f"  throughput: {statistics.median(len(off) for off, _ in rows) / seconds:,.0f}/s "
            f"without, {statistics.median(len(on) for _, on in rows) / seconds:,.0f}/s with; "
            f"ratio {statistics.median(ratios):.2f}x "
            f"(median of {len(ratios)} rounds; target >= 0.8x)"
        )
        disk_bound(base, 20_000 if args.quick else 1_000_000, 4 << 20)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
