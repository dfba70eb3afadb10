"""The handler tools/torture.py runs: it checks its payload and leaves a line in the ledger.

The ledger is one append-only file shared by the owner and its workers. Every
line is one `write` to a descriptor opened with O_APPEND, then fdatasync, so
the file's order is the order in which things happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from typing import Any

from tools.flow_audit import TICK_EVERY, TICK_NAME
from walq.core.job import Job
from walq.core.retry import Backoff, Permanent
from walq.worker.tasks import Tasks

LEDGER_ENV = "WALQ_TORTURE_LEDGER"
WORK_MS_ENV = "WALQ_TORTURE_WORK_MS"
BEGIN_ENV = "WALQ_TORTURE_BEGIN"  # set: a handler also records when it begins
IMPORT_DELAY_ENV = "WALQ_TORTURE_IMPORT_DELAY"  # seconds this module takes to import

# The slow-import mode: every worker process that starts pays this again.
time.sleep(float(os.environ.get(IMPORT_DELAY_ENV, "0")))

tasks = Tasks()


def append(path: str, lines: list[str]) -> None:
    """Append whole lines to the ledger in one write, durably."""
    if not lines:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)


def pad(nonce: str, size: int) -> bytes:
    """Filler derived from the nonce, so a handler can tell its payload is intact."""
    seed = hashlib.sha256(nonce.encode()).hexdigest().encode()
    return (seed * (size // len(seed) + 1))[:size]


def make_payload(nonce: str, size: int, *, fail: bool, as_bytes: bool) -> Any:
    """A JSON object or raw bytes carrying the nonce, a fail-first flag and the filler."""
    body = pad(nonce, size)
    if as_bytes:
        return f"{nonce}|{int(fail)}|".encode() + body
    return {"nonce": nonce, "fail": fail, "pad": body.decode()}


def flow_payload(nonce: str, size: int, *, fail: bool, **flow: Any) -> dict[str, Any]:
    """A JSON payload that also asks for flow: "outbox" (enqueue a follow-up job),
    "parent" (this is one), or "after" and "after_nonce" (its parent's id and result)."""
    payload: dict[str, Any] = make_payload(nonce, size, fail=fail, as_bytes=False)
    payload.update(flow)
    return payload


def parse_payload(payload: Any) -> tuple[str, bool, bytes]:
    """(nonce, fail-first, filler) from either payload form."""
    if isinstance(payload, bytes):
        nonce, fail, body = payload.split(b"|", 2)
        return nonce.decode(), fail == b"1", body
    return str(payload["nonce"]), bool(payload["fail"]), str(payload["pad"]).encode()


@tasks.task(timeout=60.0, max_attempts=10000, retry=Backoff(base=0.01, cap=0.05), breaker=None)
def work(payload: Any, job: Job) -> Any:
    """Check the payload, maybe fail once on purpose, work a little, record the run."""
    return _work(payload, job)


# The slow-import mode's task: its handler takes at most a quarter of its timeout.
TIMED_TIMEOUT = 2.0


@tasks.task(
    timeout=TIMED_TIMEOUT, max_attempts=10000, retry=Backoff(base=0.01, cap=0.05), breaker=None
)
def work_timed(payload: Any, job: Job) -> Any:
    """`work` under a short timeout."""
    return _work(payload, job)


# A schedule in the mix: the owner enqueues a job per second; after each kill the
# next owner enqueues the ticks missed meanwhile (misfire="all"). The audit checks
# that no tick has two jobs and none between the first and the last is missing.
@tasks.periodic(TICK_NAME, every=TICK_EVERY, misfire="all", payload={"beat": True})
def beat(payload: Any, job: Job) -> None:
    """Record the tick this job is for."""
    append(os.environ[LEDGER_ENV], [f"tick {job.id} {job.attempt} {job.key}"])


def _work(payload: Any, job: Job) -> Any:
    nonce = _begin(payload, job)
    time.sleep(_work_seconds())
    _ran(payload, job, nonce)
    return nonce  # the result: a dependent checks it in job.parents


def _begin(payload: Any, job: Job) -> str:
    """Check the payload, record the beginning, maybe fail on purpose; the nonce."""
    ledger = os.environ[LEDGER_ENV]
    try:
        nonce, fail, body = parse_payload(payload)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        append(ledger, [f"damaged {job.id} {job.attempt} ? unparsable"])
        raise Permanent(f"payload unparsable: {exc}") from None
    if body != pad(nonce, len(body)):
        append(ledger, [f"damaged {job.id} {job.attempt} {nonce} filler"])
        raise Permanent("payload damaged")
    if os.environ.get(BEGIN_ENV):
        append(ledger, [f"begin {job.id} {job.attempt} {nonce}"])
    if fail and job.attempt == 1:
        append(ledger, [f"raised {job.id} {job.attempt} {nonce}"])
        raise RuntimeError("a planned first-attempt failure")
    return nonce


def _work_seconds() -> float:
    return random.uniform(0, float(os.environ.get(WORK_MS_ENV, "5"))) / 1000


def _ran(payload: Any, job: Job, nonce: str) -> None:
    lines = flow_lines(payload, job, nonce) if isinstance(payload, dict) else []
    append(os.environ[LEDGER_ENV], [*lines, f"ran {job.id} {job.attempt} {nonce} {os.getpid()}"])


def flow_lines(payload: dict[str, Any], job: Job, nonce: str) -> list[str]:
    """The flow side of a run: a follow-up job enqueued, a dependent's parent checked;
    the ledger lines that say so (tools/flow_audit.py reads them)."""
    lines = []
    if "after" in payload:
        parent = int(payload["after"])
        got = job.parents.get(parent)
        if got != payload["after_nonce"]:  # the parent was not done (or its result lost)
            lines.append(f"early {job.id} {parent} {got!r}")
    if payload.get("outbox"):
        child = f"{nonce}.f"
        job.enqueue(job.task, flow_payload(child, 64, fail=False, parent=job.id))
        lines += [f"intent {child}", f"outbox {job.id} {job.attempt} {child}"]
    if "parent" in payload:
        lines.append(f"child {payload['parent']} {job.id} {nonce}")
    return lines


# The async mode's tasks: the same work as coroutines, many at once on each worker
# process's event loop (the ledger's write stays a blocking call: it is short).
atasks = Tasks()


@atasks.task("work", timeout=60.0, max_attempts=10000, retry=Backoff(base=0.01, cap=0.05),
             breaker=None)  # fmt: skip
async def awork(payload: Any, job: Job) -> Any:
    """`work` as a coroutine."""
    nonce = _begin(payload, job)
    await asyncio.sleep(_work_seconds())
    _ran(payload, job, nonce)
    return nonce
