"""The worker's lifecycle at INFO: a start banner, a line per job, the drain and the exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import walq

ROOT = Path(__file__).resolve().parent.parent


def run_worker(qdir: str, *extra: str) -> str:
    """Run a real worker until its jobs are done, stop it as a service manager does; its log."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "walq", "worker", qdir, "--tasks", "tests.worker_tasks:tasks",
         "--processes", "1", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:  # through the owner only: taking the lock would keep the worker out
                if walq.Admin(qdir, require_owner=True).stats()["unfinished"] == 0:
                    break
            except walq.NoOwnerError:
                pass
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_the_lifecycle_is_logged_at_info(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir) as q:
        first = q.enqueue("ok", {})
        q.enqueue("permanent", {})
    out = run_worker(qdir, "--log-level", "INFO")
    assert "replayed 1 segments in" in out and "2 live jobs" in out
    assert f"on {qdir}: tasks ok, raises, permanent" in out and "1 processes" in out
    assert f"job {first} (ok) attempt 1: ok in " in out
    assert "(permanent) attempt 1: failed (exception) in " in out
    assert "draining: 0 jobs in flight" in out
    assert "stopped: ok 1, failed 1, dead 1" in out
    assert "claimed" not in out  # claims are DEBUG


def test_job_lines_can_be_turned_down_and_claims_shown_at_debug(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir) as q:
        jid = q.enqueue("ok", {})
    out = run_worker(qdir, "--job-log-level", "DEBUG")
    assert "attempt 1: ok in" not in out and "stopped: ok 1" in out
    out_debug = run_worker(qdir, "--log-level", "DEBUG")  # nothing left: the banner and exit
    assert "worker pid" in out_debug
    with walq.Queue.open(qdir) as q:
        jid = q.enqueue("ok", {})
    out_debug = run_worker(qdir, "--log-level", "DEBUG")
    assert f"claimed 1 jobs: {jid} (ok, attempt 1)" in out_debug
    assert f"job {jid} (ok) attempt 1: ok in" in out_debug
