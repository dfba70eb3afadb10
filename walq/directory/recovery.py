"""Recovery on open: read a log's segments in order, feed their records to a sink, handle damage.

Interrupted creations and compactions are cleaned up, superseded segments
removed, missing segments and damaged headers found, a torn tail cut (its
bytes kept in cut/), and other damage raised or, with skip_damage, skipped
and reported. The Log (walq.directory.log) then appends after what this found.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from walq.core import framing
from walq.core.format import (
    MAX_BODY,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    describe_missing,
    first_type,
    missing_segments,
    parse_segment_name,
    rebuildable,
    segment_name,
)
from walq.directory.fs import FileSystem, own_dir
from walq.directory.segment import SPARE_SUFFIX, TMP_SUFFIX, Segment
from walq.errors import CorruptionError

log = logging.getLogger("walq.log")

CUT_DIR = "cut"
# Bytes of a segment that replay reads at a time (a record larger is read whole):
# the memory a replay adds beside the state it builds, whatever the segment size.
REPLAY_WINDOW = 4 << 20

# Receives each valid record during recovery: (segment seq, type, offset, size, body).
Sink = Callable[[int, int, int, int, memoryview], None]


class Resume(Protocol):
    """A start other than the log's beginning (walq.directory.checkpoint.Resume).

    Once it accepted, its `load` (if set) replaces the fast path's sink.
    """

    @property
    def load(self) -> Sink | None: ...

    def accept(self, segments: Sequence[Segment]) -> tuple[int, int] | None:
        """(seq, offset) to replay from, given the log's segments; None: from the start."""


@attrs.frozen
class Damage:
    """A damaged range that recovery skipped (recovery="skip") or cut (a torn tail)."""

    path: str
    start: int
    end: int
    reason: str
    torn_tail: bool


@attrs.define
class Recovered:
    """What recovery found: the log's segments and where appending resumes."""

    segments: list[Segment] = attrs.Factory(list)  # in order; the newest open for writing
    damage: list[Damage] = attrs.Factory(list)
    end: int = SEGMENT_HEADER_SIZE  # where the newest segment's records end
    # The newest segment's bytes from `vouched` on, which no sync watermark vouches
    # for: the previous owner's writes may be only in the page cache.
    vouched: int = SEGMENT_HEADER_SIZE
    unvouched: bytes = b""
    rebuilt: set[int] = attrs.Factory(set)  # segments read with a header rebuilt from the name
    left_out: list[int] = attrs.Factory(list)  # segment files skip_damage could not read at all


class Recovery:
    """One recovery of the log in `directory` (see `run`)."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        owner_uid: int | None,
        record_check: framing.RecordCheck = framing.crc_matches,
    ) -> None:
        self.record_check = record_check
        self.fs = fs
        self.directory = directory
        self.owner_uid = owner_uid  # the uid cut/ must have (None: not checked)
        self.found = Recovered()

    def run(
        self,
        *,
        skip_damage: bool,
        sink: Sink,
        load: Sink | None = None,
        resume: Resume | None = None,
    ) -> Recovered:
        """Replay every segment into `sink`; cut a torn tail; raise on other damage.

        Segments are read one at a time, so recovery holds one segment in
        memory, not the log. `sink(seq, rtype, offset, size, body)` is called
        for every valid record in log order. With `skip_damage`, damaged
        ranges are skipped and reported instead of raising CorruptionError.
        `load`, if given, receives each segment's leading run of valid records
        instead of `sink` (a replay's fast path). Records are checked with
        `self.record_check` (framing.check_record's checksum seam). `resume`,
        if given, may name a position (a checkpoint's) to replay from instead:
        the segments before it are checked but not read.
        """
        found = self.found
        fs, d = self.fs, self.directory
        names = fs.listdir(d)
        for name in names:
            # An interrupted segment creation or compaction, or an unused spare segment.
            if name.endswith((TMP_SUFFIX, SPARE_SUFFIX)):
                fs.remove(posixpath.join(d, name))
        seqs = sorted(s for s in (parse_segment_name(n) for n in names) if s is not None)
        opened: list[Segment] = []
        bad: dict[int, CorruptionError] = {}
        for seq in seqs:
            try:
                seg = Segment.open(fs, posixpath.join(d, segment_name(seq)), write=True)
            except CorruptionError as exc:
                bad[seq] = exc  # an error only if no compacted segment supersedes it
                continue
            # Only the header is kept: each file is opened again for its replay,
            # so a queue of many segments never needs a descriptor for each.
            seg.close()
            opened.append(seg)
            if seg.seq != seq:
                opened.pop()
                bad[seq] = CorruptionError(seg.path, 0, f"header says segment {seg.seq}")
        # A compacted segment covering first..seq supersedes those segments: they
        # are leftovers of a compaction that crashed before removing them.
        covers = [(s.header.first, s.seq) for s in opened if s.header.first < s.seq]

        def superseded(seq: int) -> bool:
            return any(first <= seq < last for first, last in covers)

        for seq in seqs:
            if superseded(seq):
                for seg in [s for s in opened if s.seq == seq]:
                    seg.close()
                    opened.remove(seg)
                bad.pop(seq, None)
                fs.remove(posixpath.join(d, segment_name(seq)))
                log.info("removed segment %d: superseded by a compacted segment", seq)
        damage = found.damage
        try:
            opened = self._check_chain(opened, bad, skip_damage, damage)
        except BaseException:
            for seg in opened:
                seg.close()
            raise
        # Always: the previous owner may have died between renaming a new segment
        # into place and syncing the directory; what we build on must be durable.
        fs.sync_dir(d)
        found.segments = opened
        try:
            start = resume.accept(opened) if resume is not None and opened else None
            if start is not None and resume is not None and load is not None:
                load = resume.load or load
            for i, seg in enumerate(opened):
                newest = i == len(opened) - 1
                offset = SEGMENT_HEADER_SIZE
                if start is not None:
                    if seg.seq < start[0]:
                        continue  # covered by the checkpoint: its header was checked
                    if seg.seq == start[0]:
                        offset = start[1]
                seg.file = fs.open(seg.path, write=True)
                try:
                    end = self._replay_segment(seg, newest, skip_damage, sink, load, damage, offset)
                finally:
                    if not newest:
                        seg.file.close()
                if newest:
                    found.end = end
        except BaseException:
            for seg in opened:
                seg.close()
            raise
        return found

    def missing(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The segment numbers missing from `spans` (a seam: walq.testing.plant)."""
        return missing_segments(spans)

    def _check_chain(
        self,
        opened: list[Segment],
        bad: dict[int, CorruptionError],
        skip_damage: bool,
        damage: list[Damage],
    ) -> list[Segment]:
        """Find segments that are missing or have a damaged header; return the log's segments.

        A missing segment (see `missing`) or a damaged header raises
        CorruptionError naming the file. With `skip_damage`, a segment whose
        header is damaged is read with the header its name implies (its records
        are checked as usual); one whose header names another segment is left
        out; and either, like a missing segment, is reported as damage.
        """
        d = self.directory
        left_out = self.found.left_out
        if bad and skip_damage:
            for seq, exc in sorted(bad.items()):
                path = posixpath.join(d, segment_name(seq))
                f = self.fs.open(path, write=True)
                head = f.pread(SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE, 0)
                if not rebuildable(exc.reason, len(head), seq):
                    f.close()  # another segment's copy, or no segment at all: nothing to read
                    size = len(head) if len(head) < SEGMENT_HEADER_SIZE else 0
                    damage.append(Damage(path, 0, size, f"{exc.reason}: segment left out", False))
                    left_out.append(seq)
                    continue
                oldest = not any(s.seq < seq for s in opened)
                header = SegmentHeader.rebuild(seq, oldest=oldest, first_type=first_type(head))
                self.found.rebuilt.add(seq)
                opened.append(Segment(path, header, f))
                reason = f"{exc.reason}; {header.describe()}"
                damage.append(Damage(path, 0, SEGMENT_HEADER_SIZE, reason, False))
            opened.sort(key=lambda s: s.seq)
            bad = {}
        spans = [(s.header.first, s.seq) for s in opened]
        for seq in [*bad, *left_out]:
            spans.append((seq, seq))  # reported as damaged, not also as missing
        spans.sort(key=lambda span: span[1])
        missing = self.missing(spans)
        problems: dict[int, CorruptionError] = dict(bad)
        for lo, hi in missing:
            path = posixpath.join(d, segment_name(lo))
            if skip_damage:
                damage.append(Damage(path, 0, 0, describe_missing(lo, hi), False))
            else:
                problems[lo] = CorruptionError(path, 0, describe_missing(lo, hi))
        if problems:
            raise problems[min(problems)]
        return opened

    def _replay_segment(
        self,
        seg: Segment,
        newest: bool,
        skip_damage: bool,
        sink: Sink,
        load: Sink | None,
        damage: list[Damage],
        offset: int = SEGMENT_HEADER_SIZE,
    ) -> int:
        """Feed one segment's records from `offset` to `sink`; handle its damage; return its end.

        Bytes before `offset` (a checkpoint's position) were durable when the
        checkpoint was written: they count as vouched for.
        """
        seq = seg.seq
        check = self.record_check
        size = seg.file.size()
        stop, watermark = self._scan_windows(seg, size, offset, load or sink)
        watermark = max(watermark, offset)
        if self._zeros_from(seg, size, stop):
            if newest:
                self._note_vouched(lambda a, b: seg.file.pread(b - a, a), watermark, stop)
            return stop
        # Something other than zeros follows (damage, a torn tail): judge the rest with
        # the whole file, as classify needs. The records before `stop` were fed.
        data = seg.read_all()
        if newest:
            self._note_vouched(lambda a, b: data[a:b], watermark, stop)
        scan = framing.classify(data, stop, newest=newest, check=check)
        view = memoryview(data)
        for rec in scan.records:
            sink(
                seq,
                rec.rtype,
                rec.offset,
                rec.end - rec.offset,
                view[rec.end - len(rec.body) : rec.end],
            )
        for gap in scan.gaps:
            if not skip_damage:
                raise CorruptionError(seg.path, gap.start, gap.reason)
            log.warning("%s: skipped damaged bytes %d..%d (%s)", seg.path, *attrs.astuple(gap))
            damage.append(Damage(seg.path, gap.start, gap.end, gap.reason, False))
        if scan.tail is not None:
            self._cut_tail(seg, data, scan.tail)
            damage.append(Damage(seg.path, scan.tail.start, scan.tail.end, scan.tail.reason, True))
        if newest:
            if scan.records:
                watermark = scan.records[-1].synced
            self._note_vouched(lambda a, b: data[a:b], watermark, scan.end)
        return scan.end

    def _scan_windows(self, seg: Segment, size: int, offset: int, sink: Sink) -> tuple[int, int]:
        """framing.scan_fast over the segment from `offset`, REPLAY_WINDOW bytes at a time:
        (where it stopped, the last record's sync watermark), as over the whole file."""
        watermark = 0
        window = REPLAY_WINDOW
        while True:
            buf = seg.file.pread(max(0, min(window, size - offset)), offset)
            stop, mark = framing.scan_fast(
                buf, 0, seg.seq, sink, check=self.record_check, base=offset
            )
            if stop:
                watermark = mark
            ended = offset + len(buf) >= size
            found = framing.check_record(buf, stop, MAX_BODY, offset, self.record_check)
            if ended or not isinstance(found, framing.Incomplete):
                return offset + stop, watermark  # zeros, damage, or the end of the file
            # A record runs past the window: the next window starts with it, and is
            # made larger if that record alone does not fit in one.
            window = REPLAY_WINDOW if stop else 2 * window
            offset += stop

    @staticmethod
    def _zeros_from(seg: Segment, size: int, start: int) -> bool:
        """Whether every byte of the segment from `start` on is zero (read a window at a
        time: a preallocated segment's unused tail)."""
        while start < size:
            buf = seg.file.pread(min(REPLAY_WINDOW, size - start), start)
            if not framing.all_zero(buf, 0):
                return False
            start += len(buf)
        return True

    def _note_vouched(self, read: Callable[[int, int], bytes], watermark: int, end: int) -> None:
        """Remember which bytes of the newest segment no sync watermark vouches for.

        The last record's watermark says everything before it was durable when
        it was written; the bytes from there to the end of the log may be only
        in the page cache (recover rewrites them before syncing).
        """
        self.found.vouched = min(max(watermark, SEGMENT_HEADER_SIZE), end)
        self.found.unvouched = read(self.found.vouched, end)  # (read(a, b): bytes a..b)

    def _cut_tail(self, seg: Segment, data: bytes, tail: framing.Gap) -> None:
        """Keep a torn tail's bytes aside, then zero them in place and fsync."""
        cut = data[tail.start : tail.end]
        if cut:
            aside = posixpath.join(self.directory, CUT_DIR)
            own_dir(self.fs, aside, self.owner_uid, create=True)
            name = f"{posixpath.basename(seg.path)}.{tail.start}"
            taken = set(self.fs.listdir(aside))
            n = 0
            while f"{name}.{n}.torn" in taken:  # the same offset may tear again after a later crash
                n += 1
            f = self.fs.open(posixpath.join(aside, f"{name}.{n}.torn"), create=True)
            try:
                f.pwrite(cut, 0)
                f.sync()
            finally:
                f.close()
            self.fs.sync_dir(aside)
            seg.file.pwrite(bytes(len(cut)), tail.start)
            seg.file.sync()
        log.warning(
            "%s: cut a torn tail at offset %d (%d bytes kept in %s/): %s",
            seg.path,
            tail.start,
            len(cut),
            CUT_DIR,
            tail.reason,
        )
