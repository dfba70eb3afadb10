"""Operating a large queue: stats, status ID, dead list and dump --job, offline and beside an owner.

    python benchmarks/operate.py                 # a 1,000,000-job queue
    python benchmarks/operate.py --quick         # 20,000 jobs (what the test suite runs)
    python benchmarks/operate.py --jobs 200000 --json out.json

Builds a queue of N jobs (half of them done, a few dead, the rest pending, in
several segments, one compaction, a checkpoint before the dead jobs), then
times each command as an operator runs it (`python -m walq ...`, a new process
each time: its start-up counted) and the same lookups in-process (walq.ops,
walq.Admin), first with no owner running and then beside a real owner
(`python -m walq worker`), whose socket answers them. With no owner, the rows
marked "before" and "no checkpoint" are read with the checkpoint set aside (a
replay of the whole log; a lookup's fallback to the job's own records). Each
figure is the median of `--repeat` runs; the table also shows the peak RSS of
the command processes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import walq  # noqa: E402
from walq.ops import dump as ops_dump  # noqa: E402
from walq.ops import live  # noqa: E402
from walq.ops import stats as ops_stats  # noqa: E402

TASKS = "benchmarks.operate_tasks:tasks"


def build(qdir: str, n: int) -> dict[str, int]:
    """A queue of `n` jobs: half done, 10 dead, the rest pending; returns a few ids."""
    batch = 10_000
    with walq.Queue.open(qdir, sync="never", compaction=False) as q:
        ids: list[int] = []
        for start in range(0, n, batch):
            items = [("work", {"i": i}) for i in range(start, min(n, start + batch))]
            ids += q.enqueue_many(items)
        done = 0
        while done < n // 2:
            jobs = q.claim_many(1000, tasks=["work"])
            q.ack_many([j.id for j in jobs], attempts=[j.attempt for j in jobs], sync=False)
            done += len(jobs)
        q.compact(seal=True)  # the done half is compacted away
        q.write_checkpoint()  # as a running owner writes them (the dead jobs come after it)
        for i in range(10):
            jid = q.enqueue("fails", {"i": i}, max_attempts=1)
            job = q.claim(tasks=["fails"])
            assert job is not None and job.id == jid
            q.fail(jid, "boom\nTraceback: ...")
        q.sync()
        segments = len(list(Path(qdir).glob("*.wal")))
    return {"first": ids[0], "middle": ids[n // 2 + 1], "last": ids[-1], "segments": segments}


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Runs `python -m walq ARGS` and, at exit, writes its own peak RSS (VmHWM: ru_maxrss
# would carry this parent's over the exec) to the file named by WALQ_BENCH_HWM.
_SHIM = """
import atexit, os, runpy, sys
def hwm():
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["WALQ_BENCH_HWM"], "w") as out:
        out.write(kib)
atexit.register(hwm)
sys.argv[0] = "walq"
runpy.run_module("walq", run_name="__main__", alter_sys=True)
"""


def cli(*args: str) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one `python -m walq ARGS` run."""
    with tempfile.NamedTemporaryFile() as hwm, tempfile.TemporaryFile() as err:
        env = dict(os.environ, WALQ_BENCH_HWM=hwm.name)
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-c", _SHIM, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=err, env=env, check=False, timeout=1800,
        )  # fmt: skip
        took = time.perf_counter() - t0
        if r.returncode not in (0, 1):
            err.seek(0)
            raise RuntimeError(f"walq {' '.join(args)}: {err.read().decode().strip()}")
        rss = int(Path(hwm.name).read_text() or 0)
    return took, rss


def measure(qdir: str, ids: dict[str, int], repeat: int, where: str) -> list[dict[str, Any]]:
    """Every row, with or without an owner (`where` says which)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, seconds: float, rss: int | None = None) -> None:
        rows.append({"where": where, "what": name, "seconds": seconds, "rss_kib": rss})
        extra = f", peak RSS {rss / 1024:.0f} MiB" if rss else ""
        print(f"  {where:<12} {name:<34} {seconds * 1000:10.1f} ms{extra}", file=sys.stderr)

    job = ids["last"]
    if where == "no owner":
        without_checkpoint(qdir, job, ids, row, repeat)
    row("status (in-process)", timed(lambda: live.job_status(qdir, job), repeat))
    row(
        "status, first job (in-process)", timed(lambda: live.job_status(qdir, ids["first"]), repeat)
    )
    row(
        "status, oldest pending (in-process)",
        timed(lambda: live.job_status(qdir, ids["middle"]), repeat),
    )
    row("dump --job (in-process)", timed(lambda: list(ops_dump.dump_job(qdir, job)), repeat))
    for name, args in (
        ("walq status DIR ID", ("status", qdir, str(job))),
        ("walq dump DIR --job ID", ("dump", qdir, "--job", str(job))),
        ("walq dead list DIR", ("dead", "list", qdir)),
        ("walq stats DIR", ("stats", qdir)),
    ):
        runs = [cli(*args) for _ in range(max(1, repeat // 2))]
        row(name, statistics.median(r[0] for r in runs), max(r[1] for r in runs))
    row("stats (in-process)", timed(lambda: ops_stats.read(qdir), max(1, repeat // 2)))
    return rows


def without_checkpoint(
    qdir: str, job: int, ids: dict[str, int], row: Callable[..., None], repeat: int
) -> None:
    """The rows read with the checkpoint set aside: before (a replay of the whole log)
    and the lookups' fallback (the job's own records, read up to their end)."""
    cp = Path(qdir) / "checkpoint"
    aside = Path(qdir) / "checkpoint.bench-aside"
    if cp.exists():
        cp.rename(aside)
    try:
        row("status, full replay (before)", timed(lambda: live.replayed_job_status(qdir, job), 1))
        row(
            "dump --job, full read (before)",
            timed(lambda: list(ops_dump.dump(qdir, ops_dump.DumpFilter(job=job))), 1),
        )
        row("stats, full replay (before)", timed(lambda: ops_stats.read(qdir), 1))
        for name, args in (
            ("walq stats DIR (before)", ("stats", qdir)),
            ("walq dead list DIR (before)", ("dead", "list", qdir)),
        ):
            took, rss = cli(*args)
            row(name, took, rss)
        for name, jid in (("last", job), ("oldest pending", ids["middle"])):
            row(
                f"status {name}, no checkpoint",
                timed(functools.partial(live.job_status, qdir, jid), repeat),
            )
    finally:
        if aside.exists():
            aside.rename(cp)


def start_owner(qdir: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "walq", "worker", qdir, "--tasks", TASKS, "--processes", "1",
         "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            walq.Admin(qdir, require_owner=True).paused()
            return proc
        except walq.NoOwnerError:
            time.sleep(0.05)
    raise RuntimeError("the owner did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 jobs, 3 repeats")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the scratch queue goes")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--reuse", default=None, help="a queue this script built before (not changed)")
    args = ap.parse_args()
    n, repeat = (20_000, 3) if args.quick else (args.jobs, args.repeat)
    scratch = tempfile.mkdtemp(prefix=".walq-operate-", dir=args.dir or ".")
    qdir = os.path.join(scratch, "q")
    try:
        t0 = time.perf_counter()
        if args.reuse:
            qdir = args.reuse
            with walq.Queue.open(qdir, compaction=False) as q:
                st = q.stats()
            n = st["next_id"] - 1
            first = next(iter(walq.Admin(qdir).jobs(limit=1)))["id"]
            ids = {"first": first, "middle": n // 2 + 1, "last": n - 10,
                   "segments": st["segments"]}  # fmt: skip
        else:
            ids = build(qdir, n)
        print(
            f"queue of {n} jobs ({ids['segments']} segments) built in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        rows = measure(qdir, ids, repeat, "no owner")
        owner = start_owner(qdir)
        try:
            admin = walq.Admin(qdir)
            rows.append({"where": "owner", "what": "Admin.status (socket)",
                         "seconds": timed(lambda: admin.status(ids["last"]), repeat * 10),
                         "rss_kib": None})  # fmt: skip
            print(f"  {'owner':<12} {'Admin.status (socket)':<34} "
                  f"{rows[-1]['seconds'] * 1000:10.2f} ms", file=sys.stderr)  # fmt: skip
            rows += measure(qdir, ids, repeat, "owner")
        finally:
            os.killpg(owner.pid, signal.SIGTERM)
            owner.wait(timeout=120)
        print(f"\n{'where':<10} {'what':<34} {'median':>12}  peak RSS")
        for r in rows:
            rss = f"{r['rss_kib'] / 1024:.0f} MiB" if r["rss_kib"] else "-"
            print(f"{r['where']:<10} {r['what']:<34} {r['seconds'] * 1000:9.1f} ms  {rss}")
        if args.json:
            Path(args.json).write_text(json.dumps({"jobs": n, "rows": rows}, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
