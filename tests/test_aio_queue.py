"""AsyncQueue: the backend contract suite run through it, and its group commit's durability.

The contract tests are tests/test_contract.py's own (TestContract, imported,
not copied), run here against a synchronous adapter: each call runs the
AsyncQueue's coroutine on an event loop in a thread and waits for it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import walq
from tests import test_contract
from tests.test_contract import REDIS_SKIP, SKIP_REDIS, TestContract, need_redis
from walq.aio import AsyncQueue
from walq.testing.faultfs import SimFile, SimFileSystem

__all__ = ["TestContract"]  # collected here too, with this module's fixtures


class LoopThread:
    """An event loop running in a thread; `run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class SyncAdapter:
    """The synchronous Queue API over an AsyncQueue: what the contract tests call."""

    def __init__(self, aq: AsyncQueue, runner: LoopThread) -> None:
        self._aq = aq
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._aq, name)
        if not inspect.iscoroutinefunction(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(value(*args, **kwargs))

        return call

    def __enter__(self) -> SyncAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncBackend(test_contract.Backend):
    """test_contract's Backend, each queue opened as an AsyncQueue behind SyncAdapter."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        super().__init__(kind, tmp_path)
        self.runner = LoopThread()

    def open(self, **opts: Any) -> Any:
        if self.kind == "file":
            opts.setdefault("segment_size", 64 * 1024)
            target = self.dir
        else:
            url = test_contract.redis_url()
            assert url is not None
            target = f"{url}{'&' if '?' in url else '?'}prefix={self.prefix}"
        return SyncAdapter(self.runner.run(AsyncQueue.open(target, **opts)), self.runner)


@pytest.fixture(
    params=[
        "file",
        pytest.param(
            "redis",
            marks=[pytest.mark.redis, pytest.mark.skipif(SKIP_REDIS, reason=REDIS_SKIP or "")],
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AsyncBackend]:
    if request.param == "redis":
        need_redis()
    b = AsyncBackend(request.param, tmp_path)
    yield b
    b.cleanup()
    b.runner.stop()


@pytest.fixture
def q(backend: AsyncBackend) -> Iterator[Any]:
    queue = backend.open()
    yield queue
    queue.close()


def test_every_backend_call_is_a_coroutine_with_the_same_parameters() -> None:
    """AsyncQueue offers each QueueBackend method as a coroutine taking the same arguments."""
    for name in dir(walq.QueueBackend):
        member = getattr(walq.QueueBackend, name)
        if name.startswith("_") or not callable(member):
            continue
        mine = getattr(AsyncQueue, name)
        assert inspect.iscoroutinefunction(mine), name
        a = inspect.signature(member).parameters
        b = inspect.signature(mine).parameters
        assert [(p.name, p.kind, p.default) for p in a.values()] == [
            (p.name, p.kind, p.default) for p in b.values()
        ], name


# -- the group commit ----------------------------------------------------------------------


class GatedSync:
    """Holds every fdatasync of a SimFileSystem's files until a permit is given.

    The gate sits inside the file's sync, after the log has chosen what the
    sync covers: an append made while a sync is held is not covered by it.
    """

    def __init__(self, fs: SimFileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
        self.permits = threading.Semaphore(0)
        self.begun = 0
        real = SimFile.sync

        def sync(file: SimFile) -> None:
            if file._fs is not fs:  # another disk (a crash's): not held
                real(file)
                return
            self.begun += 1
            assert self.permits.acquire(timeout=60)
            real(file)

        monkeypatch.setattr(SimFile, "sync", sync)


def open_sim(fs: SimFileSystem) -> walq.Queue:
    return walq.Queue.open("/q", fs=fs, serve=False, compaction=False)


async def open_gated(
    fs: SimFileSystem, monkeypatch: pytest.MonkeyPatch
) -> tuple[AsyncQueue, GatedSync]:
    aq = AsyncQueue(open_sim(fs), asyncio.get_running_loop())
    return aq, GatedSync(fs, monkeypatch)


async def until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def durable_ids(fs: SimFileSystem) -> set[int]:
    """The job ids a power cut now would keep (only what was synced survives)."""
    with open_sim(fs.snapshot(mode="durable")) as q:
        return {jid for jid in range(1, 1000) if _exists(q, jid)}


def _exists(q: walq.Queue, jid: int) -> bool:
    try:
        q.status(jid)
    except walq.UnknownJobError:
        return False
    return True


def test_an_enqueue_is_resolved_only_after_a_sync_begun_after_its_append(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync already under way when a job is appended does not resolve that job."""

    async def main() -> None:
        fs = SimFileSystem()
        aq, gate = await open_gated(fs, monkeypatch)
        first = asyncio.ensure_future(aq.enqueue("t", 1))
        await until(lambda: gate.begun == 1)  # the committer holds first's batch
        later = [asyncio.ensure_future(aq.enqueue("t", i)) for i in range(2, 6)]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(f.done() for f in later)
        assert durable_ids(fs) == set()
        gate.permits.release()  # the first sync may now run
        assert await first == 1
        assert 1 in durable_ids(fs)
        assert not any(f.done() for f in later), "resolved by a sync that began before them"
        gate.permits.release()
        assert [await f for f in later] == [2, 3, 4, 5]
        assert durable_ids(fs) == {1, 2, 3, 4, 5}
        assert aq.commits == 2
        await aq.close()

    asyncio.run(main())


def test_a_power_cut_before_the_sync_loses_only_unresolved_enqueues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every enqueue resolved before the cut survives it; the unresolved may not."""

    async def main() -> None:
        fs = SimFileSystem()
        aq, gate = await open_gated(fs, monkeypatch)
        resolved: list[int] = []
        granted = 0
        for _ in range(3):  # three rounds made durable, the committer let through as it asks
            batch = [asyncio.ensure_future(aq.enqueue("t", i)) for i in range(20)]
            while not all(f.done() for f in batch):
                if gate.begun > granted:
                    granted += 1
                    gate.permits.release()
                await asyncio.sleep(0.001)
            resolved += [f.result() for f in batch]
        pending = [asyncio.ensure_future(aq.enqueue("t", i)) for i in range(20)]
        await until(lambda: gate.begun > granted)  # a sync waits, not let through
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in pending)
        after_cut = durable_ids(fs.crash(mode="durable"))
        assert len(resolved) == 60 and set(resolved) <= after_cut
        assert after_cut == set(resolved)  # the unresolved were appended, never synced
        for f in pending:
            f.cancel()
        gate.permits.release()  # the held sync now meets the dead file system

    asyncio.run(main())


def test_a_thousand_concurrent_enqueues_share_few_commits_and_all_are_durable() -> None:
    """1,000 coroutines enqueue durably: far fewer syncs than jobs, every id synced."""

    async def main(path: str) -> None:
        async with await AsyncQueue.open(path) as aq:
            ids = await asyncio.gather(*(aq.enqueue("t", b"x" * 1024) for _ in range(1000)))
            assert sorted(ids) == list(range(1, 1001))
            assert 1 <= aq.commits < 500
            stats = await aq.stats()
            assert stats["pending"] == 1000

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(d + "/q"))


def test_a_failed_sync_fails_the_whole_batch() -> None:
    """If the fdatasync fails, every enqueue of its batch raises, none reports durable."""

    async def main() -> None:
        fs = SimFileSystem()
        aq = AsyncQueue(open_sim(fs), asyncio.get_running_loop())
        fs.inject("sync", times=None)
        results = await asyncio.gather(
            *(aq.enqueue("t", i) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, walq.LogFailedError) for r in results), results
        with pytest.raises(walq.LogFailedError):
            await aq.enqueue("t", 11)
        fs.clear_faults()

    asyncio.run(main())


def test_a_waiting_claim_leaves_the_loop_free_and_wakes_on_enqueue(tmp_path: Path) -> None:
    """claim(timeout=) waits on the loop: other coroutines run; an enqueue wakes it."""

    async def main() -> None:
        async with await AsyncQueue.open(str(tmp_path / "q"), threads=1) as aq:
            waiting = [asyncio.ensure_future(aq.claim(timeout=30)) for _ in range(4)]
            ticks = 0
            for _ in range(20):
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20 and not any(w.done() for w in waiting)
            ids = await aq.enqueue_many([("t", i) for i in range(4)])
            jobs = await asyncio.wait_for(asyncio.gather(*waiting), 30)
            assert sorted(j.id for j in jobs if j is not None) == ids

    asyncio.run(main())


def test_results_follow_ups_and_dependencies_as_coroutines(tmp_path: Path) -> None:
    """result() waits on the loop; ack(result=, enqueue=) and enqueue(after=) work as in Queue."""

    async def main() -> None:
        async with await walq.AsyncQueue.open(str(tmp_path / "q")) as q:
            a = await q.enqueue("a", 1)
            b = await q.enqueue("b", 2, after=[a])
            assert await q.status(b) == "waiting"
            waiter = asyncio.ensure_future(q.result(a, timeout=30))
            job = await q.claim()
            assert job is not None and job.id == a
            await q.ack(a, result={"n": 1}, enqueue=[("c", 3)])
            assert await waiter == {"n": 1}
            job = await q.claim(tasks=["b"])
            assert job is not None and job.parents == {a: {"n": 1}}
            with pytest.raises(walq.ResultTimeout):
                await q.result(b, timeout=0.05)
            assert (await q.stats())["pending"] == 1  # the follow-up job c

    asyncio.run(main())
