"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from walq.core import events as ev

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
payloads = json_values | st.binary(max_size=200)
tasks = st.text(min_size=1, max_size=12)
keys = st.none() | st.text(max_size=12)
ids = st.integers(1, 2**63)
attempts = st.integers(0, 2**32 - 1)
walls = st.floats(0, 4e9, allow_nan=False)


def enqueues() -> st.SearchStrategy[ev.Enqueue]:
    return st.builds(
        ev.Enqueue,
        id=ids,
        task=tasks,
        payload=st.binary(max_size=100),
        kind=st.sampled_from([ev.PAYLOAD_JSON, ev.PAYLOAD_BYTES]),
        key=keys,
        priority=st.integers(-(2**15), 2**15 - 1),
        max_attempts=st.integers(0, 0xFFFF),
        due=walls,
        created=walls,
        origin=st.text(max_size=12),
    )


def jobs() -> st.SearchStrategy[ev.Job]:
    return st.builds(
        ev.Job,
        id=ids,
        task=tasks,
        payload=st.binary(max_size=100),
        kind=st.sampled_from([ev.PAYLOAD_JSON, ev.PAYLOAD_BYTES]),
        key=keys,
        priority=st.integers(-(2**15), 2**15 - 1),
        max_attempts=st.integers(0, 0xFFFF),
        due=walls,
        created=walls,
        state=st.sampled_from([ev.PENDING, ev.DEAD]),
        attempts=attempts,
        error=st.text(max_size=50),
    )


def events() -> st.SearchStrategy[ev.Event]:
    pairs = st.lists(st.tuples(ids, attempts), max_size=5).map(tuple)
    id_lists = st.lists(ids, max_size=5).map(tuple)
    return st.one_of(
        enqueues(),
        jobs(),
        st.builds(ev.Claim, items=pairs),
        st.builds(ev.Release, items=pairs),
        st.builds(
            ev.Fail,
            id=ids,
            attempt=attempts,
            dead=st.booleans(),
            due=walls,
            error=st.text(max_size=50),
        ),
        st.builds(ev.Ack, ids=id_lists),
        st.builds(ev.Cancel, ids=id_lists),
        st.builds(ev.Requeue, ids=id_lists),
        st.builds(ev.Purge, ids=id_lists),
        st.builds(
            ev.Meta,
            next_id=ids,
            tombstones=st.lists(st.tuples(ids, st.integers(1, 2)), max_size=4).map(tuple),
        ),
        st.builds(
            ev.Attempt,
            host=st.text(max_size=20),
            owner=attempts,
            items=st.lists(
                st.tuples(ids, attempts, walls, st.floats(0, 1e6), attempts), max_size=4
            ).map(tuple),
        ),
    )
