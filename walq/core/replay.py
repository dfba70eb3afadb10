"""Replay's fast path: records straight into a QueueState's packed entries, then indexed once.

Opening a queue replays every record; these two steps are where that time
goes, so they build the state's tables directly (see walq.core.packed) rather
than one event at a time: `replay_sink` turns a plain enqueue record into a
packed entry from its bytes, and `finish_replay` counts and indexes the
result once at the end.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from walq.core import events as ev
from walq.core import format as fmt
from walq.core.jobspec import MIN_PRIORITY
from walq.core.packed import (
    M3,
    M32,
    MAXA,
    MT,
    N_STATES,
    OFFSET,
    PENDING,
    PRIO,
    RUNNING,
    SEG,
    SIZE,
    TASK,
    Now,
)  # fmt: skip

if TYPE_CHECKING:
    from walq.core.state import QueueState

# A record handed on by replay: (segment seq, type, offset, size, body).
Sink: TypeAlias = Callable[[int, int, int, int, memoryview], None]


def replay_sink(state: QueueState, now: Now, other: Sink) -> Sink:
    """A sink for valid records (framing.scan_fast) that replays the common ones fast.

    The open path: a plain enqueue record becomes a packed entry straight
    from its bytes (its payload is not even sliced); every other record
    is handed to `other(seq, type, offset, size, body)`.
    """
    assert state.loading
    unpack_enq = ev.ENQUEUE_HEAD.unpack_from
    enq_size = ev.ENQUEUE_HEAD.size
    enqueue = fmt.ENQUEUE
    jobs, tombs = state._jobs, state._tombstones
    task_ids: dict[bytes | memoryview, int] = {}
    wall = now.wall

    def sink(seq: int, rtype: int, offset: int, size: int, body: memoryview) -> None:
        if rtype != enqueue or len(body) < enq_size:
            other(seq, rtype, offset, size, body)
            return
        jid, prio, maxa, kind, due, _created, tlen, klen, olen = unpack_enq(body)
        raw_task = body[enq_size : enq_size + tlen]  # hashes and compares as bytes
        task = task_ids.get(raw_task)
        if task is None and tlen > 0 and enq_size + tlen <= len(body):
            try:
                task = task_ids[bytes(raw_task)] = state.task_index(str(raw_task, "utf-8"))
            except UnicodeDecodeError:
                task = None
        if task is None or klen != 0xFFFF or olen or due > wall or kind > 1:
            # Keys, origins, schedules, anything odd: the general path (which
            # also raises BadEvent for a malformed body).
            other(seq, rtype, offset, size, body)
            return
        if jid >= state.next_id:
            state.next_id = jid + 1
        elif jid in jobs or jid in tombs:
            return
        jobs[jid] = (
            PENDING
            | maxa << MAXA
            | (prio - MIN_PRIORITY) << PRIO
            | task << TASK
            | size << SIZE
            | offset << OFFSET
            | seq << SEG
        )

    return sink


def finish_replay(state: QueueState, now: Now) -> None:
    """End of replay: jobs that were running have lost their worker; index the rest.

    A running job goes back to pending with its attempt counted: its start
    was durable, so a job that kills the owner is charged every time.
    """
    # While loading, counts and byte totals were not kept: count them now, once.
    jobs = state._jobs
    seg_bytes: dict[int, int] = {}
    by_task: dict[int, list[int]] = {}
    total = [0] * N_STATES
    live = 0
    for jid, packed in jobs.items():
        code = packed & M3
        if code == RUNNING:
            packed = (packed & ~M3) | PENDING  # noqa: PLW2901
            jobs[jid] = packed
            code = PENDING
        if code == PENDING:
            state._push_ready(jid, packed)
        size = (packed >> SIZE) & M32
        live += size
        seg = packed >> SEG
        seg_bytes[seg] = seg_bytes.get(seg, 0) + size
        task = (packed >> TASK) & MT
        counts = by_task.get(task)
        if counts is None:
            counts = by_task[task] = [0] * N_STATES
        counts[code] += 1
        total[code] += 1
    state._n, state._by_task, state._seg_bytes, state.live_bytes = total, by_task, seg_bytes, live
    heapq.heapify(state._scheduled)
    state.tick_keys_seen()
    state.loading = False
