"""A queue directory's state rebuilt read-only from its files, as an owner would see it."""

from __future__ import annotations

import logging
import posixpath
import time

import attrs

from walq.core import checkpoint as ckpt
from walq.core import events as ev
from walq.core import format as fmt
from walq.core.state import RUNNING, Loc, Now, QueueState
from walq.directory import checkpoint as checkpoints
from walq.directory.fs import FileSystem, OsFileSystem
from walq.directory.segment import Segment
from walq.errors import CorruptionError, NotAQueueError
from walq.ops.scan import RACE_RETRIES, Progress, iter_scans, live_seqs, missing

log = logging.getLogger("walq.replay")

STATES = ("pending", "scheduled", "running", "dead", "waiting")


@attrs.define
class Replayed:
    """The queue's state rebuilt from its files by a reader."""

    state: QueueState
    seqs: list[int] = attrs.field(factory=list)
    ends: list[int] = attrs.field(factory=list)  # where each segment's valid log ends
    disk_bytes: int = 0
    done_seen: int = 0
    interrupted: int = 0  # running when the owner stopped (no owner now): pending again
    damage: list[str] = attrs.field(factory=list)
    tail_bytes: int = 0
    # Live jobs by state name, over all tasks and per task, as a reader sees them.
    counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(STATES, 0))
    tasks: dict[str, dict[str, int]] = attrs.field(factory=dict)
    running: set[int] = attrs.field(factory=set)  # ids running under a live owner


def replay(
    path: str,
    fs: FileSystem | None = None,
    *,
    now: Now | None = None,
    owner_running: bool | None = None,
    progress: Progress | None = None,
) -> Replayed:
    """Replay the log read-only into a QueueState, as an owner would see it.

    With an owner running (or not known to be absent), running jobs stay
    running; without one they are what the next owner will see: pending,
    their attempt counted (`interrupted` says how many).
    """
    fs = fs or OsFileSystem()
    now = now or now_clock()
    resume = _checkpoint(path, fs, now)
    if resume is not None:
        result = _replay_once(path, fs, now, owner_running, progress, resume)
        if result is not None:
            return result
    for _ in range(RACE_RETRIES):
        result = _replay_once(path, fs, now, owner_running, progress)
        if result is not None:
            return result
    raise NotAQueueError(f"{path}: compactions kept changing the log while it was read; retry")


def now_clock() -> Now:
    """The wall and monotonic clocks, now."""
    return Now(time.time(), time.monotonic())


def _checkpoint(path: str, fs: FileSystem, now: Now) -> ckpt.Checkpoint | None:
    """The queue's checkpoint if an owner's open would start from it now, else None.

    The same checks as open's (walq.directory.checkpoint.Resume): its checksums,
    and the live segments it covers hold the bytes it covered.
    """
    try:
        if not fs.exists(checkpoints.path_of(path)):
            return None
        f = fs.open(checkpoints.path_of(path))
        try:
            data = f.pread(f.size(), 0)
        finally:
            f.close()
        cp = ckpt.decode(data, checkpoints.path_of(path))
    except (OSError, CorruptionError) as exc:
        log.debug("%s: checkpoint not used, replaying the whole log: %s", path, exc)
        return None
    segments = []
    try:
        for seq in live_seqs(path, fs)[: len(cp.image.marks)]:
            seg = Segment.open(fs, posixpath.join(path, fmt.segment_name(seq)), write=False)
            seg.close()
            segments.append(seg)
    except (OSError, CorruptionError) as exc:
        log.debug("%s: checkpoint not used, replaying the whole log: %s", path, exc)
        return None
    why = checkpoints.Resume(fs, path, cp, QueueState(), now).disagreement(segments)
    if why is not None:
        log.debug("%s: checkpoint not used, replaying the whole log: %s", path, why)
        return None
    return cp


def _replay_once(
    path: str,
    fs: FileSystem,
    now: Now,
    owner_running: bool | None,
    progress: Progress | None,
    resume: ckpt.Checkpoint | None = None,
) -> Replayed | None:
    state = QueueState()
    out = Replayed(state)
    spans = []
    apply = state.apply
    restored = None
    start = (0, 0)
    firsts: dict[int, int] = {}  # the checkpoint's own segment: the first it covers
    running_then = b""
    if resume is not None:
        # The checkpoint's state, then the log after its position (as an owner's open).
        marks, running_then = resume.image.marks, resume.image.running
        try:
            restored = ckpt.restore(state, resume.image, now)
        except Exception as exc:  # a sound file whose records do not fit: replay it all
            log.debug("%s: checkpoint not used, replaying the whole log: %s", path, exc)
            return None
        out.done_seen = resume.image.done
        for m in marks[:-1]:
            out.seqs.append(m.seq)
            out.ends.append(m.end)
            out.disk_bytes += m.end
            spans.append((m.first, m.seq))
        start = (resume.summary.seq, resume.summary.offset)
        firsts[start[0]] = marks[-1].first

    def other(seq: int, rtype: int, offset: int, size: int, body: memoryview | bytes) -> None:
        try:
            event = ev.decode(rtype, bytes(body))
        except (ev.BadEvent, UnicodeDecodeError) as exc:
            out.damage.append(f"{fmt.segment_name(seq)}: offset {offset}: {exc}")
            return
        if isinstance(event, ev.Ack):
            out.done_seen += len(event.ids)
        apply(event, Loc(seq, offset, size), now)

    def load(data: bytes, seq: int) -> int:
        # The owner's replay (Queue._replay): enqueues packed straight in, the rest decoded.
        at = start[1] if seq == start[0] else fmt.SEGMENT_HEADER_SIZE
        return state.load(data, seq, at, now, other)[0]

    for scan in iter_scans(path, fs, progress=progress, load=load, from_seq=start[0]):
        if scan.raced:
            return None
        if resume is not None and scan.first != firsts.get(scan.seq, scan.seq):
            return None  # a compaction since the checkpoint was checked: replay it all
        out.seqs.append(scan.seq)
        out.ends.append(scan.end)
        out.disk_bytes += scan.size
        spans.append((scan.first, scan.seq))
        name = posixpath.basename(scan.path)
        if scan.rebuilt:
            out.damage.append(f"{name}: offset 0: segment header: {scan.header_error}")
        for gap in scan.gaps:
            out.damage.append(
                f"{name}: offset {gap.start}: {gap.end - gap.start} bytes ({gap.reason})"
            )
        if scan.tail is not None:
            out.tail_bytes += scan.tail.end - scan.tail.start
        for rec in scan.records:
            other(scan.seq, rec.rtype, rec.offset, rec.end - rec.offset, rec.body)
    out.damage += [posixpath.basename(line) for line in missing(path, spans)]
    # finish_replay makes running jobs pending (what the next owner sees), so
    # note them first: under a live owner they are running.
    if restored is not None:
        running = ckpt.running(state, running_then)
        ckpt.finish(state, restored, now)
    else:
        running = state.ids_in(RUNNING)
        state.finish_replay(now)
    out.counts = dict(attrs.asdict(state.counts))
    out.tasks = {task: dict(attrs.asdict(n)) for task, n in state.task_counts().items()}
    for jid in running:
        if owner_running is False:
            out.interrupted += 1  # pending now, as the next owner will see it
            continue
        out.running.add(jid)
        for counts in (out.counts, out.tasks[state.info(jid).task]):
            counts["pending"] -= 1
            counts["running"] += 1
    return out
