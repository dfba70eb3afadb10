"""Record framing: encode records, and decode them from bytes one at a time.

`decode` never raises on bad input: it returns what it found at an offset -- a
record, the end of the log (zeroed space), a record that runs past the data
(`Incomplete`: a torn tail, or a writer still writing), or `Damaged` bytes.
Deciding whether damage is a torn tail or corruption needs the whole segment
and is the job of `classify` (see docs/FORMAT.md, "Recovery").

`check_record` is the one test of whether bytes are a valid record; `decode`,
the fast scan (`scan_fast`, which replay feeds a sink) and `classify` all ask
it. Its checksum test is a seam (`RecordCheck`, default `crc_matches`) that a
caller such as the directory's Log passes in.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from typing import TypeAlias

import attrs
from crc32c import crc32c

from walq.core.format import MAX_BODY, MAX_TYPE, RECORD_HEADER, RECORD_HEADER_SIZE

_pack_header = RECORD_HEADER.pack
_unpack_header = RECORD_HEADER.unpack_from
_ZERO_HEADER = bytes(RECORD_HEADER_SIZE)


_pack_tail = struct.Struct("<IBBHI").pack  # bytes 4..16 of the header: what the CRC covers first


def header(rtype: int, body: bytes, synced: int) -> bytes:
    """The 16-byte header of a record (crc, length, type, synced watermark) for `body`."""
    tail = _pack_tail(len(body), rtype, 0, 0, synced)
    return crc32c(body, crc32c(tail)).to_bytes(4, "little") + tail


def encode(rtype: int, body: bytes, synced: int) -> bytes:
    """Frame one record: its header, then its body."""
    return header(rtype, body, synced) + body


@attrs.frozen
class Record:
    """A valid record at `offset`; `end` is where the next one starts."""

    offset: int
    rtype: int
    synced: int
    body: bytes
    end: int


@attrs.frozen
class End:
    """No record here: the data ends, or zeroed (preallocated) space begins."""

    offset: int


@attrs.frozen
class Incomplete:
    """A record starts here but its bytes run past the end of the data."""

    offset: int
    reason: str


@attrs.frozen
class Damaged:
    """The bytes here are not a valid record."""

    offset: int
    reason: str


Decoded = Record | End | Incomplete | Damaged


RecordCheck: TypeAlias = Callable[[int, bytes | memoryview], bool]
"""Whether the bytes a record's checksum covers (header bytes 4..16, then the body) match it."""


def crc_matches(crc: int, covered: bytes | memoryview) -> bool:
    """The record check walq uses: CRC-32C of `covered` equals `crc`."""
    return crc32c(covered) == crc


def check_record(
    buf: bytes | memoryview,
    offset: int,
    max_body: int = MAX_BODY,
    origin: int = 0,
    check: RecordCheck = crc_matches,
) -> tuple[int, int, int] | End | Incomplete | Damaged:
    """(type, synced watermark, end) of the valid record at `offset`, or what is there instead.

    The one home of the record-validity rules; never raises for any input
    bytes. `origin` is the file offset of `buf[0]` when `buf` is a piece of a
    segment.
    """
    size = len(buf)
    remaining = size - offset
    if remaining <= 0:
        return End(offset)
    if remaining < RECORD_HEADER_SIZE:
        if not any(buf[offset:]):
            return End(offset)
        return Incomplete(offset, f"header truncated: {remaining} of {RECORD_HEADER_SIZE} bytes")
    crc, length, rtype, flags, reserved, synced = _unpack_header(buf, offset)
    if rtype == 0:
        if bytes(buf[offset : offset + RECORD_HEADER_SIZE]) == _ZERO_HEADER:
            return End(offset)
        return Damaged(offset, "record type 0 with non-zero header")
    if rtype > MAX_TYPE or flags or reserved:
        return Damaged(offset, f"invalid header (type {rtype}, flags {flags}, reserved {reserved})")
    if length > max_body:
        return Damaged(offset, f"length {length} exceeds the maximum {max_body}")
    end = offset + RECORD_HEADER_SIZE + length
    if end > size:
        return Incomplete(offset, f"record of {length} bytes runs past the end of the data")
    if synced > origin + offset:
        return Damaged(offset, f"sync watermark {synced} lies beyond the record")
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if not check(crc, view[offset + 4 : end]):
        return Damaged(offset, "checksum mismatch")
    return rtype, synced, end


def decode(
    buf: bytes | memoryview,
    offset: int,
    *,
    max_body: int = MAX_BODY,
    origin: int = 0,
    check: RecordCheck = crc_matches,
) -> Decoded:
    """Decode the record at `offset` of `buf`; never raises for any input bytes.

    `origin` is the file offset of `buf[0]` when `buf` is a piece of a segment.
    """
    found = check_record(buf, offset, max_body, origin, check)
    if not isinstance(found, tuple):
        return found
    rtype, synced, end = found
    return Record(offset, rtype, synced, bytes(buf[offset + RECORD_HEADER_SIZE : end]), end)


# A cheap pre-filter for resynchronising after damage: a plausible header has
# a known type and zero flag/reserved bytes at offset 8. The CRC then decides.
# (Searching for those four bytes skips zeroed space at C speed.)
_CANDIDATE = re.compile(rb"[\x01-" + bytes([MAX_TYPE]) + rb"]\x00\x00\x00")
_TYPE_AT = 8


def resync(
    buf: bytes | memoryview,
    start: int,
    *,
    max_body: int = MAX_BODY,
    check: RecordCheck = crc_matches,
    origin: int = 0,
) -> Record | None:
    """The first valid record that starts after `start`, or None.

    `origin` is the file offset of `buf[0]` when `buf` is a piece of a segment.
    """
    data = buf if isinstance(buf, bytes) else bytes(buf)
    for match in _CANDIDATE.finditer(data, start + 1 + _TYPE_AT):
        found = decode(
            data, match.start() - _TYPE_AT, max_body=max_body, check=check, origin=origin
        )
        if isinstance(found, Record):
            return found
    return None


def all_zero(buf: bytes | memoryview, start: int) -> bool:
    """Whether every byte from `start` on is zero (fast: no Python-level loop)."""
    data = buf if isinstance(buf, bytes) else bytes(buf)
    return data.count(0, start) == len(data) - start


def scan_fast(
    buf: bytes,
    offset: int,
    seq: int,
    sink: Callable[[int, int, int, int, memoryview], None],
    *,
    check: RecordCheck = crc_matches,
    base: int = 0,
) -> tuple[int, int]:
    """Feed valid records from `offset` to `sink` until the first non-record.

    Returns where it stopped and the sync watermark of the last record fed (0: none).

    The replay fast path: no Record objects, no copies (bodies are memoryview
    slices; `sink(seq, type, offset, size, body)`). Whatever stops it --
    zeros, a torn tail, damage -- is for `classify` to judge. `base` is the
    file offset of `buf[0]` when `buf` is a window of a segment: offsets given
    to the sink are file offsets; the one returned is `buf`'s.
    """
    view = memoryview(buf)
    header = RECORD_HEADER_SIZE
    watermark = 0
    while True:
        found = check_record(view, offset, MAX_BODY, base, check)
        if not isinstance(found, tuple):
            return offset, watermark
        rtype, watermark, end = found
        sink(seq, rtype, base + offset, end - offset, view[offset + header : end])
        offset = end


def records(
    buf: bytes | memoryview, offset: int, *, check: RecordCheck = crc_matches
) -> Iterator[Record]:
    """Valid records from `offset` until the first non-record; for trusted data."""
    while True:
        found = decode(buf, offset, check=check)
        if not isinstance(found, Record):
            return
        yield found
        offset = found.end


@attrs.frozen
class Gap:
    """A damaged range [start, end) found while scanning a segment."""

    start: int
    end: int
    reason: str


@attrs.frozen
class Scan:
    """What a segment holds: its valid records, damaged gaps, and where it ends.

    `tail` is the offset from which the segment holds a torn tail (bytes a
    crash left unfinished, safe to cut); `gaps` is damage before the tail,
    which no crash explains. `end` is where the valid log ends (the next
    append goes there).
    """

    records: list[Record]
    gaps: list[Gap]
    tail: Gap | None
    end: int


def classify(
    buf: bytes | memoryview, start: int, *, newest: bool, check: RecordCheck = crc_matches
) -> Scan:
    """Scan a whole segment's bytes from `start` and classify every damaged range.

    In the newest segment, damage is a torn tail unless a later valid record
    says (by its sync watermark) that the damaged bytes had been fsynced
    before it was written: synced bytes do not tear, so that is corruption.
    In any older segment every damaged byte is corruption: segments are
    fsynced before the next one is created.
    """
    found: list[Record] = []
    gaps: list[Gap] = []
    offset = start
    size = len(buf)
    while True:
        item = decode(buf, offset, check=check)
        if isinstance(item, Record):
            found.append(item)
            offset = item.end
            continue
        reason = item.reason if not isinstance(item, End) else "zeroed space before more records"
        if all_zero(buf, offset):
            return Scan(found, gaps, None, offset)
        later = resync(buf, offset, check=check)
        if later is None:
            gap = Gap(offset, _trim_zeros(buf, offset, size), reason)
            if newest:
                return Scan(found, gaps, gap, offset)
            gaps.append(gap)
            return Scan(found, gaps, None, offset)
        if newest and not _synced_after(buf, later, offset, check):
            return Scan(found, gaps, Gap(offset, _trim_zeros(buf, offset, size), reason), offset)
        gaps.append(Gap(offset, later.offset, reason))
        offset = later.offset


def _synced_after(buf: bytes | memoryview, first: Record, damage: int, check: RecordCheck) -> bool:
    """Whether `first` or a valid record after it claims `damage` was already synced."""
    item: Record | None = first
    while item is not None:
        if item.synced > damage:
            return True
        nxt = decode(buf, item.end, check=check)
        item = nxt if isinstance(nxt, Record) else resync(buf, item.end, check=check)
    return False


def _trim_zeros(buf: bytes | memoryview, start: int, end: int) -> int:
    """The end of the non-zero bytes in [start, end)."""
    data = bytes(buf[start:end])
    return start + len(data.rstrip(b"\x00"))
