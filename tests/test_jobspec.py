"""One validation of an enqueue item (walq.core.jobspec), whichever way the item comes in.

The directory queue, the Redis queue and a producer all build a JobSpec with
make_spec/spec_from: the same refusals with the same messages. Bools are not
numbers here (True is not priority 1; False is not "the default attempts").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import walq
from tests.test_contract import Backend, backend  # noqa: F401 (a fixture)
from walq.core.events import PAYLOAD_BYTES, PAYLOAD_JSON
from walq.core.jobspec import JobSpec, make_spec, spec_from
from walq.errors import ArgumentError, PayloadError
from walq.producers import wire

BOOLS = [
    ("priority", True, "priority must be an int"),
    ("priority", False, "priority must be an int"),
    ("max_attempts", True, "max_attempts must be"),
    ("max_attempts", False, "max_attempts must be"),
    ("delay", True, "delay must be a finite number"),
    ("delay", False, "delay must be a finite number"),
]


@pytest.fixture
def q(backend: Backend) -> Iterator[Any]:  # noqa: F811
    queue = backend.open()
    yield queue
    queue.close()


@pytest.mark.parametrize(("option", "value", "message"), BOOLS)
def test_queue_enqueue_refuses_bools(q: Any, option: str, value: bool, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        q.enqueue("t", 1, **{option: value})
    with pytest.raises(ArgumentError, match=message):
        q.enqueue_many([("t", 1, {option: value})])
    assert q.stats()["enqueued"] == 0


@pytest.mark.parametrize(("option", "value", "message"), BOOLS)
def test_producer_item_refuses_bools(option: str, value: bool, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        wire.make_item("t", 1, **{option: value})  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=message):
        wire.item_from(("t", 1, {option: value}))


@pytest.mark.parametrize(("option", "value", "message"), BOOLS)
def test_make_spec_refuses_bools(option: str, value: bool, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        make_spec("t", 1, **{option: value})  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=message):
        spec_from(("t", 1, {option: value}))


def test_specs_normalise_the_same_way_on_every_path() -> None:
    """The bulk fast path, the general path and a producer item agree on every field."""
    fast = spec_from(("t", b"raw"))
    general = make_spec("t", b"raw")
    assert fast == general == JobSpec("t", PAYLOAD_BYTES, b"raw", None, 0.0, 0, 0, "")
    full = spec_from(("t", {"a": 1}, {"key": "k", "delay": 2, "priority": -3, "max_attempts": 4}))
    assert full == JobSpec("t", PAYLOAD_JSON, b'{"a":1}', "k", 2.0, -3, 4, "")
    item = wire.make_item("t", {"a": 1}, key="k", delay=2, priority=-3, max_attempts=4)
    assert (item.task, item.kind, item.data, item.key, item.delay) == full[:5]
    assert (item.priority, item.max_attempts) == (full.priority, full.max_attempts)
    assert make_spec("t", None, max_attempts=None).max_attempts == 0  # the queue's default


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: spec_from(["t"]), ArgumentError, r"items are \(task, payload"),
        (lambda: spec_from(("t", 1, ["key"])), ArgumentError, "options must be a mapping"),
        (lambda: spec_from(("t", 1, {"colour": 1})), ArgumentError, "unknown enqueue options"),
        (lambda: spec_from(("", b"x")), ArgumentError, "task must be a non-empty string"),
        (lambda: spec_from(("t", b"xx"), 1), PayloadError, "exceeds max_payload"),
        (lambda: make_spec("t", 1, priority=1 << 15), ArgumentError, "priority must be"),
        (lambda: make_spec("t", 1, max_attempts=-1), ArgumentError, "max_attempts must be"),
        (lambda: make_spec("t", 1, key=3), ArgumentError, "key must be a string"),
        (lambda: make_spec("t", {1j}), PayloadError, "neither bytes nor a JSON value"),
    ],
)
def test_spec_refusals(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_non_mapping_options_are_refused_by_the_queue(tmp_path: Path) -> None:
    """A list where the options belong is a user's mistake, not an AttributeError."""
    path = str(tmp_path / "q")
    with walq.Queue.open(path) as queue, pytest.raises(ArgumentError, match="mapping"):
        queue.enqueue_many([("t", 1, ["key", "k"])])  # type: ignore[list-item]
