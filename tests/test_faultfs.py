"""Tests of the simulated file system (walq.testing.faultfs) against the crash model."""

from __future__ import annotations

import errno
import itertools
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walq.directory.fs import OsFileSystem
from walq.errors import LockedError
from walq.testing.faultfs import OP_KINDS, CrashMode, SimFileSystem, SimulatedCrash, draw_crash

SECTOR = 512


# --- helpers -----------------------------------------------------------------


def fresh(*dirs: str) -> SimFileSystem:
    """A file system holding the durable directories `dirs` (default /q)."""
    fs = SimFileSystem()
    for d in dirs or ("/q",):
        fs.makedirs(d)
    fs.sync_all()
    return fs


def durable_file(fs: SimFileSystem, path: str, data: bytes) -> None:
    """Create `path` holding `data`, with data and directory entry synced."""
    f = fs.open(path, create=True)
    f.pwrite(data, 0)
    f.sync()
    f.close()
    fs.sync_dir(path.rsplit("/", 1)[0] or "/")


def every_crash(fs: SimFileSystem, mode: CrashMode = "any") -> Iterator[SimFileSystem]:
    """Every crash state of `fs` now: one per assignment of the choices (kept few)."""
    count = fs.choice_count(mode)
    assert count <= 14, count
    for bits in itertools.product((False, True), repeat=count):
        yield fs.snapshot(list(bits), mode=mode)


def outcomes(fs: SimFileSystem, mode: CrashMode = "any") -> set[frozenset[tuple[str, bytes]]]:
    """The distinct sets of (path, content) the crash states of `fs` hold."""
    return {frozenset(c.files().items()) for c in every_crash(fs, mode)}


def state(**files: bytes) -> frozenset[tuple[str, bytes]]:
    """A crash outcome, written as keyword arguments naming files in /q."""
    return frozenset((f"/q/{name}", data) for name, data in files.items())


# A workload on one file: writes of non-zero bytes, syncs and truncations.
write_op = st.tuples(
    st.just("write"),
    st.integers(0, 3000),
    st.binary(min_size=1, max_size=1200).map(lambda b: bytes(x | 1 for x in b)),
)
file_ops = st.lists(
    st.one_of(write_op, st.just(("sync",)), st.tuples(st.just("truncate"), st.integers(0, 3000))),
    max_size=12,
)


def run_file_ops(ops: list[Any]) -> tuple[SimFileSystem, bytes, list[Any]]:
    """Apply `ops` to /q/f; return the fs, the content at the last sync, the ops after it."""
    fs = fresh()
    durable_file(fs, "/q/f", b"")
    f = fs.open("/q/f", write=True)
    synced, tail = b"", []
    for op in ops:
        if op[0] == "write":
            f.pwrite(op[2], op[1])
            tail.append(op)
        elif op[0] == "truncate":
            f.truncate(op[1])
            tail.append(op)
        else:
            f.sync()
            synced, tail = f.pread(1 << 20, 0), []
    return fs, synced, tail


# --- file data -----------------------------------------------------------------


class TestFileData:
    """Synced data survives; unsynced writes persist whole, torn or not at all."""

    @given(ops=file_ops, data=st.data())
    def test_synced_data_survives_and_nothing_is_invented(
        self, ops: list[Any], data: st.DataObject
    ) -> None:
        """Every crash keeps the synced bytes and adds only bytes that were written."""
        fs, synced, tail = run_file_ops(ops)
        after = draw_crash(data, fs).files()["/q/f"]
        assert fs.durable_bytes("/q/f") == synced
        if not tail:
            assert after == synced
        written: dict[int, set[int]] = {}
        for op in tail:
            if op[0] == "write":
                for i, byte in enumerate(op[2]):
                    written.setdefault(op[1] + i, set()).add(byte)
        for i, byte in enumerate(after):
            allowed = written.get(i, set()) | {0}
            if i < len(synced):
                allowed.add(synced[i])
            assert byte in allowed, (i, byte)
        if all(op[0] == "write" for op in tail):
            assert len(after) >= len(synced)
            for i in range(len(synced)):
                if i not in written:
                    assert after[i] == synced[i]

    @given(ops=file_ops, data=st.data())
    def test_prefix_mode_keeps_an_in_order_prefix(
        self, ops: list[Any], data: st.DataObject
    ) -> None:
        """In prefix mode the file equals the synced content plus the first k unsynced ops."""
        fs, synced, _ = run_file_ops([op for op in ops if op[0] != "write"] + [("sync",)])
        f = fs.open("/q/f", write=True)
        start = -(-len(synced) // SECTOR) * SECTOR
        chunks = [bytes([i + 1]) * SECTOR for i in range(len(ops) % 6 + 1)]
        for i, chunk in enumerate(chunks):
            f.pwrite(chunk, start + i * SECTOR)  # one sector each: never torn
        after = draw_crash(data, fs, mode="prefix").files()["/q/f"]
        padded = synced + bytes(start - len(synced))
        expected = [synced] + [padded + b"".join(chunks[:k]) for k in range(1, len(chunks) + 1)]
        assert after in expected

    def test_a_write_tears_at_sector_boundaries(self) -> None:
        """Each sector a write touches persists whole (new bytes) or not at all (old bytes)."""
        fs = fresh()
        durable_file(fs, "/q/f", b"a" * 4 * SECTOR)
        f = fs.open("/q/f", write=True)
        f.pwrite(b"b" * (3 * SECTOR), 100)  # pieces: [100,512) [512,1024) [1024,1536) [1536,1636)
        seen = set()
        for c in every_crash(fs):
            after = c.files()["/q/f"]
            assert len(after) == 4 * SECTOR
            pieces = [(0, 100), (100, 512), (512, 1024), (1024, 1536), (1536, 1636), (1636, 2048)]
            assert all(len(set(after[a:b])) == 1 for a, b in pieces)
            kinds = bytes(after[a] for a, _ in pieces)
            assert kinds[:1] == kinds[-1:] == b"a"
            seen.add(kinds)
        assert len(seen) == 16  # all combinations of the four pieces occur

    def test_a_torn_append_leaves_zeros_or_nothing(self) -> None:
        """A torn append keeps zeros for its lost sectors below a kept one, nothing beyond."""
        fs = fresh()
        durable_file(fs, "/q/f", b"")
        fs.open("/q/f", write=True).pwrite(b"b" * (2 * SECTOR), 0)
        assert outcomes(fs) == {
            state(f=b""),
            state(f=b"b" * SECTOR),
            state(f=bytes(SECTOR) + b"b" * SECTOR),
            state(f=b"b" * 2 * SECTOR),
        }

    def test_a_write_past_the_end_persists_with_a_zero_hole(self) -> None:
        """A kept write beyond the durable size extends the file with zeros between."""
        fs = fresh()
        durable_file(fs, "/q/f", b"a" * 1000)
        fs.open("/q/f", write=True).pwrite(b"b" * SECTOR, 2048)
        assert outcomes(fs) == {
            state(f=b"a" * 1000),
            state(f=b"a" * 1000 + bytes(1048) + b"b" * SECTOR),
        }

    def test_unsynced_writes_persist_out_of_order(self) -> None:
        """A later write may persist while an earlier one is lost."""
        fs = fresh()
        durable_file(fs, "/q/f", b"")
        f = fs.open("/q/f", write=True)
        f.pwrite(b"1" * SECTOR, 0)
        f.pwrite(b"2" * SECTOR, SECTOR)
        assert state(f=bytes(SECTOR) + b"2" * SECTOR) in outcomes(fs)
        assert state(f=bytes(SECTOR) + b"2" * SECTOR) not in outcomes(fs, "prefix")

    def test_unsynced_truncate_may_or_may_not_persist(self) -> None:
        """An unsynced truncate is atomic: the old size or the new one."""
        fs = fresh()
        durable_file(fs, "/q/f", b"a" * 1000)
        fs.open("/q/f", write=True).truncate(10)
        assert outcomes(fs) == {state(f=b"a" * 1000), state(f=b"a" * 10)}

    def test_sync_makes_data_durable_not_the_name(self) -> None:
        """A synced file whose directory was not synced vanishes in a power cut."""
        fs = fresh()
        f = fs.open("/q/f", create=True)
        f.pwrite(b"data", 0)
        f.sync()
        assert fs.crash(mode="durable").files() == {}
        assert outcomes(fs) == {state(), state(f=b"data")}


# --- directories -------------------------------------------------------------------


class TestDirectories:
    """Names are durable after sync_dir; renames are atomic."""

    def test_created_file_without_dir_sync_may_vanish(self) -> None:
        """A new file's entry persists or not until its directory is synced."""
        fs = fresh()
        fs.open("/q/f", create=True).close()
        assert fs.listdir("/q") == ["f"]
        assert fs.listdir_durable("/q") == []
        assert outcomes(fs) == {state(), state(f=b"")}

    def test_synced_dir_keeps_the_file(self) -> None:
        """After sync_dir every crash state has the file."""
        fs = fresh()
        durable_file(fs, "/q/f", b"x")
        fs.open("/q/g", create=True).close()
        fs.sync_dir("/q")
        assert fs.listdir_durable("/q") == ["f", "g"]
        assert outcomes(fs) == {state(f=b"x", g=b"")}

    def test_makedirs_is_durable_only_after_the_parent_is_synced(self) -> None:
        """A new directory and all below it vanish unless its parent was synced."""
        fs = SimFileSystem()
        fs.makedirs("/a/b")
        durable_file(fs, "/a/b/f", b"x")
        fs.sync_dir("/a")
        assert fs.crash(mode="durable").files() == {}
        assert fs.listdir_durable("/") == []
        fs = SimFileSystem()
        fs.makedirs("/a/b")
        fs.sync_dir("/")
        fs.sync_dir("/a")
        durable_file(fs, "/a/b/f", b"x")
        assert fs.crash(mode="durable").files() == {"/a/b/f": b"x"}

    def test_rename_over_a_file_is_atomic(self) -> None:
        """After rename(tmp, f) a crash leaves f old (tmp kept) or f new: never both or neither."""
        fs = fresh()
        durable_file(fs, "/q/f", b"old")
        durable_file(fs, "/q/tmp", b"new")
        fs.rename("/q/tmp", "/q/f")
        assert outcomes(fs) == {state(f=b"old", tmp=b"new"), state(f=b"new")}
        fs.sync_dir("/q")
        assert fs.files(durable=True) == {"/q/f": b"new"}

    def test_rename_of_a_new_file_never_loses_the_target(self) -> None:
        """Create tmp, sync it, rename over f: f holds old or new, tmp at most as a leftover."""
        fs = fresh()
        durable_file(fs, "/q/f", b"old")
        f = fs.open("/q/tmp", create=True)
        f.pwrite(b"new", 0)
        f.sync()
        fs.rename("/q/tmp", "/q/f")
        assert outcomes(fs) == {state(f=b"old"), state(f=b"old", tmp=b"new"), state(f=b"new")}

    def test_a_name_reused_after_rename_keeps_the_moved_file(self) -> None:
        """rename(a, b) then a new a: if the new a persists, so does the rename."""
        fs = fresh()
        durable_file(fs, "/q/a", b"first")
        fs.rename("/q/a", "/q/b")
        durable_file(fs, "/q/a", b"second")  # syncs /q: both changes durable
        assert outcomes(fs) == {state(a=b"second", b=b"first")}
        fs = fresh()
        durable_file(fs, "/q/a", b"first")
        fs.rename("/q/a", "/q/b")
        fs.open("/q/a", create=True).close()
        assert outcomes(fs) == {state(a=b"first"), state(b=b"first"), state(a=b"", b=b"first")}

    @given(data=st.data(), names=st.lists(st.sampled_from("abcd"), min_size=2, max_size=8))
    def test_renames_never_duplicate_or_lose_a_durable_file(
        self, data: st.DataObject, names: list[str]
    ) -> None:
        """Any chain of unsynced renames leaves each durable file under exactly one name."""
        fs = fresh()
        for name in "ab":
            durable_file(fs, f"/q/{name}", name.encode())
        for src, dst in itertools.pairwise(names):
            if src != dst and fs.exists(f"/q/{src}"):
                fs.rename(f"/q/{src}", f"/q/{dst}")
            elif data.draw(st.booleans()):
                fs.sync_dir("/q")
        after = draw_crash(data, fs).files()
        contents = sorted(after.values())
        for content in (b"a", b"b"):
            # each file is present once, unless a kept rename replaced it (then it is gone)
            assert contents.count(content) <= 1
        assert contents, "a rename over a file keeps the renamed one"

    def test_remove_is_durable_after_sync_dir(self) -> None:
        """An unsynced remove may be undone by a crash; a synced one may not."""
        fs = fresh()
        durable_file(fs, "/q/f", b"x")
        fs.remove("/q/f")
        assert outcomes(fs) == {state(), state(f=b"x")}
        fs.sync_dir("/q")
        assert outcomes(fs) == {state()}

    def test_rename_between_directories_needs_both_synced(self) -> None:
        """A move from /a to /b is atomic and durable once both directories are synced."""
        fs = fresh("/a", "/b")
        durable_file(fs, "/a/f", b"x")
        fs.rename("/a/f", "/b/f")
        fs.sync_dir("/a")
        assert fs.files(durable=True) == {"/a/f": b"x"}
        views = {frozenset(c.files().items()) for c in every_crash(fs)}
        assert views == {frozenset({("/a/f", b"x")}), frozenset({("/b/f", b"x")})}
        fs.sync_dir("/b")
        assert fs.files(durable=True) == {"/b/f": b"x"}

    def test_open_unlinked_file_is_forgotten_after_a_crash(self) -> None:
        """A removed but open file is readable until closed and gone after any crash."""
        fs = fresh()
        durable_file(fs, "/q/f", b"x")
        f = fs.open("/q/f")
        fs.remove("/q/f")
        fs.sync_dir("/q")
        assert f.pread(10, 0) == b"x"
        assert fs.crash(mode="clean").files() == {}


# --- process crash, inspection --------------------------------------------------------


class TestCleanCrash:
    """kill -9 keeps what reached the kernel, still unsynced."""

    def test_clean_crash_keeps_everything_unsynced(self) -> None:
        """After a clean crash reads see every write; a power cut after it can still lose them."""
        fs = fresh()
        durable_file(fs, "/q/f", b"old")
        f = fs.open("/q/f", write=True)
        f.pwrite(b"new", 0)
        fs.open("/q/g", create=True).close()
        after = fs.crash(mode="clean")
        assert after.files() == {"/q/f": b"new", "/q/g": b""}
        assert after.files(durable=True) == {"/q/f": b"old"}
        assert after.crash(mode="durable").files() == {"/q/f": b"old"}

    def test_old_handles_die_with_the_process(self) -> None:
        """After crash() the old fs and its files raise SimulatedCrash; close is a no-op."""
        fs = fresh()
        f = fs.open("/q/f", create=True)
        fs.crash(mode="clean")
        assert fs.dead
        with pytest.raises(SimulatedCrash):
            f.pwrite(b"x", 0)
        with pytest.raises(SimulatedCrash):
            fs.exists("/q")
        f.close()

    def test_snapshot_leaves_the_file_system_alive(self) -> None:
        """snapshot() shows a crash state and the workload goes on."""
        fs = fresh()
        f = fs.open("/q/f", create=True)
        assert fs.snapshot(mode="durable").files() == {}
        f.pwrite(b"x", 0)
        assert fs.snapshot(mode="clean").files() == {"/q/f": b"x"}
        assert not fs.dead

    def test_crash_modes_need_choices(self) -> None:
        """'any' and 'prefix' refuse to guess; an unknown mode is refused."""
        fs = fresh()
        with pytest.raises(ValueError, match="choices"):
            fs.crash()
        with pytest.raises(ValueError, match="mode"):
            fs.crash(random.Random(1), mode="sometimes")  # type: ignore[arg-type]

    def test_random_crashes_are_reproducible(self) -> None:
        """The same seed gives the same crash state."""
        fs = fresh()
        durable_file(fs, "/q/f", b"")
        f = fs.open("/q/f", write=True)
        for i in range(20):
            f.pwrite(bytes([65 + i]) * 700, i * 700)
        first = fs.crash(random.Random(7)).files()
        assert fs.crash(random.Random(7)).files() == first

    @given(ops=file_ops, seed=st.integers(0, 2**32))
    def test_choice_count_bounds_the_choices_used(self, ops: list[Any], seed: int) -> None:
        """crash() never asks for more choices than choice_count() says."""
        fs, _, _ = run_file_ops(ops)
        fs.open("/q/new", create=True).close()
        rng = random.Random(seed)
        asked = 0

        def choose() -> bool:
            nonlocal asked
            asked += 1
            return rng.random() < 0.5

        fs.crash(choose)
        assert asked <= fs.choice_count()

    def test_sync_all_and_poke(self) -> None:
        """sync_all makes everything durable; poke changes bytes on disk and in the cache."""
        fs = SimFileSystem()
        fs.makedirs("/q")
        f = fs.open("/q/f", create=True)
        f.pwrite(b"hello", 0)
        fs.sync_all()
        assert fs.files(durable=True) == {"/q/f": b"hello"}
        fs.poke("/q/f", 1, b"E")
        assert f.pread(5, 0) == b"hEllo"
        assert fs.durable_bytes("/q/f") == b"hEllo"

    def test_durable_views_raise_for_missing_paths(self) -> None:
        """durable_bytes and listdir_durable name only what is durable."""
        fs = fresh()
        fs.open("/q/f", create=True).close()
        with pytest.raises(FileNotFoundError):
            fs.durable_bytes("/q/f")
        with pytest.raises(FileNotFoundError):
            fs.listdir_durable("/nope")

    def test_many_crash_states_per_second(self) -> None:
        """A 32 KiB log with unsynced tail crashes hundreds of times a second, at least."""
        fs = fresh()
        durable_file(fs, "/q/seg", b"")
        f = fs.open("/q/seg", write=True)
        for i in range(320):
            f.pwrite(bytes([i % 255 + 1]) * 100, i * 100)
            if i % 40 == 0:
                f.sync()
        rng = random.Random(3)
        start = time.perf_counter()
        for _ in range(300):
            fs.crash(rng)
        assert time.perf_counter() - start < 1.0


# --- faults ---------------------------------------------------------------------------


def _call(fs: SimFileSystem, kind: str) -> None:
    """Make one call of operation `kind` on /q/f (which exists)."""
    if kind in {"pread", "pwrite", "sync", "truncate", "size", "close"}:
        f = fs.open("/q/f", write=True)
        calls: dict[str, Callable[[], object]] = {
            "pread": lambda: f.pread(1, 0),
            "pwrite": lambda: f.pwrite(b"x", 0),
            "sync": f.sync,
            "truncate": lambda: f.truncate(0),
            "size": f.size,
            "close": f.close,
        }
    else:
        calls = {
            "open": lambda: fs.open("/q/f"),
            "exists": lambda: fs.exists("/q/f"),
            "stat": lambda: fs.stat("/q/f"),
            "is_dir": lambda: fs.is_dir("/q"),
            "listdir": lambda: fs.listdir("/q"),
            "makedirs": lambda: fs.makedirs("/q/d"),
            "rename": lambda: fs.rename("/q/f", "/q/g"),
            "remove": lambda: fs.remove("/q/f"),
            "sync_dir": lambda: fs.sync_dir("/q"),
            "free_bytes": lambda: fs.free_bytes("/q"),
            "lock": lambda: fs.lock("/q/lock", 0.0),
        }
    calls[kind]()


class TestFaults:
    """Injected EIO and ENOSPC, and what a failed fsync leaves behind."""

    @pytest.mark.parametrize("kind", sorted(OP_KINDS))
    @pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
    def test_every_operation_can_fail(self, kind: str, code: int) -> None:
        """An injected fault raises OSError with the errno on the matching call."""
        fs = fresh()
        durable_file(fs, "/q/f", b"data")
        fault = fs.inject(kind, code)
        with pytest.raises(OSError) as info:
            _call(fs, kind)
        assert info.value.errno == code
        assert fault.fired == 1
        _call(fresh_with_file(), kind)  # the fault was on fs only

    def test_a_failed_call_has_no_effect(self) -> None:
        """A failed pwrite, rename or remove changes nothing."""
        fs = fresh()
        durable_file(fs, "/q/f", b"data")
        f = fs.open("/q/f", write=True)
        for kind in ("pwrite", "rename", "remove", "truncate"):
            fs.inject(kind)
        with pytest.raises(OSError):
            f.pwrite(b"XXXX", 0)
        with pytest.raises(OSError):
            f.truncate(0)
        with pytest.raises(OSError):
            fs.rename("/q/f", "/q/g")
        with pytest.raises(OSError):
            fs.remove("/q/f")
        assert fs.files() == {"/q/f": b"data"}
        assert fs.choice_count() == 0

    def test_nth_times_and_path(self) -> None:
        """A fault fires on the nth call matching kind and path, `times` times in a row."""
        fs = fresh()
        a = fs.open("/q/a", create=True)
        b = fs.open("/q/b", create=True)
        fault = fs.inject("sync", errno.EIO, path="/q/b", nth=2, times=2)
        a.sync()
        b.sync()
        a.sync()
        with pytest.raises(OSError):
            b.sync()
        with pytest.raises(OSError):
            b.sync()
        b.sync()
        assert (fault.seen, fault.fired) == (4, 2)

    def test_a_persistent_fault_and_clearing_it(self) -> None:
        """times=None fails every matching call until clear_faults."""
        fs = fresh()
        f = fs.open("/q/a", create=True)
        fs.inject("pwrite", errno.ENOSPC, times=None)
        for _ in range(3):
            with pytest.raises(OSError):
                f.pwrite(b"x", 0)
        fs.clear_faults()
        f.pwrite(b"x", 0)

    def test_sync_of_a_closed_file_loses_nothing(self) -> None:
        """EBADF from a closed handle is not a writeback failure."""
        fs = fresh()
        durable_file(fs, "/q/f", b"")
        f = fs.open("/q/f", write=True)
        f.pwrite(b"x", 0)
        f.close()
        with pytest.raises(OSError) as info:
            f.sync()
        assert info.value.errno == errno.EBADF
        g = fs.open("/q/f")
        g.sync()
        assert fs.durable_bytes("/q/f") == b"x"

    def test_unknown_kind_is_refused(self) -> None:
        """A typo in the operation name is an error, not a fault that never fires."""
        with pytest.raises(ValueError, match="unknown operation"):
            SimFileSystem().inject("fsync")

    def test_failed_sync_does_not_make_data_durable(self) -> None:
        """After a failed fsync the data is not durable, even when a retried sync succeeds."""
        fs = fresh()
        durable_file(fs, "/q/f", b"old!")
        f = fs.open("/q/f", write=True)
        f.pwrite(b"new!", 0)
        fs.inject("sync", errno.EIO)
        with pytest.raises(OSError):
            f.sync()
        f.sync()  # "succeeds"
        assert f.pread(4, 0) == b"new!"
        assert fs.durable_bytes("/q/f") == b"old!"
        assert fs.crash(mode="durable").files() == {"/q/f": b"old!"}
        assert outcomes(fs) == {state(f=b"old!"), state(f=b"new!")}

    def test_writes_after_a_failed_sync_can_be_made_durable(self) -> None:
        """Writes after the failure are durable after a good sync; the lost ones stay uncertain."""
        fs = fresh()
        durable_file(fs, "/q/f", b"")
        f = fs.open("/q/f", write=True)
        f.pwrite(b"a" * SECTOR, 0)
        fs.inject("sync", errno.EIO)
        with pytest.raises(OSError):
            f.sync()
        f.pwrite(b"b" * SECTOR, SECTOR)
        f.sync()
        assert fs.durable_bytes("/q/f") == bytes(SECTOR) + b"b" * SECTOR
        assert outcomes(fs) == {
            state(f=bytes(SECTOR) + b"b" * SECTOR),
            state(f=b"a" * SECTOR + b"b" * SECTOR),
        }

    def test_failed_sync_dir_commits_nothing(self) -> None:
        """A failed directory fsync leaves its changes unsynced; a later one commits them."""
        fs = fresh()
        fs.open("/q/f", create=True).close()
        fs.inject("sync_dir")
        with pytest.raises(OSError):
            fs.sync_dir("/q")
        assert fs.listdir_durable("/q") == []
        fs.sync_dir("/q")
        assert fs.listdir_durable("/q") == ["f"]

    def test_capacity_gives_short_write_then_enospc(self) -> None:
        """Writes beyond the capacity fill it, then raise ENOSPC; free_bytes follows."""
        fs = SimFileSystem(capacity=1000)
        fs.makedirs("/q")
        assert fs.free_bytes("/q") == 1000
        f = fs.open("/q/a", create=True)
        f.pwrite(b"x" * 600, 0)
        assert fs.free_bytes("/q") == 400
        with pytest.raises(OSError) as info:
            f.pwrite(b"y" * 600, 600)
        assert info.value.errno == errno.ENOSPC
        assert f.size() == 1000
        with pytest.raises(OSError):
            f.truncate(2000)
        f.pwrite(b"z" * 10, 0)  # overwriting needs no room
        f.close()
        fs.remove("/q/a")
        assert fs.free_bytes("/q") == 1000
        fs.reported_free = 5
        assert fs.free_bytes("/q") == 5


def fresh_with_file() -> SimFileSystem:
    """A fresh file system with a durable /q/f."""
    fs = fresh()
    durable_file(fs, "/q/f", b"data")
    return fs


# --- crash at a call ----------------------------------------------------------------


def workload(fs: SimFileSystem) -> None:
    """A small queue-like workload: a temp file renamed into place, then appends."""
    fs.makedirs("/q")
    fs.sync_dir("/")
    tmp = fs.open("/q/meta.tmp", create=True)
    tmp.pwrite(b"meta", 0)
    tmp.sync()
    tmp.close()
    fs.rename("/q/meta.tmp", "/q/meta")
    fs.sync_dir("/q")
    seg = fs.open("/q/seg", create=True)
    fs.sync_dir("/q")
    for i in range(3):
        seg.pwrite(b"record%d" % i, i * 7)
        seg.sync()
    seg.close()


class TestCrashAtCall:
    """SimulatedCrash at an exact call index, then power loss and reopen."""

    def test_crash_at_every_call(self) -> None:
        """Call n raises SimulatedCrash, after exactly n calls ran; the fs stays dead."""
        probe = SimFileSystem()
        workload(probe)
        total = probe.calls
        assert total > 10
        for n in range(total):
            fs = SimFileSystem(trace=True)
            fs.crash_at_call(n)
            with pytest.raises(SimulatedCrash, match=f"call {n}:"):
                workload(fs)
            assert fs.calls == n
            assert fs.trace is not None
            assert [index for index, _, _ in fs.trace] == list(range(n))
            with pytest.raises(SimulatedCrash):
                fs.exists("/")
            disk = fs.crash(random.Random(n))
            assert not disk.dead
            if disk.exists("/q/seg"):
                assert disk.files()["/q/meta"] == b"meta"

    def test_simulated_crash_is_not_an_exception(self) -> None:
        """`except Exception` (or OSError) does not swallow the crash."""
        fs = SimFileSystem()
        fs.crash_at_call(0)
        with pytest.raises(SimulatedCrash):
            try:
                fs.exists("/")
            except Exception:  # pragma: no cover - must not run
                pytest.fail("SimulatedCrash was caught as an Exception")
        assert not issubclass(SimulatedCrash, Exception)

    def test_crash_on_the_nth_call_of_a_kind(self) -> None:
        """crash_on stops the process at the nth matching call; what was synced survives."""
        fs = SimFileSystem()
        fs.crash_on("sync", path="seg", nth=2)
        with pytest.raises(SimulatedCrash):
            workload(fs)
        after = fs.crash(mode="durable")
        assert after.files() == {"/q/meta": b"meta", "/q/seg": b"record0"}


# --- locks ----------------------------------------------------------------------------


class TestLock:
    """One owner per lock path, per SimFileSystem."""

    def test_second_lock_raises_until_released(self) -> None:
        """A held lock raises LockedError at once; after release it can be taken again."""
        fs = fresh()
        lock = fs.lock("/q/lock", 0.0)
        assert fs.exists("/q/lock")
        with pytest.raises(LockedError):
            fs.lock("/q/lock", 0.0)
        lock.release()
        lock.release()
        fs.lock("/q/lock", 0.0).release()

    def test_lock_waits_for_a_release(self) -> None:
        """With a timeout the lock waits for the owner to let go."""
        fs = fresh()
        lock = fs.lock("/q/lock", 0.0)
        timer = threading.Timer(0.05, lock.release)
        timer.start()
        fs.lock("/q/lock", 5.0).release()
        timer.join()

    def test_locks_do_not_survive_a_crash(self) -> None:
        """A crash releases every lock."""
        fs = fresh()
        fs.lock("/q/lock", 0.0)
        fs.crash(mode="clean").lock("/q/lock", 0.0)


# --- the simulator behaves like the OS when nothing crashes ---------------------------

NAMES = ["a", "b", "d", "d/a", "d/b", "a/x"]
fs_ops = st.lists(
    st.one_of(
        st.tuples(st.just("makedirs"), st.sampled_from(NAMES)),
        st.tuples(st.just("create"), st.sampled_from(NAMES)),
        st.tuples(st.just("write"), st.sampled_from(NAMES), st.integers(0, 600), st.binary()),
        st.tuples(st.just("truncate"), st.sampled_from(NAMES), st.integers(0, 600)),
        st.tuples(st.just("read"), st.sampled_from(NAMES)),
        st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
        st.tuples(st.just("remove"), st.sampled_from(NAMES)),
        st.tuples(st.just("listdir"), st.sampled_from([*NAMES, ""])),
        st.tuples(st.just("probe"), st.sampled_from([*NAMES, ""])),
        st.tuples(st.just("sync_dir"), st.sampled_from([*NAMES, ""])),
    ),
    max_size=25,
)


def apply_op(fs: Any, root: str, op: tuple[Any, ...]) -> object:
    """Run one op on `fs` under `root`; return its result or the exception's class."""
    kind, path = op[0], f"{root}/{op[1]}".rstrip("/")
    try:
        if kind == "makedirs":
            fs.makedirs(path)
        elif kind == "create":
            fs.open(path, create=True).close()
        elif kind in ("write", "truncate", "read"):
            f = fs.open(path, write=kind != "read")
            try:
                if kind == "write":
                    f.pwrite(op[3], op[2])
                elif kind == "truncate":
                    f.truncate(op[2])
                return f.pread(10_000, 0)
            finally:
                f.close()
        elif kind == "rename":
            fs.rename(path, f"{root}/{op[2]}")
        elif kind == "remove":
            fs.remove(path)
        elif kind == "listdir":
            return fs.listdir(path)
        elif kind == "probe":
            return fs.exists(path), fs.is_dir(path)
        elif kind == "sync_dir":
            fs.sync_dir(path)
    except OSError as exc:
        return type(exc)
    return None


@settings(max_examples=60, deadline=None)
@given(ops=fs_ops)
def test_behaves_like_the_os_file_system(ops: list[tuple[Any, ...]]) -> None:
    """Without crashes, SimFileSystem gives the same results and errors as OsFileSystem."""
    sim = fresh("/r")
    with tempfile.TemporaryDirectory() as tmp:
        real = OsFileSystem()
        for op in ops:
            assert apply_op(sim, "/r", op) == apply_op(real, tmp, op), op
