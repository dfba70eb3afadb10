"""Limits and odd input: refused up front (nothing written), or accepted for good.

Every rule that can refuse an operation is checked before its record is
written, and replay never refuses a record the writer accepted; input that
would break something later (a due time 10^300 seconds away, a 1 MiB key in an
error message, an escape sequence in a task name) is bounded or escaped where
it enters or where it is shown.
"""

from __future__ import annotations

import errno
import inspect
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import walq
from walq.cli.app import main
from walq.core import events as ev
from walq.core import format as fmt
from walq.core.jobspec import MAX_DELAY, MAX_ERROR_BYTES, MAX_NAME_BYTES, MAX_PAYLOAD_LIMIT
from walq.cron import schedule as cron_schedule
from walq.directory.fs import File
from walq.directory.queue import Queue
from walq.ops import repair as ops_repair
from walq.ops import scan as ops_scan
from walq.ops import stats as ops_stats
from walq.producers import wire

ROOT = Path(__file__).resolve().parent.parent


def open_q(qdir: str, **kw: Any) -> Queue:
    kw.setdefault("serve", False)
    kw.setdefault("compaction", False)
    return Queue.open(qdir, **kw)


def log_bytes(qdir: str) -> int:
    """Bytes of records in the queue's segments (the zero-filled space not counted)."""
    total = 0
    for seq in ops_scan.segment_seqs(qdir):
        data = Path(qdir, fmt.segment_name(seq)).read_bytes()
        total += len(data.rstrip(b"\0"))
    return total


# -- distinct task names --------------------------------------------------------------


def test_any_number_of_distinct_task_names_is_accepted_and_replays(qdir: str) -> None:
    # 65,536 was a limit of the in-memory index only (the log stores names), and
    # it refused the 65,537th name after writing its record: the id was issued
    # again and the queue never opened again, while fsck said clean.
    n = (1 << 16) + 2
    with open_q(qdir, sync="never") as q:
        ids = q.enqueue_many([(f"t{i}", b"") for i in range(n - 1)])
        ids.append(q.enqueue(f"t{n - 1}", b""))
        again = q.enqueue("t0", b"")
    assert ids == list(range(1, n + 1)) and again == n + 1
    assert ops_repair.fsck(qdir).clean
    for mode in ("strict", "skip"):
        with open_q(qdir, recovery=mode) as q:
            st = q.stats()
            assert st["pending"] == n + 1 and st["next_id"] == n + 2
            assert len(st["tasks"]) == n
            assert st["tasks"][f"t{n - 1}"]["pending"] == 1
            job = q.claim()
            assert job is not None and job.id == 1 and job.task == "t0"
            # Every other task refused in turn: linear-ish, not T squared (that took hours).
            (last,) = q.claim_many(1, tasks=[f"t{n - 1}"])
            assert last.id == n and last.task == f"t{n - 1}"


# -- records a replay could not take are never written ---------------------------------


@pytest.mark.parametrize("bulk", [False, True])
def test_a_task_name_too_long_is_refused_before_anything_is_written(qdir: str, bulk: bool) -> None:
    with open_q(qdir) as q:
        q.enqueue("first", b"")
        before = log_bytes(qdir)
        for task in ("x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 2 + 1)):
            with pytest.raises(walq.ArgumentError, match=r"at most 65534 bytes") as exc:
                if bulk:
                    q.enqueue_many([("ok", b""), (task, b"")])
                else:
                    q.enqueue(task, b"")
            assert len(str(exc.value)) < 200
        assert q.enqueue("x" * MAX_NAME_BYTES, b"") == 2  # the longest name is fine
        assert log_bytes(qdir) > before
    with open_q(qdir) as q:
        assert q.stats()["pending"] == 2


def test_a_failed_attempts_error_is_clipped_to_fit_every_record(qdir: str) -> None:
    head, tail = "ValueError: the first line\n", "the last line"
    error = head + "x" * (4 * MAX_ERROR_BYTES) + tail
    with open_q(qdir) as q:
        jid = q.enqueue("t", b"p", max_attempts=1)
        job = q.claim()
        assert job is not None
        assert q.fail(job.id, error) == "dead"
        (dead,) = q.dead_jobs()
    assert dead.id == jid
    assert len(dead.error.encode()) <= MAX_ERROR_BYTES
    assert dead.error.startswith(head) and dead.error.endswith(tail) and "bytes cut" in dead.error
    with open_q(qdir) as q:
        q.compact(seal=True)  # the compacted job record carries payload and error together
    with open_q(qdir) as q:
        assert q.dead_jobs()[0].error == dead.error


def test_max_payload_leaves_room_for_the_rest_of_a_record(qdir: str) -> None:
    assert MAX_PAYLOAD_LIMIT + 64 + 2 * MAX_NAME_BYTES + MAX_ERROR_BYTES <= fmt.MAX_BODY
    with pytest.raises(walq.ArgumentError, match="max_payload"):
        open_q(qdir, max_payload=MAX_PAYLOAD_LIMIT + 1)


# -- every public method of a closed queue --------------------------------------------


def test_every_public_method_of_a_closed_queue_raises_closed_error(qdir: str) -> None:
    q = open_q(qdir)
    q.enqueue("t", b"")
    q.close()
    calls: dict[str, Callable[[], object]] = {
        "enqueue": lambda: q.enqueue("t"),
        "enqueue_many": lambda: q.enqueue_many([("t", 1)]),
        "claim": q.claim,
        "claim_many": lambda: q.claim_many(1),
        "ack": lambda: q.ack(1),
        "ack_many": lambda: q.ack_many([1]),
        "fail": lambda: q.fail(1),
        "release": lambda: q.release(1),
        "extend": lambda: q.extend(1, 1.0),
        "extend_many": lambda: q.extend_many([1], 1.0),
        "status": lambda: q.status(1),
        "cancel": lambda: q.cancel(1),
        "dead_jobs": q.dead_jobs,
        "requeue": lambda: q.requeue(1),
        "purge": q.purge,
        "set_task_defaults": lambda: q.set_task_defaults("t", max_attempts=3),
        "stats": q.stats,
        "sync": q.sync,
        "shared_gates": q.shared_gates,
        "next_due_in": q.next_due_in,
        "compact": q.compact,
        "compactor_health": q.compactor_health,
        "record_worker_status": lambda: q.record_worker_status({}),
        "job_detail": lambda: q.job_detail(1),
        "find": lambda: q.find("k"),
        "jobs": q.jobs,
        "pause": lambda: q.pause("t"),
        "resume": lambda: q.resume("t"),
        "paused": q.paused,
        "write_checkpoint": q.write_checkpoint,
        "result": lambda: q.result(1),
        "fire_schedule": lambda: q.fire_schedule(cron_schedule("s", "t", every=60.0)),
        "schedules": q.schedules,
    }
    public = {
        name
        for name, _ in inspect.getmembers(Queue, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public - {"open", "close"} == set(calls), "a public method this test does not try"
    for name, call in calls.items():
        with pytest.raises(walq.ClosedError, match="closed"):
            call()
        assert name  # (the name shows in the failure's locals)
    q.close()  # still idempotent


# -- URLs that are not walq's ---------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["redis+foo://:secret@host:26379/0", "http://host/q", "S3://bucket/q"]
)
def test_an_unknown_url_scheme_is_refused_not_made_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(walq.ArgumentError, match="unknown URL scheme") as exc:
        Queue.open(url)
    message = str(exc.value)
    assert "redis://, redis+cluster://, redis+sentinel://, rediss://, unix://" in message
    assert "secret" not in message
    with pytest.raises(walq.ArgumentError, match="unknown URL scheme"):
        walq.connect(url).enqueue("t", b"")
    assert list(tmp_path.iterdir()) == []


# -- user input in messages -----------------------------------------------------------


def test_an_oversized_value_is_shown_by_its_size_and_a_short_prefix(qdir: str) -> None:
    key = "\x1b]0;k" + "k" * (1 << 20)
    with open_q(qdir) as q:
        with pytest.raises(walq.ArgumentError) as exc:
            q.enqueue("t", b"", key=key)
        with pytest.raises(walq.ArgumentError) as bulk:
            q.enqueue_many([("t", b"x" * (1 << 20), {"nope": 1}, "extra")])  # type: ignore[list-item]
        with pytest.raises(walq.ArgumentError) as delay:
            q.enqueue("t", b"", delay="9" * 100_000)  # type: ignore[arg-type]
    for e in (exc.value, bulk.value, delay.value):
        message = str(e)
        assert len(message) < 300 and "\x1b" not in message and "\n" not in message, message
    assert f"{len(key.encode())} bytes" in str(exc.value) and "\\x1b" in str(exc.value)


# -- delays ---------------------------------------------------------------------------


BAD_DELAYS = [1e308, MAX_DELAY + 1, math.inf, -math.inf, math.nan, -1.0, -1e308]


@pytest.mark.parametrize("delay", BAD_DELAYS)
def test_a_delay_out_of_bounds_is_refused_everywhere(qdir: str, delay: float) -> None:
    with open_q(qdir) as q:
        with pytest.raises(walq.ArgumentError, match="delay"):
            q.enqueue("t", b"", delay=delay)
        with pytest.raises(walq.ArgumentError, match="delay"):
            q.enqueue_many([("t", b"", {"delay": delay})])
        with pytest.raises(walq.ArgumentError, match="delay"):
            wire.make_item("t", b"", delay=delay)  # what a producer and its spool send
        q.enqueue("t", b"")
        job = q.claim()
        assert job is not None
        with pytest.raises(walq.ArgumentError, match="delay"):
            q.fail(job.id, "e", delay=delay)
        assert q.status(job.id) == "running"
        assert q.stats()["next_id"] == 2


def test_the_longest_delay_is_accepted_and_shown(qdir: str) -> None:
    with open_q(qdir) as q:
        jid = q.enqueue("t", b"", delay=MAX_DELAY)
        assert q.status(jid) == "scheduled"
    r = CliRunner().invoke(main, ["dump", qdir])
    assert r.exit_code == 0 and "due=" in r.output
    r = CliRunner().invoke(main, ["stats", qdir, "--json"])
    assert r.exit_code == 0


def test_cli_enqueue_refuses_an_absurd_delay_in_one_line(qdir: str) -> None:
    open_q(qdir).close()
    p = subprocess.run(
        [sys.executable, "-m", "walq", "enqueue", qdir, "t", "--delay", "1e308"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "10 years" in p.stderr and "internal" not in p.stderr
    with open_q(qdir) as q:
        assert q.stats()["next_id"] == 1


# -- text from users reaches the terminal escaped -------------------------------------


def test_control_characters_in_names_never_reach_the_terminal_raw(qdir: str) -> None:
    tasks = ["t\x1b]0;pwned\x07", "line\nbreak", "c1\x9b31m"]
    with open_q(qdir) as q:
        for task in tasks:
            q.enqueue(task, {"s": "\x1b[2J\u009b"}, key=task, max_attempts=1)
        for _ in tasks:
            job = q.claim()
            assert job is not None
            q.fail(job.id, "boom\x1b[31m\nTraceback\x07 line")
    outputs = [
        CliRunner().invoke(main, args)
        for args in (["stats", qdir], ["dead", "list", qdir], ["dump", qdir])
    ]
    outputs += [CliRunner().invoke(main, ["dead", "show", qdir, str(i)]) for i in (1, 2, 3)]
    for r in outputs:
        assert r.exit_code == 0, r.output
        for raw in ("\x1b", "\x07", "\x9b", "line\nbreak"):
            assert raw not in r.output, (raw, r.output)
    table = CliRunner().invoke(main, ["stats", qdir]).output
    assert '"t\\u001b]0;pwned\\u0007"' in table and '"line\\nbreak"' in table


def test_a_set_aside_spool_files_reason_is_escaped_in_stats(qdir: str) -> None:
    """The reason beside a refused spool file is program text: stats escapes it too."""
    with open_q(qdir):
        pass
    spool_dir = Path(qdir, "spool")
    spool_dir.mkdir(mode=0o700, exist_ok=True)
    Path(spool_dir, "1-x.job.rejected").write_bytes(b"")
    Path(spool_dir, "1-x.job.rejected.reason").write_text("task 't\x1b]0;pwned\x07' refused\n")
    r = CliRunner().invoke(main, ["stats", qdir])
    assert r.exit_code == 0, r.output
    assert "set aside: 1-x.job.rejected" in r.output
    assert "\x1b" not in r.output and "\x07" not in r.output


# -- descriptors: claims read before they write; few files are held open ---------------


def test_a_claim_whose_read_fails_writes_nothing_and_returns_the_jobs(qdir: str) -> None:
    with open_q(qdir, segment_size=4096) as q:
        ids = q.enqueue_many([("t", b"x" * 500) for _ in range(40)])
    q = open_q(qdir, segment_size=4096)
    try:
        real_open = q.fs.open

        def no_descriptors(path: str, **kw: Any) -> File:
            if os.path.basename(path).endswith(".wal"):
                raise OSError(errno.EMFILE, "Too many open files", path)
            return real_open(path, **kw)

        q._readers.drop(1 << 40, keep=-1)  # nothing cached: every read opens a file
        q.fs.open = no_descriptors  # type: ignore[method-assign]
        before = log_bytes(qdir)
        with pytest.raises(OSError) as exc:
            q.claim_many(len(ids))
        assert exc.value.errno == errno.EMFILE
        st = q.stats()
        assert st["running"] == 0 and st["pending"] == len(ids) and st["claimed"] == 0
        assert log_bytes(qdir) == before  # no claim record
        q.fs.open = real_open  # type: ignore[method-assign]
        jobs = q.claim_many(len(ids))
        assert [j.id for j in jobs] == ids and {j.attempt for j in jobs} == {1}
    finally:
        q.close()


SEGMENTS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from walq.directory.queue import Queue

    qdir, limit, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    q = Queue.open(qdir, segment_size=4096, serve=False, compaction=False)
    try:
        jobs = q.claim_many(n)
        q.ack_many([j.id for j in jobs])
        print(len(jobs), len(q._readers))
    finally:
        q.close()
    """
)


def test_open_and_claim_need_few_descriptors_however_many_segments(qdir: str) -> None:
    n = 1500
    with open_q(qdir, segment_size=4096, sync="never") as q:
        q.enqueue_many([("t", b"x" * 600) for _ in range(n)])
    segments = len(ops_scan.segment_seqs(qdir))
    limit = 48
    assert segments > 4 * limit
    p = subprocess.run(
        [sys.executable, "-c", SEGMENTS_SCRIPT, qdir, str(limit), str(n)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    claimed, readers = map(int, p.stdout.split())
    assert claimed == n and readers <= 16
    with open_q(qdir) as q:
        st = q.stats()
        assert st["unfinished"] == 0 and st["acked"] == 0 and st["done"] == n


# -- the read-only tools replay as the owner does ---------------------------------------


def test_stats_replays_plain_enqueues_without_decoding_them(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `walq stats` decoded every record into objects, payload and all: 3.5 times
    # the time of Queue.open on a million jobs (12+ minutes on ten million). It
    # now replays through the owner's fused path; only the other records decode.
    n = 5000
    with open_q(qdir, sync="never") as q:
        q.enqueue_many([(f"t{i % 3}", b"x" * 10) for i in range(n)])
        jobs = q.claim_many(10)
        q.ack_many([j.id for j in jobs[:4]])
    decoded: list[int] = []
    real = ev.decode

    def counting(rtype: int, body: bytes) -> Any:
        decoded.append(rtype)
        return real(rtype, body)

    monkeypatch.setattr(ev, "decode", counting)
    st = ops_stats.directory_stats(qdir)
    assert fmt.ENQUEUE not in decoded[:-1]  # (the last: the oldest pending job's created time)
    assert len(decoded) < 10
    assert st["pending"] == n - 4 and st["interrupted"] == 6 and st["done_in_log"] == 4
    assert sum(t["pending"] for t in st["tasks"].values()) == n - 4
    assert st["oldest_pending_job"] == 5


def test_a_claim_reads_a_buffered_record_from_memory_not_by_an_extra_fsync(qdir: str) -> None:
    # The read comes before the claim is written, under the queue's lock: a
    # record still in the group-commit buffer must not cost a flush there.
    with open_q(qdir) as q:
        jid = q.enqueue("t", {"n": 1}, sync=False)  # appended, not yet written
        before = q.stats()["fsyncs"]
        job = q.claim()
        assert job is not None and job.id == jid and job.payload == {"n": 1}
        assert q.stats()["fsyncs"] == before + 1  # the claim's own commit, nothing more
    with open_q(qdir) as q:
        assert q.status(jid) == "pending"  # (interrupted: its attempt counted)
        again = q.claim()
        assert again is not None and again.attempt == 2
