"""walq.aconnect: the async producer, through the owner's socket and through the spool."""

from __future__ import annotations

import asyncio

import pytest

import walq


def test_concurrent_enqueues_through_the_owner_share_requests(qdir: str) -> None:
    """300 coroutines get distinct ids from the owner in fewer requests than calls."""

    async def main() -> None:
        async with await walq.aconnect(qdir) as p:
            ids = await asyncio.gather(*(p.enqueue("t", {"i": i}) for i in range(300)))
            many = await p.enqueue_many([("t", 1), ("u", 2, {"priority": 3})])
            assert p.sent["spool"] == 0 and 1 <= p.sent["socket"] < 300
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 300
        assert many is not None and len(many) == 2

    with walq.Queue.open(qdir) as q:
        asyncio.run(main())
        assert q.stats()["pending"] == 302
        jobs = q.claim_many(302)
        assert sorted(j.payload["i"] for j in jobs if isinstance(j.payload, dict)) == list(
            range(300)
        )


def test_a_key_shared_in_one_request_coalesces(qdir: str) -> None:
    """Concurrent enqueues of one key get one job, as one after the other would."""

    async def main() -> list[int | None]:
        async with await walq.aconnect(qdir) as p:
            return await asyncio.gather(*(p.enqueue("t", i, key="k") for i in range(20)))

    with walq.Queue.open(qdir) as q:
        ids = asyncio.run(main())
        assert len(set(ids)) == 1 and q.stats()["pending"] == 1


def test_one_callers_error_is_not_anothers(qdir: str) -> None:
    """A full queue refuses some callers with QueueFull; the others get their ids."""

    async def main() -> list[object]:
        async with await walq.aconnect(qdir) as p:
            with pytest.raises(walq.PayloadError):
                await p.enqueue("t", b"x" * (2 << 20))
            return await asyncio.gather(
                *(p.enqueue("t", i) for i in range(10)), return_exceptions=True
            )

    with walq.Queue.open(qdir, max_pending=4, max_payload=1 << 20) as q:
        results = asyncio.run(main())
        assert sum(isinstance(r, int) for r in results) == 4
        assert all(isinstance(r, walq.QueueFull) for r in results if not isinstance(r, int))
        assert q.stats()["pending"] == 4


def test_without_an_owner_jobs_are_spooled_and_ingested_once(qdir: str) -> None:
    """No owner: enqueue returns None once the spool holds the job; the next owner adds it."""
    walq.Queue.open(qdir).close()  # the directory exists; no owner runs now

    async def main() -> list[int | None]:
        async with await walq.aconnect(qdir) as p:
            got = await asyncio.gather(*(p.enqueue("t", i) for i in range(50)))
            got.append(await p.enqueue("t", "keyed", key="k"))
            got.append(await p.enqueue("t", "again", key="k"))
            assert p.sent["socket"] == 0 and p.sent["spool"] >= 1
            return got

    assert asyncio.run(main()) == [None] * 52
    with walq.Queue.open(qdir) as q:
        assert q.stats()["pending"] == 51
    with walq.Queue.open(qdir) as q:  # ingested exactly once
        assert q.stats()["pending"] == 51


def test_a_closed_producer_refuses(qdir: str) -> None:
    """After close, enqueue raises ClosedError."""

    async def main() -> None:
        p = await walq.aconnect(qdir)
        await p.close()
        with pytest.raises(walq.ClosedError, match="closed"):
            await p.enqueue("t", 1)

    asyncio.run(main())


def test_a_url_is_refused(qdir: str) -> None:
    """aconnect takes a queue directory; an unknown URL is refused like walq.connect."""
    with pytest.raises(walq.ArgumentError, match="unknown URL scheme"):
        asyncio.run(walq.aconnect("nats://host/q"))


def test_after_run_at_and_unique_for_through_the_owner_and_the_spool(qdir: str) -> None:
    """aconnect takes the options of Queue.enqueue, by the socket and by the spool alike."""
    from datetime import datetime, timedelta, timezone

    at = datetime.now(timezone.utc) + timedelta(hours=1)

    async def main(parent: int) -> list[int | None]:
        async with await walq.aconnect(qdir) as p:
            with pytest.raises(walq.ArgumentError, match="naive"):
                await p.enqueue("x", 1, run_at=at.replace(tzinfo=None))
            return [
                await p.enqueue("d", 1, after=[parent], after_policy="always"),
                await p.enqueue("l", 2, run_at=at),
                await p.enqueue("u", 3, key="uk", unique_for=60),
            ]

    with walq.Queue.open(qdir) as q:
        parent = q.enqueue("a", 0)
        ids = asyncio.run(main(parent))
        assert [q.status(i) for i in ids if i is not None] == ["waiting", "scheduled", "pending"]
    ids = asyncio.run(main(parent))  # no owner: spooled
    assert ids == [None, None, None]
    with walq.Queue.open(qdir) as q:
        states = sorted((r["task"], r["status"]) for r in q.jobs())
        twice = [("d", "waiting"), ("l", "scheduled")] * 2
        assert states == sorted([("a", "pending"), ("u", "pending"), *twice])


def test_an_owner_gone_as_the_producer_connects_sends_the_job_to_the_spool(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner killed just as a connection is made: the event loop closes the socket
    under the peer check (EBADF). The job goes to the spool, not to an exception."""
    import errno

    from walq.producers import wire

    def gone(sock: object) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(wire, "peer_uid", gone)

    async def main() -> int | None:
        async with await walq.aconnect(qdir) as p:
            return await p.enqueue("t", "kept")

    with walq.Queue.open(qdir, serve=True):  # an owner answers the socket
        assert asyncio.run(main()) is None  # spooled
    with walq.Queue.open(qdir) as q:  # the next owner takes it in
        job = q.claim()
        assert job is not None and job.payload == "kept"
