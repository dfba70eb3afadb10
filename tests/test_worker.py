"""The worker pool, with real processes: every fault is recorded, nothing leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import walq
from tests import procs, worker_tasks
from tests.procs import wait_for
from walq.worker.pool import Worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path: Path) -> Iterator[None]:
    """After every test: no child of this process it started and no process naming its
    directory (a process an earlier module left behind is that module's failure, not each
    of these tests')."""
    before = procs.descendants(os.getpid())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [p for p in procs.descendants(os.getpid()) - before if _alive(p)]
        strays = procs.naming(str(tmp_path), zombies=True)
        if not left and not strays:
            return
        time.sleep(0.1)
    pytest.fail(f"leftover processes: {left} {strays}")


def _alive(pid: int) -> bool:
    """A live process other than multiprocessing's resource tracker (one per owner, by design)."""
    proc = procs.read(pid)
    if proc is None or "resource_tracker" in proc.cmd:
        return False
    if proc.state == "Z":
        # A zombie is a leak only if nobody reaps it; the test process reaps its own.
        os.waitpid(pid, os.WNOHANG)
        return Path(f"/proc/{pid}").exists()
    return True


def run_until_done(q: walq.Queue, worker: Worker, timeout: float = 30.0) -> int:
    """Run the worker until no job is unfinished, then stop it; return run()'s code."""
    result: list[int] = []

    def stopper() -> None:
        deadline = time.monotonic() + timeout
        while q.stats()["unfinished"] and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.stop()

    t = threading.Thread(target=stopper)
    t.start()
    result.append(worker.run())
    t.join()
    return result[0]


def ledger_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


@pytest.fixture
def q(qdir: str) -> Iterator[walq.Queue]:
    with walq.Queue.open(qdir) as queue:
        yield queue


@pytest.fixture(params=list(worker_tasks.REGISTRIES))
def kind(request: pytest.FixtureRequest) -> str:
    """How the handlers are defined: "def" or "async def" (the worker promises the same)."""
    return str(request.param)


@pytest.fixture
def registry(kind: str) -> walq.Tasks:
    """The test handlers, as plain functions or as coroutines."""
    return worker_tasks.REGISTRIES[kind]


def test_jobs_run_in_worker_processes_and_are_acked(
    q: walq.Queue, tmp_path: Path, registry: walq.Tasks
) -> None:
    """Every job runs once, in a worker process (not the owner), and ends done."""
    ledger = tmp_path / "ledger"
    ids = q.enqueue_many([("ok", {"ledger": str(ledger), "n": i}) for i in range(50)])
    assert run_until_done(q, Worker(q, registry, processes=2)) == 0
    lines = ledger_lines(ledger)
    assert sorted(int(line[0]) for line in lines) == ids
    assert {int(line[2]) for line in lines} - {os.getpid()} == {int(line[2]) for line in lines}
    assert all(q.status(i) == "done" for i in ids)


def test_exception_is_recorded_with_type_message_and_traceback(
    q: walq.Queue, registry: walq.Tasks
) -> None:
    """A handler's exception lands in the fail event: dead after max_attempts, error kept."""
    jid = q.enqueue("raises", {"n": 42})
    run_until_done(q, Worker(q, registry, processes=1, retry_budget=None))
    (dead,) = q.dead_jobs()
    assert dead.id == jid and dead.attempts == 2
    assert "[exception]" in dead.error and "builtins.ValueError: bad value 42" in dead.error
    assert "Traceback (most recent call last)" in dead.error and "worker_tasks.py" in dead.error


def test_permanent_error_is_dead_at_once(q: walq.Queue, registry: walq.Tasks) -> None:
    """walq.Permanent dead-letters on the first attempt."""
    q.enqueue("permanent", {})
    run_until_done(q, Worker(q, registry, processes=1))
    (dead,) = q.dead_jobs()
    assert dead.attempts == 1 and "can never work" in dead.error


def test_worker_exit_is_a_recorded_failure_and_the_pool_goes_on(
    q: walq.Queue, tmp_path: Path, registry: walq.Tasks
) -> None:
    """os._exit in a handler: the job fails with the exit code, the worker is replaced."""
    ledger = tmp_path / "ledger"
    bad = q.enqueue("exits", {})
    good = q.enqueue_many([("ok", {"ledger": str(ledger)}) for _ in range(10)])
    w = Worker(q, registry, processes=1)
    run_until_done(q, w)
    (dead,) = q.dead_jobs()
    assert dead.id == bad and "[exit]" in dead.error and "code 7" in dead.error
    assert all(q.status(i) == "done" for i in good)
    assert w.counters["crashes"] == 2 and w.counters["spawned"] >= 3


def test_worker_killed_by_a_signal_names_the_signal(q: walq.Queue, registry: walq.Tasks) -> None:
    """A worker killed by SIGKILL (as by the OOM killer) is recorded with the signal's name."""
    q.enqueue("segfaults", {})
    run_until_done(q, Worker(q, registry, processes=1))
    (dead,) = q.dead_jobs()
    assert "[signal]" in dead.error and "SIGKILL" in dead.error


def test_handler_past_its_timeout_is_killed_and_replaced(
    q: walq.Queue, registry: walq.Tasks
) -> None:
    """A hung handler is killed at its timeout; the failure says timeout."""
    q.enqueue("hangs", {})
    after = q.enqueue("ok", {})
    started = time.monotonic()
    w = Worker(q, registry, processes=1, kill_grace=0.5)
    run_until_done(q, w)
    (dead,) = q.dead_jobs()
    assert "[timeout]" in dead.error and "timeout of 0.5 s" in dead.error
    assert q.status(after) == "done"
    assert w.counters["timeouts"] == 2
    assert time.monotonic() - started < 20


def test_handler_ignoring_sigterm_is_sigkilled_after_the_grace(
    q: walq.Queue, registry: walq.Tasks
) -> None:
    """The timeout kill is a SIGKILL: a handler that ignores SIGTERM cannot refuse to die."""
    q.enqueue("ignores_sigterm", {})
    w = Worker(q, registry, processes=1, kill_grace=0.3)
    run_until_done(q, w)
    (dead,) = q.dead_jobs()
    assert "[timeout]" in dead.error


def test_workers_are_recycled_after_max_tasks_per_child(
    q: walq.Queue, tmp_path: Path, registry: walq.Tasks
) -> None:
    """After max_tasks_per_child jobs a worker exits and a fresh one takes over."""
    ledger = tmp_path / "ledger"
    q.enqueue_many([("ok", {"ledger": str(ledger)}) for _ in range(9)])
    w = Worker(q, registry, processes=1, max_tasks_per_child=3)
    run_until_done(q, w)
    pids = [line[2] for line in ledger_lines(ledger)]
    assert len(pids) == 9 and len(set(pids)) == 3
    assert w.counters["recycled"] >= 2


def test_memory_cap_kills_a_leaking_worker(q: walq.Queue, registry: walq.Tasks) -> None:
    """A worker over max_memory is killed; the failure says memory."""
    q.enqueue("leaks", {})
    w = Worker(q, registry, processes=1, max_memory=200 << 20, kill_grace=0.5)
    run_until_done(q, w)
    (dead,) = q.dead_jobs()
    assert "[memory]" in dead.error
    assert w.counters["memory"] == 1


def test_cancelling_a_running_job_kills_its_process(
    q: walq.Queue, tmp_path: Path, registry: walq.Tasks
) -> None:
    """cancel() of a running job stops it (its process killed, or its coroutine cancelled);
    the job ends cancelled."""
    ledger = tmp_path / "ledger"
    jid = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 20})
    w = Worker(q, registry, processes=1)

    def cancel_when_started() -> None:
        while not ledger_lines(ledger):
            time.sleep(0.02)
        q.cancel(jid)

    threading.Thread(target=cancel_when_started).start()
    started = time.monotonic()
    run_until_done(q, w)
    assert q.status(jid) == "cancelled"
    assert time.monotonic() - started < 15
    assert [line[3] for line in ledger_lines(ledger)] == ["start"]


# -- coroutine tasks only: many jobs at once on one event loop --------------------------------


def test_coroutines_run_side_by_side_up_to_async_concurrency(q: walq.Queue, tmp_path: Path) -> None:
    """One process runs coroutine jobs at once, never more than async_concurrency."""
    ledger = tmp_path / "ledger"
    ids = q.enqueue_many([("sleeps", {"ledger": str(ledger), "seconds": 0.3}) for _ in range(40)])
    w = Worker(q, worker_tasks.atasks, processes=1, async_concurrency=8)
    assert run_until_done(q, w) == 0
    running = peak = 0
    for line in ledger_lines(ledger):
        running += 1 if line[3] == "start" else -1
        peak = max(peak, running)
    assert 2 <= peak <= 8  # side by side (a sync worker: 1), capped
    assert all(q.status(i) == "done" for i in ids) and w.counters["spawned"] == 1


def test_a_coroutine_blocking_the_loop_is_killed_and_its_neighbours_retried(
    q: walq.Queue, tmp_path: Path
) -> None:
    """A coroutine that blocks the event loop cannot be cancelled: the process is killed
    kill_grace after its timeout, the cause is timeout; a job beside it runs again."""
    ledger = tmp_path / "ledger"
    blocker = q.enqueue("blocks_loop", {"ledger": str(ledger)})
    beside = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 0.2})
    w = Worker(q, worker_tasks.atasks, processes=1, kill_grace=0.5)
    started = time.monotonic()
    run_until_done(q, w)
    (dead,) = q.dead_jobs()
    assert (
        dead.id == blocker and "[timeout]" in dead.error and "blocking the event loop" in dead.error
    )
    assert q.status(beside) == "done" and w.counters["timeouts"] == 1
    assert time.monotonic() - started < 20


def test_cancelling_a_running_coroutine_leaves_its_neighbours_running(
    q: walq.Queue, tmp_path: Path
) -> None:
    """cancel() of a running coroutine job cancels the coroutine, not its process."""
    ledger = tmp_path / "ledger"
    jid = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 20})
    beside = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 1.5})
    w = Worker(q, worker_tasks.atasks, processes=1)

    def cancel_when_started() -> None:
        while len(ledger_lines(ledger)) < 2:
            time.sleep(0.02)
        q.cancel(jid)

    threading.Thread(target=cancel_when_started).start()
    run_until_done(q, w)
    assert q.status(jid) == "cancelled" and q.status(beside) == "done"
    assert w.counters["spawned"] == 1 and w.counters["crashes"] == 0
    ends = [line for line in ledger_lines(ledger) if line[3] == "end"]
    assert [int(line[0]) for line in ends] == [beside]


def test_a_coroutine_returning_an_awaitable_fails_and_is_never_done(
    q: walq.Queue, tmp_path: Path
) -> None:
    """An async def handler returning a coroutine (not awaiting it) is a failed attempt."""
    ledger = tmp_path / "ledger"
    jid = q.enqueue("returns_coroutine", {"ledger": str(ledger)})
    run_until_done(q, Worker(q, worker_tasks.atasks, processes=1))
    (dead,) = q.dead_jobs()
    assert dead.id == jid and "returned a coroutine" in dead.error and "await it" in dead.error
    assert dead.attempts == 1 and len(ledger_lines(ledger)) == 1


def test_stale_result_is_dropped_not_applied(q: walq.Queue) -> None:
    """A result for an attempt that lost its lease never flips the job's state."""
    from walq.core.job import Job
    from walq.worker.outcomes import Outcome

    jid = q.enqueue("ok", {})
    w = Worker(q, worker_tasks.tasks, processes=1)
    job = q.claim()
    assert job is not None
    q.cancel(jid)
    w._runtime["ok"].running = 1
    w._record(
        [Outcome(Job(id=jid, task="ok", payload={}, attempt=1), worker_tasks.tasks["ok"], True)]
    )
    assert q.status(jid) == "cancelled" and w.counters["stale"] == 1


def owner(qdir: str, *extra: str, kind: str = "def") -> subprocess.Popen[str]:
    """`walq worker` on the test handlers defined the `kind` way, one worker process."""
    spec = worker_tasks.SPECS[kind]
    cmd = [sys.executable, "-m", "walq", "worker", qdir, "--tasks", spec,
           "--processes", "1", *extra]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def one_at_a_time(kind: str) -> list[str]:
    """The option that has a worker process run one job at a time, whatever `kind`."""
    return ["--async-concurrency", "1"] if kind == "async def" else []


def owner_running_a_job(
    qdir: str, ledger: Path, *, seconds: float, kind: str
) -> tuple[int, subprocess.Popen[str]]:
    """A job sleeping `seconds`, and an owner (`walq worker`) that has started it."""
    with walq.Queue.open(qdir) as q:
        jid = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": seconds})
    proc = owner(qdir, kind=kind)
    wait_for(lambda: ledger_lines(ledger))
    return jid, proc


def test_sigterm_drains_the_job_in_flight_then_exits_zero(
    qdir: str, tmp_path: Path, kind: str
) -> None:
    """SIGTERM mid-job: no new claims, the running job finishes, exit code 0."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        first = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 1.0})
        second = q.enqueue("ok", {"ledger": str(ledger)}, delay=0.5)
    # `second` is not handed to the busy worker ahead (nor run beside `first`).
    proc = owner(qdir, "--prefetch", "1", *one_at_a_time(kind), kind=kind)
    wait_for(lambda: ledger_lines(ledger))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    with walq.Queue.open(qdir) as q:
        assert q.status(first) == "done"
        assert q.status(second) == "pending"  # never claimed after the signal


def test_sigterm_gives_back_prefetched_jobs_unstarted(qdir: str, tmp_path: Path, kind: str) -> None:
    """SIGTERM: a job queued behind the running one in its worker is released, not started."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        warm = q.enqueue_many([("ok", {"ledger": str(ledger)}) for _ in range(3)])
    proc = owner(qdir, "--prefetch", "8", *one_at_a_time(kind), kind=kind)
    # Short jobs finished first: the worker now prefetches behind a running job.
    wait_for(lambda: len(ledger_lines(ledger)) >= len(warm))
    with walq.connect(qdir) as producer:
        ids = producer.enqueue_many(
            [("sleeps", {"ledger": str(ledger), "seconds": 2.0}), ("ok", {"ledger": str(ledger)})]
        )
    assert ids is not None  # the owner answered: not spooled
    slow, queued = ids
    wait_for(lambda: any(line[3] == "start" for line in ledger_lines(ledger)))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    with walq.Queue.open(qdir) as q:
        assert q.status(slow) == "done"
        assert q.status(queued) == "pending", out  # given back, never started
        job = q.claim(tasks=["ok"])
        assert job is not None and job.id == queued and job.attempt == 1  # not charged


def test_second_signal_skips_the_wait_and_releases_the_job(
    qdir: str, tmp_path: Path, kind: str
) -> None:
    """A second SIGTERM stops at once; the unfinished job is released uncharged, not lost."""
    jid, proc = owner_running_a_job(qdir, tmp_path / "ledger", seconds=20, kind=kind)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 1, out
    with walq.Queue.open(qdir) as q:
        assert q.status(jid) == "pending"
        job = q.claim()
        assert job is not None and job.attempt == 1


def test_kill_9_of_the_owner_mid_job_then_restart_completes_it(
    qdir: str, tmp_path: Path, kind: str
) -> None:
    """The owner dies with kill -9 mid-job; its workers die too; a restart finishes the job."""
    ledger = tmp_path / "ledger"
    jid, proc = owner_running_a_job(qdir, ledger, seconds=0.8, kind=kind)
    proc.kill()
    proc.communicate(timeout=10)
    proc = owner(qdir, kind=kind)
    wait_for(lambda: [line for line in ledger_lines(ledger) if line[3] == "end"])
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    with walq.Queue.open(qdir) as q:
        assert q.status(jid) == "done"
    attempts = [line[1] for line in ledger_lines(ledger) if line[3] == "start"]
    assert attempts == ["1", "2"]


def test_poison_job_that_kills_the_owner_is_dead_after_max_attempts(
    qdir: str, tmp_path: Path, kind: str
) -> None:
    """A job that SIGKILLs the owner is charged each restart, then dead; neighbours finish."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        poison = q.enqueue("kills_owner", {"ledger": str(ledger)})
        good = q.enqueue_many([("ok", {"ledger": str(ledger)}) for _ in range(5)])
    for _ in range(6):
        proc = owner(qdir, kind=kind)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            lines = ledger_lines(ledger)
            poisoned = [i for i, line in enumerate(lines) if line[3] == "poison"]
            # Coroutines beside the poison job run too, and are charged: only the
            # runs after its last attempt, in a later worker process, count.
            after = lines[poisoned[-1] + 1 :] if len(poisoned) == 3 else []
            pid = lines[poisoned[-1]][2] if after else ""
            ran = {int(line[0]) for line in after if line[3] == "ran" and line[2] != pid}
            if ran == set(good):
                break  # the poison job is dead-lettered and the rest ran
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
            break
        proc.communicate(timeout=5)  # killed by the poison job: restart it
    with walq.Queue.open(qdir) as q:
        assert q.status(poison) == "dead"
        (dead,) = q.dead_jobs()
        assert "interrupted" in dead.error and dead.attempts == 3
        assert all(q.status(i) == "done" for i in good)
    assert len([line for line in ledger_lines(ledger) if line[3] == "poison"]) == 3


def test_file_queue_leases_are_renewed_while_a_long_job_runs(
    q: walq.Queue, tmp_path: Path, registry: walq.Tasks
) -> None:
    """A job four times longer than the lease runs once (the heartbeat renews its lease)."""
    ledger = tmp_path / "ledger"
    jid = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 4})
    w = Worker(q, registry, processes=1, lease=1.0)
    assert run_until_done(q, w, timeout=60) == 0
    starts = [line for line in ledger_lines(ledger) if line[3] == "start"]
    assert [(int(x[0]), int(x[1])) for x in starts] == [(jid, 1)]
    assert q.status(jid) == "done" and q.stats()["expired"] == 0
    assert w.counters["ok"] == 1 and w.counters["lease_lost"] == 0 and w.counters["stale"] == 0


def test_the_leftover_check_reads_command_lines_that_are_not_utf8(tmp_path: Path) -> None:
    """Any process on the host may have a non-UTF-8 command line: it is read, not fatal."""
    marker = str(tmp_path)
    cmd = [
        sys.executable.encode(),
        b"-c",
        b"import time; time.sleep(60)",
        os.fsencode(marker) + b"\xff",
    ]
    proc = subprocess.Popen(cmd)
    try:
        wait_for(lambda: procs.naming(marker))
        assert all("\ufffd" in line for line in procs.naming(marker))
        assert proc.pid in procs.descendants(os.getpid())
    finally:
        proc.kill()
        proc.wait()
