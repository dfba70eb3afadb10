"""Fuzz the decoder and every reader with damaged segment files (tools/fuzz.py).

Only walq's own errors escape; damage is never delivered as data; fsck and
open agree; a huge length field is never allocated. The planted
accept-bad-crc bug proves the fuzzer can fail, and every bug it found has a
regression test below.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import random
import resource
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

import walq
from tools import fuzz
from walq.cli.app import main as cli
from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.checkpoint import FILE_NAME as CHECKPOINT
from walq.errors import WalqError
from walq.ops import repair as ops_repair
from walq.testing import plant as planting
from walq.testing.faultfs import SimFileSystem


@pytest.fixture(scope="module")
def corpus() -> fuzz.Corpus:
    return fuzz.build_corpus()


def assert_fine(problems: list[fuzz.Problem], mutated: fuzz.Mutated) -> None:
    lines = [f"{p.kind} [{p.target}]: {p.detail}" for p in problems]
    assert not problems, "\n".join([*mutated.steps, *lines])


# -- the decoder alone ---------------------------------------------------------------------


@given(st.binary(max_size=600), st.integers(0, 620))
def test_decode_never_raises_for_any_bytes(data: bytes, offset: int) -> None:
    """framing.decode returns a record, the end, a torn record or damage: it never raises."""
    found = framing.decode(data, offset)
    assert isinstance(found, framing.Record | framing.End | framing.Incomplete | framing.Damaged)


@given(st.lists(st.binary(max_size=80), max_size=6), st.booleans())
def test_classify_and_scan_never_raise_whole_or_byte_by_byte(
    pieces: list[bytes], newest: bool
) -> None:
    """A buffer of valid records and garbage, fed whole and one byte longer at a time."""
    records = [framing.encode(1 + i % fmt.MAX_TYPE, p, 40) for i, p in enumerate(pieces)]
    data = bytes(40) + b"".join(r if i % 2 else r[: len(r) // 2] for i, r in enumerate(records))
    for end in range(40, len(data) + 1):
        scan = framing.classify(data[:end], 40, newest=newest)
        assert scan.end <= end
        framing.scan_fast(data[:end], 40, 1, lambda *a: None)


@pytest.mark.parametrize("rtype", sorted(fmt.TYPE_NAMES))
@given(body=st.binary(max_size=120))
def test_event_decoding_raises_only_bad_event(rtype: int, body: bytes) -> None:
    """Any body under any record type decodes or raises BadEvent (a WalqError)."""
    with contextlib.suppress(ev.BadEvent):
        ev.decode(rtype, body)


# -- mutated queue directories -----------------------------------------------------------------


@given(data=st.data())
def test_mutated_segments_never_break_a_reader(corpus: fuzz.Corpus, data: st.DataObject) -> None:
    """Hypothesis picks the mutations; every reader keeps every promise."""

    def pick(n: int) -> int:
        return data.draw(st.integers(0, n - 1)) if n > 1 else 0

    mutated = fuzz.Mutator(corpus, pick).mutate(data.draw(st.integers(1, 3), label="mutations"))
    assert_fine(fuzz.check(corpus, mutated), mutated)


def test_a_seeded_fuzz_slice_finds_nothing_new(corpus: fuzz.Corpus) -> None:
    """A fixed slice of the command-line fuzz."""
    report = fuzz.fuzz(250, seed=20261128, corpus=corpus, time_limit_s=90)
    assert report.cases >= 100
    assert not report.failing, [(i, m.steps, p) for i, m, p in report.failing[:3]]


@pytest.mark.parametrize("length", fuzz.HUGE_LENGTHS)
@pytest.mark.parametrize("which", ["sealed", "newest"])
def test_a_huge_length_field_is_never_allocated(
    corpus: fuzz.Corpus, length: int, which: str
) -> None:
    """A length of up to 4 GiB in a sealed or the newest segment: small peak, walq's errors only."""
    image = {p: bytearray(d) for p, d in corpus.image.items()}
    paths = sorted(p for p in image if p.endswith(".wal"))
    path = paths[-1] if which == "newest" else paths[0]
    at = corpus.records[path][len(corpus.records[path]) // 2]
    image[path][at + 4 : at + 8] = length.to_bytes(4, "little")
    mutated = fuzz.Mutated(
        {p: bytes(d) for p, d in image.items()}, (f"length {length}",), False, True
    )
    problems = fuzz.check(corpus, mutated, trace_memory=True)
    assert_fine(problems, mutated)


def test_the_command_line_fuzz_prints_its_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """`python tools/fuzz.py --cases N --seed S` prints cases and violations, and leaves the
    calling process's walq log level and address-space limit as they were."""
    level = logging.getLogger("walq").level
    limit = resource.getrlimit(resource.RLIMIT_AS)
    assert fuzz.main(["--cases", "15", "--seed", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["cases: 15", "violations: 0"]
    assert logging.getLogger("walq").level == level
    assert resource.getrlimit(resource.RLIMIT_AS) == limit


def test_the_cli_on_damaged_directories_exits_cleanly(corpus: fuzz.Corpus, tmp_path: Path) -> None:
    """walq dump, fsck and stats on real damaged directories: exit 0, 1 or 2, never a traceback."""
    for index in range(12):
        mutated = fuzz.make_case(corpus, 99, index)
        qdir = tmp_path / f"q{index}"
        qdir.mkdir()
        for path, data in mutated.image.items():
            (qdir / posixpath.basename(path)).write_bytes(data)
        for args in (["dump", "--json"], ["fsck", "--json"], ["stats", "--json"], ["dump"]):
            result = CliRunner().invoke(cli, [*args[:1], str(qdir), *args[1:]])
            assert result.exit_code in (0, 1, 2), (mutated.steps, args, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                mutated.steps,
                args,
                result.exception,
            )
            if "--json" in args and result.exit_code != 2 and args[0] != "dump":
                json.loads(result.output.splitlines()[-1])


# -- the fuzzer can fail ---------------------------------------------------------------------------


def test_a_planted_decoder_that_accepts_bad_checksums_is_caught(corpus: fuzz.Corpus) -> None:
    """With CRC checks off, flipped payload bits reach the caller: damage delivered."""
    report = fuzz.fuzz(400, seed=2, plant="accept-bad-crc", corpus=corpus, stop_after=3)
    kinds = {p.kind for _, _, problems in report.failing for p in problems}
    assert "damage-delivered" in kinds, report.summary()


@pytest.mark.parametrize("planted", [True, False])
def test_a_removed_sealed_segment_is_caught_unless_reported(
    corpus: fuzz.Corpus, planted: bool
) -> None:
    """Whole-file mutations: removing any sealed segment is reported, or flagged silent-loss.

    With the missing-segment check planted away (walq as it was), every removal
    of a sealed segment loses jobs with open and fsck saying nothing: the
    fuzzer's oracle says so. With the check, nothing is lost silently.
    """
    sealed = sorted(p for p in corpus.image if p.endswith(".wal"))[:-1]
    assert len(sealed) >= 3
    for path in sealed:
        image = {p: d for p, d in corpus.image.items() if p != path}
        mutated = fuzz.Mutated(image, (f"remove {path}",), False, False, whole_files=True)
        if planted:
            planting.plant("ignore-missing-segments")
        try:
            problems = fuzz.check(corpus, mutated)
        finally:
            planting.plant("ignore-missing-segments", on=False)
        if planted:
            assert {p.kind for p in problems} >= {"silent-loss"}, (path, problems)
        else:
            assert_fine(problems, mutated)


@pytest.mark.parametrize("name", ["ffffffffffffffff", "0000fffffffffffe", "0000000000000006"])
def test_a_copied_segment_under_a_higher_number_breaks_no_reader(
    corpus: fuzz.Corpus, name: str
) -> None:
    """A copy of a segment named past the newest: skip leaves it out and starts the next
    segment past it (if it can be reached at all), never writing under its number."""
    for src in sorted(p for p in corpus.image if p.endswith(".wal")):
        image = dict(corpus.image)
        image[posixpath.join(fuzz.QDIR, f"{name}.wal")] = corpus.image[src]
        mutated = fuzz.Mutated(image, (f"copy {src} to {name}",), False, False, whole_files=True)
        assert_fine(fuzz.check(corpus, mutated), mutated)


def test_whole_file_mutations_are_made(corpus: fuzz.Corpus) -> None:
    """The mutator removes, copies, renames, shifts and links whole files, LOCK among them."""
    steps = [s for i in range(300) for s in fuzz.make_case(corpus, 7, i).steps]
    for kind in ("remove", "duplicate", "rename", "shift", "link"):
        assert any(s.startswith(kind + " ") for s in steps), kind
    assert any(s.startswith("remove LOCK") for s in steps)
    assert any(fuzz.make_case(corpus, 7, i).whole_files for i in range(300))


# -- regressions: bugs the fuzzer found ---------------------------------------------------------


def sim_queue(fs: SimFileSystem, **kw: Any) -> walq.Queue:
    opts: dict[str, Any] = {
        "segment_size": 4096, "compaction": False, "min_free_bytes": 0, "serve": False,
    }  # fmt: skip
    opts.update(kw)
    return walq.Queue.open(fuzz.QDIR, fs=fs, **opts)


def compacted_queue() -> SimFileSystem:
    """A queue whose segment 2 is a compaction of segments 1..2; segment 3 is active."""
    fs = SimFileSystem()
    q = sim_queue(fs)
    for i in range(3):
        q.enqueue("t", {"i": i, "pad": "x" * 2500})
    assert q._log.sealed_seqs == [1, 2]
    q.compact()
    assert fs.listdir(fuzz.QDIR).count(fmt.segment_name(1)) == 0
    q.close()
    fs.sync_all()
    return fs


def put(fs: SimFileSystem, name: str, data: bytes) -> None:
    path = posixpath.join(fuzz.QDIR, name)
    if fs.exists(path):
        fs.remove(path)
    f = fs.open(path, create=True)
    f.pwrite(data, 0)
    f.close()
    fs.sync_all()


def test_a_compacted_header_spanning_many_segment_numbers_is_not_allocated() -> None:
    """A segment numbered 300,000 that covers 1..300,000: open's peak stays small."""
    fs = compacted_queue()
    header = fmt.SegmentHeader(seq=300_000, first=1)
    path = posixpath.join(fuzz.QDIR, fmt.segment_name(2))
    data = bytearray(fs.files()[path])
    data[: fmt.SEGMENT_HEADER_SIZE] = header.encode()
    put(fs, fmt.segment_name(300_000), bytes(data))
    fs.remove(path)
    fs.sync_all()
    tracemalloc.start()
    try:
        q = sim_queue(fs)
        q.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak >> 20} MiB"  # a list per segment number would not


def test_a_case_that_allocates_a_length_field_is_reported(
    corpus: fuzz.Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allocation check can fail: a reader that allocated a huge length is caught."""
    run = fuzz.Checker.run

    def allocating(self: fuzz.Checker) -> list[fuzz.Problem]:
        buf = bytearray(fmt.MAX_BODY - 1)  # what a reader trusting the length would do
        del buf
        return run(self)

    monkeypatch.setattr(fuzz.Checker, "run", allocating)
    mutated = fuzz.Mutated(dict(corpus.image), ("allocates",), False, True)
    problems = fuzz.check(corpus, mutated)
    assert [p.kind for p in problems] == ["allocation"]


def test_a_damaged_leftover_of_a_compaction_does_not_stop_open() -> None:
    """A superseded segment 1 with a damaged header: fsck says clean, so open must work."""
    fs = compacted_queue()
    leftover = bytearray(fmt.SegmentHeader(seq=1, first=1).encode()) + bytes(100)
    leftover[20] ^= 0x10  # bit rot in its header
    put(fs, fmt.segment_name(1), bytes(leftover))
    assert ops_repair.fsck(fuzz.QDIR, fs).clean
    q = sim_queue(fs)  # CorruptionError today: segment 1's header
    assert q.stats()["pending"] == 3
    q.close()


def test_a_checksummed_payload_that_is_not_json_is_not_a_foreign_exception() -> None:
    """A valid CRC around broken JSON (a foreign write): walq's error, or the job dead-lettered."""
    fs = SimFileSystem()
    q = sim_queue(fs)
    jid = q.enqueue("t", {"a": 1})
    q.close()
    fs.sync_all()
    path = posixpath.join(fuzz.QDIR, fmt.segment_name(1))
    data = bytearray(fs.files()[path])
    at = fmt.SEGMENT_HEADER_SIZE
    end = at + fmt.RECORD_HEADER_SIZE + int.from_bytes(data[at + 4 : at + 8], "little")
    data[end - 1] = ord("]")  # {"a":1] -- the checksum recomputed: a foreign write
    data[at : at + 4] = crc32c(bytes(data[at + 4 : end])).to_bytes(4, "little")
    put(fs, fmt.segment_name(1), bytes(data))
    q = sim_queue(fs)
    try:
        job = q.claim()  # JSONDecodeError today
    except WalqError:
        pass
    else:
        assert job is None and q.status(jid) == "dead"
    q.close()


def test_random_damage_is_never_delivered(corpus: fuzz.Corpus) -> None:
    """Plain damage (no forged checksum) in any byte: every delivered job is as enqueued."""
    rng = random.Random(4)
    for index in range(60):
        mutator = fuzz.Mutator(corpus, rng.randrange)
        image = {p: bytearray(d) for p, d in corpus.image.items()}
        steps = [mutator.m_flip(image, rng.choice(sorted(image)))[0] for _ in range(3)]
        mutated = fuzz.Mutated({p: bytes(d) for p, d in image.items()}, tuple(steps), False, False)
        assert_fine(fuzz.check(corpus, mutated), mutated)
        assert index >= 0


def test_a_segment_number_beyond_48_bits_is_damage_not_a_foreign_exception() -> None:
    """A (forged) compacted segment numbered 2**63 - 1: walq's error, or the jobs intact."""
    fs = compacted_queue()
    seq = (1 << 63) - 1
    path = posixpath.join(fuzz.QDIR, fmt.segment_name(2))
    data = bytearray(fs.files()[path])
    data[: fmt.SEGMENT_HEADER_SIZE] = fmt.SegmentHeader(seq=seq, first=1).encode()
    fs.remove(path)
    put(fs, fmt.segment_name(seq), bytes(data))
    try:
        q = sim_queue(fs)
    except WalqError:
        return
    try:
        while (job := q.claim()) is not None:  # FileNotFoundError today
            assert job.payload["pad"] == "x" * 2500
            q.ack(job.id)
    except WalqError:
        pass
    finally:
        q.close()


def test_fsck_and_open_agree_on_an_enqueue_with_an_empty_task_name() -> None:
    """A checksummed ENQUEUE whose task length is 0: fsck reports it exactly when open does."""
    fs = SimFileSystem()
    q = sim_queue(fs)
    q.enqueue("t", {"a": 1})
    q.close()
    path = posixpath.join(fuzz.QDIR, fmt.segment_name(1))
    data = bytearray(fs.files()[path])
    at = fmt.SEGMENT_HEADER_SIZE
    body = at + fmt.RECORD_HEADER_SIZE
    data[body + 29 : body + 31] = (0).to_bytes(2, "little")  # task_len: 0
    end = body + int.from_bytes(data[at + 4 : at + 8], "little")
    data[at : at + 4] = crc32c(bytes(data[at + 4 : end])).to_bytes(4, "little")
    put(fs, fmt.segment_name(1), bytes(data))
    clean = ops_repair.fsck(fuzz.QDIR, fs).clean
    try:
        sim_queue(fs).close()
        opened = True
    except walq.CorruptionError:
        opened = False
    assert clean == opened, f"fsck clean: {clean}, open worked: {opened}"


def test_the_corpus_checkpoint_damaged_or_stale_changes_nothing(corpus: fuzz.Corpus) -> None:
    """The corpus holds a checkpoint; a flipped byte in it, or noise after a sealed segment
    it covers, leaves every reader as a full replay would (no checkpoint-differs)."""
    path = posixpath.join(fuzz.QDIR, CHECKPOINT)
    assert path in corpus.image
    flipped = dict(corpus.image)
    data = bytearray(flipped[path])
    data[len(data) // 2] ^= 0x20
    flipped[path] = bytes(data)
    sealed = min(p for p in corpus.image if p.endswith(".wal"))
    extended = dict(corpus.image)
    extended[sealed] = corpus.image[sealed] + bytes(range(1, 200))
    for image, step in ((flipped, "flip checkpoint"), (extended, "extend sealed")):
        mutated = fuzz.Mutated(image, (step,), forged=False, huge=False)
        assert_fine(fuzz.check(corpus, mutated), mutated)
