"""Producers in other processes: the owner's socket, the spool, and exactly-once ingestion."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import walq
from tests.procs import wait_for
from walq.cli.app import main
from walq.producers import spool, wire
from walq.producers.client import Producer, connect
from walq.producers.server import ProducerServer
from walq.testing.faultfs import SimFileSystem, SimulatedCrash

PY = sys.executable
WALQ = str(Path(sys.executable).with_name("walq"))
ROOT = str(Path(__file__).resolve().parent.parent)


def open_queue(path: str, **kw: Any) -> walq.Queue:
    """Queue.open without its own producer server (the tests start theirs)."""
    kw.setdefault("segment_size", 1 << 20)
    try:
        return walq.Queue.open(path, serve=False, **kw)
    except TypeError:  # a Queue.open that does not serve producers itself
        return walq.Queue.open(path, **kw)


@contextlib.contextmanager
def owner(path: str, *, queue_kw: Any = None, **server_kw: Any) -> Iterator[walq.Queue]:
    """An open queue with a started ProducerServer (as `q.server`)."""
    q = open_queue(path, **(queue_kw or {}))
    server = ProducerServer(q, **server_kw)
    server.start()
    q.server = server  # type: ignore[attr-defined]
    try:
        yield q
    finally:
        server.stop()
        q.close()


def drain(q: walq.Queue) -> list[Any]:
    """Claim and ack every ready job; their payloads in id order."""
    out = []
    while (job := q.claim()) is not None:
        out.append(job.payload)
        q.ack(job.id)
    return out


def pending_payloads(path: str) -> list[Any]:
    """Open the queue (ingesting the spool) and drain it."""
    with owner(path, listen=False, poll_interval=None) as q:
        return drain(q)


def spool_names(path: str, suffix: str = ".job") -> list[str]:
    """Names in the spool directory ending with `suffix`."""
    d = Path(path, spool.SPOOL_DIR)
    return sorted(n for n in os.listdir(d) if n.endswith(suffix)) if d.is_dir() else []


def run_py(code: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a fresh process; fail the test if it fails."""
    proc = subprocess.run(
        [PY, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def raw_request(address: str, data: bytes, *, close_write: bool = False) -> dict[str, Any] | None:
    """Send raw bytes to the owner's socket; its reply, or None if it closed without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(address)
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        return read_reply(s)


def read_reply(s: socket.socket) -> dict[str, Any] | None:
    """One reply frame from a socket, or None at end of stream."""
    try:
        reader = wire.Reader(s)
        length = reader.length()
        body = None if length is None else reader.body(length)
    except (ConnectionResetError, walq.ProtocolError):
        return None
    return None if body is None else wire.decode_reply(body)


def enqueue_body(*items: wire.Item) -> bytes:
    """A well-formed enqueue request body."""
    return wire.encode_body({"op": "enqueue"}, list(items))


# -- the socket, with an owner running --------------------------------------------------------


def test_socket_enqueue_from_another_process_returns_ids(qdir: str) -> None:
    """A producer process gets ids from a running owner, and the owner can claim the jobs."""
    with owner(qdir) as q:
        proc = run_py(
            """
            import json, sys, walq.producers.client as p
            with p.connect(sys.argv[1]) as prod:
                ids = [prod.enqueue("send", {"n": i}) for i in range(3)]
                ids += prod.enqueue_many([("send", b"raw"), ("send", 4, {"priority": 5})])
                print(json.dumps([ids, prod.sent]))
            """,
            qdir,
        )
        ids, sent = json.loads(proc.stdout)
        assert ids == [1, 2, 3, 4, 5]
        assert sent == {"socket": 4, "spool": 0}
        job = q.claim()
        assert job is not None and (job.id, job.payload) == (5, 4)  # the priority travelled
        assert drain(q) == [{"n": 0}, {"n": 1}, {"n": 2}, b"raw"]
        assert spool_names(qdir) == []


def test_socket_is_private_to_the_owner(qdir: str) -> None:
    """The socket file is mode 0600 in the queue directory, and gone after stop()."""
    with owner(qdir) as q:
        address = q.server.address  # type: ignore[attr-defined]
        assert address == os.path.join(os.path.realpath(qdir), wire.SOCKET_NAME)
        assert os.stat(address).st_mode & 0o777 == 0o600
        assert os.stat(os.path.join(qdir, spool.SPOOL_DIR)).st_mode & 0o777 == 0o700
    assert not os.path.exists(address)


def test_socket_key_coalesces_with_a_job_in_the_log(qdir: str) -> None:
    """A keyed enqueue through the socket returns the id of the unfinished job with that key."""
    with owner(qdir) as q, connect(qdir) as prod:
        first = q.enqueue("t", 1, key="user:7")
        assert prod.enqueue("t", 2, key="user:7") == first
        assert prod.enqueue_many([("t", 3, {"key": "user:8"}), ("t", 4, {"key": "user:8"})]) == [
            first + 1,
            first + 1,
        ]
        assert drain(q) == [1, 3]
        assert prod.enqueue("t", 5, key="user:7") == first + 2  # done: a new job


def test_socket_queue_full_and_payload_errors_map_back(qdir: str) -> None:
    """The owner's QueueFull and PayloadError reach the producer as the same classes."""
    with owner(qdir, queue_kw={"max_pending": 2, "max_payload": 100}) as q, connect(qdir) as prod:
        assert prod.enqueue("t", 1) is not None
        assert prod.enqueue("t", b"x" * 100) is not None
        with pytest.raises(walq.QueueFull, match="max_pending"):
            prod.enqueue("t", 3)
        q.ack(q.claim().id)  # type: ignore[union-attr]
        with pytest.raises(walq.PayloadError, match="max_payload"):
            prod.enqueue("t", b"x" * 101)
        with pytest.raises(walq.ArgumentError, match="priority"):
            prod.enqueue("t", 1, priority=1 << 20)  # refused before anything is sent
        assert prod.enqueue("t", 4) == 3
        assert prod.sent["spool"] == 0


def test_four_producer_processes_share_the_owner(qdir: str) -> None:
    """Concurrent producer processes each get distinct ids for every job."""
    code = """
        import json, sys, walq.producers.client
        with walq.producers.client.connect(sys.argv[1]) as prod:
            print(json.dumps([prod.enqueue("t", [sys.argv[2], i]) for i in range(50)]))
        """
    with owner(qdir) as q:
        procs = [
            subprocess.Popen(
                [PY, "-c", textwrap.dedent(code), qdir, str(n)],
                stdout=subprocess.PIPE,
                cwd=ROOT,
                text=True,
            )
            for n in range(4)
        ]
        ids = []
        for p in procs:
            out, _ = p.communicate(timeout=30)
            assert p.returncode == 0
            ids += json.loads(out)
        assert sorted(ids) == list(range(1, 201))
        assert sorted(map(tuple, drain(q))) == sorted(
            (str(n), i) for n in range(4) for i in range(50)
        )


def test_a_long_directory_path_uses_an_abstract_socket(tmp_path: Path) -> None:
    """When DIR/walq.sock does not fit in sun_path, the owner listens on an abstract socket."""
    deep = tmp_path.joinpath(*(["d" * 40] * 3), "q")
    path = str(deep)
    address = wire.socket_address(path)
    assert address is not None and address.startswith("\0walq-")
    with owner(path) as q, connect(path) as prod:
        assert prod.enqueue("t", 1) == 1
        assert not deep.joinpath(wire.SOCKET_NAME).exists()
        assert drain(q) == [1]


def test_a_stale_socket_file_means_no_owner(qdir: str) -> None:
    """A socket left by a dead owner refuses connections: the producer spools; a new owner binds."""
    os.makedirs(qdir, mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(qdir, wire.SOCKET_NAME))
    stale.close()
    with connect(qdir) as prod:
        assert prod.enqueue("t", "spooled") is None
        with owner(qdir) as q:
            assert prod.enqueue("t", "direct") == 2
            assert drain(q) == ["spooled", "direct"]


def test_stop_removes_the_socket_and_producers_fall_back_to_the_spool(qdir: str) -> None:
    """After stop() a producer's next enqueue, even on a pooled connection, goes to the spool."""
    q = open_queue(qdir)
    server = ProducerServer(q, poll_interval=None)
    server.start()
    with connect(qdir) as prod:
        assert prod.enqueue("t", 1) == 1
        server.stop()
        assert prod.enqueue("t", 2) is None
    assert len(spool_names(qdir)) == 1
    q.close()
    assert pending_payloads(qdir) == [1, 2]


def test_too_many_connections_fall_back_to_the_spool(qdir: str) -> None:
    """Past max_connections the owner answers ServerBusy and the producer spools instead."""
    with owner(qdir, max_connections=1, poll_interval=0.05) as q:
        address = q.server.address  # type: ignore[attr-defined]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hog:
            hog.connect(address)
            wait_for(lambda: len(q.server._conns) == 1)  # type: ignore[attr-defined]
            with connect(qdir) as prod:
                assert prod.enqueue("t", "spooled") is None
            wait_for(lambda: q.stats()["pending"] == 1)
        assert drain(q) == ["spooled"]
        assert q.server.counters["busy"] >= 1  # type: ignore[attr-defined]


def test_a_producer_of_another_uid_is_refused(qdir: str) -> None:
    """SO_PEERCRED: a connection from a uid other than the owner's gets an error, no job."""
    with owner(qdir) as q:
        q.server._uid = os.geteuid() + 1  # type: ignore[attr-defined]  # pose as another user's owner
        with connect(qdir) as prod, pytest.raises(walq.ProtocolError, match="may not enqueue"):
            prod.enqueue("t", 1)
        assert q.stats()["pending"] == 0
        assert q.server.counters["refused"] == 1  # type: ignore[attr-defined]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_real_process_of_another_uid_is_refused(tmp_path: Path) -> None:
    """A process running as nobody reaches the abstract socket but is refused by SO_PEERCRED."""
    path = str(tmp_path.joinpath(*(["d" * 40] * 3), "q"))
    with owner(path) as q:
        address = q.server.address  # type: ignore[attr-defined]
        assert address.startswith("\0")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(r)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5.0)
                    s.connect(address)  # the refusal comes before any request is read
                    os.write(w, json.dumps(read_reply(s)).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            reply = json.loads(f.read())
        os.waitpid(pid, 0)
        assert reply["ok"] is False and reply["error"] == "ProtocolError"
        assert "uid 65534 may not enqueue" in reply["message"]
        assert q.stats()["pending"] == 0


def test_the_producer_refuses_a_socket_served_by_another_uid(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer never sends jobs to a listener run by another user: it spools them."""
    with owner(qdir, poll_interval=None) as q:
        monkeypatch.setattr(wire, "peer_uid", lambda sock: os.geteuid() + 1)
        with connect(qdir) as prod:
            assert prod.enqueue("t", 1) is None
            assert prod.sent == {"socket": 0, "spool": 1}
        assert q.stats()["pending"] == 0 and len(spool_names(qdir)) == 1


# -- malformed requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (wire.frame(b"\x01"), "shorter than its header length"),
        (wire.frame(struct.pack("<I", 99) + b"{}"), "runs past"),
        (wire.frame(struct.pack("<I", 3) + b"{x}"), "not JSON"),
        (wire.frame(struct.pack("<I", 2) + b"[]"), "not a JSON object"),
        (wire.frame(wire.encode_body({"op": "launch"}, [])), "unknown op"),
        (wire.frame(enqueue_body(wire.make_item("t", 1)) + b"junk"), "after its payloads"),
        (
            wire.frame(
                wire.encode_body({"op": "enqueue"}, [wire.Item(task="t", kind=0, data=b"{")])
            ),
            "not JSON",
        ),
        (
            wire.frame(
                wire.encode_body(
                    {"op": "enqueue"}, [wire.Item(task="t", kind=1, data=b"", delay=-1)]
                )
            ),
            "delay",
        ),
    ],
)
def test_malformed_requests_get_an_error_and_the_connection_goes_on(
    qdir: str, data: bytes, match: str
) -> None:
    """A malformed request is answered with an error; the same connection then works."""
    with owner(qdir) as q, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(q.server.address)  # type: ignore[attr-defined]
        s.sendall(data)
        reply = read_reply(s)
        assert reply is not None and reply["ok"] is False, reply
        assert match in reply["message"]
        s.sendall(wire.frame(enqueue_body(wire.make_item("t", "fine"))))
        assert read_reply(s) == {"ok": True, "ids": [1]}


def test_oversized_truncated_and_stalled_messages_never_stop_the_server(qdir: str) -> None:
    """Oversized and stalled messages get an error, truncated ones are dropped; serving goes on."""
    with owner(qdir, io_timeout=0.3, max_message=1 << 20) as q:
        address = q.server.address  # type: ignore[attr-defined]
        reply = raw_request(address, struct.pack("<I", (1 << 20) + 1))
        assert reply is not None and "exceeds" in reply["message"]
        assert raw_request(address, struct.pack("<I", 100) + b"x" * 10, close_write=True) is None
        assert raw_request(address, struct.pack("<I", 100)[:2], close_write=True) is None
        t0 = time.monotonic()
        reply = raw_request(address, struct.pack("<I", 100) + b"x" * 10)  # then silence
        assert reply is not None and "truncated" in reply["message"]
        assert time.monotonic() - t0 < 3.0
        with connect(qdir) as prod:
            assert prod.enqueue("t", "still serving") == 1
        assert drain(q) == ["still serving"]


def test_an_idle_connection_is_closed_and_the_producer_reconnects(qdir: str) -> None:
    """The owner drops idle connections; a producer notices and opens a fresh one."""
    with owner(qdir, idle_timeout=0.2) as q, connect(qdir) as prod:
        assert prod.enqueue("t", 1) == 1
        wait_for(lambda: not q.server._conns)  # type: ignore[attr-defined]
        assert prod.enqueue("t", 2) == 2
        assert prod.sent == {"socket": 2, "spool": 0}


@given(st.binary(max_size=300))
def test_decode_body_parses_or_raises_protocol_error(data: bytes) -> None:
    """Any bytes either decode or raise ProtocolError, never another exception."""
    with contextlib.suppress(walq.ProtocolError):
        wire.decode_body(data)


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.one_of(st.binary(max_size=50), st.integers(), st.text(max_size=20), st.none()),
            st.one_of(st.none(), st.text(max_size=10)),
            st.integers(-(1 << 15), (1 << 15) - 1),
        ),
        max_size=5,
    )
)
def test_requests_round_trip(entries: list[tuple[str, Any, str | None, int]]) -> None:
    """encode_body then decode_body gives back the same items, byte for byte."""
    items = [wire.make_item(t, p, key=k, priority=prio) for t, p, k, prio in entries]
    body = wire.encode_body({"op": "enqueue"}, items)
    header, back = wire.decode_body(body)
    assert header["op"] == "enqueue"
    assert back == items
    for data in (body[:-1], body + b"\0"):
        with contextlib.suppress(walq.ProtocolError):
            assert wire.decode_body(data)[1] != items


# -- the spool, with no owner running -----------------------------------------------------------


def test_spool_without_owner_then_the_owner_ingests_exactly_once(qdir: str) -> None:
    """With no owner, enqueue returns None once durable; the next owner ingests each job once."""
    proc = run_py(
        """
        import json, sys, walq.producers.client as p
        with p.connect(sys.argv[1]) as prod:
            out = [prod.enqueue("t", i) for i in range(3)]
            out.append(prod.enqueue_many([("t", 3), ("t", 4)]))
            print(json.dumps([out, prod.sent]))
        """,
        qdir,
    )
    out, sent = json.loads(proc.stdout)
    assert out == [None, None, None, None]
    assert sent == {"socket": 0, "spool": 4}
    names = spool_names(qdir)
    assert len(names) == 4
    assert os.stat(os.path.join(qdir, spool.SPOOL_DIR)).st_mode & 0o777 == 0o700
    assert os.stat(qdir).st_mode & 0o777 == 0o700
    for name in names:
        assert os.stat(os.path.join(qdir, spool.SPOOL_DIR, name)).st_mode & 0o777 == 0o600
    with owner(qdir) as q:
        assert q.stats()["pending"] == 5
        assert spool_names(qdir) == []
    with owner(qdir) as q:  # reopened: nothing ingested twice
        assert drain(q) == [0, 1, 2, 3, 4]


def test_a_running_owner_picks_up_spooled_jobs(qdir: str) -> None:
    """Files spooled while the owner runs are ingested by its poll (or at once, when poked)."""
    with owner(qdir, poll_interval=30.0) as q:
        with connect(qdir, use_socket=False) as prod:
            assert prod.enqueue("t", "a") is None
        time.sleep(0.1)
        assert q.stats()["pending"] == 0  # not polled yet
        reply = raw_request(q.server.address, wire.frame(wire.encode_body({"op": "poke"}, [])))  # type: ignore[attr-defined]
        assert reply == {"ok": True}
        wait_for(lambda: q.stats()["pending"] == 1)
    with owner(qdir, poll_interval=0.05) as q:
        with connect(qdir, use_socket=False) as prod:
            prod.enqueue("t", "b")
        wait_for(lambda: q.stats()["pending"] == 2)
        assert drain(q) == ["a", "b"]


def test_spool_coalesces_keys(qdir: str) -> None:
    """A keyed job waits in a file named from its key; a second enqueue with that key joins it."""
    with connect(qdir) as prod:
        assert prod.enqueue("t", "first", key="k") is None
        assert prod.enqueue("t", "second", key="k") is None
        assert (
            prod.enqueue_many([("t", "x", {"key": "j"}), ("t", "y", {"key": "j"}), ("t", "z")])
            is None
        )
        names = spool_names(qdir)
        assert len(names) == 3
        assert sum(n.startswith("key-" + spool.key_hash("k")) for n in names) == 1
    with owner(qdir) as q:
        assert q.stats()["pending"] == 3
        with connect(qdir, use_socket=False) as prod:
            prod.enqueue("t", "third", key="k")  # spooled while a job with the key is pending
        q.server.ingest()  # type: ignore[attr-defined]
        assert drain(q) == ["first", "x", "z"]


def test_spool_caps_refuse_with_queue_full(qdir: str) -> None:
    """Past max_spool_files or max_spool_bytes the producer gets QueueFull and leaves nothing."""
    with connect(qdir, max_spool_files=2) as prod:
        prod.enqueue("t", 1)
        prod.enqueue("t", 2, key="k")
        with pytest.raises(walq.QueueFull, match="max_spool_files"):
            prod.enqueue("t", 3)
        assert prod.enqueue("t", 4, key="k") is None  # coalesces: takes no room
    with connect(qdir, max_spool_bytes=1000) as prod, pytest.raises(walq.QueueFull, match="bytes"):
        prod.enqueue("t", "x" * 1000)
    assert len(spool_names(qdir)) == 2
    assert spool_names(qdir, ".tmp") == []
    assert pending_payloads(qdir) == [1, 2]


def test_spooled_delay_counts_from_the_enqueue(qdir: str) -> None:
    """A delay runs from when the producer spooled the job, not from ingestion."""
    with connect(qdir) as prod:
        prod.enqueue("t", "late", delay=0.3)
        prod.enqueue("t", "later", delay=60.0)
    time.sleep(0.4)
    with owner(qdir) as q:
        assert drain(q) == ["late"]
        assert q.stats()["scheduled"] == 1


def test_damaged_and_refused_spool_files_are_set_aside(qdir: str) -> None:
    """A file with a bad checksum, or one the queue refuses, is renamed aside; the rest go in."""
    with connect(qdir) as prod:
        prod.enqueue("t", "ok1")
        prod.enqueue("t", b"x" * 200)  # larger than the owner's max_payload
        prod.enqueue("t", "ok2")
    first = os.path.join(qdir, spool.SPOOL_DIR, spool_names(qdir)[0])
    with open(first, "r+b") as f:
        f.seek(20)
        f.write(b"\xff")
    with owner(qdir, queue_kw={"max_payload": 100}) as q:
        assert drain(q) == ["ok2"]
        assert q.server.counters["damaged_files"] == 1  # type: ignore[attr-defined]
        assert q.server.counters["rejected_files"] == 1  # type: ignore[attr-defined]
    assert spool_names(qdir) == []
    assert len(spool_names(qdir, spool.DAMAGED)) == len(spool_names(qdir, spool.REJECTED)) == 1


def test_queue_full_leaves_spooled_jobs_waiting(qdir: str) -> None:
    """When the owner's cap refuses ingestion, the files wait in the spool for room."""
    with connect(qdir) as prod:
        for i in range(3):
            prod.enqueue("t", i)
    with owner(qdir, queue_kw={"max_pending": 2}, poll_interval=0.05) as q:
        assert q.stats()["pending"] == 2
        assert len(spool_names(qdir)) == 1
        q.ack(q.claim().id)  # type: ignore[union-attr]
        wait_for(lambda: spool_names(qdir) == [])
        assert drain(q) == [1, 2]


def test_old_tmp_files_are_removed_and_young_ones_kept(qdir: str) -> None:
    """A producer's .tmp older than a minute is a dead producer's: removed, never ingested."""
    d = Path(qdir, spool.SPOOL_DIR)
    d.mkdir(parents=True)
    body = spool.encode([wire.make_item("t", "half")], wall=time.time())
    old = f"{time.time_ns() - 2 * spool.TMP_MAX_AGE_NS:020d}-1-{'0' * 16}.tmp"
    young = f"{time.time_ns():020d}-1-{'1' * 16}.tmp"
    for name in (old, young):
        d.joinpath(name).write_bytes(body)
    with owner(qdir) as q:
        assert q.stats()["pending"] == 0
    assert sorted(os.listdir(d)) == [".lock", young] or sorted(os.listdir(d)) == [young]


# -- crashes ----------------------------------------------------------------------------------


def _spool_sample(fs: SimFileSystem) -> list[Any]:
    """Spool a mix of batches and keyed jobs on a simulated disk; the payloads expected."""
    expected: list[Any] = []
    with connect("/q", fs=fs, use_socket=False) as prod:
        for i in range(4):
            prod.enqueue_many([("t", f"b{i}-{j}") for j in range(3)])
            prod.enqueue("t", f"k{i}", key=f"k{i}")
            expected += [f"b{i}-{j}" for j in range(3)] + [f"k{i}"]
    return sorted(expected)


def _sim_owner(fs: SimFileSystem, **server_kw: Any) -> tuple[walq.Queue, ProducerServer]:
    q = open_queue("/q", fs=fs, segment_size=4096)
    return q, ProducerServer(q, listen=False, poll_interval=None, **server_kw)


def _ingested(fs: SimFileSystem) -> list[Any]:
    q, server = _sim_owner(fs)
    server.start()
    try:
        return sorted(drain(q))
    finally:
        q.close()


def test_owner_crash_at_any_point_of_ingestion_loses_and_duplicates_nothing() -> None:
    """Crash the owner at every file-system call of an ingestion (power loss too): exactly once."""
    base = SimFileSystem()
    expected = _spool_sample(base)
    probe = base.snapshot(mode="clean")
    q, server = _sim_owner(probe, batch_items=2)
    first = probe.calls
    server.start()
    last = probe.calls
    q.close()
    rng = random.Random(9)
    for call in range(first, last):
        for mode in ("clean", "durable", "prefix", "any"):
            fs = base.snapshot(mode="clean")
            q, server = _sim_owner(fs, batch_items=2)
            fs.crash_at_call(call)
            with pytest.raises(SimulatedCrash):
                server.start()
            disk = fs.crash(random.Random(rng.random()), mode=mode)
            assert _ingested(disk) == expected, (call, mode)


def test_owner_crash_between_enqueue_and_unlink_does_not_ingest_twice() -> None:
    """The files an owner enqueued but did not unlink are recognised by their origins on reopen."""
    base = SimFileSystem()
    expected = _spool_sample(base)
    for nth in range(1, 9):
        fs = base.snapshot(mode="clean")
        _, server = _sim_owner(fs, batch_items=4)
        fs.crash_on("remove", nth=nth)
        with pytest.raises(SimulatedCrash):
            server.start()
        disk = fs.crash(mode="durable")
        q2, server2 = _sim_owner(disk)
        assert q2.replayed_origins  # what the crashed owner had enqueued
        server2.start()
        assert sorted(drain(q2)) == expected
        q2.close()


def test_a_file_cut_short_by_a_crash_is_split_not_repeated() -> None:
    """Items of a file already in the log stay out; the rest move to a file of their own, once."""
    base = SimFileSystem()
    with connect("/q", fs=base, use_socket=False) as prod:
        prod.enqueue_many([("t", "a0"), ("t", "a1"), ("t", "a2")])
    entry = spool.parse_name(base.listdir("/q/spool")[-1])
    assert entry is not None
    q = open_queue("/q", fs=base, segment_size=4096)
    q.enqueue_many([("t", "a0", {"origin": spool.origin(entry.stem, 0)})])  # as a crash left it
    q.close()
    for nth in (1, 2, None):  # crash at the first or second removal, or not at all
        fs = base.snapshot(mode="clean")
        if nth is None:
            q, server = _sim_owner(fs)  # settles the file at open (serve=False)
            server.start()
            assert sorted(drain(q)) == ["a0", "a1", "a2"]
            assert server.counters["ingested_jobs"] == 2
            q.close()
            continue
        fs.crash_on("remove", nth=nth)  # the old file's (at open), the remainder's (ingested)
        with pytest.raises(SimulatedCrash):
            q, server = _sim_owner(fs)
            server.start()
        for _ in range(2):  # and once more, crashing before the old file's removal is durable
            fs = fs.crash(mode="durable")
            fs.crash_on("remove", nth=1)
            with contextlib.suppress(SimulatedCrash):
                q, server = _sim_owner(fs)
                server.start()
        assert _ingested(fs.crash(mode="durable")) == ["a0", "a1", "a2"]


def test_compaction_after_ingestion_brings_nothing_back(qdir: str) -> None:
    """Once ingested and removed, spooled jobs stay single even when compaction drops origins."""
    with connect(qdir) as prod:
        for i in range(20):
            prod.enqueue_many([("t", [i, "a"]), ("t", [i, "b"])])
    with owner(qdir, queue_kw={"segment_size": 4096}) as q:
        assert q.stats()["pending"] == 40
        for _ in range(10):
            job = q.claim()
            assert job is not None
            q.ack(job.id)
        if hasattr(q, "compact"):
            q.compact()
    with owner(qdir) as q:
        assert len(drain(q)) == 30


def test_producer_crash_at_any_point_leaves_a_whole_job_or_none() -> None:
    """Crash a spooling producer at every call, power loss included: no half job, ever."""
    for call in range(40):
        for mode in ("clean", "durable", "any"):
            fs = SimFileSystem()
            fs.crash_at_call(call)
            returned = False
            with contextlib.suppress(SimulatedCrash):
                connect("/q", fs=fs, use_socket=False).enqueue("t", {"whole": "x" * 3000})
                returned = True
            disk = fs.crash(random.Random(call), mode=mode)
            if not disk.is_dir("/q"):
                assert not returned
                continue
            got = _ingested(disk)
            assert got in ([], [{"whole": "x" * 3000}]), (call, mode)
            assert got or not returned, (call, mode)


def _spool_loop_code() -> str:
    return """
        import hashlib, os, sys, walq.producers.client as p
        prod = p.connect(sys.argv[1], use_socket=False)
        i = 0
        while True:
            blob = os.urandom(40000) + i.to_bytes(4, "little")
            prod.enqueue("t", hashlib.sha256(blob).digest() + blob)
            i += 1
            if i == 1:
                print("go", flush=True)
        """


def test_producers_killed_mid_enqueue_leave_no_half_job(qdir: str) -> None:
    """SIGKILLed producer processes leave whole jobs or .tmp files, never a half job."""
    for _ in range(6):
        proc = subprocess.Popen(
            [PY, "-c", textwrap.dedent(_spool_loop_code()), qdir],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        time.sleep(random.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    spooled = len(spool_names(qdir))
    assert spooled >= 6
    payloads = pending_payloads(qdir)
    assert len(payloads) == spooled
    for blob in payloads:
        assert hashlib.sha256(blob[32:]).digest() == blob[:32]


def test_owner_processes_killed_while_ingesting_lose_and_duplicate_nothing(qdir: str) -> None:
    """kill -9 loops of a real owner ingesting a spool of many files: each job exactly once."""
    n_files = 120
    with connect(qdir) as prod:
        for i in range(n_files):
            prod.enqueue_many([("t", [i, "0"]), ("t", [i, "1"])] if i % 3 else [("t", [i, "0"])])
            if i % 10 == 0:
                prod.enqueue("t", [i, "k"], key=f"k{i}")
    expected = sorted(
        [[i, "0"] for i in range(n_files)]
        + [[i, "1"] for i in range(n_files) if i % 3]
        + [[i, "k"] for i in range(0, n_files, 10)]
    )
    code = f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        from test_producer import open_queue
        from walq.producers.server import ProducerServer
        q = open_queue(sys.argv[1])
        print("open", flush=True)
        ProducerServer(q, poll_interval=None, batch_items=3).start()
        print("done", flush=True)
        """
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(
            [PY, "-c", textwrap.dedent(code), qdir], stdout=subprocess.PIPE, cwd=ROOT
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        time.sleep(random.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.stdout.read() != b"done\n"
        proc.stdout.close()
        if not spool_names(qdir):
            break
    assert kills >= 1
    assert sorted(pending_payloads(qdir)) == expected


needs_serving_open = pytest.mark.skipif(
    "serve" not in inspect.signature(walq.Queue.open).parameters,
    reason="Queue.open does not start a ProducerServer yet",
)


@needs_serving_open
def test_queue_open_serves_producers_and_ingests_the_spool(qdir: str) -> None:
    """Queue.open (serve=True, the default) ingests the spool and answers producers; close stops."""
    with connect(qdir) as prod:
        assert prod.enqueue("t", "spooled") is None
        with walq.Queue.open(qdir) as q:
            assert q.stats()["pending"] == 1
            assert prod.enqueue("t", "direct") == 2
            address = wire.socket_address(qdir)
            assert address is not None and os.path.exists(address)
            assert drain(q) == ["spooled", "direct"]
        assert not os.path.exists(address)
        assert prod.enqueue("t", "after close") is None


@needs_serving_open
def test_the_spool_is_settled_before_the_compactor_starts(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue.open settles what a crashed owner left in the spool before compaction can run."""
    from walq.directory.compactor import Compactor

    with connect(qdir) as prod:
        prod.enqueue("t", "ingested before a crash")
    (name,) = spool_names(qdir)
    entry = spool.parse_name(name)
    assert entry is not None
    q = open_queue(qdir)
    q.enqueue_many([("t", "ingested before a crash", {"origin": spool.origin(entry.stem, 0)})])
    q.close()  # as an owner that crashed before removing the file leaves it
    seen: list[list[str]] = []
    start = Compactor.start

    def spy(self: Compactor) -> None:
        seen.append(spool_names(qdir))
        start(self)

    monkeypatch.setattr(Compactor, "start", spy)
    with walq.Queue.open(qdir) as q:
        assert drain(q) == ["ingested before a crash"]
    assert seen == [[]]


# -- the command line ---------------------------------------------------------------------------


def test_cli_enqueue_with_and_without_an_owner(qdir: str) -> None:
    """`walq enqueue` gets an id from a running owner, and from the queue itself when none runs."""
    open_queue(qdir).close()  # the command wants an existing queue (a typo must not make one)
    runner = CliRunner()
    result = runner.invoke(main, ["enqueue", qdir, "t", "--payload", '{"a": 1}', "--key", "k"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1"  # no owner: the command took the lock and enqueued
    with owner(qdir) as q:
        result = runner.invoke(main, ["enqueue", qdir, "t", "--payload", "[2]"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "2"
        result = runner.invoke(main, ["enqueue", qdir, "t", "--payload", "{bad"])
        assert result.exit_code == 2
        assert drain(q) == [{"a": 1}, [2]]


def test_cli_enqueue_in_a_real_process(qdir: str) -> None:
    """The installed `walq enqueue` command works with and without an owner running."""
    open_queue(qdir).close()
    cmd = [WALQ, "enqueue", qdir, "t", "--payload", '{"n": 1}']
    alone = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() == "1"
    with owner(qdir) as q:
        cmd[-1] = '{"n": 2}'
        direct = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        assert direct.returncode == 0, direct.stderr
        assert direct.stdout.strip() == "2"
        assert drain(q) == [{"n": 1}, {"n": 2}]


# -- the producer object --------------------------------------------------------------------------


def fork_enqueuing(prod: Producer) -> int:
    """fork(); the child enqueues ("t", "child") through `prod` and exits 0 if its id is 2."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if prod.enqueue("t", "child") == 2 else 3
        finally:
            os._exit(code)
    return pid


def test_a_forked_child_opens_its_own_connection(qdir: str) -> None:
    """A producer inherited through fork() never shares its parent's socket."""
    with owner(qdir) as q, connect(qdir) as prod:
        assert prod.enqueue("t", "parent") == 1
        pid = fork_enqueuing(prod)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert prod.enqueue("t", "parent again") == 3
        assert drain(q) == ["parent", "child", "parent again"]


def test_backlog_counts_what_waits_in_the_spool(qdir: str) -> None:
    """spool.backlog reports the files and bytes waiting for an owner."""
    assert spool.backlog(walq.directory.fs.OsFileSystem(), qdir) == {
        "files": 0,
        "bytes": 0,
        "set_aside": 0,
    }
    with connect(qdir) as prod:
        prod.enqueue("t", 1)
        prod.enqueue("t", 2, key="k")
    got = spool.backlog(walq.directory.fs.OsFileSystem(), qdir)
    assert got["files"] == 2 and got["bytes"] > 0 and got["set_aside"] == 0


def test_a_closed_producer_refuses(qdir: str) -> None:
    """enqueue after close() raises ClosedError."""
    prod = connect(qdir)
    prod.close()
    with pytest.raises(walq.ClosedError):
        prod.enqueue("t", 1)


def test_bad_arguments_are_refused_before_anything_is_written(qdir: str) -> None:
    """Argument and payload errors come from the producer itself; nothing reaches the disk."""
    prod = Producer(qdir)
    with pytest.raises(walq.PayloadError):
        prod.enqueue("t", {1, 2})
    with pytest.raises(walq.ArgumentError):
        prod.enqueue("", 1)
    with pytest.raises(walq.ArgumentError, match="unknown enqueue options"):
        prod.enqueue_many([("t", 1, {"origin": "forged"})])
    with pytest.raises(walq.ArgumentError):
        connect(qdir, max_spool_files=0)
    assert not os.path.exists(qdir)


# -- after=, run_at=, unique_for= through a producer (docs/FLOW.md, docs/SCHEDULES.md) -----


def _at(seconds: float) -> Any:
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def test_socket_producer_takes_after_run_at_and_unique_for(qdir: str) -> None:
    """connect(DIR) through the owner: the options of Queue.enqueue, checked the same way."""
    with owner(qdir) as q, connect(qdir) as prod:
        a = prod.enqueue("a", 1)
        assert a is not None
        dep = prod.enqueue("d", 2, after=[a], key="dk", unique_for=60)
        later = prod.enqueue("l", 3, run_at=_at(3600))
        ids = prod.enqueue_many([("m", 4, {"after": [a], "after_policy": "always"}),
                                 ("u", 5, {"key": "uk", "unique_for": 60})])  # fmt: skip
        assert prod.sent == {"socket": 4, "spool": 0}
        assert dep is not None and later is not None and ids is not None
        assert [q.status(i) for i in (dep, later, *ids)] == [
            "waiting", "scheduled", "waiting", "pending"]  # fmt: skip
        assert q.job_detail(later)["due_in"] > 3500
        with pytest.raises(walq.UnknownJobError):
            prod.enqueue("d", 2, after=[10**9])
        for options, message in (
            ({"run_at": _at(0).replace(tzinfo=None)}, "naive"),
            ({"unique_for": 60}, "unique_for needs a key"),
            ({"unique_for": -1, "key": "k"}, "unique_for must be"),
            ({"after": [0]}, "job ids"),
            ({"after_policy": "sometimes", "after": [a]}, "after_policy"),
            ({"run_at": _at(0), "delay": 5}, "delay or run_at"),
        ):
            with pytest.raises(walq.ArgumentError, match=message):
                prod.enqueue("x", 1, **options)
        q.ack(q.claim(tasks=["a"]).id)  # type: ignore[union-attr]
        assert q.status(dep) == "pending"
        q.ack(q.claim(tasks=["d"]).id)  # type: ignore[union-attr]
        assert prod.enqueue("d", 9, key="dk") == dep  # remembered once done


def test_spooled_dependents_and_remembered_keys_are_ingested_once(qdir: str) -> None:
    """With no owner, after=, run_at= and unique_for= travel in the spool file; a parent
    unknown at ingestion sets its file aside, with why."""
    with open_queue(qdir) as q:
        a = q.enqueue("a", 1)
    with connect(qdir) as prod:
        assert prod.enqueue("d", 2, after=[a]) is None
        prod.enqueue("l", 3, run_at=_at(3600))
        prod.enqueue_many([("u", 4, {"key": "uk", "unique_for": 60}), ("p", 5)])
        prod.enqueue("bad", 6, after=[10**6])
    with owner(qdir) as q:
        rows = {r["task"]: r["status"] for r in q.jobs()}
        assert rows == {"a": "pending", "d": "waiting", "l": "scheduled", "u": "pending",
                        "p": "pending"}  # fmt: skip
        assert q.server.counters["rejected_files"] == 1  # type: ignore[attr-defined]
        u = q.find("uk")
        assert u is not None
        while (job := q.claim()) is not None:
            q.ack(job.id)
        assert q.enqueue("u", 4, key="uk") == u  # remembered once done
    assert len(spool_names(qdir, spool.REJECTED)) == 1
    with owner(qdir) as q:  # reopened: nothing ingested twice
        assert sorted(r["task"] for r in q.jobs()) == ["l"]


def test_owner_crash_after_enqueueing_spooled_dependents_does_not_ingest_them_twice() -> None:
    """A dependent's origin is in its after record: the next owner knows it was ingested."""
    base = SimFileSystem()
    q, _ = _sim_owner(base)
    parent = q.enqueue("t", "parent")
    q.close()
    with connect("/q", fs=base, use_socket=False) as prod:
        for i in range(3):
            prod.enqueue("t", f"d{i}", after=[parent])
    fs = base.snapshot(mode="clean")
    _, server = _sim_owner(fs, batch_items=4)
    fs.crash_on("remove", nth=1)
    with pytest.raises(SimulatedCrash):
        server.start()
    q2, server2 = _sim_owner(fs.crash(mode="durable"))
    assert len(q2.replayed_origins) == 3
    server2.start()
    assert drain(q2) == ["parent", "d0", "d1", "d2"]
    q2.close()
