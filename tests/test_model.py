"""A stateful test of the Queue against a simple model, with close/reopen and compaction."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import walq
from walq.core.state import Now
from walq.testing.faultfs import SimFileSystem

PATH = "/q"


class Clock:
    def __init__(self) -> None:
        self.wall, self.mono = 1_700_000_000.0, 50.0

    def __call__(self) -> Now:
        return Now(self.wall, self.mono)


class QueueModel(RuleBasedStateMachine):
    """Random operations on a real Queue (in-memory file system) and on a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = SimFileSystem()
        self.clock = Clock()
        self.q = self._open()
        # id -> [status, attempts, payload, key, due (wall) or lease deadline (mono)]
        self.jobs: dict[int, list[Any]] = {}

    def _open(self) -> walq.Queue:
        return walq.Queue.open(
            PATH, fs=self.fs, clock=self.clock, segment_size=4096, compaction=False,
            max_attempts=3, sync="never", serve=False,
        )  # fmt: skip

    def _holder(self, key: str | None) -> int | None:
        for jid, (status, _, _, k, _) in self.jobs.items():
            if key is not None and k == key and status in ("pending", "scheduled", "running"):
                return jid
        return None

    def _tick(self) -> None:
        for job in self.jobs.values():
            due = job[0] == "scheduled" and job[4] <= self.clock.wall
            expired = job[0] == "running" and job[4] <= self.clock.mono
            if due or expired:
                job[0] = "pending"

    @rule(
        payload=st.integers() | st.binary(max_size=40) | st.text(max_size=20),
        key=st.none() | st.sampled_from(["a", "b"]),
        delay=st.sampled_from([0.0, 0.0, 5.0]),
    )
    def enqueue(self, payload: Any, key: str | None, delay: float) -> None:
        self._tick()
        holder = self._holder(key)
        jid = self.q.enqueue("t", payload, key=key, delay=delay)
        if holder is not None:
            assert jid == holder
            return
        assert jid not in self.jobs and all(jid > j for j in self.jobs)
        status = "scheduled" if delay else "pending"
        self.jobs[jid] = [status, 0, payload, key, self.clock.wall + delay]

    @rule()
    def claim(self) -> None:
        self._tick()
        job = self.q.claim(lease=10.0)
        pending = [j for j, v in self.jobs.items() if v[0] == "pending"]
        # A pending job already out of attempts (its last attempt was interrupted)
        # is dead-lettered by the claim that finds it, never handed out.
        for jid in self.jobs:
            if self.q.status(jid) == "dead" and self.jobs[jid][0] == "pending":
                assert self.jobs[jid][1] >= 3
                self.jobs[jid][0] = "dead"
        if job is None:
            assert not [j for j in pending if self.jobs[j][0] == "pending"]
            return
        model = self.jobs[job.id]
        assert job.id in pending and model[1] < 3
        model[1] += 1
        assert (job.payload, job.key, job.attempt) == (model[2], model[3], model[1])
        model[0], model[4] = "running", self.clock.mono + 10.0

    def _running(self) -> list[int]:
        self._tick()
        return [j for j, v in self.jobs.items() if v[0] == "running"]

    @precondition(lambda self: any(v[0] == "running" for v in self.jobs.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["ack", "fail", "permanent", "release"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        running = self._running()
        if not running:
            return
        jid = data.draw(st.sampled_from(running))
        model = self.jobs[jid]
        if outcome == "ack":
            self.q.ack(jid, attempt=model[1])
            model[0] = "done"
        elif outcome == "release":
            self.q.release(jid, attempt=model[1])
            model[0], model[1] = "pending", model[1] - 1
        else:
            status = self.q.fail(jid, "x", permanent=outcome == "permanent", delay=3.0)
            dead = outcome == "permanent" or model[1] >= 3
            assert status == ("dead" if dead else "scheduled")
            model[0] = status
            model[4] = self.clock.wall + 3.0

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        jid = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[jid]
        self._tick()
        if model[0] == "dead":
            return
        assert self.q.cancel(jid) is (model[0] in ("pending", "scheduled", "running"))
        if model[0] in ("pending", "scheduled", "running"):
            model[0] = "cancelled"

    @rule()
    def requeue_dead(self) -> None:
        dead = [j for j, v in self.jobs.items() if v[0] == "dead"]
        if dead:
            self.q.requeue(dead[0])
            self.jobs[dead[0]][0], self.jobs[dead[0]][1] = "pending", 0

    @rule(seconds=st.sampled_from([1.0, 4.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.wall += seconds
        self.clock.mono += seconds

    @rule()
    def reopen(self) -> None:
        self.q.close()
        self.q = self._open()
        for job in self.jobs.values():
            if job[0] == "running":
                job[0] = "pending"

    @rule()
    def crash_and_reopen(self) -> None:
        """kill -9: what reached the kernel survives (sync="never" writes before returning)."""
        self.fs = self.fs.crash(mode="clean")
        self.q = self._open()
        for job in self.jobs.values():
            if job[0] == "running":
                job[0] = "pending"

    @rule()
    def compact(self) -> None:
        self.q.compact()

    @invariant()
    def statuses_and_counts_agree(self) -> None:
        self._tick()
        for jid, (status, *_rest) in self.jobs.items():
            got = self.q.status(jid)
            want = status
            if status == "pending" and self.jobs[jid][1] >= 3:
                want = got if got in ("pending", "dead") else "pending"
            assert got == want, (jid, got, want)
        stats = self.q.stats()
        for name in ("pending", "scheduled", "running"):
            assert stats[name] == sum(1 for v in self.jobs.values() if v[0] == name), name

    def teardown(self) -> None:
        self.q.close()


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
