"""The open path's fused loader replays exactly what the general decoder replays."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import walq
from walq.core.state import Now, TaskCounts
from walq.directory.log import Log
from walq.directory.queue import wall_now
from walq.testing.faultfs import SimFileSystem

_FIXED = wall_now()


def NOW() -> Now:
    """One instant for both opens, so scheduled jobs get the same deadlines."""
    return _FIXED


def build(seed: int, n: int) -> SimFileSystem:
    """A queue with keys, delays, retries, deaths, cancels and releases, then a clean crash."""
    rng = random.Random(seed)
    fs = SimFileSystem()
    q = walq.Queue.open("/q", fs=fs, segment_size=4096, compaction=False, sync="never", serve=False)
    for i in range(n):
        q.enqueue(
            rng.choice(["a", "b", "ç"]),
            rng.choice([{"i": i}, b"\x00" * rng.randint(0, 50), "s"]),
            key=rng.choice([None, None, f"k{rng.randint(0, 5)}"]),
            delay=rng.choice([0.0, 0.0, 100.0]),
            priority=rng.choice([0, 0, 3, -2]),
        )
        if rng.random() < 0.5:
            job = q.claim()
            if job is not None:
                actions: list[Callable[[walq.Job], object]] = [
                    lambda j: q.ack(j.id), lambda j: q.fail(j.id, "e", delay=rng.choice([0, 50])),
                    lambda j: q.release(j.id), lambda j: q.cancel(j.id), lambda j: None,
                ]  # fmt: skip
                rng.choice(actions)(job)
    return fs.crash(mode="clean")


def state_of(fs: SimFileSystem, monkeypatch: Any, fused: bool) -> dict[str, Any]:
    with monkeypatch.context() as m:
        if not fused:
            original = Log.recover

            def general(
                self: Log, *, skip_damage: bool, sink: Any, load: Any = None, resume: Any = None
            ) -> Any:
                return original(self, skip_damage=skip_damage, sink=sink, load=None, resume=resume)

            m.setattr(Log, "recover", general)
        q = walq.Queue.open(
            "/q",
            fs=fs.snapshot(mode="clean"),
            segment_size=4096,
            compaction=False,
            clock=NOW,
            serve=False,
        )
    out = describe(q)
    q.close()
    return out


def describe(q: walq.Queue) -> dict[str, Any]:
    """Everything the state machine holds, and the claim order (which empties the queue)."""
    s = q._state
    return {
        "jobs": dict(s._jobs),
        "keys": dict(s._keys),
        "key_of": dict(s._key_of),
        "next_id": s.next_id,
        "due": dict(s._due),
        "counts": s.counts,
        # A task whose jobs are all done may stay known, with zero counts, until reopened.
        "tasks": {t: c for t, c in s.task_counts().items() if c != TaskCounts()},
        "live": s.live_bytes,
        "order": [j.id for j in iter(q.claim, None)],
    }


@pytest.mark.parametrize("seed", range(3))
def test_fused_loader_matches_the_general_path(seed: int, monkeypatch: Any) -> None:
    """Same jobs, keys, schedules, counts and claim order with and without the fast path."""
    fs = build(seed, 150)
    assert state_of(fs, monkeypatch, True) == state_of(fs, monkeypatch, False)


@given(st.integers(0, 10_000), st.integers(1, 40))
def test_fused_loader_matches_on_random_workloads(seed: int, n: int) -> None:
    """Property form of the above, on small random workloads."""
    fs = build(seed, n)
    mp = pytest.MonkeyPatch()
    try:
        assert state_of(fs, mp, True) == state_of(fs, mp, False)
    finally:
        mp.undo()


@given(st.integers(0, 10_000), st.integers(1, 6))
def test_mixed_batches_build_the_state_that_replay_builds(seed: int, batches: int) -> None:
    """enqueue_many's batch path (mixed tasks, priorities, delays, keys, rolls) matches replay."""
    rng = random.Random(seed)
    fs = SimFileSystem()
    q = walq.Queue.open(
        "/q", fs=fs, segment_size=4096, compaction=False, sync="never", serve=False, clock=NOW
    )
    for _ in range(batches):
        items = [
            (
                rng.choice(["a", "b", "ç"]),
                rng.choice([{"i": 1}, b"\x00" * rng.randint(0, 600), "s"]),
                {
                    "key": rng.choice([None, None, f"k{rng.randint(0, 5)}"]),
                    "delay": rng.choice([0.0, 0.0, 100.0]),
                    "priority": rng.choice([0, 0, 3, -2]),
                },
            )
            for _ in range(rng.randint(1, 30))
        ]
        q.enqueue_many(items)
        job = q.claim() if rng.random() < 0.3 else None
        if job is not None:
            q.ack(job.id)
    disk = fs.snapshot(mode="clean")  # before describe(), whose claims are written
    live = describe(q)
    q.close()
    mp = pytest.MonkeyPatch()
    try:
        assert live == state_of(disk, mp, True)
    finally:
        mp.undo()
