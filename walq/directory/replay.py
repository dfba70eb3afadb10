"""Replay on open: rebuild a directory queue's state from its log, one record at a time."""

from __future__ import annotations

import contextlib
import logging
import posixpath

import attrs

from walq.core import checkpoint as ckpt
from walq.core import events as ev
from walq.core import format as fmt
from walq.core.ledger import Ledger, Lost
from walq.core.state import Loc, Now, QueueState
from walq.directory.checkpoint import Resume
from walq.directory.log import Log
from walq.directory.recovery import Damage
from walq.errors import CorruptionError

log = logging.getLogger("walq.queue")


@attrs.define
class Replayed:
    """What a replay found besides the state it rebuilt."""

    damage: list[Damage]
    lost: Lost  # the job ids the damage took (recovery="skip")
    origins: set[str]  # spool files already ingested, as the log tells
    done_seen: int  # jobs the log says were acked
    checkpoint: ckpt.Summary | None = None  # the checkpoint replay started from, if any


def replay(
    state: QueueState,
    wal: Log,
    path: str,
    now: Now,
    skip_damage: bool,
    checkpoint: ckpt.Checkpoint | None = None,
) -> Replayed:
    """Feed every record of `wal` (see Log.recover) into `state`; log the damage handled.

    With a `checkpoint` (strict recovery only), replay starts from it if the
    log's segments agree with it (walq.directory.checkpoint.Resume).
    """
    add = state.add
    apply = state.apply
    found = Replayed([], Lost([], [], [], None), set(), 0)
    origins = found.origins
    tasks: dict[bytes, str] = {}
    bad: list[Damage] = []
    enqueue_type, ack_type, after_type = fmt.ENQUEUE, fmt.ACK, fmt.AFTER
    attempt_type = fmt.ATTEMPT

    def sink(seq: int, rtype: int, offset: int, size: int, body: memoryview) -> None:
        if rtype == attempt_type:
            return  # history only (how attempts ran): no state to restore, not even decoded
        try:
            if rtype == enqueue_type:
                # The fast path: the payload stays on disk, unparsed.
                jid, prio, maxa, due, task, key, origin = ev.enqueue_fields(body)
                name = tasks.get(task)
                if name is None:
                    name = tasks[task] = task.decode()
                add(jid, name, key, prio, maxa, due, Loc(seq, offset, size), now)
                if origin:
                    origins.add(origin)
                return
            event = ev.decode(rtype, bytes(body))
        except (ev.BadEvent, UnicodeDecodeError) as exc:
            at = posixpath.join(path, fmt.segment_name(seq))
            if not skip_damage:
                raise CorruptionError(at, offset, str(exc)) from None
            bad.append(Damage(at, offset, offset + size, str(exc), False))
            return
        if rtype == ack_type:
            found.done_seen += len(event.ids)  # type: ignore[union-attr]
        elif rtype == after_type and isinstance(event, ev.After):
            origin = getattr(event.job, "origin", "")  # a producer's dependent (its spool file)
            if origin:
                origins.add(origin)
        apply(event, Loc(seq, offset, size), now)

    load = state.replay_sink(now, sink)

    resume = None
    if checkpoint is not None and not skip_damage:
        resume = Resume(wal.fs, path, checkpoint, state, now, sink)
    if not skip_damage:
        found.damage = wal.recover(skip_damage=False, sink=sink, load=load, resume=resume)
    else:
        # Skipping damage: also note what every record says about job ids, to
        # tell which jobs the damage took (record by record: no fused fast path).
        ledger = Ledger()

        def noting(seq: int, rtype: int, offset: int, size: int, body: memoryview) -> None:
            sink(seq, rtype, offset, size, body)
            with contextlib.suppress(ev.BadEvent, UnicodeDecodeError):
                if rtype == enqueue_type:
                    ledger.enqueued((seq, offset), ev.enqueue_fields(body)[0])
                else:
                    ledger.event((seq, offset), ev.decode(rtype, bytes(body)))

        found.damage = wal.recover(skip_damage=True, sink=noting) + bad
        for d in found.damage:
            if not d.torn_tail:
                ledger.damage((fmt.parse_segment_name(posixpath.basename(d.path)) or 0, d.start))
        found.lost = ledger.result()
    if resume is not None and resume.restored is not None:
        ckpt.finish(state, resume.restored, now)
        found.done_seen += resume.checkpoint.image.done
        found.checkpoint = resume.checkpoint.summary
        log.info(
            "%s: opened from its checkpoint (%d jobs), replayed the log after it",
            path,
            resume.checkpoint.summary.jobs,
        )
    else:
        state.finish_replay(now)
    for d in found.damage:
        kind = "torn tail cut" if d.torn_tail else "damaged range skipped"
        log.warning("%s: %s at offset %d..%d: %s", d.path, kind, d.start, d.end, d.reason)
    for line in found.lost.lines():
        log.warning("%s: recovery skipped damage: %s", path, line)
    return found
