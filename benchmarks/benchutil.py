"""Shared pieces of the benchmark harness: settings, rows, timing, the machine.

Standard library only, so that spawned worker processes (bench_tasks.py,
huey_tasks.py) can import it cheaply.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

KIB = 1024
MIB = 1024 * 1024

# The 1 KiB payload used throughout: printable, so text-only peers take it as is.
PAYLOAD = (bytes(range(256)).hex() * 2).encode()[:KIB]
assert len(PAYLOAD) == KIB


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure; `quick` is the CI profile."""

    quick: bool
    repeats: int  # runs of each measurement; the median is reported
    duration: float  # seconds each time-bounded measurement runs
    threads: int  # producer threads of the "16 threads" rows
    batch: int  # records per batch enqueue / enqueue_many call
    backlog: int  # jobs kept queued while get+ack is measured
    steady_cycles: int  # enqueue+get+ack cycles before disk bytes are read
    seq_bytes: int  # bytes written by the sequential-bandwidth row
    replay_n: int  # pending jobs in the open/replay rows
    pool_jobs: int  # no-op jobs pushed through each worker pool
    pool_repeats: int
    timeout: float  # seconds before one measurement is abandoned


QUICK = Settings(
    quick=True,
    repeats=3,
    duration=0.25,
    threads=16,
    batch=1000,
    backlog=200,
    steady_cycles=500,
    seq_bytes=64 * MIB,
    replay_n=50_000,
    pool_jobs=500,
    pool_repeats=1,
    timeout=60.0,
)
FULL = Settings(
    quick=False,
    repeats=7,
    duration=0.5,
    threads=16,
    batch=1000,
    backlog=1000,
    steady_cycles=2000,
    seq_bytes=256 * MIB,
    replay_n=1_000_000,
    pool_jobs=5000,
    pool_repeats=3,
    timeout=300.0,
)


@dataclass
class Row:
    """One line of the table: a measurement's samples, or the reason it has none."""

    key: str  # stable id, used by the ratios and the JSON output
    section: str
    label: str
    unit: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["median"] = self.median
        return data


class MeasurementTimeoutError(Exception):
    """A measurement ran past Settings.timeout."""


class ChildFailedError(Exception):
    """A measurement subprocess reported an error (its message is the reason)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise MeasurementTimeoutError in the main thread after `seconds` (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise MeasurementTimeoutError(f"no result within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reason(exc: BaseException) -> str:
    """A one-line, bounded description of why a measurement has no number."""
    if isinstance(exc, ChildFailedError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = text.splitlines()[0] if text else "unknown error"
    return text if len(text) <= 90 else text[:87] + "..."


def rate_until(duration: float, op: Callable[[], int]) -> float:
    """Call `op` (returning how many items it handled) for `duration` s; items/s."""
    count = 0
    start = time.perf_counter()
    while True:
        count += op()
        elapsed = time.perf_counter() - start
        if elapsed >= duration:
            return count / elapsed


def wait_for(condition: Callable[[], bool], deadline: float, poll: float = 0.002) -> float:
    """Poll until `condition()` holds; the perf_counter time it was first seen.

    Raises TimeoutError once time.monotonic() passes `deadline`.
    """
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(poll)
    return time.perf_counter()


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk (st_blocks) by every file under `path`."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, filesystem type, device) of the mount holding `path`."""
    target = str(path.resolve())
    best = ("/", "?", "?")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4]
            fstype, device = right.split()[:2]
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fstype, device)
    return best


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(bench_dir: Path) -> dict[str, str]:
    """What the numbers were measured on."""
    import sqlite3

    mount_point, fstype, device = mount_of(bench_dir)
    usable = len(os.sched_getaffinity(0))
    peers = ("walq", "persist-queue", "litequeue", "huey", "diskcache", "crc32c")
    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": f"{fstype} on {device} at {mount_point}",
        "bench_dir": str(bench_dir),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": ", ".join(f"{p} {package_version(p)}" for p in peers),
    }


def mark_done() -> None:
    """Append one byte to $WALQ_BENCH_MARKER: the worker-pool rows count completions."""
    path = os.environ.get("WALQ_BENCH_MARKER")
    if not path:
        return
    fd = _MARKER_FDS.get(os.getpid())
    if fd is None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _MARKER_FDS[os.getpid()] = fd
    os.write(fd, b".")


_MARKER_FDS: dict[int, int] = {}


def marks(path: Path) -> int:
    """How many jobs have called mark_done() so far."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def python_command() -> str:
    return " ".join(["python", *sys.argv])
