"""Processes as /proc shows them, for tests that check a run leaves none behind;
and waiting, with a generous deadline, for what other processes do.

/proc text is decoded with errors="replace": any process on the machine may
have a command line that is not UTF-8, and it must not fail another's test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs


@attrs.frozen
class Proc:
    pid: int
    ppid: int
    state: str  # "R", "S", "Z" (a zombie)...
    cmd: str  # the command line, arguments joined by spaces


def read(pid: int) -> Proc | None:
    """The process `pid`, or None if it is gone."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
        fields = stat.rsplit(")", 1)[1].split()  # the name before ")" may hold anything
        return Proc(pid, int(fields[1]), fields[0], cmd.decode(errors="replace"))
    except (OSError, IndexError, ValueError):
        return None


def processes() -> list[Proc]:
    """Every process /proc lists now (those that end meanwhile left out)."""
    found = (read(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [p for p in found if p is not None]


def descendants(pid: int) -> set[int]:
    """Every descendant of `pid` (zombies included)."""
    children: dict[int, list[int]] = {}
    for proc in processes():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def naming(marker: str, *, zombies: bool = False) -> list[str]:
    """Processes but this one whose command line names `marker` (a test's own
    directory), as "pid: command" lines; zombies only if asked for."""
    return [
        f"{p.pid}: {p.cmd}"
        for p in processes()
        if marker in p.cmd and p.pid != os.getpid() and (zombies or p.state != "Z")
    ]


def wait_for(cond: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll `cond` until it is true; fail after `timeout` seconds (generous: a loaded
    2-core machine must not make a test flake)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s"
        time.sleep(0.02)


def start_worker(qdir: str, tasks: str, cwd: Path | str, *options: str) -> subprocess.Popen[str]:
    """`walq worker QDIR --tasks TASKS OPTIONS...` in a session of its own (as a service
    manager starts a daemon: `kill -- -PID` reaches its whole group); output on a pipe."""
    cmd = [sys.executable, "-m", "walq", "worker", qdir, "--tasks", tasks, *options]
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
