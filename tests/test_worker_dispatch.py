"""The dispatcher's promises under real process managers and slow starts.

Handlers that return unfinished work, a process-group SIGTERM, prefetched jobs
against the policies, slow or failing imports in worker processes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import walq
from tests import slow_tasks, worker_tasks
from tests.procs import start_worker, wait_for
from tests.test_doc_examples import python_blocks
from tests.test_worker import ROOT, kind, ledger_lines, no_leftover_processes, run_until_done
from walq.worker.pool import Worker

__all__ = ["kind", "no_leftover_processes"]  # the autouse fixture applies here too


@pytest.fixture
def q(qdir: str) -> Iterator[walq.Queue]:
    with walq.Queue.open(qdir) as queue:
        yield queue


# -- handlers whose work is not done when they return -----------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("async def h(payload, job):\n    yield 1", "an async generator function"),
        ("def h(payload, job):\n    yield 1", "a generator function"),
    ],
)
def test_registering_a_handler_whose_body_would_not_run_fails(source: str, kind: str) -> None:
    """@tasks.task refuses generator functions, async or not, naming the task."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    tasks = walq.Tasks()
    with pytest.raises(walq.ArgumentError, match=f"task 'mail': 'h' is {kind}"):
        tasks.task("mail")(namespace["h"])
    assert "mail" not in tasks


def test_a_handler_returning_a_coroutine_fails_and_is_never_done(
    q: walq.Queue, tmp_path: Path
) -> None:
    """A coroutine returned by a plain function is a failed attempt with its cause, not done."""
    ledger = tmp_path / "ledger"
    jid = q.enqueue("returns_coroutine", {"ledger": str(ledger)})
    run_until_done(q, Worker(q, slow_tasks.tasks, processes=1))
    assert q.status(jid) == "dead"
    (dead,) = q.dead_jobs()
    assert "returned a coroutine" in dead.error and "never ran" in dead.error
    assert dead.attempts == 1 and len(ledger_lines(ledger)) == 1


# -- a process-group SIGTERM (systemd's KillMode=control-group, timeout(1)) -------------


def test_group_sigterm_lets_the_running_handler_finish_then_exits_zero(
    qdir: str, tmp_path: Path, kind: str
) -> None:
    """`kill -TERM -- -PGID` reaches the workers too: they survive it, the owner drains
    (two plain handlers on two processes, or twenty coroutines on their event loops)."""
    ledger = tmp_path / "ledger"
    count = 2 if kind == "def" else 20
    with walq.Queue.open(qdir) as q:
        ids = q.enqueue_many(
            [("sleeps", {"ledger": str(ledger), "seconds": 2.0}) for _ in range(count)]
        )
    cmd = [sys.executable, "-m", "walq", "worker", qdir, "--tasks", worker_tasks.SPECS[kind],
           "--processes", "2", "--shutdown-grace", "60"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # setsid: its own process group, as under systemd
    )  # fmt: skip
    try:
        # Every job started (the second worker process may start late on a busy host).
        wait_for(
            lambda: sum(line[3] == "start" for line in ledger_lines(ledger)) >= count, timeout=60
        )
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out
    # Each handler ran to its end, once, on its first attempt.
    lines = sorted((int(line[0]), line[1], line[3]) for line in ledger_lines(ledger))
    assert lines == sorted((i, "1", what) for i in ids for what in ("start", "end"))
    with walq.Queue.open(qdir) as q:
        assert all(q.status(i) == "done" for i in ids) and q.dead_jobs() == []
        assert q.stats()["failed"] == 0  # nothing charged


# -- prefetched jobs and the policies ----------------------------------------------------


def test_a_job_on_its_last_attempt_is_never_prefetched(qdir: str, tmp_path: Path) -> None:
    """An owner killed (kill -9 of its process group) while one job runs charges no job
    with max_attempts=1 that the worker held unstarted: such a job waits for an idle
    worker, so an owner's death cannot dead-letter it without its ever running."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        # Fast jobs first: the pool learns that jobs are short, and prefetches.
        q.enqueue_many([("ok", {"ledger": str(ledger)}) for _ in range(5)])
        slow = q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 60.0})
        once = q.enqueue_many(
            [("ok", {"ledger": str(ledger)}, {"max_attempts": 1}) for _ in range(10)]
        )
        # Another task's jobs with an attempt to spare (a refused job holds back its
        # task's jobs for the round, in order).
        twice = q.enqueue_many([("double", {"n": 1}, {"max_attempts": 2}) for _ in range(3)])
    proc = start_worker(qdir, worker_tasks.SPECS["def"], ROOT, "--processes", "1")
    try:
        wait_for(lambda: any(line[3] == "start" for line in ledger_lines(ledger)), timeout=60)
        # Give the owner time for the rounds that would prefetch behind the slow job.
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    ran = {int(line[0]) for line in ledger_lines(ledger)}
    with walq.Queue.open(qdir) as q:
        assert q.status(slow) == "pending"  # charged: it started
        for jid in once:
            assert jid in ran or (q.status(jid) == "pending" and q._state.info(jid).attempts == 0)
        assert q.dead_jobs() == []
        # Jobs with attempts to spare are still prefetched: the worker held some.
        charged = [
            jid for jid in twice if q.status(jid) == "pending" and q._state.info(jid).attempts == 1
        ]
        assert charged, "no job was prefetched behind the slow one"


def test_prefetched_jobs_do_not_start_past_an_open_breaker(q: walq.Queue, tmp_path: Path) -> None:
    """prefetch=8, breaker failures=3, one process: exactly 3 attempts, the rest uncharged."""
    ledger = tmp_path / "ledger"
    ids = q.enqueue_many([("fails_fast", {"ledger": str(ledger)}) for _ in range(16)])
    w = Worker(q, slow_tasks.tasks, processes=1, prefetch=8)
    wait = {"done": False}

    def stop_when_open() -> None:
        wait_for(lambda: w.status()["tasks"]["fails_fast"]["breaker"] == "open", timeout=60)
        time.sleep(1.0)  # anything still queued in the worker would run meanwhile
        w.stop()
        wait["done"] = True

    import threading

    t = threading.Thread(target=stop_when_open)
    t.start()
    w.run()
    t.join()
    assert wait["done"]
    assert len(ledger_lines(ledger)) == 3
    charged = [q._state.info(i).attempts for i in ids]
    assert sum(charged) == 3 and q.stats()["dead"] == 0


def test_rate_limit_holds_while_worker_processes_start(
    q: walq.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rate=2/s: jobs are handed only to started workers, so starts never bunch."""
    monkeypatch.setenv("WALQ_TEST_IMPORT_DELAY", "1.0")
    ledger = tmp_path / "ledger"
    q.enqueue_many([("rate_2", {"ledger": str(ledger)}) for _ in range(5)])
    run_until_done(q, Worker(q, slow_tasks.tasks, processes=3), timeout=60)
    times = sorted(float(line[3]) for line in ledger_lines(ledger))
    assert len(times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.25, gaps  # 0.5 s apart, less scheduling jitter


# -- start-up: its own limit, never a job's ----------------------------------------------


def test_timeout_counts_from_the_handler_not_the_worker_start(
    q: walq.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.5 s import, a 1.5 s handler, a 2 s timeout: done on the first attempt."""
    monkeypatch.setenv("WALQ_TEST_IMPORT_DELAY", "1.5")
    ledger = tmp_path / "ledger"
    jid = q.enqueue("needs_1_5_s", {"ledger": str(ledger)})
    w = Worker(q, slow_tasks.tasks, processes=1)
    run_until_done(q, w, timeout=60)
    assert q.status(jid) == "done"
    assert w.counters["timeouts"] == 0
    assert [line[1] for line in ledger_lines(ledger)] == ["1", "1"]


def test_a_start_past_start_timeout_stops_the_worker_charging_nothing(
    q: walq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WALQ_TEST_IMPORT_DELAY", "30")
    jid = q.enqueue("noop", {})
    w = Worker(q, slow_tasks.tasks, processes=2, start_timeout=1.0)
    with pytest.raises(walq.WorkerStartError, match=r"within start_timeout \(1 s\)"):
        w.run()
    assert q.status(jid) == "pending" and q._state.info(jid).attempts == 0
    assert w.counters["spawned"] == 1


def test_a_task_module_failing_at_import_stops_with_one_clear_error(
    q: walq.Queue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The child's traceback is logged once; no job is charged; no crash loop."""
    monkeypatch.setenv("WALQ_TEST_IMPORT_FAIL", "1")
    jid = q.enqueue("noop", {})
    w = Worker(q, slow_tasks.tasks, processes=3)
    with (
        caplog.at_level(logging.ERROR, logger="walq.worker"),
        pytest.raises(walq.WorkerStartError, match="RuntimeError: boom at import"),
    ):
        w.run()
    tracebacks = [r for r in caplog.records if "Traceback (most recent call last)" in r.message]
    assert len(tracebacks) == 1 and "slow_tasks.py" in tracebacks[0].message
    assert q.status(jid) == "pending" and q._state.info(jid).attempts == 0
    assert w.counters["spawned"] == 1


def test_a_script_without_a_main_guard_stops_with_one_error(tmp_path: Path) -> None:
    """The README snippet without `if __name__ == "__main__":`: one error naming the cause."""
    script = tmp_path / "app.py"
    qdir = tmp_path / "q"
    script.write_text(
        textwrap.dedent(f"""
        import walq
        from tests.worker_tasks import tasks

        with walq.Queue.open({str(qdir)!r}) as q:
            q.enqueue("ok", {{}})
            walq.Worker(q, tasks, processes=2).run()
        """)
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "WorkerStartError" in out and str(script) in out and "__main__" in out, out
    assert out.count("walq.errors.LockedError:") == 1, out  # one worker process tried
    with walq.Queue.open(str(qdir)) as q:
        stats = q.stats()
        assert stats["pending"] == 1 and stats["failed"] == 0 and stats["dead"] == 0
        job = q.claim()
        assert job is not None and job.attempt == 1  # no attempt was charged


# -- the examples a newcomer copies -------------------------------------------------------


def test_every_example_that_runs_a_worker_has_the_main_guard() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    runs = [(p.name, b) for p in docs for b in python_blocks(p) if ".run()" in b and "Worker(" in b]
    assert len(runs) >= 3
    for name, block in runs:
        assert 'if __name__ == "__main__":' in block, f"{name}:\n{block}"


def test_the_readme_snippet_runs_as_a_script(tmp_path: Path) -> None:
    """README's "Using it", saved as a script: its job is done before SIGTERM drains it
    (tests/test_doc_examples.py runs every block; this one checks the job ran)."""
    readme = (ROOT / "README.md").read_text()
    (block,) = python_blocks(ROOT / "README.md")[:1]
    assert readme.index(block) > readme.index("## Using it")
    qdir = tmp_path / "jobs"  # the example's ./jobs
    script = tmp_path / "app.py"
    script.write_text(block)
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    status = qdir / "worker-status.json"

    def one_done() -> bool:
        try:
            return bool(json.loads(status.read_text())["counters"]["ok"] >= 1)
        except (OSError, ValueError, KeyError):
            return False

    try:
        wait_for(one_done, timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in out, out


def test_the_coroutine_task_example_runs_as_a_script(tmp_path: Path) -> None:
    """docs/ASYNC.md's coroutine tasks, saved as a script: every job done, exit 0."""
    (block,) = [b for b in python_blocks(ROOT / "docs" / "ASYNC.md") if "async def fetch" in b]
    script = tmp_path / "app.py"
    script.write_text(block)  # its tempfile.mkdtemp() queue: under tmp_path (TMPDIR)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path)),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "1000 done"


def test_the_status_names_each_process_and_the_job_it_runs(q: walq.Queue) -> None:
    """`children`: each worker process's pid, its job, and how long that job has run."""
    import threading

    from tests import worker_tasks

    jid = q.enqueue("sleeps", {"seconds": 3.0})
    w = Worker(q, worker_tasks.tasks, processes=2)
    t = threading.Thread(target=w.run)
    t.start()
    try:

        def busy() -> list[dict[str, Any]]:
            return [j for c in w.status()["children"] for j in c["jobs"]]

        wait_for(lambda: busy() and busy()[0]["running_for"] > 0.5, timeout=60)
        (running,) = busy()
        assert running["job"] == jid and running["task"] == "sleeps" and running["attempt"] == 1
        pids = {c["pid"] for c in w.status()["children"]}
        assert len(pids) == 2 and os.getpid() not in pids
    finally:
        w.stop()
        t.join(timeout=60)
    assert all(c["jobs"] == [] for c in w.status()["children"])


def test_the_status_reports_the_attempts_that_ended(q: walq.Queue) -> None:
    """`recent`: the last attempts that ended, each with its process, time and outcome (the
    log records no worker or time for an attempt; `walq ui` shows them from here)."""
    from tests import worker_tasks

    ok = q.enqueue("sleeps", {"seconds": 0.3})
    bad = q.enqueue("raises", {"n": 1}, max_attempts=1)
    w = Worker(q, worker_tasks.tasks, processes=1)
    run_until_done(q, w)
    recent = {r["job"]: r for r in w.status()["recent"]}
    pids = {c["pid"] for c in w.status()["children"]} | {recent[ok]["process"]}
    assert recent[ok]["process"] == recent[bad]["process"] and len(pids) == 1
    assert recent[ok]["process"] != os.getpid()
    assert recent[ok]["ok"] is True and recent[ok]["cause"] is None
    assert recent[ok]["attempt"] == 1 and recent[ok]["task"] == "sleeps"
    assert 0.3 <= recent[ok]["seconds"] < 60
    assert recent[bad]["ok"] is False and recent[bad]["cause"] == "exception"
    assert recent[ok]["ended"] <= time.time()
