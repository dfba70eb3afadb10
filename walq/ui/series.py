"""Per-second rates of a queue's counters over the last hour, from samples of their totals.

Pure: the sampler feeds it (time, totals) pairs; the page draws `rates()`.
The log records no time for a claim or an ack, so the rates before the first
sample are not known: those bins are None (the page says the charts count
since the dashboard started), never a made-up zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

WINDOW = 3600.0  # seconds shown
STEP = 10.0  # seconds per point


class Series:
    """Counts of events per STEP-second bin, from running totals that may reset (a restart)."""

    def __init__(self, names: Sequence[str], *, window: float = WINDOW, step: float = STEP) -> None:
        self.names = tuple(names)
        self.window = window
        self.step = step
        self._bins: dict[int, dict[str, int]] = {}
        self._last: dict[str, int] = {}
        self.since: float | None = None  # when the first total was read

    def add(self, t: float, totals: Mapping[str, int | None]) -> None:
        """Record the totals read at wall time `t`; a total that went down started again."""
        here = self._bins.setdefault(int(t // self.step), dict.fromkeys(self.names, 0))
        for name in self.names:
            total = totals.get(name)
            if total is None:
                continue
            before = self._last.get(name)
            if before is not None:
                here[name] += total - before if total >= before else total
            elif self.since is None:
                self.since = t
            self._last[name] = total
        oldest = int((t - self.window) // self.step)
        for index in [i for i in self._bins if i <= oldest]:
            del self._bins[index]

    def rates(self, now: float) -> dict[str, Any]:
        """Events per second in each bin of the window ending at `now`, oldest first.

        None for a bin before the first read (nothing known), and for the first
        read's own bin, which holds only part of its events.
        """
        last = int(now // self.step)
        count = int(self.window // self.step)
        first = last - count + 1
        empty = dict.fromkeys(self.names, 0)
        known = None if self.since is None else int(self.since // self.step) + 1
        rates: dict[str, list[float | None]] = {n: [] for n in self.names}
        for i in range(first, last + 1):
            row = self._bins.get(i, empty)
            for n in self.names:
                ok = known is not None and i >= known
                rates[n].append(round(row[n] / self.step, 3) if ok else None)
        return {"start": first * self.step, "step": self.step, "since": self.since, "rates": rates}
