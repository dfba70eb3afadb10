"""Real `walq worker` and `walq ui` processes for the dashboard's tests, stopped as a
service manager stops them (their own process group, SIGTERM, then SIGKILL)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

TASKS = "tests.ui_tasks:tasks"


@attrs.frozen
class Dashboard:
    """A running `walq ui`: its process, its address and its access token."""

    proc: subprocess.Popen[str]
    base: str  # http://127.0.0.1:PORT
    token: str
    output: list[str] = attrs.field(factory=list)  # what it printed, once it has stopped

    @property
    def url(self) -> str:
        """The address as printed: the token in it, once."""
        return f"{self.base}/?token={self.token}"

    def get(self, path: str, *, token: bool = True) -> tuple[int, Any]:
        """GET `path` (with the token in a header); (status, parsed JSON or text)."""
        headers = {"Authorization": f"token {self.token}"} if token else {}
        return _call(urllib.request.Request(self.base + path, headers=headers))

    def post(self, path: str, body: dict[str, Any], *, header: bool = True) -> tuple[int, Any]:
        """POST JSON to `path` (X-Walq-Token as the page's script sends it, unless not)."""
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        if header:
            headers["X-Walq-Token"] = self.token
        data = json.dumps(body).encode()
        return _call(urllib.request.Request(self.base + path, data, headers, method="POST"))


def _call(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, kind = response.status, response.read(), response.headers["content-type"]
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers["content-type"]
    text = raw.decode("utf-8", "replace")
    return status, json.loads(text) if "json" in (kind or "") else text


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_worker(target: str, *extra: str) -> subprocess.Popen[str]:
    """`python -m walq worker TARGET` running the dashboard tests' tasks, in its own group."""
    cmd = [sys.executable, "-m", "walq", "worker", target, "--tasks", TASKS,
           "--processes", "2", "--log-level", "ERROR", *extra]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True, env=_env(),
    )  # fmt: skip


@contextmanager
def dashboard(target: str, *extra: str) -> Iterator[Dashboard]:
    """`python -m walq ui TARGET --port 0`, until the block ends."""
    cmd = [sys.executable, "-m", "walq", "ui", target, "--port", "0", "--interval", "0.25", *extra]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env=_env(),
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"open (http://[^/]+)/(?:\?token=(\S+))?", line)
            if found:
                ui = Dashboard(proc, found.group(1), found.group(2) or "", lines)
                yield ui
                return
        raise AssertionError(f"walq ui did not start: {''.join(lines)}")
    finally:
        stop(proc, output=lines)


def stop(
    proc: subprocess.Popen[str], timeout: float = 60.0, *, output: list[str] | None = None
) -> int:
    """SIGTERM to the process group, as a service manager does; SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        if output is not None:
            output.extend(proc.stdout.read().splitlines())
        proc.stdout.close()
    return proc.returncode


@contextmanager
def fresh_redis_queue(base: str) -> Iterator[str]:
    """A queue URL on the server at `base` with a fresh prefix, its keys deleted afterwards."""
    import redis

    prefix = f"walqtest-{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base}{'&' if '?' in base else '?'}prefix={prefix}"
    finally:
        client = redis.Redis.from_url(base)
        names = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if names:
            client.delete(*names)
        client.close()
