"""docs/examples/fastapi_app.py served by a real uvicorn process enqueues from a request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import walq

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

EXAMPLES = str(Path(__file__).resolve().parent.parent / "docs" / "examples")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(qdir: str) -> Iterator[str]:
    """uvicorn serving the example app for queue `qdir`; yields its base URL."""
    port = free_port()
    env = {**os.environ, "WALQ_DIR": qdir}
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", EXAMPLES, "fastapi_app:app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def post(url: str) -> dict[str, object]:
    """POST with retries until the server answers (it may still be starting)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, method="POST"), timeout=30
            ) as r:
                reply: dict[str, object] = json.loads(r.read())
                return reply
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_request_enqueues_through_the_running_owner(qdir: str) -> None:
    """With an owner running, the handler's enqueue returns the owner's job id."""
    with walq.Queue.open(qdir) as q, served(qdir) as base:
        reply = post(f"{base}/emails?to=a@b")
        assert reply["spooled"] is False
        job_id = reply["job_id"]
        assert isinstance(job_id, int) and q.status(job_id) == "pending"
        assert post(f"{base}/emails?to=a@b")["job_id"] == job_id  # the key coalesces
        job = q.claim()
        assert job is not None and job.payload == {"to": "a@b"}


def test_without_an_owner_the_request_spools_and_the_next_owner_runs_it(qdir: str) -> None:
    """No owner: the request is answered once the job is durable in the spool."""
    walq.Queue.open(qdir).close()
    with served(qdir) as base:
        assert post(f"{base}/emails?to=c@d") == {"job_id": None, "spooled": True}
    with walq.Queue.open(qdir) as q:
        job = q.claim()
        assert job is not None and job.payload == {"to": "c@d"}
