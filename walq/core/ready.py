"""The ready index: pending job ids by priority, then task, oldest first -- what claim takes.

Entries go stale when a job leaves pending by another way (cancel, say); they
are dropped lazily when they reach the head of their queue, so nothing here
needs to be told.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterable, Iterator

from walq.core.packed import M3, PENDING, JobInfo


class IdQueue:
    """A FIFO of job ids as 8-byte machine words (array 'Q') with a moving head.

    A deque of ints holds an int object per id (32 bytes) besides its pointer:
    a restore from a checkpoint made 5M of them. Here an id costs 8 bytes, and a
    checkpoint's queue is loaded with one copy of its bytes. The taken head is
    cut off once it is most of the array.
    """

    __slots__ = ("_head", "_ids")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids = array("Q", ids)
        self._head = 0

    @classmethod
    def frombytes(cls, raw: bytes) -> IdQueue:
        """A queue of the ids `raw` holds as array('Q') bytes."""
        q = cls()
        q._ids.frombytes(raw)
        return q

    def __len__(self) -> int:
        return len(self._ids) - self._head

    def __iter__(self) -> Iterator[int]:
        ids = self._ids
        return (ids[i] for i in range(self._head, len(ids)))

    def __repr__(self) -> str:
        return f"IdQueue({list(self)})"

    def first(self) -> int:
        """The id at the head (IndexError if empty)."""
        if self._head >= len(self._ids):
            raise IndexError("empty queue")
        return self._ids[self._head]

    def append(self, jid: int) -> None:
        self._ids.append(jid)

    def extend(self, ids: Iterable[int]) -> None:
        self._ids.extend(ids)

    def popleft(self) -> int:
        """Remove and return the id at the head (IndexError if empty)."""
        head = self._head
        ids = self._ids
        if head >= len(ids):
            raise IndexError("empty queue")
        jid = ids[head]
        head += 1
        if head >= 4096 and head * 2 >= len(ids):
            del ids[:head]
            head = 0
        elif head == len(ids):
            del ids[:]
            head = 0
        self._head = head
        return jid

    def appendleft(self, jid: int) -> None:
        """Put `jid` back at the head (a claim that did not happen)."""
        if self._head:
            self._head -= 1
            self._ids[self._head] = jid
        else:
            self._ids.insert(0, jid)

    def toarray(self) -> array[int]:
        """A copy of the ids from the head on (a checkpoint's)."""
        return self._ids[self._head :]


class ReadyIndex(dict[int, dict[int, IdQueue]]):
    """{biased priority: {task index: queue of job ids}}, each queue in id (arrival) order."""

    def queue(self, prio: int, task: int) -> IdQueue:
        """The queue of pending ids of task index `task` at biased priority `prio`."""
        by_task = self.get(prio)
        if by_task is None:
            by_task = self[prio] = {}
        q = by_task.get(task)
        if q is None:
            q = by_task[task] = IdQueue()
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


def _head(q: IdQueue, jobs: dict[int, int]) -> int | None:
    """The first id in `q` that is still pending (drops stale entries)."""
    while q:
        jid = q.first()
        p = jobs.get(jid)
        if p is not None and p & M3 == PENDING:
            return jid
        q.popleft()
    return None
