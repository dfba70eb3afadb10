"""The control channel: administrative requests on the owner's socket, and the same without one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import walq
from walq.producers.control import Admin


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def qdir(tmp_path: Path) -> str:
    return str(tmp_path / "q")


@pytest.fixture
def owned(qdir: str) -> Iterator[walq.Queue]:
    """An open queue serving its socket (the owner), with a job in each state."""
    with walq.Queue.open(qdir) as q:
        yield q


def dead_job(q: walq.Queue, task: str = "resize") -> int:
    jid = q.enqueue(task, {"w": 1}, max_attempts=1)
    job = q.claim(tasks=[task])
    assert job is not None and job.id == jid
    q.fail(jid, "boom\ntraceback")
    return jid


class TestThroughTheOwner:
    def test_status_find_and_jobs(self, owned: walq.Queue, qdir: str) -> None:
        a = owned.enqueue("mail", {"to": "a"}, key="mail:1")
        b = owned.enqueue("mail", {"to": "b"})
        c = dead_job(owned)
        admin = walq.connect(qdir).admin
        detail = admin.status(a)
        assert admin.last_route == "owner"
        assert detail["status"] == "pending" and detail["key"] == "mail:1"
        assert detail["attempts"] == 0 and detail["progress"] is None
        assert admin.status(c)["error"] == "boom\ntraceback"
        job = owned.claim(tasks=["mail"])
        assert job is not None
        running = admin.status(job.id)
        assert running["status"] == "running" and running["worker"] == os.getpid()
        assert admin.find("mail:1") == a and admin.find("other") is None
        assert [j["id"] for j in admin.jobs(limit=2)] == [a, b]
        assert [j["id"] for j in admin.jobs(after=b)] == [c]
        assert [j["id"] for j in admin.jobs(state="dead", task="resize")] == [c]
        with pytest.raises(walq.UnknownJobError, match="job 99 does not exist"):
            admin.status(99)
        with pytest.raises(walq.ArgumentError, match="state must be one of"):
            admin.jobs(state="finished")

    def test_dead_requeue_and_purge(self, owned: walq.Queue, qdir: str) -> None:
        a, b = dead_job(owned), dead_job(owned)
        live = owned.enqueue("mail", 1)
        admin = Admin(qdir)
        rows = admin.dead()
        assert [r["id"] for r in rows] == [a, b] and rows[0]["payload"] == '{"w": 1}'
        with pytest.raises(walq.StateError, match=f"job {live} is pending, not dead"):
            admin.requeue([a, live])
        assert owned.status(a) == "dead"  # all or none
        assert admin.requeue([a]) == [a] and owned.status(a) == "pending"
        assert admin.purge([b]) == 1
        with pytest.raises(walq.UnknownJobError):
            owned.status(b)
        assert admin.purge() == 0

    def test_pause_resume_and_stats(self, owned: walq.Queue, qdir: str) -> None:
        owned.enqueue("mail", 1)
        admin = Admin(qdir)
        assert admin.pause("mail") is True and admin.paused() == ["mail"]
        assert owned.claim() is None
        st = admin.stats()
        assert st["pending"] == 1 and st["paused"] == ["mail"] and st["path"] == qdir
        assert admin.resume("mail") is True and owned.claim() is not None

    def test_cancel_of_a_pending_and_a_finished_job(self, owned: walq.Queue, qdir: str) -> None:
        a = owned.enqueue("mail", 1)
        admin = Admin(qdir)
        assert admin.cancel(a) is True and owned.status(a) == "cancelled"
        assert admin.cancel(a) is False

    def test_every_change_is_logged_with_the_peer_uid(
        self, owned: walq.Queue, qdir: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        a = owned.enqueue("mail", 1)
        with caplog.at_level(logging.INFO, logger="walq.admin"):
            Admin(qdir).cancel(a)
            Admin(qdir).pause("mail")
            Admin(qdir).status(a)  # a read: not logged at INFO
        lines = [r.getMessage() for r in caplog.records if r.name == "walq.admin"]
        assert len(lines) == 2
        assert f'admin cancel {{"id": {a}}} by uid {os.geteuid()} (pid {os.getpid()})' in lines[0]
        assert "admin pause" in lines[1]

    def test_a_strangers_uid_is_refused(self, owned: walq.Queue, qdir: str) -> None:
        """The server's peer-uid check refuses the request: nothing is done."""
        a = owned.enqueue("mail", 1)
        server = owned._server
        assert server is not None
        server._uid = os.geteuid() + 1  # the peer's uid is now not the owner's
        with pytest.raises(walq.ProtocolError, match=f"uid {os.geteuid()} may not"):
            Admin(qdir).cancel(a)
        assert owned.status(a) == "pending" and server.counters["refused"] == 1

    def test_cancel_racing_the_jobs_own_ack_keeps_one_outcome(
        self, owned: walq.Queue, qdir: str
    ) -> None:
        admin = Admin(qdir)
        for _ in range(20):
            jid = owned.enqueue("mail", 1)
            job = owned.claim()
            assert job is not None and job.id == jid
            outcome: dict[str, object] = {}

            def ack(job: walq.Job = job, outcome: dict[str, object] = outcome) -> None:
                try:
                    owned.ack(job.id, attempt=job.attempt)
                    outcome["ack"] = True
                except walq.LeaseLost:
                    outcome["ack"] = False

            t = threading.Thread(target=ack)
            t.start()
            cancelled = admin.cancel(jid)
            t.join(10)
            status = owned.status(jid)
            # Exactly one of them took effect, and the state says which.
            assert (cancelled, outcome["ack"], status) in (
                (True, False, "cancelled"),
                (False, True, "done"),
            )
            assert owned.stats()["running"] == 0


class TestWithoutAnOwner:
    def test_the_same_calls_take_the_lock(self, qdir: str) -> None:
        with walq.Queue.open(qdir) as q:
            a = q.enqueue("mail", 1, key="k")
            d = dead_job(q)
        admin = Admin(qdir)
        assert admin.status(a)["status"] == "pending" and admin.last_route == "lock"
        assert admin.find("k") == a
        assert admin.pause("mail") is True
        assert admin.requeue([d]) == [d]
        assert admin.cancel(a) is True
        assert [r["id"] for r in admin.jobs()] == [d]
        with walq.Queue.open(qdir) as q:
            assert q.paused() == ["mail"] and q.status(a) == "cancelled"
            assert q.status(d) == "pending"

    def test_require_owner_says_none_runs(self, qdir: str) -> None:
        walq.Queue.open(qdir).close()
        with pytest.raises(walq.NoOwnerError, match="no owner is running"):
            Admin(qdir, require_owner=True).stats()

    def test_a_missing_queue_is_not_created(self, tmp_path: Path) -> None:
        with pytest.raises(walq.NotAQueueError):
            Admin(str(tmp_path / "none")).stats()
        assert not (tmp_path / "none").exists()


@pytest.mark.redis
def test_admin_on_a_redis_url_acts_on_the_server() -> None:
    from tests.test_contract import REDIS_SKIP, Backend, redis_url

    if REDIS_SKIP is not None:
        pytest.skip(REDIS_SKIP)
    b = Backend("redis", Path("/nonexistent"))
    try:
        with b.open() as q:
            a = q.enqueue("mail", 1, key="k")
        url = f"{redis_url()}{'&' if '?' in (redis_url() or '') else '?'}prefix={b.prefix}"
        admin = Admin(url)
        assert admin.status(a)["status"] == "pending" and admin.find("k") == a
        assert admin.pause("mail") is True and admin.paused() == ["mail"]
        assert admin.cancel(a) is True
        assert admin.stats()["paused"] == ["mail"]
    finally:
        b.cleanup()
