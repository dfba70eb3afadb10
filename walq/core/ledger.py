"""Which jobs damage took: what the surviving records say about every job id.

Job ids are issued 1, 2, 3, ... and every issued id has an `enqueue` record
until a compaction replaces the finished ones by its `meta` record's `next_id`
(every id below it that has no `job` record finished). So after skipping or
cutting damage, an id that the surviving records

- name in an event but never enqueued: its enqueue was in the damage -- lost;
- never name at all, though ids around it exist: it was enqueued in the
  damage (or its records were) -- cannot be accounted for;
- enqueued before the damage and still live: its ack, fail or cancel may have
  been in the damage -- it may be in the wrong state (an acked job may run
  again).

Ids above the highest surviving one cannot be checked when damage follows it.
Fed with each valid record (`event`) and each damaged range (`damage`), at
positions (segment seq, offset), in any order.
"""

from __future__ import annotations

from typing import Any

import attrs

from walq.core import events as ev

Position = tuple[int, int]  # (segment sequence number, byte offset)
SHOWN = 20  # ranges of ids shown in one line; the rest are counted


def ranges(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs of consecutive ids."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def runs_text(runs: list[tuple[int, int]]) -> str:
    """`3, 7..12, 40` (at most SHOWN runs, then how many more ids)."""
    parts = [str(a) if a == b else f"{a}..{b}" for a, b in runs[:SHOWN]]
    rest = sum(b - a + 1 for a, b in runs[SHOWN:])
    if rest:
        parts.append(f"and {rest} more")
    return ", ".join(parts)


@attrs.frozen
class Lost:
    """What damage did to job ids (see the module's docstring)."""

    lost: list[int]  # named by surviving events, but their enqueue is gone
    unaccounted: list[tuple[int, int]]  # runs of ids no surviving record names
    stale: list[int]  # live, enqueued before some damage: later records may be gone
    unknown_above: int | None  # damage after the highest surviving id: ids above it unknown

    @property
    def any(self) -> bool:
        return bool(self.lost or self.unaccounted or self.stale or self.unknown_above is not None)

    def lines(self) -> list[str]:
        """One line per kind of loss, for a human."""
        out = []
        if self.lost:
            out.append(
                f"{len(self.lost)} jobs lost (their enqueue record was in the damage): "
                f"{runs_text(ranges(self.lost))}"
            )
        if self.unaccounted:
            n = sum(b - a + 1 for a, b in self.unaccounted)
            out.append(
                f"{n} job ids not accounted for (enqueued in the damage, "
                f"or all their records were): {runs_text(self.unaccounted)}"
            )
        if self.stale:
            out.append(
                f"{len(self.stale)} live jobs enqueued before the damage may have lost later "
                f"records (an acked one may run again): {runs_text(ranges(self.stale))}"
            )
        if self.unknown_above is not None:
            out.append(
                f"job ids above {self.unknown_above}, if any were issued, cannot be accounted "
                "for (the damage follows the last surviving enqueue)"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """For --json: id runs as [first, last] pairs."""
        return {
            "lost": [list(r) for r in ranges(self.lost)],
            "unaccounted": [list(r) for r in self.unaccounted],
            "maybe_stale": [list(r) for r in ranges(self.stale)],
            "unknown_above": self.unknown_above,
            "lines": self.lines(),
        }


class Ledger:
    """Collects what the records say about job ids; `result()` says which damage took."""

    def __init__(self) -> None:
        self.known: dict[int, Position] = {}  # id -> where it was enqueued (or compacted)
        self.finished: set[int] = set()
        self.mentioned: set[int] = set()
        self.metas: list[tuple[Position, int]] = []  # compactions' (where, next_id)
        self.damaged: list[Position] = []
        self.top_id = 0
        self.top_pos: Position = (0, 0)  # where the highest known id was enqueued

    def damage(self, pos: Position) -> None:
        """A damaged range (or missing segment) at `pos`."""
        self.damaged.append(pos)

    def enqueued(self, pos: Position, jid: int) -> None:
        """An enqueue (or compacted job) record of job `jid` at `pos`."""
        if jid not in self.known:
            self.known[jid] = pos
        if jid >= self.top_id:
            self.top_id, self.top_pos = jid, pos

    def event(self, pos: Position, e: ev.Event) -> None:
        """A valid record at `pos`."""
        if isinstance(e, ev.Enqueue | ev.Job):
            self.enqueued(pos, e.id)
        elif isinstance(e, ev.Ack | ev.Cancel | ev.Purge):
            self.finished.update(e.ids)
        elif isinstance(e, ev.Claim | ev.Release):
            self.mentioned.update(jid for jid, _ in e.items)
        elif isinstance(e, ev.Fail):
            self.mentioned.add(e.id)
        elif isinstance(e, ev.Requeue):
            self.mentioned.update(e.ids)
        elif isinstance(e, ev.Meta):
            self.finished.update(jid for jid, _ in e.tombstones)
            self.metas.append((pos, e.next_id))

    def result(self) -> Lost:
        """What the damage fed so far took (nothing if there was none)."""
        if not self.damaged:
            return Lost([], [], [], None)
        known, finished = self.known, self.finished
        first = min(self.damaged)
        # Every id below a compaction's next_id without a job record had finished --
        # unless damage precedes its meta: a damaged compacted segment vouches for nothing.
        below = max([1, *(n for at, n in self.metas if at < first)])
        lost = sorted(j for j in self.mentioned if j not in known and j not in finished)
        top = max([*known, *finished, *self.mentioned, below - 1, 0])
        seen = sorted(j for j in {*known, *finished, *self.mentioned} if j >= below)
        unaccounted = []
        expected = below
        for j in seen:  # the gaps between the ids that something names
            if j > expected:
                unaccounted.append((expected, j - 1))
            expected = j + 1
        last = max(self.damaged)
        stale = sorted(j for j, at in known.items() if j not in finished and at < last)
        unknown_above = top if last > self.top_pos else None
        return Lost(lost, unaccounted, stale, unknown_above)
