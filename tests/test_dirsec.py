"""The queue directory's owner and permissions, links planted in it, and making it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import walq
from tests import worker_tasks
from walq.cli.app import main
from walq.core import format as fmt
from walq.directory.queue import STATUS_FILE
from walq.ops import repair as ops_repair
from walq.worker.pool import Worker

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def fill(qdir: str, n: int = 3, **kw: object) -> list[int]:
    with walq.Queue.open(qdir, segment_size=1 << 20, **kw) as q:  # type: ignore[arg-type]
        return q.enqueue_many([("t", {"i": i}) for i in range(n)])


def as_user(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    """Make walq see `uid` as the caller (the tests run as root, who may administer)."""
    monkeypatch.setattr(os, "geteuid", lambda: uid)


def tear_tail(qdir: str) -> None:
    """Put bytes after the last record of the only segment: a torn tail to cut."""
    (seg,) = sorted(Path(qdir).glob("*.wal"))
    data = bytearray(seg.read_bytes())
    end = len(bytes(data).rstrip(b"\x00"))
    data[end : end + 7] = b"garbage"
    seg.write_bytes(bytes(data))


def walq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m walq ARGS` (a worker that wrongly starts is ended by the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "walq", *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def chown_tree(path: Path, uid: int) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, uid)


class TestLinksPlanted:
    """A link where walq keeps its own file is never followed."""

    def test_lock_link_is_refused_and_its_target_untouched(self, qdir: str, tmp_path: Path) -> None:
        """LOCK -> a file elsewhere: CorruptionError naming LOCK; the target keeps its mode."""
        fill(qdir)
        target = tmp_path / "precious"
        target.write_text("x")
        target.chmod(0o644)
        lock = Path(qdir, "LOCK")
        lock.unlink()
        lock.symlink_to(target)
        with pytest.raises(walq.CorruptionError, match=r"LOCK.*symbolic link"):
            walq.Queue.open(qdir)
        assert target.stat().st_mode & 0o777 == 0o644

    def test_status_part_link_is_not_written_through(self, qdir: str, tmp_path: Path) -> None:
        """worker-status.json.part -> a file elsewhere: replaced, the target is not overwritten."""
        target = tmp_path / "precious"
        target.write_text("keep me")
        Path(qdir).mkdir(mode=0o700)
        Path(qdir, STATUS_FILE + ".part").symlink_to(target)
        with walq.Queue.open(qdir) as q:
            Worker(q, worker_tasks.tasks, processes=1)._write_status()
        assert target.read_text() == "keep me"
        assert Path(qdir, STATUS_FILE).is_file() and not Path(qdir, STATUS_FILE).is_symlink()

    def test_cut_link_is_refused_and_nothing_written_outside(
        self, qdir: str, tmp_path: Path
    ) -> None:
        """cut/ -> a directory elsewhere: the torn tail is not written there; the open refuses."""
        fill(qdir)
        tear_tail(qdir)
        outside = tmp_path / "outside"
        outside.mkdir()
        Path(qdir, "cut").symlink_to(outside)
        with pytest.raises(walq.CorruptionError, match=r"cut: .*symbolic link"):
            walq.Queue.open(qdir, segment_size=1 << 20)
        assert list(outside.iterdir()) == []

    def test_spool_link_to_a_shared_directory_is_refused(self, qdir: str, tmp_path: Path) -> None:
        """spool/ -> a world-writable directory: no owner ingests from it, no producer writes."""
        fill(qdir)
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        # Another user's job, as a producer would have spooled it there.
        with walq.connect(tmp_path / "elsewhere", use_socket=False) as p:
            p.enqueue("rm_rf", {"path": "/"})
        (planted,) = (tmp_path / "elsewhere" / "spool").glob("*.job")
        os.rename(planted, shared / planted.name)
        Path(qdir, "spool").rmdir()
        Path(qdir, "spool").symlink_to(shared)
        with pytest.raises(walq.CorruptionError, match=r"spool: .*symbolic link"):
            walq.Queue.open(qdir)
        with (
            walq.connect(qdir, use_socket=False) as p,
            pytest.raises(walq.CorruptionError, match=r"spool: .*symbolic link"),
        ):
            p.enqueue("mine", {})
        assert [f.name for f in shared.iterdir()] == [planted.name]
        Path(qdir, "spool").unlink()
        with walq.Queue.open(qdir) as q:
            assert q.stats()["pending"] == 3  # the planted job was never ingested

    def test_spool_file_of_another_user_is_set_aside(self, qdir: str) -> None:
        """A spool file owned by another uid is set aside as .bad, never ingested."""
        fill(qdir)
        with walq.connect(qdir, use_socket=False) as p:
            p.enqueue("theirs", {})
            p.enqueue("mine", {}, key="k")
        theirs = min(Path(qdir, "spool").glob("[0-9]*.job"))
        os.chown(theirs, NOBODY, NOBODY)
        with walq.Queue.open(qdir) as q:
            tasks = {q.claim().task for _ in range(4)}  # type: ignore[union-attr]
            assert q.claim() is None
        assert tasks == {"t", "mine"}
        assert sorted(f.name for f in Path(qdir, "spool").iterdir() if f.name != ".lock") == [
            theirs.name + ".bad",
            theirs.name + ".bad.reason",
        ]

    def test_segment_linked_to_another_queue_is_damage(self, tmp_path: Path) -> None:
        """A segment that is a link into another queue: open refuses, that queue is not written."""
        mine, theirs = str(tmp_path / "mine"), str(tmp_path / "theirs")
        fill(mine)
        fill(theirs)
        their_segment = Path(theirs, fmt.segment_name(1))
        before = their_segment.read_bytes()
        seg = Path(mine, fmt.segment_name(1))
        seg.unlink()
        seg.symlink_to(their_segment)
        with pytest.raises(walq.CorruptionError, match=rf"{fmt.segment_name(1)}: .*symbolic link"):
            walq.Queue.open(mine)
        with pytest.raises(walq.CorruptionError, match="symbolic link"):
            walq.Queue.open(mine, recovery="skip")
        assert their_segment.read_bytes() == before
        # The read-only tools report it as damage; they read nothing through it.
        report = ops_repair.fsck(mine)
        assert not report.clean
        result = CliRunner().invoke(main, ["fsck", mine])
        assert result.exit_code != 0 and "symbolic link" in result.output

    def test_fifo_planted_as_a_segment_does_not_hang(self, qdir: str) -> None:
        """A FIFO named like a segment is damage, reported at once (the open does not block)."""
        fill(qdir)
        os.mkfifo(Path(qdir, fmt.segment_name(2)))
        proc = walq_cli("fsck", qdir)  # reads every segment; ended by the timeout if it blocks
        assert proc.returncode == 1 and "not a regular file" in proc.stdout, proc
        with pytest.raises(walq.CorruptionError, match="not a regular file"):
            walq.Queue.open(qdir)


class TestOwnerAndMode:
    """A queue directory another user controls is refused unless trusted."""

    def test_directory_of_another_user_is_refused(
        self, qdir: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Owned by uid 65534, opened by uid 1000: UnsafeDirectoryError naming both."""
        fill(qdir)
        chown_tree(Path(qdir), NOBODY)
        as_user(monkeypatch, 1000)
        with pytest.raises(walq.UnsafeDirectoryError, match=r"owned by uid 65534.*not by you"):
            walq.Queue.open(qdir)
        with pytest.raises(walq.UnsafeDirectoryError, match="owned by uid 65534"):
            walq.connect(qdir, use_socket=False).enqueue("t", {})

    @pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
    def test_directory_writable_by_others_is_refused(self, qdir: str, mode: int) -> None:
        """Group- or other-writable: refused, naming the mode; trust_dir=True accepts it."""
        fill(qdir)
        os.chmod(qdir, mode)
        with pytest.raises(walq.UnsafeDirectoryError, match=f"mode {mode:04o}"):
            walq.Queue.open(qdir)
        with walq.Queue.open(qdir, trust_dir=True) as q:
            assert q.stats()["pending"] == 3

    def test_worker_on_a_shared_directory_is_a_usage_error(self, qdir: str) -> None:
        """walq worker on a group-writable queue: exit 2, one line naming the mode."""
        fill(qdir)
        os.chmod(qdir, 0o770)
        proc = walq_cli("worker", qdir, "--tasks", "tests.worker_tasks:tasks")
        assert proc.returncode == 2, proc.stderr
        assert "mode 0770" in proc.stderr and len(proc.stderr.splitlines()) == 1

    def test_spool_of_another_user_is_refused(self, qdir: str) -> None:
        """spool/ owned by another uid (the queue's owner is root here): refused, naming it."""
        fill(qdir)
        os.chown(Path(qdir, "spool"), NOBODY, NOBODY)
        with pytest.raises(walq.UnsafeDirectoryError, match=r"spool: owned by uid 65534"):
            walq.Queue.open(qdir)

    def test_root_administers_a_users_queue_and_leaves_it_the_users(self, qdir: str) -> None:
        """walq compact as root on a user's queue: every file it leaves is the user's."""
        with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:
            ids = q.enqueue_many([("t", {"i": i, "pad": "x" * 200}) for i in range(60)])
            for _ in range(40):
                job = q.claim()
                assert job is not None
                q.ack(job.id)
        assert len(list(Path(qdir).glob("*.wal"))) > 3
        chown_tree(Path(qdir), NOBODY)
        Path(qdir, "LOCK").unlink()  # root must also make a LOCK the user can open
        result = CliRunner().invoke(main, ["compact", qdir])
        assert result.exit_code == 0, result.output
        assert "compacted" in result.output
        left = [Path(qdir), *Path(qdir).rglob("*")]
        assert {p.name: os.lstat(p).st_uid for p in left} == {p.name: NOBODY for p in left}
        with walq.Queue.open(qdir) as q:
            assert q.stats()["pending"] == len(ids) - 40

    def test_root_producer_spools_files_the_owner_can_ingest(self, qdir: str) -> None:
        """A producer running as root in a user's queue leaves spool files of that user."""
        fill(qdir)
        chown_tree(Path(qdir), NOBODY)
        with walq.connect(qdir, use_socket=False) as p:
            p.enqueue("t", {"from": "root"})
        spooled = [f for f in Path(qdir, "spool").iterdir()]
        assert spooled and {os.lstat(f).st_uid for f in spooled} == {NOBODY}


class TestMakingTheDirectory:
    """A queue is made only where asked, and never beside other files."""

    def test_create_false_refuses_a_missing_directory(self, qdir: str) -> None:
        """Queue.open(create=False) on a missing path: NotAQueueError, nothing made."""
        with pytest.raises(walq.NotAQueueError, match="no such queue directory"):
            walq.Queue.open(qdir, create=False)
        assert not Path(qdir).exists()

    def test_a_directory_of_other_files_is_refused(self, tmp_path: Path) -> None:
        """A non-empty directory with no walq files: refused by name; nothing added to it."""
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(walq.NotAQueueError, match=f"{tmp_path}: holds 1 entries"):
            walq.Queue.open(str(tmp_path))
        assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    def test_a_queue_with_a_stray_file_still_opens(self, qdir: str) -> None:
        """A queue that also holds someone's file is still a queue."""
        fill(qdir)
        Path(qdir, "README").write_text("ops notes")
        with walq.Queue.open(qdir) as q:
            assert q.stats()["pending"] == 3

    def test_worker_needs_create_for_a_new_queue(self, qdir: str) -> None:
        """walq worker on a missing path: exit 2 naming --create; nothing is made."""
        proc = walq_cli("worker", qdir, "--tasks", "tests.worker_tasks:tasks")
        assert proc.returncode == 2, proc.stderr
        assert "--create" in proc.stderr
        assert not Path(qdir).exists()

    def test_worker_on_a_redis_url_needs_no_create(self) -> None:
        """--create is about directories: a Redis URL is not refused for lacking it."""
        proc = walq_cli("worker", "redis://127.0.0.1:1/0", "--tasks", "tests.worker_tasks:tasks")
        assert proc.returncode == 2, proc.stderr
        assert "--create" not in proc.stderr and "127.0.0.1:1" in proc.stderr

    def test_worker_with_a_busy_metrics_port_makes_nothing(self, qdir: str) -> None:
        """The port is bound before anything is made: a busy one leaves no queue behind."""
        pytest.importorskip("prometheus_client")
        with socket.socket() as busy:
            busy.bind(("", 0))
            busy.listen()
            port = busy.getsockname()[1]
            proc = walq_cli("worker", qdir, "--create", "--tasks", "tests.worker_tasks:tasks",
                            "--metrics-port", str(port))  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"--metrics-port 127.0.0.1:{port}: Address already in use" in proc.stderr
        assert not Path(qdir).exists()

    def test_enqueue_create_makes_a_new_queue(self, qdir: str) -> None:
        """walq enqueue --create spools into a new queue; without it a typo is refused."""
        runner = CliRunner()
        assert runner.invoke(main, ["enqueue", qdir, "t"]).exit_code == 2
        assert not Path(qdir).exists()
        result = runner.invoke(main, ["enqueue", qdir, "t", "--create"])
        assert result.exit_code == 0, result.output
        with walq.Queue.open(qdir) as q:
            assert q.stats()["pending"] == 1
