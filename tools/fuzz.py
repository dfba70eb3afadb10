"""Fuzz the record decoder and every reader of a queue directory with mutated segment files.

A corpus queue (every record type, several segments, a compacted one) is built
on SimFileSystem. Each case copies its files, mutates them -- bit flips, byte
runs, truncations, appended garbage, splices, huge or off-by-one length fields,
body edits with the checksum fixed up, segment header edits, removed and
renamed segments; and whole-file mutations, as an operator's `rm`, `cp`, `mv` and
`ln -s` make them: files removed, copied to the next segment number, a backup
name or `cut/`, moved next to their own number, replaced by a link to another
file -- and runs every reader on the result:

- the decoder: framing.decode at every offset of interest, framing.classify,
  framing.scan_fast, events.decode of every record body;
- the read-only tools: scan_dir, dump, fsck, stats, replay, dead_jobs;
- Queue.open in "strict" and "skip" recovery, then what a user does: stats,
  status of every job, dead_jobs, claim and ack everything, compact, close;
- fsck --repair, then a strict open.

It checks that:

- nothing raises but walq's own errors (WalqError subclasses);
- damage is never delivered as data: unless the mutation forged checksums, a
  job delivered (claimed or dead) carries exactly the task and payload it was
  enqueued with, under an id that was enqueued;
- fsck and open agree: a clean fsck means a strict open works, and a strict
  open that finds damage means fsck reports it;
- a checkpoint (the corpus has one) is trusted only when it agrees with the
  log: opening with it gives the statuses, counts and attempts opening without
  it (a full replay) gives, unless checksums were forged;
- nothing is lost silently: after whole-file mutations that spare the newest
  segment, a strict open that reports no damage still holds every job the
  corpus left in the queue;
- a huge length field is never allocated (tracemalloc peak stays small) and
  nothing hangs (each case has a time limit).

`python tools/fuzz.py --cases 20000 --seed 1` runs a long fuzz without
hypothesis; tests/test_fuzz.py drives the same cases with hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import posixpath
import random
import resource
import signal
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from crc32c import crc32c

import walq
from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.checkpoint import FILE_NAME as CHECKPOINT
from walq.core.state import Now
from walq.errors import CorruptionError, WalqError
from walq.ops.dead import dead_jobs
from walq.ops.dump import dump
from walq.ops.repair import FsckReport, fsck, repair
from walq.ops.replay import replay
from walq.ops.scan import scan_dir
from walq.ops.stats import directory_stats
from walq.testing import plant as planting
from walq.testing.faultfs import SimFileSystem

QDIR = "/walq-fuzz/q"  # a SimFileSystem path; readers that peek at the real disk find nothing
SEGMENT_SIZE = 4096
# Bytes a case with a huge length field may allocate at its peak. A case needs about
# 0.4 MiB (the corpus is ~18 KiB); a length field that got allocated would take at
# least MAX_BODY - 1 (256 MiB). The margin is wide because tracemalloc counts every
# thread's allocations, not only the readers': in a long test session a thread left
# by an earlier test, or a log capture's buffer growing, added 4-5 MiB to a case.
PEAK_LIMIT = 32 << 20
CASE_SECONDS = 10.0
ADDRESS_SPACE = 4 << 30  # the command line's own cap
HUGE_LENGTHS = (
    fmt.MAX_BODY - 1,
    fmt.MAX_BODY,
    fmt.MAX_BODY + 1,
    1 << 31,
    (1 << 32) - 1,
    (1 << 32) - 16,
)

Image = dict[str, bytes]  # path -> content


class Clock:
    """A fixed clock, so a case replays the same way every time."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 1_000.0

    def __call__(self) -> Now:
        return Now(self.wall, self.mono)


# -- the corpus ----------------------------------------------------------------------


@attrs.frozen
class Corpus:
    """A queue's files and what was enqueued in it."""

    image: Image
    jobs: dict[int, tuple[str, Any]]  # id -> (task, payload)
    records: dict[str, list[int]]  # segment path -> offsets of its records
    live: frozenset[int] = frozenset()  # ids of the jobs still in the queue (not done)


def open_queue(cls: type[walq.Queue], fs: SimFileSystem, recovery: str) -> walq.Queue:
    """The queue on `fs`, opened as the fuzzer does: no compaction, socket or real clock."""
    return cls.open(
        QDIR,
        fs=fs,
        recovery=recovery,
        segment_size=SEGMENT_SIZE,
        compaction=False,
        clock=Clock(),
        rng=random.Random(0),
        min_free_bytes=0,
        serve=False,
    )


def build_corpus() -> Corpus:
    """Every record type over several segments, one of them compacted; the newest busy."""
    fs = SimFileSystem()
    q = open_queue(walq.Queue, fs, "strict")
    jobs: dict[int, tuple[str, Any]] = {}

    def add(task: str, payload: Any, **kw: Any) -> int:
        jid = q.enqueue(task, payload, **kw)
        jobs[jid] = (task, payload)
        return jid

    for i in range(6):
        add("mail", {"to": f"u{i}@x", "body": "hello " * (i * 40)})
        add("blob", bytes(range(i * 37 % 256)) * (i + 1), priority=i % 3 - 1)
    add("keyed", {"k": 1}, key="key-1")
    add("later", [1, 2, 3], delay=3600.0)
    add("few", "tries", max_attempts=2)
    batch = [{"n": n} for n in range(4)]
    for jid, payload in zip(q.enqueue_many([("batch", p) for p in batch]), batch, strict=True):
        jobs[jid] = ("batch", payload)
    for step in range(8):
        job = q.claim()
        assert job is not None
        if step % 4 == 0:
            q.ack(job.id)
        elif step % 4 == 1:
            q.fail(job.id, f"boom {step}", delay=0.0)
        elif step % 4 == 2:
            q.fail(job.id, "no good", permanent=True)
        else:
            q.release(job.id)
    dead = [d.id for d in q.dead_jobs()]
    q.requeue(dead[0])
    q.cancel(max(jobs))
    job = q.claim()
    assert job is not None
    q.fail(job.id, "dead again", permanent=True)
    q.purge([job.id])
    q.compact()  # job and meta records
    for i in range(12):
        add("after", {"i": i, "pad": "z" * 600})  # a few sealed segments after the compacted one
    q.write_checkpoint()  # covers all but the newest records: open replays those after it
    for _ in range(3):
        job = q.claim()
        assert job is not None
        q.ack(job.id, sync=False)
    q.fail(q.claim().id, "last", permanent=True)  # type: ignore[union-attr]
    live = frozenset(
        j for j in jobs if _status(q, j) in ("pending", "scheduled", "running", "dead")
    )
    q.close()
    fs.sync_all()
    keep = (".wal", "LOCK", "/" + CHECKPOINT)
    image = {p: d for p, d in fs.files(durable=True).items() if p.endswith(keep)}
    records = {
        p: [r.offset for r in framing.records(d, fmt.SEGMENT_HEADER_SIZE)]
        for p, d in image.items()
        if p.endswith(".wal")
    }
    return Corpus(image, jobs, records, live)


def _status(q: walq.Queue, jid: int) -> str | None:
    try:
        return q.status(jid)
    except walq.UnknownJobError:  # purged
        return None


def to_fs(image: Image) -> SimFileSystem:
    """A SimFileSystem holding exactly `image` (all of it durable)."""
    fs = SimFileSystem()
    fs.makedirs(QDIR)
    for path, data in image.items():
        fs.makedirs(posixpath.dirname(path))
        f = fs.open(path, create=True)
        f.pwrite(data, 0)
        f.close()
    fs.sync_all()
    return fs


# -- mutations -------------------------------------------------------------------------


@attrs.frozen
class Mutated:
    """A mutated image, what was done to it, and whether checksums were forged."""

    image: Image
    steps: tuple[str, ...]
    forged: bool  # a checksum was recomputed: valid framing around wrong content
    huge: bool  # a length field (or a segment range) that must not be allocated
    # Only whole files were removed, copied, renamed or linked, and never the newest
    # segment (whose loss no later file can show): every job lost must be reported.
    whole_files: bool = False


def _fix_record(data: bytearray, offset: int) -> bool:
    """Recompute the CRC of the record at `offset` if its body fits; return whether it did."""
    if offset + fmt.RECORD_HEADER_SIZE > len(data):
        return False
    length = int.from_bytes(data[offset + 4 : offset + 8], "little")
    end = offset + fmt.RECORD_HEADER_SIZE + length
    if end > len(data):
        return False
    data[offset : offset + 4] = crc32c(bytes(data[offset + 4 : end])).to_bytes(4, "little")
    return True


def _fix_header(data: bytearray) -> None:
    if len(data) >= fmt.SEGMENT_HEADER_SIZE:
        data[36:40] = crc32c(bytes(data[:36])).to_bytes(4, "little")


def _used(data: bytes | bytearray) -> int:
    return max(fmt.SEGMENT_HEADER_SIZE, len(bytes(data).rstrip(b"\0")))


class Mutator:
    """Applies random mutations to an image; `pick(n)` chooses 0..n-1."""

    def __init__(self, corpus: Corpus, pick: Callable[[int], int]) -> None:
        self.corpus = corpus
        self.pick = pick

    def choice(self, options: list[Any]) -> Any:
        return options[self.pick(len(options))]

    def mutate(self, count: int) -> Mutated:
        image = {p: bytearray(d) for p, d in self.corpus.image.items()}
        steps: list[str] = []
        forged = huge = False
        whole = True
        newest = max(p for p in image if p.endswith(".wal"))
        for _ in range(count):
            kind = self.choice(KINDS)
            paths = sorted(image)
            if not paths:
                break
            path = self.choice(paths)
            step, f, h = getattr(self, f"m_{kind}")(image, path)
            steps.append(f"{kind} {posixpath.basename(path)}: {step}")
            forged, huge = forged or f, huge or h
            whole = whole and kind in WHOLE_FILE and path != newest
        return Mutated({p: bytes(d) for p, d in image.items()}, tuple(steps), forged, huge, whole)

    def _record(self, path: str, data: bytearray) -> int:
        offsets = [o for o in self.corpus.records.get(path, []) if o < len(data)]
        return self.choice(offsets) if offsets else fmt.SEGMENT_HEADER_SIZE

    def m_flip(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        data = image[path]
        flips = []
        for _ in range(1 + self.pick(4)):
            at = self.pick(_used(data))
            if at < len(data):
                bit = self.pick(8)
                data[at] ^= 1 << bit
                flips.append(f"{at}.{bit}")
        return "bits " + ",".join(flips), False, False

    def m_bytes(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        data = image[path]
        at = self.pick(_used(data))
        n = 1 + self.pick(64)
        fill = self.choice(["zero", "ff", "noise"])
        new = {
            "zero": bytes(n),
            "ff": b"\xff" * n,
            "noise": bytes(self.pick(256) for _ in range(n)),
        }[fill]
        data[at : at + n] = new[: max(0, len(data) - at)]
        return f"{fill} x{n} at {at}", False, False

    def m_truncate(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        data = image[path]
        at = self.pick(_used(data) + 1)
        del data[at:]
        return f"to {at}", False, False

    def m_extend(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        data = image[path]
        n = 1 + self.pick(600)
        noise = self.choice([True, False])
        data += bytes(self.pick(256) for _ in range(n)) if noise else bytes(n)
        return f"{'noise' if noise else 'zeros'} x{n}", False, False

    def m_splice(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        source = image[self.choice(sorted(image))]
        src = self.pick(_used(source))
        n = 1 + self.pick(200)
        piece = bytes(source[src : src + n])
        data = image[path]
        at = self.pick(_used(data))
        data[at : at + len(piece)] = piece
        return f"{len(piece)} bytes from {src} to {at}", False, False

    def m_record(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """A whole record copied over another (valid framing, events out of place)."""
        data = image[path]
        offsets = [o for o in self.corpus.records.get(path, []) if o < len(data)]
        if len(offsets) < 2:
            return self.m_flip(image, path)
        a, b = self.choice(offsets), self.choice(offsets)
        length = int.from_bytes(data[a + 4 : a + 8], "little") + fmt.RECORD_HEADER_SIZE
        data[b : b + length] = data[a : a + length]
        return f"record at {a} copied to {b}", False, False

    def m_length(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        data = image[path]
        at = self._record(path, data)
        if at + 8 > len(data):
            return "record gone", False, False
        old = int.from_bytes(data[at + 4 : at + 8], "little")
        new = self.choice([*HUGE_LENGTHS, 0, 1, max(0, old - 1), old + 1, self.pick(1 << 16)])
        data[at + 4 : at + 8] = new.to_bytes(4, "little")
        forged = self.choice([False, True]) and _fix_record(data, at)
        return (
            f"length {old} -> {new} at {at}{' (crc fixed)' if forged else ''}",
            forged,
            (new > fmt.MAX_BODY or new >= len(data)),
        )

    def m_body(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """Change bytes inside a record and forge its checksum: well-framed nonsense."""
        data = image[path]
        at = self._record(path, data)
        length = int.from_bytes(data[at + 4 : at + 8], "little") if at + 8 <= len(data) else 0
        if length == 0 or at + fmt.RECORD_HEADER_SIZE + length > len(data):
            return self.m_flip(image, path)
        where = self.choice(["body", "body", "type", "synced"])
        if where == "type":
            data[at + 8] = self.pick(fmt.MAX_TYPE + 3)
        elif where == "synced":
            data[at + 12 : at + 16] = self.pick(at + 1).to_bytes(4, "little")
        else:
            for _ in range(1 + self.pick(3)):
                i = at + fmt.RECORD_HEADER_SIZE + self.pick(length)
                data[i] = self.choice([0, 0xFF, self.pick(256), data[i] ^ 0x80])
        forged = _fix_record(data, at)
        return f"{where} of the record at {at} (crc fixed)", forged, False

    def m_header(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        data = image[path]
        if len(data) < fmt.SEGMENT_HEADER_SIZE:
            return "no header", False, False
        field = self.choice(["version", "flags", "seq", "first", "reserved", "magic"])
        at, size = {
            "magic": (0, 8),
            "version": (8, 4),
            "flags": (12, 4),
            "seq": (16, 8),
            "first": (24, 8),
            "reserved": (32, 4),
        }[field]
        value = self.choice([0, 1, 2, 3, self.pick(1 << 16), (1 << (8 * size)) - 1])
        data[at : at + size] = value.to_bytes(size, "little")
        fixed = self.choice([True, True, False])
        if fixed:
            _fix_header(data)
        return f"{field} = {value}{' (crc fixed)' if fixed else ''}", fixed, False

    def m_remove(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        del image[path]
        return "removed", False, False

    def m_rename(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """Move or copy a segment under another sequence number (its header still names the old)."""
        seq = self.choice([0, 1, 5, 0x1000, (1 << 32) - 1, (1 << 64) - 1])
        new = posixpath.join(QDIR, fmt.segment_name(seq))
        copy = self.choice([True, False])
        data = image[path] if copy else image.pop(path)
        image[new] = bytearray(data)
        return f"{'copied' if copy else 'moved'} to {posixpath.basename(new)}", False, False

    def m_duplicate(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """A copy of a file under another name: the next segment number, a backup, cut/."""
        seqs = [s for s in (fmt.parse_segment_name(posixpath.basename(p)) for p in image) if s]
        name = self.choice(
            [
                fmt.segment_name(max(seqs, default=0) + 1),
                posixpath.basename(path) + ".bak",
                posixpath.basename(path) + ".tmp",
                posixpath.basename(path) + ".spare",
                posixpath.join("cut", posixpath.basename(path) + ".0.0.torn"),
            ]
        )
        image[posixpath.join(QDIR, name)] = bytearray(image[path])
        return f"copied to {name}", False, False

    def m_shift(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """A file moved to the segment number next to its own (its header still names the old)."""
        seq = fmt.parse_segment_name(posixpath.basename(path)) or 1
        new = posixpath.join(QDIR, fmt.segment_name(max(1, seq + self.choice([-1, 1, 2]))))
        image[new] = image.pop(path)
        return f"moved to {posixpath.basename(new)}", False, False

    def m_link(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """A file replaced by a link to another (on SimFileSystem: the other's content).

        What a reader sees through a symlink is the target's bytes; whether walq
        follows symlinks at all is the file system layer's business (O_NOFOLLOW).
        """
        target = self.choice(sorted(image))
        image[path] = bytearray(image[target])
        return f"linked to {posixpath.basename(target)}", False, False

    def m_compacted(self, image: dict[str, bytearray], path: str) -> tuple[str, bool, bool]:
        """A valid header claiming to replace segments first..seq (as a compaction writes)."""
        data = image[path]
        if len(data) < fmt.SEGMENT_HEADER_SIZE:
            return "no header", False, False
        # Huge spans (recovery once built a set of every number from first to seq), and
        # numbers at and past 2**48, the first a Loc cannot address (bug 8).
        seq = self.choice([3, 1000, 100_000, 1 << 40, (1 << 48) - 1, 1 << 48, (1 << 63) - 1])
        first = self.choice([0, 1, 2])
        data[16:24] = seq.to_bytes(8, "little")
        data[24:32] = first.to_bytes(8, "little")
        _fix_header(data)
        del image[path]
        image[posixpath.join(QDIR, fmt.segment_name(seq))] = data
        return f"renamed to seq {seq} covering from {first} (crc fixed)", True, True


KINDS = [
    "flip",
    "flip",
    "flip",
    "bytes",
    "bytes",
    "truncate",
    "extend",
    "splice",
    "record",
    "length",
    "length",
    "body",
    "body",
    "header",
    "remove",
    "remove",
    "rename",
    "compacted",
    "duplicate",
    "shift",
    "link",
]
# Mutations of whole files: what an operator's `rm`, `cp`, `mv` or `ln -s` does.
WHOLE_FILE = {"remove", "rename", "duplicate", "shift", "link"}


# -- the readers and the oracle ------------------------------------------------------------


@attrs.frozen
class Problem:
    """A broken promise: which reader, what kind, and the details."""

    kind: str  # foreign-exception, damage-delivered, fsck-disagrees, allocation, slow
    target: str
    detail: str


class CaseTimeout(Exception):
    """A case ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after `seconds` (no-op elsewhere)."""

    def on_alarm(signum: int, frame: object) -> None:
        raise CaseTimeout(f"over {seconds:g} s")

    try:
        old = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Checker:
    """Runs every reader on one mutated image and collects problems."""

    def __init__(self, corpus: Corpus, mutated: Mutated) -> None:
        self.corpus = corpus
        self.mutated = mutated
        self.problems: list[Problem] = []

    def guard(self, target: str, fn: Callable[[], Any]) -> Any:
        """Run `fn`; walq's own errors are fine, anything else is a problem."""
        try:
            return fn()
        except WalqError as exc:
            return exc
        except CaseTimeout as exc:
            self.problems.append(Problem("slow", target, str(exc)))
            return exc
        except Exception as exc:  # the point: report what escapes
            last = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{posixpath.basename(last.filename)}:{last.lineno}"
            self.problems.append(
                Problem("foreign-exception", target, f"{type(exc).__name__}: {exc} ({where})")
            )
            return exc

    def delivered(self, target: str, jid: int, task: str, payload: Any) -> None:
        """A job came out of the queue: unless checksums were forged, it must be as enqueued."""
        if self.mutated.forged:
            return
        want = self.corpus.jobs.get(jid)
        if want != (task, payload):
            self.problems.append(
                Problem(
                    "damage-delivered",
                    target,
                    f"job {jid}: {task!r} {payload!r:.80}, enqueued {want!r:.80}",
                )
            )

    def run(self) -> list[Problem]:
        image = self.mutated.image
        self.decoder(image)
        self.guard("inspect", lambda: self.inspect(to_fs(image)))
        fsck_report = self.guard("fsck", lambda: fsck(QDIR, to_fs(image)))
        strict = self.guard("open strict", lambda: self.use(to_fs(image), "strict"))
        self.guard("open skip", lambda: self.use(to_fs(image), "skip"))
        self.agree(fsck_report, strict)
        self.checkpoint_agrees(image)
        self.guard("repair", lambda: self.repaired(to_fs(image)))
        return self.problems

    def checkpoint_agrees(self, image: Image) -> None:
        """Opening with the checkpoint gives what opening without it (a full replay) gives.

        A damaged, stale or foreign checkpoint is ignored, never trusted: unless
        checksums were forged, the jobs' statuses and counts are the same either
        way, and so is whether the open fails.
        """
        path = posixpath.join(QDIR, CHECKPOINT)
        if path not in image or self.mutated.forged:
            return
        without = {p: d for p, d in image.items() if p != path}
        got = self.guard("open strict (checkpoint)", lambda: self.statuses(to_fs(image)))
        want = self.guard("open strict (no checkpoint)", lambda: self.statuses(to_fs(without)))
        if isinstance(got, WalqError) and isinstance(want, WalqError):
            return
        if got != want:
            self.problems.append(
                Problem("checkpoint-differs", "open strict", f"{got!r:.300} != {want!r:.300}")
            )

    def statuses(self, fs: SimFileSystem) -> dict[str, Any]:
        q = open_queue(walq.Queue, fs, "strict")
        try:
            jobs = {jid: _status(q, jid) for jid in self.corpus.jobs}
            stats = q.stats()
            counts = {k: stats[k] for k in ("pending", "scheduled", "running", "dead", "next_id")}
            return {"jobs": jobs, "counts": counts, "attempts": {
                i.id: i.attempts for i in q._state.jobs()}}  # fmt: skip
        finally:
            q.close()

    def decoder(self, image: Image) -> None:
        names = sorted(image)
        for i, path in enumerate(names):
            data = image[path]
            newest = i == len(names) - 1
            self.guard("classify", functools.partial(framing.classify, data, 40, newest=newest))
            self.guard(
                "scan_fast", functools.partial(framing.scan_fast, data, 40, 1, lambda *a: None)
            )
            for at in range(0, min(len(data), 4096), 4):
                self.guard("decode", functools.partial(framing.decode, data, at))
            for rec in framing.records(data, 40) if len(data) >= 40 else ():
                self.guard("events.decode", functools.partial(ev.decode, rec.rtype, rec.body))

    def inspect(self, fs: SimFileSystem) -> None:
        scan_dir(QDIR, fs)
        list(dump(QDIR, fs=fs))
        list(dump(QDIR, fs=fs, full=True, payload=False))
        replay(QDIR, fs, now=Clock()())
        directory_stats(QDIR, fs, now=Clock()())
        for dead in dead_jobs(QDIR, fs):
            if dead is None:
                continue
            payload: Any = dead.payload
            if dead.payload_kind == "json":
                with contextlib.suppress(ValueError):  # compared as bytes: damage
                    payload = json.loads(payload)
            self.delivered("inspect.dead_jobs", dead.id, dead.task, payload)

    def use(self, fs: SimFileSystem, recovery: str, *, repaired: bool = False) -> walq.Queue | None:
        q = open_queue(planting.queue_class(), fs, recovery)
        target = f"open {recovery}"
        try:
            q.stats()
            if recovery == "strict" and self.mutated.whole_files and not (q.damage or repaired):
                self.accounted(q)
            for jid in [*self.corpus.jobs, 0, 10_000]:
                self.guard(target + ": status", functools.partial(q.status, jid))
            dead = self.guard(target + ": dead_jobs", q.dead_jobs)
            for d in dead if isinstance(dead, list) else []:
                self.delivered(target + ": dead_jobs", d.id, d.task, d.payload)
            for _ in range(len(self.corpus.jobs) + 5):
                job = self.guard(target + ": claim", q.claim)
                if not isinstance(job, walq.Job):
                    break
                self.delivered(target + ": claim", job.id, job.task, job.payload)
                self.guard(target + ": ack", functools.partial(q.ack, job.id))
            self.guard(target + ": compact", q.compact)
        finally:
            q.close()
        return None

    def accounted(self, q: walq.Queue) -> None:
        """A strict open that reported nothing must still hold every job the corpus left."""
        live = ("pending", "scheduled", "running", "dead")
        gone = [jid for jid in sorted(self.corpus.live) if _status(q, jid) not in live]
        if gone:
            self.problems.append(
                Problem("silent-loss", "open strict", f"no damage reported, jobs gone: {gone}")
            )

    def agree(self, fsck_report: Any, strict: Any) -> None:
        """A clean fsck means a strict open works; damage a strict open finds, fsck reports."""
        if not isinstance(fsck_report, FsckReport):
            return
        if fsck_report.clean and isinstance(strict, CorruptionError):
            self.problems.append(
                Problem("fsck-disagrees", "fsck", f"fsck clean, but open says: {strict}")
            )
        if not fsck_report.clean and strict is None and not self.mutated.forged:
            # fsck found damage a strict open accepted without a word
            self.problems.append(
                Problem("fsck-disagrees", "open strict", f"opened, fsck: {fsck_report.problems}")
            )

    def repaired(self, fs: SimFileSystem) -> None:
        report = fsck(QDIR, fs)
        if report.clean:
            return
        repair(QDIR, fs)
        after = fsck(QDIR, fs)
        if after.clean:
            result = self.guard("open after repair", lambda: self.use(fs, "strict", repaired=True))
            if isinstance(result, CorruptionError):
                self.problems.append(
                    Problem("fsck-disagrees", "repair", f"repaired and clean, open: {result}")
                )


def check(corpus: Corpus, mutated: Mutated, *, trace_memory: bool | None = None) -> list[Problem]:
    """Run every reader on `mutated`; measure its peak allocation when it has a huge length."""
    measure = mutated.huge if trace_memory is None else trace_memory
    checker = Checker(corpus, mutated)
    if measure:
        tracemalloc.start()
    try:
        with time_limit(CASE_SECONDS):
            try:
                checker.run()
            except CaseTimeout as exc:
                checker.problems.append(Problem("slow", "case", str(exc)))
        if measure:
            _, peak = tracemalloc.get_traced_memory()
            if peak > PEAK_LIMIT:
                checker.problems.append(
                    Problem("allocation", "case", f"peak {peak >> 20} MiB > {PEAK_LIMIT >> 20} MiB")
                )
    finally:
        if measure:
            tracemalloc.stop()
    return checker.problems


# -- the command line ------------------------------------------------------------------------


@attrs.define
class Report:
    """A fuzz run's outcome: the cases that broke a promise."""

    cases: int = 0
    failing: list[tuple[int, Mutated, list[Problem]]] = attrs.Factory(list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for _, _, problems in self.failing:
            for kind in {p.kind for p in problems}:
                kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "cases": self.cases,
            "violations": len(self.failing),
            "by-kind": kinds,
            "seconds": round(self.seconds, 1),
        }


def fuzz(
    cases: int,
    seed: int,
    *,
    plant: str | None = None,
    time_limit_s: float | None = None,
    stop_after: int | None = None,
    corpus: Corpus | None = None,
) -> Report:
    """Run `cases` random cases (case i is replayable alone: `--case i`)."""
    corpus = corpus or build_corpus()
    report = Report()
    started = time.monotonic()
    if plant:
        planting.plant(plant)
    try:
        for index in range(cases):
            if time_limit_s is not None and time.monotonic() - started > time_limit_s:
                break
            mutated = make_case(corpus, seed, index)
            problems = check(corpus, mutated)
            report.cases += 1
            if problems:
                report.failing.append((index, mutated, problems))
                if stop_after is not None and len(report.failing) >= stop_after:
                    break
    finally:
        if plant:
            planting.plant(plant, on=False)
        report.seconds = time.monotonic() - started
    return report


def make_case(corpus: Corpus, seed: int, index: int) -> Mutated:
    rng = random.Random(f"walq-fuzz:{seed}:{index}")
    return Mutator(corpus, rng.randrange).mutate(1 + rng.randrange(3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--case", type=int, default=None, help="run one case and describe it")
    parser.add_argument("--plant", choices=sorted(planting.BUGS), help="plant a known bug")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds at most")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    walq_log = logging.getLogger("walq")
    level = walq_log.level
    walq_log.setLevel(logging.CRITICAL)  # damage is the point
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:  # an unbounded allocation fails here, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, hard))
    try:
        return _main(args)
    finally:
        # A caller in the same process (a test) logs and allocates as before.
        walq_log.setLevel(level)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _main(args: argparse.Namespace) -> int:
    """main's work, its arguments parsed."""
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    if args.case is not None:
        corpus = build_corpus()
        if args.plant:
            planting.plant(args.plant)
        mutated = make_case(corpus, seed, args.case)
        problems = check(corpus, mutated, trace_memory=True)
        print(f"case {args.case} (seed {seed}): {'; '.join(mutated.steps)}")
        for p in problems:
            print(f"  {p.kind} [{p.target}]: {p.detail}")
        return 1 if problems else 0
    report = fuzz(
        args.cases,
        seed,
        plant=args.plant,
        time_limit_s=args.time_limit,
    )
    summary = report.summary()
    summary["seed"] = seed
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"cases: {report.cases}")
        print(f"violations: {len(report.failing)}")
        print(f"({summary['seconds']} s, seed {seed})")
        shown: set[tuple[str, str]] = set()
        for index, mutated, problems in report.failing:
            for p in problems:
                key = (p.kind, p.detail.split(":")[0])
                if key in shown or len(shown) >= 15:
                    continue
                shown.add(key)
                print(f"  {p.kind} [{p.target}]: {p.detail}")
                print(f"    case {index}: {'; '.join(mutated.steps)}")
                print(f"    replay: python tools/fuzz.py --seed {seed} --case {index}")
    return 1 if report.failing else 0


if __name__ == "__main__":
    sys.exit(main())
