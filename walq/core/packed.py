"""A live job as one packed int, and the small values the state hands out about jobs.

The layout below is what keeps a million live jobs in a few hundred MB; the
value types (Loc, Now, JobInfo, TaskCounts) are what QueueState's callers see.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import attrs

from walq.core import events as ev
from walq.core.jobspec import MIN_PRIORITY

PENDING, SCHEDULED, RUNNING, DEAD, WAITING = (
    ev.PENDING, ev.SCHEDULED, ev.RUNNING, ev.DEAD, ev.WAITING,
)  # fmt: skip
STATE_NAMES = {PENDING: "pending", SCHEDULED: "scheduled", RUNNING: "running", DEAD: "dead",
               WAITING: "waiting"}  # fmt: skip
N_STATES = 6  # state codes 0..5: the length of a list of counts indexed by state


# A live job is one packed int (about 130 bytes of RAM with its dict slot,
# against 210 for a slotted object): the fields below, then its record's
# location (segment, offset, size) so the payload can be read back from disk.
# The task is an index into the names seen (the log stores names, not indexes):
# 32 bits, so the number of distinct task names has no limit that matters --
# 2**32 names would need hundreds of GiB of RAM first. (It was 16 bits, and
# the 65,537th name was refused after its record was written: see task_index.)
STATE, ATTEMPTS, MAXA, PRIO, TASK, SIZE, OFFSET, SEG = 0, 3, 19, 35, 51, 83, 115, 147
M3, M16, M32 = 0x7, 0xFFFF, 0xFFFFFFFF
MT = M32  # the task index's mask


def pack(state: int, attempts: int, maxa: int, prio: int, task: int, loc: Loc) -> int:
    """One live job's fields as a packed int (priority biased to be non-negative)."""
    return (
        state
        | attempts << ATTEMPTS
        | maxa << MAXA
        | (prio - MIN_PRIORITY) << PRIO
        | task << TASK
        | loc.size << SIZE
        | loc.offset << OFFSET
        | loc.seg << SEG
    )


def with_field(packed: int, shift: int, mask: int, value: int) -> int:
    """`packed` with the field at `shift` (of width `mask`) set to `value`."""
    return (packed & ~(mask << shift)) | (value << shift)


@attrs.frozen
class Now:
    """The current time in both clocks: wall (survives restarts) and monotonic."""

    wall: float
    mono: float

    def mono_at(self, wall: float) -> float:
        """The monotonic time that corresponds to wall-clock time `wall`."""
        return self.mono + (wall - self.wall)


SEQ_BITS = 48
_SEQ_MASK = (1 << SEQ_BITS) - 1


def seq_of(seg: int) -> int:
    """The segment sequence number in a Loc.seg (see Loc)."""
    return seg & _SEQ_MASK


class Loc(NamedTuple):
    """Where a job's defining record lives: segment, offset, record size in bytes.

    (A NamedTuple rather than an attrs class: one is made per job on the hot
    paths, and this is four times cheaper to build.)

    `seg` is the segment's sequence number -- plus, for a segment a compaction
    installed while this process runs, a generation in the bits above
    SEQ_BITS: the compacted file replaces the old one under the same number,
    and until every job has moved, both files' records are live.
    """

    seg: int
    offset: int
    size: int


class NewJob(Protocol):
    """What `QueueState.add_new` reads of a job being enqueued."""

    @property
    def task(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def priority(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...


class JobInfo(NamedTuple):
    """A snapshot of one live job's fields, as the state holds them (a NamedTuple: hot path)."""

    id: int
    task: str
    state: int
    attempts: int
    max_attempts: int
    priority: int
    loc: Loc

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


@attrs.frozen
class TaskCounts:
    """Live jobs (of one task, or all) by state."""

    pending: int = 0
    scheduled: int = 0
    running: int = 0
    dead: int = 0
    waiting: int = 0

    @classmethod
    def of(cls, n: list[int]) -> TaskCounts:
        """From a list indexed by state code."""
        return cls(n[PENDING], n[SCHEDULED], n[RUNNING], n[DEAD], n[WAITING])
