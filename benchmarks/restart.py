"""Restart with a backlog: open time, first-claim latency and memory, checkpoint vs full replay.

    python benchmarks/restart.py [--quick] [--sizes 1000000,5000000] [--rounds 3] [--dir DIR]

For each size, a queue of that many pending jobs (small JSON payloads) is
built once, its checkpoint written (timed: the background's cost), and then,
in interleaved rounds, a fresh process opens it twice: once from the
checkpoint and once with the checkpoint moved aside (a full replay). Each
open reports the seconds `Queue.open` took, the milliseconds from its return
to the first claimed job, and the peak RSS the open added. Medians are
printed with the targets (open of 1M <= 0.5 s, of 5M <= 2 s; first claim
<= 100 ms). `--quick` (the suite's size) uses 20,000 jobs and one round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TARGETS = {1_000_000: 0.5, 5_000_000: 2.0}
FIRST_CLAIM_MS = 100.0


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child(path: str) -> None:
    """Open the queue, claim one job, release it; print the figures as JSON."""
    import walq

    base = peak_rss_kib()
    t0 = time.perf_counter()
    q = walq.Queue.open(path, compaction=False, serve=False, sync="never")
    t1 = time.perf_counter()
    job = q.claim()
    t2 = time.perf_counter()
    peak = peak_rss_kib()
    assert job is not None
    q.release(job.id)
    used = q.checkpoint_opened is not None
    pending = q.stats()["pending"]
    q.close()
    print(json.dumps({
        "open": t1 - t0, "first_claim_ms": (t2 - t1) * 1000, "rss_mb": (peak - base) / 1024,
        "checkpoint": used, "pending": pending,
    }))  # fmt: skip


def build(path: str, n: int) -> float:
    """A queue of `n` pending jobs and its checkpoint; returns the checkpoint's write time."""
    import walq

    q = walq.Queue.open(path, compaction=False, serve=False, sync="never")
    batch = 10_000
    for start in range(0, n, batch):
        q.enqueue_many([("task", {"i": i}) for i in range(start, min(n, start + batch))])
    q.sync()
    t0 = time.perf_counter()
    written = q.write_checkpoint()
    took = time.perf_counter() - t0
    assert written is not None and written.jobs == n
    q.close()
    return took


def measure(path: str, full: bool) -> dict[str, Any]:
    cp = os.path.join(path, "checkpoint")
    aside = os.path.join(os.path.dirname(path), "checkpoint.aside")
    if full:
        os.rename(cp, aside)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", path],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        if full:
            os.rename(aside, cp)
    row: dict[str, Any] = json.loads(out.stdout)
    assert row["checkpoint"] is not full, row
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    top = tempfile.mkdtemp(prefix="walq-restart-", dir=args.dir)
    try:
        for n in sizes:
            path = os.path.join(top, f"q{n}")
            t0 = time.perf_counter()
            write = build(path, n)
            print(f"{n:,} pending jobs: built in {time.perf_counter() - t0:.1f} s; "
                  f"checkpoint written in {write:.3f} s", flush=True)  # fmt: skip
            rows: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
            for _ in range(rounds):
                for full in (True, False):
                    rows[full].append(measure(path, full))
            for full in (True, False):
                opens = statistics.median(r["open"] for r in rows[full])
                claim = statistics.median(r["first_claim_ms"] for r in rows[full])
                rss = statistics.median(r["rss_mb"] for r in rows[full])
                label = "full replay" if full else "checkpoint "
                print(f"  {label}: open {opens:.3f} s, first claim {claim:.1f} ms, "
                      f"peak RSS +{rss:.0f} MB")  # fmt: skip
            ratio = statistics.median(
                f["open"] / c["open"] for f, c in zip(rows[True], rows[False], strict=True)
            )
            best = statistics.median(r["open"] for r in rows[False])
            claim = statistics.median(r["first_claim_ms"] for r in rows[False])
            target = TARGETS.get(n)
            verdict = "" if target is None else (
                f"; target open <= {target} s: {'MET' if best <= target else 'missed'}"
            )  # fmt: skip
            print(f"  checkpoint opens {ratio:.1f}x faster than a full replay{verdict}; "
                  f"first claim <= {FIRST_CLAIM_MS:.0f} ms: "
                  f"{'MET' if claim <= FIRST_CLAIM_MS else 'missed'}", flush=True)  # fmt: skip
            shutil.rmtree(path)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
