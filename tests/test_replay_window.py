"""Replay reads each segment a window at a time (walq.directory.recovery.REPLAY_WINDOW).

Windows of a few bytes put record and header boundaries, torn tails and damage
across window edges: the fuzz and power-loss explorations must find exactly
what they find with whole-file reads.
"""

from __future__ import annotations

import pytest

import walq
from tools import fuzz, powerloss
from walq.directory import recovery
from walq.directory.segment import Segment
from walq.testing.faultfs import SimFileSystem


@pytest.fixture(params=[7, 64, 1000])
def window(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    size: int = request.param
    monkeypatch.setattr(recovery, "REPLAY_WINDOW", size)
    return size


def test_a_fuzz_slice_in_small_windows_finds_nothing(window: int) -> None:
    report = fuzz.fuzz(60, seed=20261204 + window, corpus=fuzz.build_corpus(), time_limit_s=60)
    assert report.cases >= 30
    assert not report.failing, [(i, m.steps, p) for i, m, p in report.failing[:3]]


def test_power_loss_in_small_windows_finds_no_violation(window: int) -> None:
    report = powerloss.explore(300, seed=20261204 + window, time_limit=60)
    assert report.crash_states >= 100
    assert not report.violations, report.violations[:3]


def test_a_record_larger_than_the_window_is_read_whole(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload of 10,000 bytes (larger than every window here) replays intact, and a
    clean log is replayed in windows only: no segment is read whole."""
    fs = SimFileSystem()

    def reopen() -> walq.Queue:
        return walq.Queue.open("/q", fs=fs, segment_size=1 << 16, compaction=False, serve=False)

    with reopen() as q:
        q.enqueue_many([("t", bytes([i]) * 10_000) for i in range(5)])
        first = q.claim()
        assert first is not None
        q.ack(first.id)

    def whole(self: Segment) -> bytes:
        raise AssertionError(f"{self.path} read whole")

    monkeypatch.setattr(Segment, "read_all", whole)
    with reopen() as q:
        got = []
        while (job := q.claim()) is not None:
            got.append(job.payload)
        assert got == [bytes([i]) * 10_000 for i in range(1, 5)]
