"""The ready index: pending job ids by priority, then task, oldest first -- what claim takes.

Entries go stale when a job leaves pending by another way (cancel, say); they
are dropped lazily when they reach the head of their queue, so nothing here
needs to be told.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from walq.core.packed import M3, PENDING, JobInfo


class ReadyIndex(dict[int, dict[int, deque[int]]]):
    """{biased priority: {task index: deque of job ids}}, each deque in id (arrival) order."""

    def queue(self, prio: int, task: int) -> deque[int]:
        """The queue of pending ids of task index `task` at biased priority `prio`."""
        by_task = self.get(prio)
        if by_task is None:
            by_task = self[prio] = {}
        q = by_task.get(task)
        if q is None:
            q = by_task[task] = deque()
        return q

    def take(
        self,
        limit: int,
        jobs: dict[int, int],
        info: Callable[[int, int], JobInfo],
        accept: Callable[[JobInfo], bool | float] | None,
        deferred: list[tuple[JobInfo, float]] | None,
        paused: set[int] | frozenset[int] = frozenset(),
    ) -> list[JobInfo]:
        """Pop up to `limit` pending jobs of `jobs` (id: packed), highest priority, then oldest.

        See QueueState.take_ready for what `accept` and `deferred` mean; the
        jobs of the task indexes in `paused` are left where they are.
        """
        taken: list[JobInfo] = []
        refused: set[int] = set(paused)
        for prio in sorted(self, reverse=True):
            by_task = self[prio]
            # The oldest pending job of each task, oldest first: a heap, so that
            # many tasks refused one after another cost T log T, not T squared.
            heads: list[tuple[int, int]] = []
            for task, q in list(by_task.items()):
                jid = _head(q, jobs)
                if jid is None:
                    del by_task[task]
                elif task not in refused:
                    heads.append((jid, task))
            heapq.heapify(heads)
            while len(taken) < limit and heads:
                best_id, best_task = heapq.heappop(heads)
                job = info(best_id, jobs[best_id])
                verdict = True if accept is None else accept(job)
                if verdict is False:
                    refused.add(best_task)
                    continue
                q = by_task[best_task]
                q.popleft()
                if verdict is True:
                    taken.append(job)
                elif deferred is not None:
                    deferred.append((job, float(verdict)))
                jid = _head(q, jobs)
                if jid is None:
                    del by_task[best_task]
                else:
                    heapq.heappush(heads, (jid, best_task))
            if not by_task:
                del self[prio]
            if len(taken) >= limit:
                break
        return taken


def _head(q: deque[int], jobs: dict[int, int]) -> int | None:
    """The first id in `q` that is still pending (drops stale entries)."""
    while q:
        jid = q[0]
        p = jobs.get(jid)
        if p is not None and p & M3 == PENDING:
            return jid
        q.popleft()
    return None
