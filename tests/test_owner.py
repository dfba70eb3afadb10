"""One owner per queue directory: fork() children, a deleted LOCK, the producers' socket."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import walq
from tests.procs import wait_for
from tests.test_producer import fork_enqueuing
from tests.test_producer import run_py as run_snippet
from walq.ops import owner as ops_owner
from walq.ops import repair as ops_repair
from walq.producers import wire

PY = sys.executable
ROOT = str(Path(__file__).resolve().parent.parent)


def run_py(code: str, *args: str, timeout: float = 60.0) -> dict[str, object]:
    """Run a Python snippet in a fresh process; its last stdout line, parsed as JSON."""
    proc = run_snippet(code, *args, timeout=timeout)
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


# -- fork() ----------------------------------------------------------------------------------

FORK_SCRIPT = """
    import json, os, sys, threading, walq

    path = sys.argv[1]
    out = {}
    with walq.Queue.open(path, segment_size=1 << 16) as q:
        acked = [q.enqueue("t", i) for i in range(200)]
        # A thread of the parent holds the queue busy while the fork happens.
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                q.stats()
        t = threading.Thread(target=busy)
        t.start()
        pid = os.fork()
        if pid == 0:
            # The child: every call refuses; leaving the with block closes the queue.
            errors = []
            for call in (lambda: q.enqueue("t", "child"), q.claim, q.sync,
                         lambda: q.enqueue_many([("t", 1)])):
                try:
                    call()
                    errors.append("no error")
                except walq.WalqError as exc:
                    errors.append(type(exc).__name__ + ": " + str(exc))
            with open(os.path.join(os.path.dirname(path), "child.json"), "w") as f:
                json.dump(errors, f)
        else:
            stop.set()
            t.join()
            _, status = os.waitpid(pid, 0)
            out["child_exit"] = os.waitstatus_to_exitcode(status)
            # The child's exit (and its close) released nothing of the parent's.
            try:
                walq.Queue.open(path, serve=False, compaction=False).close()
                out["second_open"] = "succeeded"
            except walq.LockedError:
                out["second_open"] = "LockedError"
            out["socket_left"] = os.path.exists(os.path.join(path, "walq.sock"))
            with walq.connect(path) as prod:
                out["via_socket"] = prod.enqueue("t", "producer") is not None
            acked += [q.enqueue("t", i) for i in range(200, 400)]
            out["acked"] = len(acked)
    if pid:
        print(json.dumps(out))
"""


def test_a_forked_child_refuses_to_use_the_queue_and_releases_nothing(tmp_path: Path) -> None:
    """A fork() child gets ForkedError for every call; its exit leaves the parent's queue whole."""
    path = str(tmp_path / "q")
    out = run_py(FORK_SCRIPT, path)
    child = json.loads((tmp_path / "child.json").read_text())
    assert out["child_exit"] == 0
    assert len(child) == 4
    for error in child:
        assert error.startswith("ForkedError: "), child
        assert path in error and "fork()" in error
    assert out["second_open"] == "LockedError"  # the parent still owns the directory
    assert out["socket_left"] is True
    assert out["via_socket"] is True
    with walq.Queue.open(path, serve=False) as q:
        assert q.stats()["pending"] == 401  # every acknowledged job, none of the child's
    report = ops_repair.fsck(path)
    assert not report.problems


def test_a_queue_opened_after_the_fork_works_in_the_child(qdir: str) -> None:
    """The rule is per process: a child that opens the queue itself (the parent closed it) may."""
    with walq.Queue.open(qdir, serve=False) as q:
        q.enqueue("t", "parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with walq.Queue.open(qdir, serve=False, compaction=False) as q:
                q.enqueue("t", "child")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with walq.Queue.open(qdir, serve=False) as q:
        assert q.stats()["pending"] == 2


REDIS_FORK_SCRIPT = """
    import json, os, sys, warnings, walq

    warnings.simplefilter("ignore")  # a test server without appendfsync always
    url = sys.argv[1]
    out = {}
    q = walq.Queue.open(url)
    first = q.enqueue("t", "parent")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            q.enqueue("t", "child")
        except walq.ForkedError as exc:
            code = 0 if url.split("?")[0] in str(exc) or "fork()" in str(exc) else 2
        q.close()  # forgets: the parent's connections are not the child's to close
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    out["child_exit"] = os.waitstatus_to_exitcode(status)
    out["second"] = q.enqueue("t", "parent again")
    out["pending"] = q.stats()["pending"]
    q.close()
    print(json.dumps(out))
"""


@pytest.mark.redis
@pytest.mark.skipif(not os.environ.get("WALQ_REDIS_URL"), reason="needs WALQ_REDIS_URL")
def test_a_forked_child_refuses_a_redis_queue() -> None:
    """A RedisQueue used in a fork() child raises ForkedError; the parent's connection goes on."""
    import uuid

    import redis

    base = os.environ["WALQ_REDIS_URL"]
    prefix = f"walqtest-{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}prefix={prefix}"
    try:
        out = run_py(REDIS_FORK_SCRIPT, url)
    finally:
        client = redis.Redis.from_url(base)
        names = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if names:
            client.delete(*names)
        client.close()
    assert out["child_exit"] == 0
    assert out["pending"] == 2


# -- the lock file deleted under a running owner -----------------------------------------------

OWNER_SCRIPT = """
    import json, os, signal, sys, time, walq

    path, ready = sys.argv[1], sys.argv[2]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    acked = 0
    with walq.Queue.open(path, segment_size=1 << 16) as q:
        open(ready, "w").close()
        while not stop:
            q.enqueue("t", acked)
            acked += 1
            time.sleep(0.001)
    print(json.dumps({"acked": acked}))
"""


def test_deleting_lock_under_a_running_owner_lets_no_second_owner_in(tmp_path: Path) -> None:
    """With LOCK deleted, a second opener still gets LockedError and the log stays whole."""
    path = str(tmp_path / "q")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [PY, "-c", textwrap.dedent(OWNER_SCRIPT), path, str(ready)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(ready.exists)
        os.remove(os.path.join(path, "LOCK"))  # an operator "cleaning up a stale lock"
        who = ops_owner.owner(path)
        assert who.running is True and who.pid == proc.pid
        for _ in range(3):
            with pytest.raises(walq.LockedError):
                walq.Queue.open(path, serve=False, compaction=False)
        with pytest.raises(walq.LockedError):
            ops_repair.repair(path)
        # The owner notices at its next commit and locks a fresh LOCK again.
        wait_for(lambda: os.path.exists(os.path.join(path, "LOCK")))
        os.remove(os.path.join(path, "LOCK"))
        wait_for(lambda: os.path.exists(os.path.join(path, "LOCK")))
        with pytest.raises(walq.LockedError):
            walq.Queue.open(path, serve=False, compaction=False)
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "locked it again" in stderr
    acked = json.loads(stdout.splitlines()[-1])["acked"]
    assert acked > 0
    assert not ops_repair.fsck(path).problems
    with walq.Queue.open(path, serve=False) as q:
        assert q.stats()["pending"] == acked


# -- a squatter on the owner's abstract socket ---------------------------------------------------


def long_queue_path(tmp_path: Path) -> str:
    """A queue path too long for DIR/walq.sock: the owner uses an abstract socket name."""
    path = str(tmp_path.joinpath(*(["d" * 40] * 3), "q"))
    address = wire.socket_address(path)
    assert address is not None and address.startswith("\0")
    return path


@contextlib.contextmanager
def squatter(
    address: str, uid: int | None
) -> Iterator[tuple[Callable[[], int], Callable[[], None]]]:
    """A forked process (as `uid`, if given) holding `address`; yields (bytes it got, kill it)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.close(ready_r)
            if uid is not None:
                os.setuid(uid)
            got = 0
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(address)
                s.listen(16)
                s.settimeout(0.2)
                os.write(ready_w, b"x")
                while os.getppid() != 1:
                    try:
                        conn, _ = s.accept()
                    except TimeoutError:
                        continue
                    with conn:
                        conn.settimeout(0.5)
                        with contextlib.suppress(OSError):
                            got += len(conn.recv(1 << 16))
                            conn.sendall(b"\xff" * 8)  # what a stranger might answer
                    os.write(w, f"{got}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    os.set_blocking(r, False)
    seen = [0]

    def sent() -> int:
        with contextlib.suppress(BlockingIOError):
            for line in os.read(r, 1 << 16).decode().split():
                seen[0] = int(line)
        return seen[0]

    def kill() -> None:
        if not seen[1:]:
            sent()
            seen.append(1)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    try:
        yield sent, kill
    finally:
        kill()
        os.close(r)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_squatted_socket_name_sends_producers_to_the_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user's process on the owner's socket name gets no job; the owner says so loudly."""
    path = long_queue_path(tmp_path)
    address = wire.socket_address(path)
    assert address is not None
    with squatter(address, 65534) as (sent, kill):
        with walq.connect(path) as prod:  # no owner yet
            assert prod.enqueue("t", "before") is None
            assert prod.sent == {"socket": 0, "spool": 1}
        with caplog.at_level(logging.ERROR, logger="walq"), walq.Queue.open(path) as q:
            assert any(
                "socket name is taken by" in r.getMessage() and "uid 65534" in r.getMessage()
                for r in caplog.records
            ), caplog.text
            assert q._server is not None and q._server.counters["squatted"] >= 1
            with walq.connect(path) as prod:  # an owner, but not on the socket
                assert prod.enqueue("t", "during") is None
                wait_for(lambda: q.stats()["pending"] == 2)  # the owner ingests the spool
                assert sent() == 0  # not one byte of a job reached the squatter
                # The squatter gone, the owner takes the name back (at a spool poll).
                kill()
                wait_for(lambda: q._server is not None and q._server._listener is not None)
                assert prod.enqueue("t", "after") == 3


def test_a_producer_never_sends_to_a_server_of_another_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer's peer-uid check (its seam, wire.peer_uid, posing another user): it spools."""
    path = long_queue_path(tmp_path)
    address = wire.socket_address(path)
    assert address is not None
    with squatter(address, None) as (sent, _):
        monkeypatch.setattr(wire, "peer_uid", lambda sock: os.geteuid() + 1)
        with walq.connect(path) as prod:
            assert prod.enqueue("t", 1) is None
            assert prod.enqueue_many([("t", 2), ("t", 3)]) is None
            assert prod.sent == {"socket": 0, "spool": 2}
        assert sent() == 0
    monkeypatch.undo()
    with walq.Queue.open(path) as q:
        assert q.stats()["pending"] == 3


# -- idle producer connections -------------------------------------------------------------------


def test_idle_producer_connections_do_not_turn_others_away(
    qdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Far more idle connections than handler threads: a new producer still reaches the owner."""
    with walq.Queue.open(qdir) as q:
        server = q._server
        assert server is not None and server.address is not None
        idle = []
        try:
            for _ in range(200):  # more than the 64 handler threads
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(server.address)
                idle.append(s)
            with walq.connect(qdir) as prod:
                ids = [prod.enqueue("t", i) for i in range(20)]
                assert prod.sent == {"socket": 20, "spool": 0}
            assert ids == list(range(1, 21))
            assert server.counters["busy"] == 0
            assert len(server._handlers) <= server.max_handlers
            # Past max_connections producers are turned away (they spool), and the log says so.
            wait_for(lambda: len(server._conns) == len(idle))  # the producer's is closed
            server.max_connections = len(idle)
            with caplog.at_level(logging.WARNING, logger="walq"), walq.connect(qdir) as prod:
                assert prod.enqueue("t", "spooled") is None
            assert "turning producers away" in caplog.text
        finally:
            for s in idle:
                s.close()
        wait_for(lambda: q.stats()["pending"] == 21)


def test_a_producer_shared_across_fork_works_in_the_child_even_mid_request(qdir: str) -> None:
    """A fork() while another thread holds the producer's lock: the child still enqueues."""
    with walq.Queue.open(qdir) as q, walq.connect(qdir) as prod:
        assert prod.enqueue("t", "parent") == 1
        with prod._mu:  # what a parent's thread in the middle of a request holds
            pid = fork_enqueuing(prod)
            _, status = os.waitpid(pid, 0) if _exited_within(pid, 60.0) else (pid, -1)
        assert status != -1, "the child hung on the producer's lock"
        assert os.waitstatus_to_exitcode(status) == 0
        assert prod.enqueue("t", "parent again") == 3
        assert q.stats()["pending"] == 3


def _exited_within(pid: int, timeout: float) -> bool:
    """Whether child `pid` is ready to be reaped within `timeout` seconds (else it is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def test_a_full_listen_backlog_is_waited_for_then_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EAGAIN on connect is a busy owner, not none: the producer waits, then spools, saying so."""
    from walq.producers import client as producer

    path = str(tmp_path / "q")
    os.makedirs(path, mode=0o700)
    address = wire.socket_address(path)
    assert address is not None
    monkeypatch.setattr(producer, "BACKLOG_WAIT", 0.3, raising=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        listener.listen(0)  # never accepts: fill its backlog
        fillers = []
        try:
            while True:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(address)
                except BlockingIOError:
                    s.close()
                    break
                fillers.append(s)
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="walq"), walq.connect(path) as prod:
                assert prod.enqueue("t", 1) is None
            assert time.monotonic() - t0 >= 0.3
            assert "listen backlog stayed full" in caplog.text
        finally:
            for s in fillers:
                s.close()


def test_an_owner_whose_lock_file_another_holds_stops_writing(qdir: str) -> None:
    """LOCK replaced by a file someone else locked: the owner's next commit fails, loudly."""
    import fcntl

    with walq.Queue.open(qdir, serve=False, compaction=False) as q:
        q.enqueue("t", 1)
        lock_path = os.path.join(qdir, "LOCK")
        os.remove(lock_path)
        with open(lock_path, "a+b") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a second owner's lock
            with pytest.raises(walq.LogFailedError, match="another process holds the new one"):
                q.enqueue("t", 2)
            with pytest.raises(walq.LogFailedError):
                q.enqueue("t", 3)
    with walq.Queue.open(qdir, serve=False) as q:
        assert q.stats()["pending"] == 1
