"""Per-second rates of a queue's counters over the last hour, from samples of their totals.

Pure: the sampler feeds it (time, totals) pairs; the page draws `rates()`.
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
            self._last[name] = total
        oldest = int((t - self.window) // self.step)
        for index in [i for i in self._bins if i <= oldest]:
            del self._bins[index]

    def rates(self, now: float) -> dict[str, Any]:
        """Events per second in each bin of the window ending at `now`, oldest first."""
        last = int(now // self.step)
        count = int(self.window // self.step)
        first = last - count + 1
        empty = dict.fromkeys(self.names, 0)
        rows = [self._bins.get(i, empty) for i in range(first, last + 1)]
        return {
            "start": first * self.step,
            "step": self.step,
            "rates": {n: [round(r[n] / self.step, 3) for r in rows] for n in self.names},
        }
