"""Every ```python block of README.md and docs/*.md runs as written, saved to a file.

Each block runs alone in an empty directory (its own cwd), with nothing on PYTHONPATH
but walq. A block marked `# runs until stopped` starts a worker: it is run in its own
session until its start is logged, stopped as a service manager does (SIGTERM to the
process group), and must exit 0. A block that reads WALQ_REDIS_URL needs a server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import wait_for
from tests.test_contract import REDIS_SKIP, SKIP_REDIS, need_redis

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
UNTIL_STOPPED = "# runs until stopped"
STARTED = "worker pid "  # the worker's start banner (logged at INFO)
TIMEOUT = 120.0  # seconds; generous for a loaded machine


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.DOTALL | re.MULTILINE)


EXAMPLES = [(f"{d.name}#{i}", block) for d in DOCS for i, block in enumerate(python_blocks(d))]


def test_the_examples_are_found() -> None:
    """The extraction sees the blocks (a changed fence would otherwise test nothing)."""
    assert len(EXAMPLES) >= 27
    assert sum(UNTIL_STOPPED in block for _, block in EXAMPLES) >= 4


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # walq itself, as an installed package would be
    env["TMPDIR"] = str(tmp)  # an example's tempfile.mkdtemp() queue is removed with it
    return env  # with WALQ_REDIS_URL when a Redis test server is set


def _run_until_stopped(script: Path, cwd: Path) -> str:
    """Start `script`, wait for the worker's start banner, SIGTERM its process group."""
    log = cwd / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)], cwd=cwd, env=_env(cwd), stdout=subprocess.DEVNULL,
            stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: STARTED in log.read_text() or proc.poll() is not None, TIMEOUT)
        assert proc.poll() is None, f"exited {proc.returncode} before it was stopped"
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in out, f"exit {proc.returncode}:\n{out}"
    return out


@pytest.mark.parametrize(("name", "block"), [pytest.param(n, b, id=n) for n, b in EXAMPLES])
def test_the_example_runs_as_written(name: str, block: str, tmp_path: Path) -> None:
    """The block, saved as a script, runs in an empty directory and exits 0."""
    if "WALQ_REDIS_URL" in block:
        if SKIP_REDIS:
            pytest.skip(REDIS_SKIP or "")
        need_redis()
    script = tmp_path / "example.py"
    script.write_text(block)
    if UNTIL_STOPPED in block:
        _run_until_stopped(script, tmp_path)
        return
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
        text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}{done.stderr}"
