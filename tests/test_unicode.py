"""Strings that are not valid Unicode are the caller's mistake, refused before anything is written.

A lone surrogate ("\\udcff", as json.loads('"\\\\udcff"') or a surrogateescape'd
file name gives) cannot be stored as UTF-8. Queue.enqueue, walq.connect() (socket
and spool) and `walq enqueue` refuse it with ArgumentError/PayloadError (exit 2);
a spool file that carries one anyway is set aside as `.rejected` with its reason,
and the files after it are ingested.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crc32c import crc32c

import walq
from walq.ops import repair as ops_repair
from walq.ops import stats as ops_stats
from walq.producers import spool

BAD = json.loads('"\\udcff"')
CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], type[walq.WalqError]]] = [
    ("task", (f"t{BAD}", {}), {}, walq.ArgumentError),
    ("key", ("t", {}), {"key": f"k{BAD}"}, walq.ArgumentError),
    ("payload", ("t", {"to": BAD}), {}, walq.PayloadError),
    ("payload dict-key", ("t", {BAD: 1}), {}, walq.PayloadError),
    ("string payload", ("t", BAD), {}, walq.PayloadError),
]


@pytest.mark.parametrize(("what", "args", "kw", "error"), CASES, ids=[c[0] for c in CASES])
def test_queue_enqueue_refuses_invalid_unicode(
    qdir: str, what: str, args: tuple[Any, ...], kw: dict[str, Any], error: type[Exception]
) -> None:
    """enqueue and enqueue_many: the walq error naming the field; nothing written."""
    with walq.Queue.open(qdir, serve=False) as q:
        field = "payload" if "payload" in what else what
        with pytest.raises(error, match=f"{field} is not valid Unicode"):
            q.enqueue(*args, **kw)
        with pytest.raises(error, match="not valid Unicode"):
            q.enqueue_many([(*args, kw)])
        with pytest.raises(error, match="not valid Unicode"):
            q.enqueue_many([("fine", b"x"), (*args, kw)])
        assert q.stats()["pending"] == 0
        assert q.enqueue("fine", {"ok": 1}) == 1  # no id was used up
    assert ops_repair.fsck(qdir).clean


def test_the_bulk_fast_path_checks_the_task_too(qdir: str) -> None:
    """(task, bytes) pairs skip most checks, not this one."""
    with walq.Queue.open(qdir, serve=False) as q:
        with pytest.raises(walq.ArgumentError, match="task is not valid Unicode"):
            q.enqueue_many([(f"t{BAD}", b"payload")])
        assert q.stats()["pending"] == 0


@pytest.mark.parametrize("owner", [False, True], ids=["spool", "socket"])
@pytest.mark.parametrize(("what", "args", "kw", "error"), CASES, ids=[c[0] for c in CASES])
def test_a_producer_refuses_invalid_unicode(
    qdir: str,
    owner: bool,
    what: str,
    args: tuple[Any, ...],
    kw: dict[str, Any],
    error: type[Exception],
) -> None:
    """walq.connect().enqueue, owner down (spool) or up (socket): the same error, nothing sent."""
    walq.Queue.open(qdir).close()
    q = walq.Queue.open(qdir) if owner else None
    try:
        with walq.connect(qdir) as producer, pytest.raises(error, match="not valid Unicode"):
            producer.enqueue(*args, **kw)
    finally:
        if q is not None:
            assert q.stats()["pending"] == 0
            q.close()
    assert spool.backlog(walq.directory.fs.OsFileSystem(), qdir)["files"] == 0


@pytest.mark.parametrize(
    "args",
    [[b"t\xff"], [b"t", b"--payload", b'"\xff"'], [b"t", b"--key", b"\xff"]],
    ids=["task", "payload", "key"],
)
def test_walq_enqueue_exits_2_with_one_line(qdir: str, args: list[bytes]) -> None:
    """Bytes that are not UTF-8 on the command line: exit 2, `walq: ... not valid Unicode`."""
    walq.Queue.open(qdir).close()
    result = subprocess.run(
        [sys.executable, "-m", "walq", "enqueue", qdir.encode(), *args],
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = result.stderr.decode(errors="replace").strip().splitlines()
    assert result.returncode == 2, err
    assert len(err) == 1 and err[0].startswith("walq: ") and "not valid Unicode" in err[0]


def spool_file(qdir: str, task: str, payload: bytes, when_ns: int) -> Path:
    """A CRC-valid spool file with one item, written as a producer would (any task at all)."""
    item = {"task": task, "kind": 0, "size": len(payload)}
    head = {"op": "enqueue", "wall": time.time(), "items": [item]}
    text = json.dumps(head).encode()  # ASCII escapes: a lone surrogate survives as \udcff
    data = spool.MAGIC + struct.pack("<I", len(text)) + text + payload
    data += struct.pack("<I", crc32c(data))
    directory = Path(qdir) / spool.SPOOL_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{when_ns:020d}-{os.getpid()}-{os.urandom(8).hex()}-{len(data)}.job"
    path.write_bytes(data)
    return path


def test_a_spool_file_the_owner_refuses_is_set_aside_and_the_rest_ingested(qdir: str) -> None:
    """A valid file, one with a lone-surrogate task, another valid one: two jobs, one .rejected."""
    walq.Queue.open(qdir).close()
    now = time.time_ns()
    spool_file(qdir, "before", b'{"n":1}', now)
    bad = spool_file(qdir, f"t{BAD}", b'{"n":2}', now + 1)
    spool_file(qdir, "after", b'{"n":3}', now + 2)
    with walq.Queue.open(qdir) as q:
        deadline = time.monotonic() + 60
        while q.stats()["pending"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert q.stats()["pending"] == 2
        jobs = [j for j in (q.claim(), q.claim()) if j]
        assert sorted(j.task for j in jobs) == ["after", "before"]
        for job in jobs:
            q.ack(job.id)
    aside = Path(str(bad) + spool.REJECTED)
    assert aside.exists() and not bad.exists()
    reason = Path(str(aside) + spool.REASON).read_text()
    assert "task is not valid Unicode" in reason
    stats = ops_stats.directory_stats(qdir)
    assert stats["spooled"] == 0
    assert stats["spool_set_aside"] == [{"file": aside.name, "reason": reason.strip()}]
    text = subprocess.run(
        [sys.executable, "-m", "walq", "stats", qdir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert f"set aside: {aside.name}" in text
    # The next owner does not try it again.
    with walq.Queue.open(qdir) as q:
        assert q.stats()["pending"] == 0
        assert aside.exists()
