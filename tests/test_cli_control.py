"""`walq status|jobs|cancel|pause|resume|dead|stats` beside a real owner, and without one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import walq

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m walq ARGS` as a real process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "walq", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def ok(*args: str) -> str:
    r = run(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


Owned = tuple[subprocess.Popen[str], Path, dict[str, int]]


@pytest.fixture
def qdir(tmp_path: Path) -> str:
    return str(tmp_path / "q")


@pytest.fixture
def owner(
    qdir: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Path, dict[str, int]]]:
    """A real owner (`python -m walq worker`) with a slow job running and a dead one."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        ids = {
            "slow": q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 120}, key="slow:1"),
            "dead": q.enqueue("permanent", {"n": 1}),
        }
    proc = subprocess.Popen(
        [sys.executable, "-m", "walq", "worker", qdir, "--tasks", "tests.worker_tasks:tasks",
         "--processes", "2", "--log-level", "INFO", "--shutdown-grace", "0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: ledger.exists() and "start" in ledger.read_text())
        assert wait_for(lambda: "dead" in ok("status", qdir, str(ids["dead"])))
        yield proc, ledger, ids
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # as a service manager stops it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_reads_beside_a_running_owner_come_from_it(qdir: str, owner: Owned) -> None:
    proc, _, ids = owner
    st = json.loads(ok("stats", qdir, "--json"))
    assert st["source"] == "owner" and st["owner"] == {"running": True, "pid": proc.pid}
    assert st["running"] == 1 and st["dead"] == 1
    detail = json.loads(ok("status", qdir, str(ids["slow"]), "--json"))
    assert detail["source"] == "owner" and detail["status"] == "running"
    assert detail["key"] == "slow:1" and detail["worker"] == proc.pid
    text = ok("status", qdir, str(ids["dead"]))
    assert "status    dead" in text and "this input can never work" in text
    rows = [json.loads(line) for line in ok("jobs", qdir, "--json").splitlines()]
    assert [r["id"] for r in rows] == [ids["slow"], ids["dead"]]
    rows = [json.loads(x) for x in ok("jobs", qdir, "--state", "dead", "--json").splitlines()]
    assert [r["id"] for r in rows] == [ids["dead"]]
    page = ok("jobs", qdir, "--limit", "1")
    assert f"--after {ids['slow']}" in page
    assert str(ids["dead"]) in ok("jobs", qdir, "--after", str(ids["slow"]))
    assert "permanent" in ok("dead", "list", qdir)


def test_changes_beside_a_running_owner_go_through_it(qdir: str, owner: Owned) -> None:
    proc, _, ids = owner
    assert "paused permanent" in ok("pause", qdir, "permanent")
    assert "requeued 1 jobs" in ok("dead", "requeue", qdir, str(ids["dead"]))
    # Paused: the requeued job stays pending while the owner runs.
    assert json.loads(ok("status", qdir, str(ids["dead"]), "--json"))["status"] == "pending"
    assert "paused    permanent" in ok("stats", qdir)
    assert "cancelled job" in ok("cancel", qdir, str(ids["slow"]))  # kills its handler
    assert json.loads(ok("status", qdir, str(ids["slow"]), "--json"))["status"] == "cancelled"
    assert "already finished" in ok("cancel", qdir, str(ids["slow"]))
    assert "resumed permanent" in ok("resume", qdir, "permanent")
    assert wait_for(
        lambda: json.loads(ok("status", qdir, str(ids["dead"]), "--json"))["status"] == "dead"
    )
    assert "purged 1 dead jobs" in ok("dead", "purge", qdir, "--yes")
    assert proc.poll() is None  # the owner ran on throughout
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    for action in ("pause", "requeue", "cancel", "resume", "purge"):
        assert f"admin {action} " in out and "by uid" in out, out


def test_the_same_commands_without_an_owner(qdir: str) -> None:
    with walq.Queue.open(qdir) as q:
        a = q.enqueue("mail", 1, key="k")
        d = q.enqueue("resize", 2, max_attempts=1)
        job = q.claim(tasks=["resize"])
        assert job is not None
        q.fail(job.id, "boom")
    assert json.loads(ok("status", qdir, str(a), "--json"))["source"] == "files"
    assert "boom" in ok("status", qdir, str(d))
    assert json.loads(ok("stats", qdir, "--json")).get("source") != "owner"
    assert "paused mail" in ok("pause", qdir, "mail")
    assert "paused    mail" in ok("stats", qdir)
    assert "requeued 1 jobs" in ok("dead", "requeue", qdir, str(d))
    assert "cancelled job" in ok("cancel", qdir, str(a))
    assert "resumed mail" in ok("resume", qdir, "mail")
    rows = [json.loads(x) for x in ok("jobs", qdir, "--json").splitlines()]
    assert [(r["id"], r["status"]) for r in rows] == [(d, "pending")]
    with walq.Queue.open(qdir) as q:
        assert q.status(a) == "cancelled" and q.paused() == []
    r = run("status", qdir, "999")
    assert r.returncode == 2 and r.stderr.strip() == "walq: job 999 does not exist"
    huge = str(1 << 70)  # no record can name it: the offline lookup must not choke on it
    for argv in (("status", qdir, huge), ("status", qdir, "--", "-5")):
        r = run(*argv)
        assert r.returncode == 2 and r.stderr.strip() == f"walq: job {argv[-1]} does not exist"
    r = run("dump", qdir, "--job", huge)
    assert r.returncode == 0 and r.stderr == "", r.stderr
