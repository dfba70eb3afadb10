"""The ready index's id queue: a FIFO of ids in an array, with a moving head."""

from __future__ import annotations

import random
from array import array
from collections import deque

import pytest

from walq.core.ready import IdQueue


def test_an_id_queue_behaves_as_a_deque_through_many_operations() -> None:
    """Random appends, pops and put-backs (past the 4,096 the head is cut at), side by side."""
    rng = random.Random(20261204)
    q, model = IdQueue(), deque[int]()
    next_id = 1
    for _ in range(30_000):
        op = rng.random()
        if op < 0.5:
            n = rng.randrange(1, 20)
            ids = range(next_id, next_id + n)
            next_id += n
            if rng.random() < 0.5:
                q.extend(ids)
                model.extend(ids)
            else:
                for jid in ids:
                    q.append(jid)
                    model.append(jid)
        elif op < 0.95 and model:
            assert q.first() == model[0]
            assert q.popleft() == model.popleft()
        elif model:
            jid = model.popleft()
            assert q.popleft() == jid
            q.appendleft(jid)
            model.appendleft(jid)
        assert len(q) == len(model) and bool(q) == bool(model)
    assert list(q) == list(model)
    assert q.toarray() == array("Q", model)
    assert list(IdQueue.frombytes(q.toarray().tobytes())) == list(model)


def test_an_empty_id_queue_refuses_to_pop_and_takes_a_put_back() -> None:
    q = IdQueue()
    with pytest.raises(IndexError):
        q.popleft()
    with pytest.raises(IndexError):
        q.first()
    q.appendleft(7)  # no head room: inserted
    q.append(8)
    assert [q.popleft(), q.popleft()] == [7, 8] and not q
