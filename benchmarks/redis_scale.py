"""Scale on Redis: no-op jobs drained by 1, 2 and 4 owner processes, beside RQ and huey.

Run through `python benchmarks/redis_bench.py --scale --url URL [--cluster URL]
[--sentinel URL]`. Each row prefills the jobs and starts N processes; once all
have imported and connected, they start at one instant, and each takes and
finishes jobs until none are left. The figure is all jobs over the time from
that instant to the last process's end, in jobs/s.

- walq claim + ack: one job per call each (every state change a script);
- walq claim_many(100) + ack_many;
- walq on the cluster: each process its own queue (queues spread over the slots);
- RQ (SimpleWorker, burst) and huey (RedisHuey: dequeue + execute) on the same server;
- min_replicas=1 behind Sentinel: what waiting for a replica (WAIT) costs one caller.

The peers are a benchmark extra (`pip install -e '.[bench]'`), never walq's dependencies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAYLOAD = b"x" * 64


def noop() -> None:
    """RQ's job function (imported by its workers from this module)."""


def _huey(url: str) -> Any:
    from huey import RedisHuey
    from redis import ConnectionPool

    return RedisHuey("walq-bench-scale", connection_pool=ConnectionPool.from_url(url))


_HUEY: dict[str, Any] = {}  # url -> (RedisHuey, its no-op task), made once per process


def huey_noop() -> None:
    """huey's task body."""


def _huey_task(url: str) -> Any:
    if url not in _HUEY:
        huey = _huey(url)
        _HUEY[url] = (huey, huey.task(name="noop")(huey_noop))
    return _HUEY[url]


# -- one process's part -----------------------------------------------------------------


def wait_go(ready: Path) -> None:
    """Say this process is ready (imported, connected), then wait for the driver's go."""
    ready.write_text("")
    go = ready.parent / "go"
    while not go.exists():
        time.sleep(0.001)


def drain(kind: str, url: str, ready: Path) -> int:
    """Take and finish jobs of `kind` at `url`, once every process is ready, until none is left."""
    if kind.startswith("walq"):
        from walq.redisq.queue import RedisQueue

        q = RedisQueue.open(url)
        wait_go(ready)
        n = 0
        while True:
            if kind == "walq-one":
                job = q.claim(lease=60.0)
                if job is None:
                    break
                q.ack(job.id, attempt=job.attempt)
                n += 1
            else:
                jobs = q.claim_many(100, lease=60.0)
                if not jobs:
                    break
                q.ack_many([j.id for j in jobs], attempts=[j.attempt for j in jobs])
                n += len(jobs)
        q.close()
        return n
    if kind == "rq":
        from redis import Redis
        from rq import Queue, SimpleWorker

        conn = Redis.from_url(url)
        worker = SimpleWorker([Queue("walq-bench-scale", connection=conn)], connection=conn)
        wait_go(ready)
        worker.work(burst=True, logging_level="WARNING")
        return -1  # RQ 3 keeps no count here: run() checks the queue is empty instead
    if kind == "huey":
        huey, _ = _huey_task(url)
        wait_go(ready)
        n = 0
        while (task := huey.dequeue()) is not None:
            huey.execute(task)
            n += 1
        return n
    raise SystemExit(f"unknown kind {kind}")


# -- the driver -------------------------------------------------------------------------


def prefill(kind: str, url: str, jobs: int) -> None:
    """`jobs` no-op jobs of `kind` at `url`."""
    if kind.startswith("walq"):
        from walq.redisq.queue import RedisQueue

        with RedisQueue.open(url) as q:
            for i in range(0, jobs, 1000):
                q.enqueue_many([("noop", PAYLOAD)] * min(1000, jobs - i))
    elif kind == "rq":
        from redis import Redis
        from rq import Queue

        q = Queue("walq-bench-scale", connection=Redis.from_url(url))
        for i in range(0, jobs, 500):
            q.enqueue_many([Queue.prepare_data(noop) for _ in range(min(500, jobs - i))])
    else:
        _, task = _huey_task(url)
        for _ in range(jobs):
            task()


def run(kind: str, urls: list[str], jobs: int) -> float:
    """Jobs/s of len(urls) processes (process i drains urls[i]) over `jobs` in all."""
    for url in sorted(set(urls)):
        prefill(kind, url, jobs // len(set(urls)))
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(len(urls))]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys, redis_scale; redis_scale.drain_main(sys.argv[1:])",
                    kind,
                    url,
                    str(out),
                ],
                env=dict(os.environ, PYTHONPATH=f"{HERE.parent}{os.pathsep}{HERE}"),
            )
            for url, out in zip(urls, outs, strict=True)
        ]
        readies = [out.with_suffix(".ready") for out in outs]
        while not all(r.exists() for r in readies):  # every process imported and connected
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        t0 = time.time()
        (Path(tmp) / "go").write_text("")
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise RuntimeError(f"{kind}: a process failed ({p.returncode})")
        reports = [json.loads(out.read_text()) for out in outs]
    done = int(sum(r["n"] for r in reports))
    end = float(max(r["end"] for r in reports))
    if kind == "rq":
        from redis import Redis
        from rq import Queue

        left = Queue("walq-bench-scale", connection=Redis.from_url(urls[0])).count
        done = jobs - int(left)
    if done < jobs * 0.99:
        raise RuntimeError(f"{kind}: {done} of {jobs} jobs done")
    return done / (end - t0)


def walq_url(base: str, name: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}prefix={name}"


def replicas_cost(url: str, seconds: float) -> list[tuple[str, float, float]]:
    """(row, jobs/s without WAIT, with min_replicas=1) for one caller behind Sentinel."""
    from walq.redisq.queue import RedisQueue

    out = []
    for row in ("enqueue, one caller", "claim + ack, one job each"):
        rates = []
        for replicas in (0, 1):
            with RedisQueue.open(
                walq_url(url, f"walq-bench-wait-{uuid.uuid4().hex[:8]}"), min_replicas=replicas
            ) as q:
                if row.startswith("claim"):
                    q.enqueue_many([("noop", PAYLOAD)] * 20000)
                n, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds:
                    if row.startswith("enqueue"):
                        q.enqueue("noop", PAYLOAD)
                    else:
                        job = q.claim(lease=60.0)
                        if job is None:
                            break
                        q.ack(job.id, attempt=job.attempt)
                    n += 1
                rates.append(n / elapsed)
                q.purge()
        out.append((row, rates[0], rates[1]))
    return out


def wipe(url: str) -> None:
    """Delete every key the scale rows wrote (walq's prefixes, RQ's and huey's)."""
    from walq.redisq.connection import connect
    from walq.redisq.url import parse_url

    client = connect(parse_url(url), 10.0)
    for pattern in ("{walq-bench-*", "rq:*", "huey.*walq-bench-scale*"):
        names = list(client.scan_iter(match=pattern, count=1000))
        for name in names:  # one by one: on a cluster they live in many slots
            client.delete(name)
    client.close()


def scale(url: str, cluster: str | None, sentinel: str | None, jobs: int) -> None:
    """Print the scale table (and what min_replicas=1 costs, given Sentinel)."""
    owners = (1, 2, 4)
    rows: list[tuple[str, list[float]]] = []
    tag = uuid.uuid4().hex[:6]
    for label, kind, base in (
        ("walq claim + ack, 1 queue", "walq-one", url),
        ("walq claim_many(100) + ack_many, 1 queue", "walq-many", url),
    ):
        rows.append(
            (label, [run(kind, [walq_url(base, f"walq-bench-{tag}-{kind}-{n}")] * n, jobs)
                     for n in owners])
        )  # fmt: skip
    if cluster:
        rows.append(
            (
                "walq claim + ack, cluster, 1 queue per process",
                [
                    run(
                        "walq-one",
                        [walq_url(cluster, f"walq-bench-{tag}-c{n}-{i}") for i in range(n)],
                        jobs,
                    )
                    for n in owners
                ],
            )
        )
    for label, kind in (("RQ SimpleWorker (burst)", "rq"), ("huey RedisHuey", "huey")):
        rows.append((label, [run(kind, [url] * n, jobs) for n in owners]))
        wipe(url)
    print(f"# no-op jobs, {jobs} per row, drained by N processes; jobs/s")
    print(f"| row | {' | '.join(f'{n} process' + ('es' if n > 1 else '') for n in owners)} |")
    print("|---|" + "---:|" * len(owners))
    for label, rates in rows:
        print(f"| {label} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
    if sentinel:
        print("\n# behind Sentinel (a primary and one replica), one caller; jobs/s")
        print("| row | min_replicas=0 | min_replicas=1 | cost |")
        print("|---|---:|---:|---:|")
        for row, plain, waited in replicas_cost(sentinel, 2.0):
            print(f"| {row} | {plain:,.0f} | {waited:,.0f} | {1 - waited / plain:.0%} |")
    wipe(url)
    if cluster:
        wipe(cluster)


def drain_main(argv: list[str]) -> None:
    """One owner process: drain(kind, url), its count and end time written to `out`."""
    kind, url, out = argv[0], argv[1], argv[2]
    n = drain(kind, url, Path(out).with_suffix(".ready"))
    Path(out).write_text(json.dumps({"n": n, "end": time.time()}))


if __name__ == "__main__":
    raise SystemExit("run it through: python benchmarks/redis_bench.py --scale --url URL")
