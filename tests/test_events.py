"""Event bodies (walq.core.events): round trips and malformed input."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import events
from walq.core import events as ev
from walq.core import format as fmt


@given(events())
def test_every_event_round_trips(event: ev.Event) -> None:
    """encode then decode gives the same event back."""
    assert ev.decode(event.rtype, event.encode()) == event


@given(events())
def test_an_event_names_each_of_its_jobs_in_its_body(event: ev.Event) -> None:
    """may_name is true for every job an event is about: a safe filter before decoding."""
    body = event.encode()
    ids = getattr(event, "ids", None) or [i[0] for i in getattr(event, "items", ())]
    for jid in [*ids, *([event.id] if hasattr(event, "id") else [])]:
        assert ev.may_name(body, jid)


@given(st.integers(0, 255), st.binary(max_size=120))
def test_malformed_bodies_raise_only_bad_event(rtype: int, body: bytes) -> None:
    """Arbitrary bodies decode or raise BadEvent, never another exception."""
    with contextlib.suppress(ev.BadEvent):
        ev.decode(rtype, body)


@given(events(), st.data())
def test_truncated_bodies_raise_bad_event(event: ev.Event, data: st.DataObject) -> None:
    """A body cut short never decodes into a different event silently (payload aside)."""
    body = event.encode()
    cut = data.draw(st.integers(0, max(len(body) - 1, 0)))
    try:
        got = ev.decode(event.rtype, body[:cut])
    except ev.BadEvent:
        return
    # Only the trailing payload/error bytes may be cut without the layout noticing.
    assert isinstance(got, ev.Enqueue | ev.Job | ev.Fail)


def test_core_imports_no_io_modules() -> None:
    """The pure core imports neither os, io, time, socket, threading nor subprocess."""
    banned = {"os", "io", "time", "socket", "threading", "subprocess", "pathlib"}
    core = Path(fmt.__file__).parent
    for path in core.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not banned & set(names), (path.name, names)
