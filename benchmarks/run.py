"""walq's benchmark harness: one command, one table, everything on the same disk.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME ...] [--dir DIR]

Rows: the disk's own limits, the peers (each in its most durable mode), walq
through its public API, worker pools, and walq's targets as ratios to the
baselines measured in the same run. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import disk_limits
import peers
import walq_rows
from benchutil import (
    FULL,
    KIB,
    QUICK,
    Row,
    Settings,
    machine,
    mount_of,
    python_command,
    reason,
    time_limit,
)

DISK, PEERS, WALQ, POOL, TARGETS = "disk limits", "peers", "walq", "worker pool", "targets"

Collect = Callable[[Path], dict[str, list[float]]]


@dataclass
class Bench:
    """Rows measured together: `collect` runs once per round and returns samples by key.

    Benches take part in `rounds` rounds, run round-robin, so that a noisy
    neighbour slows every subject alike instead of one subject's whole series.
    Benches with a costly setup (a file or queue to fill) repeat inside one round.
    """

    tags: frozenset[str]
    rows: list[Row]
    collect: Collect
    rounds: int
    timeout: float
    describe: Callable[[Path], str] | None = None
    failed: bool = False


def single(key: str, fn: Callable[[Path], float]) -> Collect:
    return lambda path: {key: [fn(path)]}


def in_file(fn: Callable[[Path, Settings], float], s: Settings, path: Path) -> float:
    """`fn` run on a file named f in the row's directory."""
    return fn(path / "f", s)


def nothing(path: Path) -> dict[str, list[float]]:
    return {}


# -- the rows ------------------------------------------------------------------------


def disk_benches(s: Settings) -> Iterator[Bench]:
    frames = disk_limits.FRAMES_PER_SYNC
    simple = [
        (
            "fdatasync_append",
            "write + fdatasync 1 KiB, appending",
            "rec/s",
            disk_limits.fdatasync_append,
        ),
        (
            "fdatasync_prealloc",
            "pwrite + fdatasync 1 KiB, preallocated file",
            "rec/s",
            disk_limits.fdatasync_prealloc,
        ),
        (
            "seq_bandwidth",
            f"sequential write {s.seq_bytes >> 20} MiB + one fsync",
            "MB/s",
            disk_limits.sequential_bandwidth,
        ),
        (
            "framing",
            "frame 1 KiB records (header + crc32c), no IO",
            "rec/s",
            disk_limits.framing_floor,
        ),
        (
            "frame_group_commit",
            f"frame + write {frames} records per fdatasync",
            "rec/s",
            disk_limits.framed_group_commit,
        ),
        (
            "park_wake",
            f"minimal park-and-wake committer, {s.threads} threads",
            "rec/s",
            disk_limits.park_wake_committer,
        ),
        (
            "handoff",
            "thread hand-off (two threads pass a lock), no IO",
            "/s",
            disk_limits.thread_handoff,
        ),
    ]
    for key, label, unit, fn in simple:
        row = Row(f"disk.{key}", DISK, label, unit)
        collect = single(row.key, functools.partial(in_file, fn, s))
        yield Bench(frozenset({"disk"}), [row], collect, s.repeats, s.timeout)

    def read_loop(path: Path) -> dict[str, list[float]]:
        framed = path / "framed"
        disk_limits.write_framed_file(framed, s.replay_n)
        return {"disk.read_loop": [disk_limits.read_rate(framed, s.replay_n) for _ in range(3)]}

    label = f"read + check {s.replay_n:,} framed records"
    row = Row("disk.read_loop", DISK, label, "rec/s", note="warm page cache")
    yield Bench(frozenset({"disk", "replay"}), [row], read_loop, 1, s.timeout)


def queue_benches(spec: peers.PeerSpec, section: str, prefix: str, s: Settings) -> Iterator[Bench]:
    """The rows every queue gets: enqueue 1 and N threads, batch, get+ack, disk bytes."""
    tags = frozenset({section, spec.name})

    def bench(
        metric: str,
        label: str,
        fn: Callable[[peers.PeerSpec, Path, Settings], float] | None,
        *,
        note: str = "",
        unit: str = "jobs/s",
        rounds: int = s.repeats,
    ) -> Bench:
        row = Row(f"{prefix}.{metric}", section, f"{spec.label}: {label}", unit, note=note)
        collect = nothing if fn is None else single(row.key, lambda p: fn(spec, p, s))
        return Bench(tags, [row], collect, rounds, s.timeout)

    first = bench("enqueue_1t", "enqueue, 1 thread", peers.enqueue_rate)
    durability = "durable" if spec.durable else "NOT durable"
    first.describe = lambda p: f"{durability}: {peers.describe(spec, p)}"
    yield first
    model = "one instance per thread" if spec.per_thread else "one shared instance"
    label = f"enqueue, {s.threads} threads"
    yield bench("enqueue_16t", label, peers.threaded_enqueue_rate, note=model)
    if spec.batch:
        label = f"batch enqueue, {s.batch} per batch"
        yield bench("batch", label, peers.batch_rate, note=spec.batch)
    else:
        yield bench("batch", "batch enqueue", None, note="no batch API", rounds=1)
    label = f"get+ack, backlog {s.backlog}"
    yield bench("get_ack", label, peers.get_ack_rate, note=spec.get_ack)
    label = f"disk after {s.steady_cycles} enqueue/ack cycles"
    live = f"live data {s.backlog * KIB / 1e6:.2f} MB; measured while open"
    yield bench("disk_mb", label, peers.steady_disk_mb, note=live, unit="MB", rounds=1)


def peer_benches(s: Settings) -> Iterator[Bench]:
    for spec in peers.PEERS:
        yield from queue_benches(spec, PEERS, f"peer.{spec.name}", s)


def batch_claim_benches(s: Settings) -> Iterator[Bench]:
    """The batched claim, walq's and the sqlite3 table's, side by side (like for like)."""
    row = Row("walq.claim_many", WALQ, f"walq: claim_many({s.batch}) + ack_many", "jobs/s")
    collect = single(row.key, partial(walq_rows.claim_many_rate, s=s))
    yield Bench(frozenset({WALQ}), [row], collect, s.repeats, s.timeout)
    row = Row(
        "peer.sqlite3.claim_many",
        PEERS,
        f"sqlite3 table: claim {s.batch} in one transaction + ack {s.batch} in one",
        "jobs/s",
        note="SELECT + UPDATE, then DELETE: 2 commits per batch, as walq",
    )
    collect = single(row.key, partial(peers.sqlite_claim_many_rate, s=s))
    yield Bench(frozenset({"peers", "sqlite3"}), [row], collect, s.repeats, s.timeout)


def walq_benches(s: Settings) -> Iterator[Bench]:
    yield from queue_benches(walq_rows.WALQ, WALQ, "walq", s)
    row = Row(
        "walq.enqueue_16t_never",
        WALQ,
        f'walq sync="never": enqueue, {s.threads} threads',
        "jobs/s",
        note="NOT durable: no fsync at all; a ceiling for the durable row",
    )
    spec = walq_rows.WALQ_NEVER
    collect = single(row.key, lambda p: peers.threaded_enqueue_rate(spec, p, s))
    yield Bench(frozenset({WALQ}), [row], collect, s.repeats, s.timeout)
    n_co = f"{walq_rows.ASYNC_COROUTINES:,}"
    row = Row(
        "walq.enqueue_async",
        WALQ,
        f"walq.AsyncQueue: durable enqueue, {n_co} coroutines",
        "jobs/s",
        note='sync="always"; one loop, one committer thread',
    )
    collect = single(row.key, partial(walq_rows.async_enqueue_rate, s=s))
    yield Bench(frozenset({WALQ, "async"}), [row], collect, s.repeats, s.timeout)
    yield from batch_claim_benches(s)

    n = f"{s.replay_n:,}"
    rows = [
        Row("walq.fill", WALQ, f"walq: enqueue_many {n} jobs (fill for replay)", "jobs/s"),
        Row(
            "walq.replay_rate",
            WALQ,
            f"walq: open/replay {n} pending",
            "jobs/s",
            note="fresh process each run",
        ),
        Row("walq.replay_seconds", WALQ, f"walq: open/replay {n} pending", "s"),
        Row(
            "walq.replay_rss_per_job",
            WALQ,
            "walq: RSS growth during open, per pending job",
            "B/job",
            note="(peak RSS - RSS before open) / N",
        ),
        Row("walq.replay_rss_peak", WALQ, "walq: peak RSS of the reopening process", "MB"),
    ]
    collect = partial(walq_rows.replay, s=s)
    yield Bench(frozenset({WALQ, "replay"}), rows, collect, 1, 3 * s.timeout)


def pool_benches(s: Settings) -> Iterator[Bench]:
    jobs = f"{s.pool_jobs:,} no-op jobs"
    for n in (1, 2):
        walq_row = Row(
            f"pool.walq_{n}",
            POOL,
            f"walq.Worker processes={n}, {jobs}",
            "jobs/s",
            note="first to last completion, all acked",
        )
        huey_row = Row(
            f"pool.huey_{n}",
            POOL,
            f"huey_consumer -k process -w {n}, {jobs}",
            "jobs/s",
            note="first to last completion; SqliteHuey(fsync=True)",
        )
        cpu_row = Row(
            f"pool.walq_{n}_owner_cpu",
            POOL,
            f"walq.Worker processes={n}: the owner's CPU per job",
            "us/job",
            note="owner process CPU time (all its threads, not the workers') / jobs",
        )
        huey_fn = partial(walq_rows.huey_pool_rate, s=s, workers=n)
        timeout = s.timeout + 60

        def walq_pool(path: Path, n: int = n) -> dict[str, list[float]]:
            out = walq_rows.walq_pool(path, s, processes=n)
            return {f"pool.walq_{n}": [out["rate"]], f"pool.walq_{n}_owner_cpu": [out["cpu"]]}

        yield Bench(
            frozenset({"pool", WALQ}),
            [walq_row, cpu_row],
            walq_pool,
            s.pool_repeats,
            timeout,
        )
        yield Bench(
            frozenset({"pool", "huey"}),
            [huey_row],
            single(huey_row.key, huey_fn),
            s.pool_repeats,
            timeout,
        )
    ajobs = f"{s.pool_jobs * walq_rows.ASYNC_POOL_FACTOR:,}"
    coroutine_rows = [
        (n, "noop", Row(f"pool.walq_async_{n}", POOL,
                        f"walq.Worker processes={n}, {ajobs} async def no-op jobs", "jobs/s",
                        note="async_concurrency=100 per process; all acked"))
        for n in (1, 2)
    ]  # fmt: skip
    coroutine_rows.append((2, "sleep50", Row(
        "pool.walq_async_sleep_2", POOL,
        f"walq.Worker processes=2, {ajobs} jobs awaiting asyncio.sleep(0.05)", "jobs/s",
        note="I/O-bound; async_concurrency=100 per process",
    )))  # fmt: skip
    for n, task, row in coroutine_rows:
        cpu_row = Row(
            f"{row.key}_owner_cpu", POOL, f"{row.label}: the owner's CPU per job", "us/job",
            note="owner process CPU time (all its threads, not the workers') / jobs",
        )  # fmt: skip

        def coroutine_pool(
            path: Path, n: int = n, task: str = task, key: str = row.key
        ) -> dict[str, list[float]]:
            out = walq_rows.walq_pool(path, s, processes=n, registry="atasks", task=task)
            return {key: [out["rate"]], f"{key}_owner_cpu": [out["cpu"]]}

        yield Bench(
            frozenset({"pool", "async-pool", WALQ}),
            [row, cpu_row],
            coroutine_pool,
            s.pool_repeats,
            s.timeout + 60,
        )


# -- targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str
    key: str  # the walq row
    baseline: str  # a row key; "best:<metric>" = best durable peer; "" = absolute bound
    goal: float
    strict: bool = False  # ratio must exceed the goal, not just reach it
    at_most: bool = False  # the walq figure itself must stay at or below the goal
    # (baseline "" and not at_most: the walq figure itself must reach the goal)


TARGET_LIST = [
    Target("enqueue, 1 thread / prealloc fdatasync loop", "walq.enqueue_1t",
           "disk.fdatasync_prealloc", 0.8),
    Target("enqueue, 1 thread / best durable peer: {best}", "walq.enqueue_1t",
           "best:enqueue_1t", 1.0, strict=True),
    Target("enqueue, 16 threads / best durable peer: {best}", "walq.enqueue_16t",
           "best:enqueue_16t", 10),
    Target("async enqueue, 1,000 coroutines / best durable peer, 16 threads: {best}",
           "walq.enqueue_async", "best:enqueue_16t", 10),
    Target("async enqueue, 1,000 coroutines / walq enqueue, 16 threads", "walq.enqueue_async",
           "walq.enqueue_16t", 3),
    Target("enqueue_many / frame+write 512 per fdatasync", "walq.batch",
           "disk.frame_group_commit", 0.4),
    Target("enqueue, 16 threads / minimal park-and-wake committer", "walq.enqueue_16t",
           "disk.park_wake", 0.8),
    # Like for like: one at a time against one at a time, batched against batched.
    Target("claim + ack, one at a time / best durable peer get+ack: {best}", "walq.get_ack",
           "best:get_ack", 1.5),
    Target("claim_many+ack_many / sqlite3 table, batched claim", "walq.claim_many",
           "peer.sqlite3.claim_many", 2),
    Target("open/replay / bare read loop", "walq.replay_rate", "disk.read_loop", 0.25),
    Target("RSS growth per pending job", "walq.replay_rss_per_job", "", 200, at_most=True),
    Target("pool, 1 process / huey -w 1", "pool.walq_1", "pool.huey_1", 2),
    Target("pool, 2 processes / huey -w 2", "pool.walq_2", "pool.huey_2", 2),
    Target("pool, async def no-op, 1 process / def no-op, 1 process", "pool.walq_async_1",
           "pool.walq_1", 5),
    Target("pool, async def no-op, 2 processes / def no-op, 2 processes", "pool.walq_async_2",
           "pool.walq_2", 5),
    Target("pool, await asyncio.sleep(0.05), 2 processes (jobs/s)", "pool.walq_async_sleep_2",
           "", 2000),
]  # fmt: skip


def baseline(name: str, rows: dict[str, Row]) -> tuple[Row | None, str]:
    """The baseline's row and what it is ("best:<metric>": the best durable peer's row)."""
    if not name.startswith("best:"):
        row = rows.get(name)
        return (row, row.label) if row and row.samples else (None, name)
    metric = name.removeprefix("best:")
    best: tuple[Row | None, str] = (None, "no durable peer measured")
    for spec in peers.PEERS:
        row = rows.get(f"peer.{spec.name}.{metric}")
        value = row.median if row else None
        better = best[0] is None or (value is not None and value > (best[0].median or 0.0))
        if spec.durable and row and value is not None and better:
            best = (row, spec.label)
    return best


def ratio(walq: Row, base: Row) -> float | None:
    """walq's figure over its baseline: the median of the per-round ratios.

    The rows run round-robin, so sample i of each comes from the same round;
    a busy spell on a shared machine then weighs on both sides of a ratio.
    Rows measured a different number of times fall back to the ratio of medians.
    """
    if walq.samples and len(walq.samples) == len(base.samples) and all(base.samples):
        return statistics.median(a / b for a, b in zip(walq.samples, base.samples, strict=True))
    w, b = walq.median, base.median
    return w / b if w is not None and b else None


def evaluate(target: Target, rows: dict[str, Row]) -> Row:
    """The target's row: walq's figure over its baseline (or alone), met or missed."""
    walq_value = rows[target.key].median
    if not target.baseline:
        value, unit, label = walq_value, rows[target.key].unit, target.label
        goal = f"goal {'<=' if target.at_most else '>='} {target.goal:g}"
    else:
        base_row, base_name = baseline(target.baseline, rows)
        value = ratio(rows[target.key], base_row) if base_row is not None else None
        unit, label = "x", target.label.format(best=base_name)
        goal = f"goal {'>' if target.strict else '>='} {target.goal:g}x"
    out = Row(f"target.{target.key}.{target.baseline or 'bound'}", TARGETS, label, unit)
    if walq_value is None:
        out.note = "n/a (no walq figure)"
    elif value is None:
        out.note = "n/a (no baseline figure)"
    else:
        out.samples = [value]
        out.note = f"{goal}: {'MET' if met(target, value) else 'missed'}"
    return out


def met(target: Target, value: float) -> bool:
    if target.at_most:
        return value <= target.goal
    return value > target.goal if target.strict else value >= target.goal


# -- output --------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = ("section", "measurement", "median", "unit", "range (min..max)", "n", "notes")
    lines = []
    for row in rows:
        value = fmt(row.median) if row.samples else ("n/a" if row.note.startswith("n/a") else "-")
        spread = f"{fmt(min(row.samples))}..{fmt(max(row.samples))}" if len(row.samples) > 1 else ""
        n = str(len(row.samples)) if row.samples and row.section != TARGETS else ""
        lines.append((row.section, row.label, value, row.unit, spread, n, row.note))
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head) - 1)]
    right = {2, 4, 5}

    def render(cells: tuple[str, ...]) -> str:
        pairs = enumerate(zip(cells[:-1], widths, strict=True))
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        return "  ".join([*out, cells[-1]]).rstrip()

    rule = "  ".join("-" * w for w in widths) + "  -----"
    body, previous = [], None
    for line in lines:
        if previous is not None and line[0] != previous:
            body.append("")
        body.append(render(line))
        previous = line[0]
    return "\n".join([render(head), rule, *body])


def header(info: dict[str, str], command: str, date: str, s: Settings) -> str:
    mode = "quick" if s.quick else "full"
    return "\n".join(
        [
            f"walq benchmarks ({mode})  {date}",
            f"command     {command}",
            f"cpu         {info['cpu']}; cores: {info['cores']}",
            f"kernel      {info['kernel']}",
            f"filesystem  {info['filesystem']}  (bench dir {info['bench_dir']})",
            f"python      {info['python']}, SQLite {info['sqlite']}",
            f"packages    {info['packages']}",
            f"method      median of n runs; {s.duration:g} s per time-bounded run;"
            " 1 KiB payloads; records framed with a 16-byte header + CRC32C",
            "",
        ]
    )


# -- main ----------------------------------------------------------------------------


def all_benches(s: Settings) -> list[Bench]:
    return [*disk_benches(s), *peer_benches(s), *walq_benches(s), *pool_benches(s)]


def run_round(bench: Bench, path: Path, first: bool) -> None:
    """One round of one bench; on any error its rows become "n/a (reason)" for good."""
    path.mkdir()
    try:
        with time_limit(bench.timeout):
            if first and bench.describe:
                described = bench.describe(path / "describe")
                bench.rows[0].note = "; ".join(p for p in (described, bench.rows[0].note) if p)
            results = bench.collect(path)
    except Exception as exc:
        bench.failed = True
        for row in bench.rows:
            row.samples, row.note = [], f"n/a ({reason(exc)})"
        return
    finally:
        shutil.rmtree(path, ignore_errors=True)
    for row in bench.rows:
        row.samples += results.get(row.key, [])


def run_all(benches: list[Bench], base: Path) -> None:
    rounds = max((b.rounds for b in benches), default=0)
    for r in range(rounds):
        for i, bench in enumerate(benches):
            if r >= bench.rounds or bench.failed:
                continue
            started = time.monotonic()
            run_round(bench, base / f"{r}-{i:03d}", first=r == 0)
            elapsed = time.monotonic() - started
            label = bench.rows[0].label
            print(f"[round {r + 1}/{rounds}] {label}: {elapsed:.1f} s", file=sys.stderr)


def parse_args(argv: list[str], names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI profile (under 2 minutes)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every row here")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=names,
        help=f"run only rows tagged NAME: {', '.join(names)}",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path.cwd(),
        help="where the scratch directory goes (default: current directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def scratch_dir(parent: Path) -> Path:
    """A fresh directory under `parent`; SystemExit if `parent` is in memory."""
    fstype = mount_of(parent)[1]
    if fstype in {"tmpfs", "ramfs"}:
        print(
            f"{parent} is on {fstype}: fsync costs nothing there. Use --dir on a disk.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    base = Path(tempfile.mkdtemp(prefix=".walq-bench-", dir=parent))
    (base / ".gitignore").write_text("*\n")  # invisible to git status while it exists
    return base


def main(argv: list[str]) -> int:
    names = sorted({tag for bench in all_benches(QUICK) for tag in bench.tags})
    args = parse_args(argv, names)
    s = QUICK if args.quick else FULL
    base = scratch_dir(args.dir)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    command, info = python_command(), machine(base)
    benches = [b for b in all_benches(s) if not args.only or b.tags & set(args.only)]
    started = time.monotonic()
    try:
        run_all(benches, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    rows = [row for bench in benches for row in bench.rows]
    by_key = {row.key: row for row in rows}
    rows += [evaluate(t, by_key) for t in TARGET_LIST if t.key in by_key]
    print(header(info, command, date, s))
    print(table(rows))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        rows_out = [row.as_dict() for row in rows]
        report = {"date": date, "command": command, "settings": asdict(s), "machine": info}
        args.json.write_text(json.dumps({**report, "rows": rows_out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
