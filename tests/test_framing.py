"""Record framing and segment classification (walq.core.framing)."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from walq.core import format as fmt
from walq.core import framing
from walq.errors import CorruptionError

H = fmt.SEGMENT_HEADER_SIZE


def segment(bodies: list[bytes], *, synced: list[int] | None = None, prealloc: int = 0) -> bytes:
    """A segment's bytes: header, then one ENQUEUE-typed record per body."""
    out = bytearray(fmt.SegmentHeader(1, 1).encode())
    for i, body in enumerate(bodies):
        mark = H if synced is None else synced[i]
        out += framing.encode(fmt.ACK, body, mark)
    out += bytes(max(0, prealloc - len(out)))
    return bytes(out)


def offsets(data: bytes) -> list[int]:
    return [r.offset for r in framing.records(data, H)]


@given(st.integers(1, fmt.MAX_TYPE), st.binary(max_size=300), st.integers(0, 2**20))
def test_encoded_record_decodes_to_itself(rtype: int, body: bytes, pad: int) -> None:
    """Any record encoded at any offset decodes back to the same type, body and end."""
    prefix = bytes(pad % 64 + 16)
    data = prefix + framing.encode(rtype, body, 0)
    rec = framing.decode(data, len(prefix))
    assert isinstance(rec, framing.Record)
    assert (rec.rtype, rec.body, rec.end) == (rtype, body, len(data))


@given(st.binary(max_size=200), st.integers(0, 250))
def test_decoder_never_raises_on_arbitrary_bytes(data: bytes, offset: int) -> None:
    """Any bytes at any offset decode to a record, an end, incomplete or damaged -- never raise."""
    result = framing.decode(data, offset)
    assert isinstance(result, framing.Record | framing.End | framing.Incomplete | framing.Damaged)


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=5), st.data())
def test_byte_at_a_time_feeding_yields_each_record_once_complete(
    bodies: list[bytes], data: st.DataObject
) -> None:
    """Fed a prefix at a time, the decoder says Incomplete until the whole record is there."""
    stream = b"".join(framing.encode(fmt.ACK, b, 0) for b in bodies)
    got: list[bytes] = []
    pos = 0
    for cut in range(len(stream) + 1):
        res = framing.decode(stream[:cut], pos)
        if isinstance(res, framing.Record):
            got.append(res.body)
            pos = res.end
        else:
            assert isinstance(res, framing.Incomplete | framing.End)
    assert got == bodies


def test_zeroed_space_reads_as_the_end_of_the_log() -> None:
    """Preallocated zeros after the records are the end, not a record and not damage."""
    data = segment([b"a", b"bb"], prealloc=4096)
    scan = framing.classify(data, H, newest=True)
    assert [r.body for r in scan.records] == [b"a", b"bb"]
    assert scan.tail is None and not scan.gaps


def test_huge_length_field_is_damage_not_an_allocation() -> None:
    """A length beyond MAX_BODY is reported as damage before anything is allocated."""
    header = struct.pack("<IIBBHI", 0, 0xFFFFFFFF, fmt.ACK, 0, 0, 0)
    res = framing.decode(header + b"x" * 10, 0)
    assert isinstance(res, framing.Damaged) and "exceeds" in res.reason


def test_type_zero_with_nonzero_bytes_is_damage() -> None:
    """Type 0 is reserved: a non-zero header with type 0 is damage, not the end."""
    data = struct.pack("<IIBBHI", 1, 4, 0, 0, 0, 0) + b"abcd"
    assert isinstance(framing.decode(data, 0), framing.Damaged)


def test_checksum_covers_type_and_body() -> None:
    """Changing the type byte or a body byte makes the record damaged."""
    rec = bytearray(framing.encode(fmt.ACK, b"hello", 0))
    for pos in (8, 16, len(rec) - 1):
        bad = bytearray(rec)
        bad[pos] ^= 0x01
        assert not isinstance(framing.decode(bytes(bad), 0), framing.Record), pos


@pytest.mark.parametrize("prealloc", [0, 4096])
def test_truncated_trailing_record_is_a_torn_tail_at_every_byte(prealloc: int) -> None:
    """The last record cut at any byte: a torn tail at its start, earlier records intact."""
    full = segment([b"one", b"two", b"three" * 20])
    last = offsets(full)[-1]
    for cut in range(last, len(full)):
        data = full[:cut] + bytes(max(0, prealloc - cut))
        scan = framing.classify(data, H, newest=True)
        assert [r.body for r in scan.records] == [b"one", b"two"], cut
        assert not scan.gaps
        assert scan.end == last
        assert (scan.tail is None) == (cut == last), cut


@given(st.binary(min_size=1, max_size=64))
def test_garbage_after_the_last_record_is_a_torn_tail(garbage: bytes) -> None:
    """Arbitrary bytes appended to the newest segment are cut; the records before stay."""
    base = segment([b"one", b"two"])
    scan = framing.classify(base + garbage, H, newest=True)
    assert [r.body for r in scan.records[:2]] == [b"one", b"two"]
    assert not scan.gaps


def test_flipped_bit_in_a_sealed_segment_is_corruption() -> None:
    """Damage in an older segment is a gap (corruption), never a tail to cut."""
    data = bytearray(segment([b"one", b"two", b"three"]))
    data[offsets(bytes(data))[1] + 17] ^= 0x40
    scan = framing.classify(bytes(data), H, newest=False)
    assert scan.gaps and scan.gaps[0].start == offsets(segment([b"one"]))[0] + 19
    assert [r.body for r in scan.records] == [b"one", b"three"]


def test_damage_before_a_record_that_says_it_was_synced_is_corruption() -> None:
    """In the newest segment, damage that a later record's watermark covers is corruption."""
    first = H
    second = first + 16 + 3
    third = second + 16 + 3
    good = segment([b"one", b"two", b"thr"], synced=[H, H, third])
    data = bytearray(good)
    data[second + 17] ^= 0xFF
    scan = framing.classify(bytes(data), H, newest=True)
    assert scan.tail is None
    assert scan.gaps == [framing.Gap(second, third, "checksum mismatch")]


def test_damage_not_covered_by_any_watermark_is_a_torn_tail() -> None:
    """Out-of-order persistence: a hole then an unsynced record is cut as a torn tail."""
    data = bytearray(segment([b"one", b"two", b"thr"]))
    second = H + 19
    data[second : second + 19] = bytes(19)  # this record's sector never reached the disk
    scan = framing.classify(bytes(data), H, newest=True)
    assert [r.body for r in scan.records] == [b"one"]
    assert scan.tail is not None and scan.tail.start == second
    assert not scan.gaps


def test_resync_finds_the_next_record_after_damage() -> None:
    """After damaged bytes, the scanner finds the next valid record."""
    data = segment([b"aaaa"]) + b"\x07" * 33 + framing.encode(fmt.ACK, b"next", 0)
    found = framing.resync(data, H + 20)
    assert found is not None and found.body == b"next"


def test_segment_header_round_trips_and_rejects_damage() -> None:
    """The header decodes to itself; any flipped byte is CorruptionError naming the file."""
    head = fmt.SegmentHeader(7, 3)
    raw = head.encode()
    assert fmt.SegmentHeader.decode(raw, "f") == head
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        with pytest.raises(CorruptionError, match=r"^seg: corrupt at offset 0"):
            fmt.SegmentHeader.decode(bytes(bad), "seg")


def test_crc_is_crc32c_of_header_tail_and_body() -> None:
    """The documented checksum: CRC32C over bytes 4..16 of the header, then the body."""
    rec = framing.encode(fmt.ACK, b"xyz", 40)
    assert int.from_bytes(rec[:4], "little") == crc32c(rec[4:])


# -- one validity check, with an injectable checksum test ---------------------------------------


@given(st.binary(max_size=400), st.integers(0, 120))
def test_scan_fast_and_decode_agree_on_every_record(data: bytes, offset: int) -> None:
    """The fast scan feeds exactly the records decode finds, and stops where decode does."""
    seg = segment([data[:40], data[40:90], data[90:]])
    mangled = bytearray(seg)
    if offset < len(mangled) - H:
        mangled[H + offset] ^= 0xFF
    fed: list[tuple[int, int, bytes]] = []
    stop, _ = framing.scan_fast(
        bytes(mangled), H, 7, lambda seq, t, o, n, body: fed.append((o, n, bytes(body)))
    )
    decoded = list(framing.records(bytes(mangled), H))
    assert fed == [(r.offset, r.end - r.offset, r.body) for r in decoded]
    assert stop == (decoded[-1].end if decoded else H)


def test_the_record_check_is_a_seam() -> None:
    """A caller's check decides which checksums pass: the default refuses a flipped bit."""
    seg = bytearray(segment([b"first", b"second"]))
    seg[-1] ^= 0x01  # the second record's body
    data = bytes(seg)
    second = framing.records(data, H).__next__().end
    assert framing.decode(data, second) == framing.Damaged(second, "checksum mismatch")
    anything = framing.decode(data, second, check=lambda crc, covered: True)
    assert isinstance(anything, framing.Record)
    stop, _ = framing.scan_fast(data, H, 1, lambda *a: None)
    assert stop == second
    stop, _ = framing.scan_fast(data, H, 1, lambda *a: None, check=lambda crc, covered: True)
    assert stop == len(data)
    assert framing.classify(data, H, newest=True).tail is not None
    assert framing.classify(data, H, newest=True, check=lambda c, b: True).tail is None
