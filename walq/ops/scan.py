"""Reading a queue directory's segment files without the lock: scans, not replays.

Reading takes no lock and changes nothing, so it works beside a running owner
and on a queue with no owner: the owner's newest segment may end in a record
it is still writing, which is reported as the tail, never as damage. A
compaction that runs while a reader reads is detected (a compacted segment
that replaces segments the reader has already read) and the read is retried.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.packed import seq_of
from walq.core.state import Loc
from walq.directory.fs import FileSystem, OsFileSystem
from walq.directory.queue import LOCK_FILE
from walq.errors import CorruptionError, NotAQueueError
from walq.producers.spool import SPOOL_DIR

SNIPPET = 32  # bytes of a damaged range shown as hex
RACE_RETRIES = 5

Progress = Callable[[int, int], None]
# Replays a segment's leading valid records itself (the owner's fused fast
# path, QueueState.load): (buf, seq) -> where it stopped; the scan goes on from there.
Loader = Callable[[bytes, int], int]


@attrs.frozen
class SegmentScan:
    """One segment file as a reader found it."""

    path: str
    seq: int
    first: int
    size: int
    records: list[framing.Record]
    gaps: list[framing.Gap]
    tail: framing.Gap | None
    end: int
    header_error: str | None = None
    snippets: dict[int, bytes] = attrs.field(factory=dict)  # first bytes of each damaged range
    # A compacted segment that replaces segments this read had already yielded:
    # a compaction ran while reading (the reader should start again).
    raced: bool = False
    # The header is damaged (header_error) but was rebuilt from the file name,
    # and the records after it were read as usual.
    rebuilt: bool = False


def segment_seqs(path: str, fs: FileSystem | None = None) -> list[int]:
    """The segment sequence numbers in queue directory `path`; NotAQueueError if not one."""
    fs = fs or OsFileSystem()
    if not fs.is_dir(path):
        raise NotAQueueError(f"{path}: no such directory")
    names = fs.listdir(path)
    seqs = sorted(s for s in (fmt.parse_segment_name(n) for n in names) if s is not None)
    if not seqs and LOCK_FILE not in names and SPOOL_DIR not in names:
        raise NotAQueueError(f"{path}: not a walq queue (no segment files)")
    return seqs


def check_queue_dir(path: str, fs: FileSystem | None = None) -> None:
    """NotAQueueError unless `path` is a queue directory or an empty one (a queue to be)."""
    fs = fs or OsFileSystem()
    if fs.is_dir(path) and not fs.listdir(path):
        return
    segment_seqs(path, fs)


def iter_scans(
    path: str,
    fs: FileSystem | None = None,
    *,
    progress: Progress | None = None,
    load: Loader | None = None,
    from_seq: int = 0,
) -> Iterator[SegmentScan]:
    """Every live segment of the queue in `path`, scanned, in log order, one at a time.

    Segments that a compacted segment supersedes (leftovers of a crashed
    compaction) are skipped; a segment removed since the directory was listed
    (by a compaction) is skipped too. With `load`, each segment's leading run
    of valid records goes to it instead of into the scan's `records`.
    Segments numbered below `from_seq` (a checkpoint covers them) are not read.
    """
    fs = fs or OsFileSystem()
    todo = live_seqs(path, fs)
    seen: list[int] = []
    for i, seq in enumerate(todo):
        if seq < from_seq:
            continue
        scan = _scan_segment(fs, path, seq, newest=i == len(todo) - 1, oldest=i == 0, load=load)
        if progress is not None:
            progress(i + 1, len(todo))
        if scan is None:
            continue
        if scan.first < seq and any(scan.first <= s < seq for s in seen):
            scan = attrs.evolve(scan, raced=True)
        seen.append(seq)
        yield scan


def live_seqs(path: str, fs: FileSystem) -> list[int]:
    """The live segments' numbers in log order: not those a compacted segment supersedes
    (leftovers of a crashed compaction), nor those removed since the listing."""
    seqs = segment_seqs(path, fs)
    firsts = {seq: _peek_first(fs, path, seq) for seq in seqs}
    spans = [(first, seq) for seq, first in firsts.items() if first is not None and first < seq]
    return [s for s in seqs if firsts[s] is not None and not any(a <= s < b for a, b in spans)]


def missing(path: str, spans: list[tuple[int, int]]) -> list[str]:
    """A line per range of segments missing from a log whose live segments cover `spans`."""
    return [
        f"{posixpath.join(path, fmt.segment_name(lo))}: offset 0: {fmt.describe_missing(lo, hi)}"
        for lo, hi in fmt.missing_segments(spans)
    ]


def scan_dir(path: str, fs: FileSystem | None = None) -> list[SegmentScan]:
    """Every live segment of the queue in `path`, scanned; NotAQueueError if none."""
    for _ in range(RACE_RETRIES):
        scans = list(iter_scans(path, fs))
        if not any(s.raced for s in scans):
            return scans
    # Compactions keep racing the reader: keep the newest view of each range.
    covered = [(s.first, s.seq) for s in scans if s.first < s.seq]
    return [s for s in scans if not any(a <= s.seq < b for a, b in covered)]


def _peek_first(fs: FileSystem, path: str, seq: int) -> int | None:
    """The `first` field of segment `seq`'s header (seq if damaged); None if it is gone."""
    seg_path = posixpath.join(path, fmt.segment_name(seq))
    try:
        f = fs.open(seg_path)
    except FileNotFoundError:
        return None
    except CorruptionError:  # not a segment file (a link): _scan_segment reports it
        return seq
    try:
        data = f.pread(fmt.SEGMENT_HEADER_SIZE, 0)
    finally:
        f.close()
    try:
        header = fmt.SegmentHeader.decode(data, seg_path)
    except CorruptionError:
        return seq
    # A valid header naming another segment (a copied file) covers nothing.
    return header.first if header.seq == seq else seq


def _scan_segment(
    fs: FileSystem,
    path: str,
    seq: int,
    *,
    newest: bool,
    oldest: bool = False,
    load: Loader | None = None,
) -> SegmentScan | None:
    seg_path = posixpath.join(path, fmt.segment_name(seq))
    try:
        f = fs.open(seg_path)
    except FileNotFoundError:
        return None  # removed by a compaction since the directory was listed
    except CorruptionError as exc:  # a link or a non-file: never followed, reported as damage
        return SegmentScan(seg_path, seq, seq, 0, [], [framing.Gap(0, 0, exc.reason)], None, 0,
                           exc.reason)  # fmt: skip
    try:
        data = f.pread(f.size(), 0)
    finally:
        f.close()
    header_error = None
    header_snippet = b""
    try:
        header = fmt.SegmentHeader.decode(data, seg_path)
        if header.seq != seq:
            raise CorruptionError(seg_path, 0, f"header says segment {header.seq}")
    except CorruptionError as exc:
        if not fmt.rebuildable(exc.reason, len(data), seq):
            bad = framing.Gap(0, len(data), exc.reason)
            return SegmentScan(
                seg_path, seq, seq, len(data), [], [bad], None, 0, exc.reason, {0: data[:SNIPPET]}
            )
        header = fmt.SegmentHeader.rebuild(seq, oldest=oldest, first_type=fmt.first_type(data))
        header_error = f"{exc.reason}; {header.describe()}"
        header_snippet = data[:SNIPPET]
    start = fmt.SEGMENT_HEADER_SIZE if load is None else load(data, seq)
    if load is not None and framing.all_zero(data, start):
        scan = framing.Scan([], [], None, start)  # the common case: nothing left to classify
    else:
        scan = framing.classify(data, start, newest=newest)
    ranges = [*scan.gaps, *([scan.tail] if scan.tail is not None else [])]
    snippets = {g.start: data[g.start : min(g.end, g.start + SNIPPET)] for g in ranges}
    if header_error is not None:
        snippets[0] = header_snippet
    return SegmentScan(
        seg_path,
        seq,
        header.first,
        len(data),
        scan.records,
        scan.gaps,
        scan.tail,
        scan.end,
        header_error,
        snippets,
        rebuilt=header_error is not None,
    )


def read_record(path: str, loc: Loc, fs: FileSystem | None = None) -> ev.Event | None:
    """The event at `loc`, or None if it is no longer there (a compaction moved it)."""
    fs = fs or OsFileSystem()
    try:
        f = fs.open(posixpath.join(path, fmt.segment_name(seq_of(loc.seg))))
    except FileNotFoundError:
        return None
    try:
        data = f.pread(loc.size, loc.offset)
    finally:
        f.close()
    rec = framing.decode(data, 0, origin=loc.offset)
    if not isinstance(rec, framing.Record) or rec.end != loc.size:
        return None
    try:
        return ev.decode(rec.rtype, rec.body)
    except ev.BadEvent:
        return None


def list_names(fs: FileSystem, directory: str) -> list[str]:
    """The names in `directory`, none if it does not exist."""
    return fs.listdir(directory) if fs.is_dir(directory) else []
