"""The enqueue hot path: a batch of new jobs into a QueueState's tables at once.

What QueueState.add does for one job, done for a whole batch whose ids are
all new, with the per-batch bookkeeping (counts, bytes per segment, the ready
queue of a task at a priority) done once: enqueue_many's throughput rests on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from walq.core.jobspec import MIN_PRIORITY
from walq.core.packed import (
    MAXA,
    N_STATES,
    OFFSET,
    PENDING,
    PRIO,
    SCHEDULED,
    SEG,
    SIZE,
    TASK,
    Loc,
    NewJob,
    Now,
)
from walq.core.transitions import TRANSITIONS, check

if TYPE_CHECKING:
    from walq.core.state import QueueState


def add_new(
    state: QueueState,
    first: int,
    jobs: Sequence[NewJob],
    dues: Sequence[float],
    locs: Sequence[Loc],
    now: Now,
) -> None:
    """Jobs just enqueued, with ids first, first + 1, ...: their due times and records.

    The enqueue hot path: what `add` does for a job, for a batch of jobs
    whose ids are all new (from next_id on), with the bookkeeping done once.
    """
    assert not state.loading and first >= state.next_id
    enqueue = TRANSITIONS[("new", "enqueue")]
    may_pend, may_schedule = "pending" in enqueue, "scheduled" in enqueue
    wall = now.wall
    table = state._jobs
    seg_bytes = state._seg_bytes
    # One-entry caches: a batch is usually one task at one priority.
    task, t, pt, q = None, 0, (-1, -1), None
    counted_t, counted = -1, 0
    seg, seg_added, added = -1, 0, 0
    jid = first
    for job, due, loc in zip(jobs, dues, locs, strict=True):
        if job.task != task:
            task = job.task
            t = state.task_index(task)
        prio = job.priority - MIN_PRIORITY
        size = loc.size
        if loc.seg != seg:
            if seg_added:
                seg_bytes[seg] = seg_bytes.get(seg, 0) + seg_added
            seg, seg_added = loc.seg, 0
        seg_added += size
        added += size
        p = (
            job.max_attempts << MAXA
            | prio << PRIO
            | t << TASK
            | size << SIZE
            | loc.offset << OFFSET
            | seg << SEG
        )
        if job.key is not None:
            state._key_of[jid] = job.key
            state._keys[job.key] = jid
        if due > wall:
            if not may_schedule:
                check(jid, "new", "enqueue", "scheduled")
            table[jid] = p | SCHEDULED
            _count_new(state, t, SCHEDULED)
            state._schedule(jid, now.mono_at(due))
        else:
            if not may_pend:
                check(jid, "new", "enqueue", "pending")
            table[jid] = p | PENDING
            if t != counted_t:
                if counted:
                    _count_new(state, counted_t, PENDING, counted)
                counted_t, counted = t, 0
            counted += 1
            if (prio, t) != pt:
                pt = (prio, t)
                q = state._ready.queue(prio, t)
            assert q is not None
            q.append(jid)
        jid += 1
    if seg_added:
        seg_bytes[seg] = seg_bytes.get(seg, 0) + seg_added
    if counted:
        _count_new(state, counted_t, PENDING, counted)
    state.next_id = max(state.next_id, jid)
    state.live_bytes += added


def _count_new(state: QueueState, t: int, code: int, k: int = 1) -> None:
    """Count `k` new jobs of task index `t` in state `code`."""
    state._n[code] += k
    counts = state._by_task.get(t)
    if counts is None:
        counts = state._by_task[t] = [0] * N_STATES
    counts[code] += k
