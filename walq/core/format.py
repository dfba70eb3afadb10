"""Constants and byte layout of walq's segment files (specified in docs/FORMAT.md)."""

from __future__ import annotations

import struct

import attrs
from crc32c import crc32c

from walq.errors import CorruptionError

# -- segment header ---------------------------------------------------------
# magic(8) version(u32) flags(u32) seq(u64) first(u64) reserved(u32) crc(u32)
MAGIC = b"walq-seg"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sIIQQII")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 40
assert SEGMENT_HEADER_SIZE == 40

# -- record header ----------------------------------------------------------
# crc(u32) length(u32) type(u8) flags(u8) reserved(u16) synced(u32), then the body.
# The CRC32C covers bytes 4.. of the header and the whole body.
RECORD_HEADER = struct.Struct("<IIBBHI")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 16
assert RECORD_HEADER_SIZE == 16

# Segment numbers fit in 48 bits (a job's location packs the number with a
# compaction generation above it: walq.core.state.SEQ_BITS).
MAX_SEQ = (1 << 48) - 1
# A length field above this is damage, never an allocation request.
MAX_BODY = 1 << 28  # 256 MiB
# Segments are addressed with 32-bit offsets.
MAX_SEGMENT_SIZE = (1 << 32) - 1
# The longest delay a job (or a retry) may have, so the furthest a due time lies
# ahead: 10 years. walq.core.jobspec.check_delay enforces it for every way in.
MAX_DELAY = 10 * 365 * 86400.0

# Record types. Type 0 is reserved: zeroed or preallocated space reads as
# the end of the log, never as a record.
ZERO = 0
ENQUEUE = 1
CLAIM = 2
ACK = 3
FAIL = 4
RELEASE = 5
CANCEL = 6
REQUEUE = 7
PURGE = 8
JOB = 9
META = 10
PAUSE = 11  # a task's pending jobs are not claimed until its RESUME
RESUME = 12
# 13-19: flow (results, follow-up jobs, dependencies).
FINISH = 13  # an ack with its result and follow-up jobs, in one record
AFTER = 14  # a job that waits for others (wraps an enqueue or a compacted job)
FLOW = 15  # a checkpoint's flow state: kept results, jobs' parents, dependents' causes
ATTEMPT = 16  # how finished attempts ran (start, seconds, process, host): history only
# 20-24: time (schedules, unique_for). 17-19 and 23-29 are set aside for records to come.
SCHEDULE = 20  # a periodic schedule's last tick enqueued
UNIQUE = 21  # jobs whose key is remembered for a while after they are done
KEEP = 22  # a done job's key, remembered until a wall time
MAX_TYPE = 29

TYPE_NAMES = {
    ENQUEUE: "enqueue",
    CLAIM: "claim",
    ACK: "ack",
    FAIL: "fail",
    RELEASE: "release",
    CANCEL: "cancel",
    REQUEUE: "requeue",
    PURGE: "purge",
    JOB: "job",
    META: "meta",
    SCHEDULE: "schedule",
    UNIQUE: "unique",
    KEEP: "keep",
    PAUSE: "pause",
    RESUME: "resume",
    FINISH: "finish",
    AFTER: "after",
    FLOW: "flow",
    ATTEMPT: "attempt",
}


def segment_name(seq: int) -> str:
    """The file name of segment `seq`: 16 hex digits sort in log order."""
    return f"{seq:016x}.wal"


def parse_segment_name(name: str) -> int | None:
    """The sequence number in a segment file name, or None if it is not one."""
    stem, dot, ext = name.partition(".")
    if ext != "wal" or not dot or len(stem) != 16:
        return None
    try:
        return int(stem, 16)  # out of range is for the header check to report as damage
    except ValueError:
        return None


@attrs.frozen
class SegmentHeader:
    """A segment's identity: its sequence number and the first segment it covers.

    A compacted segment replaces segments `first`..`seq`; for any other segment
    `first == seq`.
    """

    seq: int
    first: int

    def encode(self) -> bytes:
        """The header's 40 bytes."""
        head = SEGMENT_HEADER.pack(MAGIC, VERSION, 0, self.seq, self.first, 0, 0)[:-4]
        return head + struct.pack("<I", crc32c(head))

    @classmethod
    def decode(cls, data: bytes, path: str) -> SegmentHeader:
        """Parse and check a header; raise CorruptionError naming `path` otherwise."""
        if len(data) < SEGMENT_HEADER_SIZE:
            raise CorruptionError(path, 0, f"segment header truncated ({len(data)} bytes)")
        magic, version, flags, seq, first, reserved, crc = SEGMENT_HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CorruptionError(path, 0, f"bad magic {magic!r}: not a walq segment")
        if crc32c(data[: SEGMENT_HEADER_SIZE - 4]) != crc:
            raise CorruptionError(path, 0, "segment header checksum mismatch")
        if version != VERSION:
            raise CorruptionError(path, 0, f"unsupported format version {version}")
        if flags or reserved or first > seq or first < 1:
            raise CorruptionError(path, 0, "segment header has invalid fields")
        if seq > MAX_SEQ:
            raise CorruptionError(path, 0, f"segment number {seq} is beyond {MAX_SEQ}")
        return cls(seq=seq, first=first)

    @classmethod
    def rebuild(cls, seq: int, *, oldest: bool, first_type: int | None) -> SegmentHeader:
        """The header a segment named `seq` must have had, when its own is damaged.

        Only the oldest segment of a log may cover more than itself, and then
        it is a compacted one starting the log (its first record is a `job` or
        `meta` record): see `missing_segments`.
        """
        compacted = oldest and first_type in (JOB, META)
        return cls(seq=seq, first=1 if compacted else seq)

    def describe(self) -> str:
        """What a header rebuilt from the file name says."""
        covers = f", a compacted one covering from {self.first}" if self.first < self.seq else ""
        return f"rebuilt from the file name as segment {self.seq}{covers}"


def rebuildable(reason: str, size: int, seq: int) -> bool:
    """Whether a segment whose header failed with `reason` can be read with a rebuilt one.

    Not when the header is valid but names another segment (a copy of another
    segment), nor when the file is shorter than a header or its name is beyond
    the numbers a segment may have.
    """
    return not reason.startswith("header says") and size >= SEGMENT_HEADER_SIZE and seq <= MAX_SEQ


def first_type(data: bytes) -> int | None:
    """The type byte of the first record of a segment's bytes, if it has one."""
    at = SEGMENT_HEADER_SIZE + 8
    return data[at] if len(data) > at else None


def missing_segments(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges (lo, hi) of segment numbers missing from a log of segments `spans`.

    `spans` are the (first, seq) of the live segments in log order. The log
    starts at segment 1 and its segments are consecutive: a new segment is
    the active one's seq + 1, and a compaction replaces every sealed segment
    from the oldest on with one covering 1..seq. So the oldest segment covers
    from 1 and each next one starts right after the one before; anything
    else is a segment that was removed.
    """
    missing: list[tuple[int, int]] = []
    expected = 1
    for first, seq in spans:
        if first > expected:
            missing.append((expected, first - 1))
        expected = max(expected, seq + 1)
    return missing


def describe_missing(lo: int, hi: int) -> str:
    """One line naming missing segments lo..hi."""
    if lo == hi:
        return f"segment {segment_name(lo)} is missing (removed?)"
    return f"segments {segment_name(lo)} .. {segment_name(hi)} are missing (removed?)"
