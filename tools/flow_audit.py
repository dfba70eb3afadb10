"""The flow and schedule checks both torture tools make (tools/torture.py, tools/torture_redis.py).

Both ledgers carry the same flow lines (extra trailing fields, such as the Redis
ledger's time, are ignored):

    outbox <id> <attempt> <nonce>   job <id>'s handler enqueued follow-up <nonce> (before
                                    it returned, so before its ack)
    child <parent> <id> <nonce>     follow-up <nonce> of job <parent> ran as job <id>
    after <id> <parent>             job <id> was enqueued after job <parent>
    early <id> <parent> <got>       job <id> ran without its parent's result in job.parents
    tick <id> <attempt> <key>       a schedule's tick ran (its key names the tick)
    acked <id> <attempt>            job <id>'s ack is durable (its follow-up job with it)

and each tool tells `ran(id)` when a handler finished. Checked:

- outbox-early: a follow-up job ran before its parent's handler finished (it
  existed without the ack);
- outbox-duplicated: one follow-up nonce ran under two job ids (added by two acks);
- a follow-up committed by a durable ack that never ran (`children_lost`, which
  each tool counts as lost: it never ran, though its ack was durable);
- dependent-early: a dependent ran before its parent (or without its result);
- tick-twice: one tick ran under two job ids (enqueued twice);
- tick-lost: a tick missing between the first and the last that ran (misfire="all").
"""

from __future__ import annotations

from typing import Protocol

from walq.core.schedule import parse_tick_key, tick_key

TICK_NAME = "beat"  # the torture schedules' name (tools/torture_tasks.py, torture_redis_tasks.py)
TICK_EVERY = 1.0  # their period, seconds


class FlowCounts(Protocol):
    """The counters a tool's Audit has for these checks (and its `note`)."""

    outbox_jobs: int
    outbox_duplicated: int
    outbox_early: int
    dependents: int
    dependent_early: int
    ticks: int
    tick_twice: int
    tick_lost: int

    def note(self, text: str) -> None: ...


class FlowChecks:
    """Reads a ledger's flow and tick lines in order, counting into `audit`."""

    WORDS = frozenset({"outbox", "child", "after", "early", "tick"})

    def __init__(self, audit: FlowCounts) -> None:
        self.audit = audit
        self.outbox: dict[int, str] = {}  # parent id -> the nonce of its follow-up job
        self.child_ids: dict[str, set[int]] = {}  # follow-up nonce -> the job ids that ran it
        self.after: dict[int, int] = {}  # dependent id -> its parent's id
        self.ran_ids: set[int] = set()
        self.tick_ids: dict[str, int] = {}  # a tick's key -> the job id it first ran under
        self.committed: set[str] = set()  # follow-up nonces whose parent's ack was durable

    def line(self, word: str, rest: list[str], number: int, text: str) -> bool:
        """Take one line (split: `word`, `rest`); False if it is not a flow line.
        ValueError/IndexError for a malformed one."""
        audit = self.audit
        if word == "outbox":
            self.outbox[int(rest[0])] = rest[2]
        elif word == "child":
            parent, jid, nonce = int(rest[0]), int(rest[1]), rest[2]
            ids = self.child_ids.setdefault(nonce, set())
            ids.add(jid)
            if self.outbox.get(parent) != nonce:
                audit.outbox_early += 1
                audit.note(f"line {number}: follow-up job {jid} ran before job {parent}'s run")
            if len(ids) == 2:
                audit.outbox_duplicated += 1
                audit.note(f"line {number}: job {parent}'s follow-up {nonce} ran as {ids}")
        elif word == "after":
            self.after[int(rest[0])] = int(rest[1])
            audit.dependents += 1
        elif word == "early":
            audit.dependent_early += 1
            audit.note(f"line {number}: {text}: its parent's result was not there")
        elif word == "tick":
            jid, key = int(rest[0]), rest[2]
            if self.tick_ids.setdefault(key, jid) != jid:
                audit.tick_twice += 1
                audit.note(f"line {number}: tick {key} ran as job {jid} and {self.tick_ids[key]}")
        else:
            return False
        return True

    def ran(self, jid: int, number: int) -> None:
        """Job `jid`'s handler finished: a dependent's parent must have finished first."""
        self.ran_ids.add(jid)
        parent = self.after.get(jid)
        if parent is not None and parent not in self.ran_ids:
            self.audit.dependent_early += 1
            self.audit.note(f"line {number}: job {jid} ran before job {parent}")

    def acked(self, jid: int) -> str | None:
        """Job `jid`'s ack is durable: the nonce of the follow-up job it committed, if new."""
        child = self.outbox.get(jid)
        if child is None or child in self.committed:
            return None
        self.committed.add(child)
        self.audit.outbox_jobs += 1
        return child

    def children_lost(self) -> list[str]:
        """Follow-up jobs whose parent's ack was durable and that never ran."""
        return sorted(self.committed - set(self.child_ids))

    def finish(self, *, final: bool) -> None:
        """Count the ticks; `final` (the queue was drained): every tick enqueued has run."""
        self.audit.ticks = len(self.tick_ids)
        if final:  # before the end, a tick enqueued may simply not have run yet
            gaps = tick_gaps(self.tick_ids)
            self.audit.tick_lost = len(gaps)
            if gaps:
                self.audit.note(f"ticks missing between the first and the last run: {gaps[:5]}")


def tick_gaps(tick_ids: dict[str, int]) -> list[str]:
    """The ticks missing between the first and the last tick that ran (as tick keys)."""
    ticks = sorted(t for _, t in filter(None, map(parse_tick_key, tick_ids)))
    if not ticks:
        return []
    step = TICK_EVERY
    have = {round(t / step) for t in ticks}
    return [
        tick_key(TICK_NAME, k * step)
        for k in range(round(ticks[0] / step), round(ticks[-1] / step) + 1)
        if k not in have
    ]
