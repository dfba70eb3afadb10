"""Schedules under a real `python -m walq worker`: killed -9 and restarted, two owners on Redis.

A tick is enqueued exactly once: no two jobs hold the same tick's key. With
misfire="all" no tick is lost across a kill; with "skip" the ticks that fell
during the downtime are not run.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import walq
from walq.core.schedule import parse_tick_key
from walq.ops.dump import Dumper

from .procs import wait_for
from .test_contract import REDIS_SKIP, SKIP_REDIS, need_redis, redis_url

ROOT = Path(__file__).resolve().parent.parent


def start(target: str, misfire: str, ledger: Path | None = None) -> subprocess.Popen[str]:
    """`python -m walq worker TARGET` with the one-schedule tasks module, in its own group."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), WALQ_TEST_MISFIRE=misfire)
    if ledger is not None:
        env["WALQ_TEST_LEDGER"] = str(ledger)
    return subprocess.Popen(
        [sys.executable, "-m", "walq", "worker", target, "--tasks", "tests.sched_tasks:tasks",
         "-p", "1", "--create", "--shutdown-grace", "5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill(proc: subprocess.Popen[str], sig: int) -> str:
    """Signal the process group of a worker this test started, as a service manager does."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    return out


def tick_keys(path: str) -> list[str]:
    """The keys of every tick job ever enqueued in the queue at `path` (log order)."""
    return [
        row["key"]
        for row in Dumper(payload=False).rows(path)
        if row.get("type") == "enqueue" and str(row.get("key", "")).startswith("schedule:")
    ]


def ticks(keys: list[str]) -> list[float]:
    out = []
    for key in keys:
        parsed = parse_tick_key(key)
        assert parsed is not None and parsed[0] == "beat"
        out.append(parsed[1])
    return out


@pytest.mark.parametrize("misfire", ["all", "skip"])
def test_kill_9_and_restart_enqueues_each_tick_once(tmp_path: Path, misfire: str) -> None:
    """Killed -9 twice and stopped: no tick twice; "all" loses none, "skip" runs none missed."""
    path = str(tmp_path / "q")
    walq.Queue.open(path, serve=False).close()
    for round_ in range(3):
        proc = start(path, misfire)
        try:
            want = len(tick_keys(path)) + 3
            wait_for(lambda: len(tick_keys(path)) >= want)  # noqa: B023 - called at once
        finally:
            out = kill(proc, signal.SIGKILL if round_ < 2 else signal.SIGTERM)
        if round_ == 2:
            assert proc.returncode == 0, out
        time.sleep(3.5)  # downtime: a few ticks fall while no owner runs
    keys = tick_keys(path)
    assert len(keys) == len(set(keys)), "a tick was enqueued twice"
    seen = ticks(keys)
    assert seen == sorted(seen)
    steps = [round(b - a) for a, b in itertools.pairwise(seen)]
    if misfire == "all":
        assert set(steps) == {1}, f"a tick was lost: steps {steps}"
    else:
        assert max(steps) >= 3, f"missed ticks were run: steps {steps}"


@pytest.mark.redis
@pytest.mark.skipif(SKIP_REDIS, reason=REDIS_SKIP or "")
def test_two_owners_on_redis_enqueue_each_tick_once(tmp_path: Path) -> None:
    """Two workers with the same schedule on one Redis queue: each tick is one job."""
    need_redis()
    import uuid

    import redis

    url = redis_url()
    assert url is not None
    from walq.redisq.url import key_prefix

    name = f"walqtest-{uuid.uuid4().hex[:12]}"
    target = f"{url}{'&' if '?' in url else '?'}prefix={name}"
    prefix = key_prefix(name)  # P: the queue's keys are P:...
    ledger = tmp_path / "ledger"
    procs = [start(target, "all", ledger) for _ in range(2)]
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    try:
        wait_for(lambda: int(client.hget(f"{prefix}:n", "enqueued") or 0) >= 8)
    finally:
        outs = [kill(p, signal.SIGTERM) for p in procs]
    try:
        assert all(p.returncode == 0 for p in procs), outs
        enqueued = int(client.hget(f"{prefix}:n", "enqueued") or 0)
        ran = ledger.read_text().split()
        waiting = list(client.hkeys(f"{prefix}:keys"))
        keys = ran + waiting
        assert len(keys) == len(set(keys)) == enqueued, "a tick was enqueued twice"
        seen = sorted(ticks(keys))
        assert {round(b - a) for a, b in itertools.pairwise(seen)} == {1}, "a tick was lost"
        assert seen[-1] == float(client.hget(f"{prefix}:sched", "beat"))
    finally:
        names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if names:
            client.delete(*names)
        client.close()


def test_the_schedules_doc_examples_run(tmp_path: Path) -> None:
    """docs/SCHEDULES.md's worker example, saved as a script: ticks run, SIGTERM drains,
    the schedules are listed (tests/test_doc_examples.py runs every block; this one
    checks what the worker did)."""
    import json

    from tests.test_doc_examples import python_blocks

    blocks = python_blocks(ROOT / "docs" / "SCHEDULES.md")
    assert "# runs until stopped" in blocks[0]
    qdir = tmp_path / "jobs"  # the example's ./jobs
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = tmp_path / "app.py"
    script.write_text(blocks[0])
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    status = qdir / "worker-status.json"

    def ran(n: int) -> bool:
        try:
            return int(json.loads(status.read_text())["counters"]["ok"]) >= n
        except (OSError, ValueError, KeyError):
            return False

    try:
        wait_for(lambda: ran(3))  # heartbeat ticks
    finally:
        out = kill(proc, signal.SIGTERM)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "tick schedule:heartbeat@" in out
    listed = subprocess.run(
        [sys.executable, "-m", "walq", "schedules", str(qdir)],
        check=False, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    names = [line.split(":")[0] for line in listed.stdout.splitlines()]
    assert names == ["heartbeat", "nightly-report"]
