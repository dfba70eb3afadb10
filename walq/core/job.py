"""What a claim hands out, and how payloads become bytes and back.

Payloads are JSON values or `bytes`, never pickles: a log is data, not code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from walq.core import format as fmt
from walq.core.events import PAYLOAD_BYTES, PAYLOAD_JSON
from walq.core.text import excerpt
from walq.errors import ArgumentError, PayloadError

DEFAULT_MAX_PAYLOAD = 16 << 20
# A task name, key or origin is a str16 (docs/FORMAT.md): at most this many UTF-8 bytes.
MAX_NAME_BYTES = 0xFFFE
# A failed attempt's error text is kept up to this many UTF-8 bytes (see
# clip_error). Bounded so that every record a job can
# make -- enqueue, fail, and the compacted `job` record carrying payload, task,
# key and error together -- fits in a record body (fmt.MAX_BODY).
MAX_ERROR_BYTES = 1 << 16
# The largest max_payload a queue accepts: a record body less room for the rest.
MAX_PAYLOAD_LIMIT = fmt.MAX_BODY - (1 << 18)
assert MAX_PAYLOAD_LIMIT + 64 + 2 * MAX_NAME_BYTES + MAX_ERROR_BYTES <= fmt.MAX_BODY
assert MAX_PAYLOAD_LIMIT + 64 + 3 * MAX_NAME_BYTES <= fmt.MAX_BODY
# The longest delay (and so the furthest due time) a job may have: 10 years.
# Beyond it a due time is a mistake (1e308 overflowed date formatting later).
MAX_DELAY = fmt.MAX_DELAY


@attrs.frozen(kw_only=True)
class Job:
    """A claimed job: run it, then ack, fail or release it by `id` (and `attempt`)."""

    id: int
    task: str
    payload: Any
    attempt: int
    key: str | None = None
    priority: int = 0
    max_attempts: int = 0
    enqueued_at: float = 0.0


@attrs.frozen(kw_only=True)
class DeadJob:
    """A dead-lettered job and the error of its last attempt."""

    id: int
    task: str
    payload: Any
    attempts: int
    error: str
    key: str | None = None


def encode_payload(payload: Any, limit: int = DEFAULT_MAX_PAYLOAD) -> tuple[int, bytes]:
    """(kind, bytes) for a JSON value or bytes; PayloadError otherwise or if too large."""
    if isinstance(payload, bytes | bytearray | memoryview):
        kind, data = PAYLOAD_BYTES, bytes(payload)
    else:
        try:
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"payload is neither bytes nor a JSON value: {exc}") from None
        kind, data = PAYLOAD_JSON, utf8("payload", text, PayloadError)
    if len(data) > limit:
        raise PayloadError(f"payload of {len(data)} bytes exceeds max_payload ({limit} bytes)")
    return kind, data


def decode_payload(kind: int, data: bytes) -> Any:
    """The payload value stored as (kind, bytes)."""
    if kind == PAYLOAD_BYTES:
        return data
    return json.loads(data)


# The counters a queue keeps (file and Redis alike), in the order stats() shows them.
COUNTERS = (
    "enqueued",
    "coalesced",
    "claimed",
    "acked",
    "failed",
    "retried",
    "dead_lettered",
    "expired",
)

ENQUEUE_OPTIONS = frozenset({"key", "delay", "priority", "max_attempts", "origin"})


def split_item(raw: Any) -> tuple[Any, Any, Mapping[str, Any]]:
    """(task, payload, options) of an enqueue_many item; ArgumentError if malformed."""
    if not isinstance(raw, tuple | list) or len(raw) not in (2, 3):
        raise ArgumentError(
            f"enqueue_many items are (task, payload[, options]), not {excerpt(raw)}"
        )
    opts: Mapping[str, Any] = raw[2] if len(raw) == 3 and raw[2] else {}
    unknown = set(opts) - ENQUEUE_OPTIONS
    if unknown:
        raise ArgumentError(f"unknown enqueue options: {', '.join(sorted(unknown))}")
    return raw[0], raw[1], opts


def utf8(what: str, text: str, error: type[ArgumentError] = ArgumentError) -> bytes:
    """`text` as UTF-8; `error` if it is not valid Unicode (a lone surrogate, say).

    Such strings come from decoding bytes with errors="surrogateescape" (file
    names, os.environ) or from JSON escapes like "\\udcff"; they cannot be
    written to the log, whose strings are UTF-8.
    """
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("unicode_escape").decode()
        raise error(
            f"{what} is not valid Unicode: {exc.reason} ({bad}) at character {exc.start}"
        ) from None


def check_task(task: object) -> str:
    """A valid task name, or ArgumentError."""
    if not isinstance(task, str) or not task or len(utf8("task", task)) > MAX_NAME_BYTES:
        raise ArgumentError(
            f"task must be a non-empty string of at most {MAX_NAME_BYTES} bytes, "
            f"not {excerpt(task)}"
        )
    return task


def check_key(key: object) -> str | None:
    """A valid idempotency key (or None), or ArgumentError."""
    if key is None:
        return None
    if not isinstance(key, str) or len(utf8("key", key)) > MAX_NAME_BYTES:
        raise ArgumentError(
            f"key must be a string of at most {MAX_NAME_BYTES} bytes, not {excerpt(key)}"
        )
    return key


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """A finite, non-negative (or positive) number of seconds, or ArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number of seconds, not {excerpt(value)}")
    if value < 0 or (positive and value == 0):
        raise ArgumentError(f"{name} must be {'positive' if positive else 'non-negative'}")
    return float(value)


def check_delay(value: object, name: str = "delay") -> float:
    """A job's delay in seconds: finite, 0..MAX_DELAY (10 years), or ArgumentError.

    The one bound on when a job may fall due, for every way in (Queue, a
    producer and its spool, Redis, the CLI, a retry's delay).
    """
    seconds = check_seconds(name, value)
    if seconds > MAX_DELAY:
        raise ArgumentError(
            f"{name} must be at most {MAX_DELAY:.0f} seconds (10 years), not {excerpt(value)}"
        )
    return seconds


def clip_error(error: str) -> str:
    """A failed attempt's error text as stored: at most MAX_ERROR_BYTES bytes.

    A longer text keeps its start (the first line is what `dead list` shows)
    and its end (a traceback's last lines), with a note of what was cut.
    """
    if len(error) * 4 <= MAX_ERROR_BYTES:
        return error
    data = error.encode(errors="surrogatepass")
    if len(data) <= MAX_ERROR_BYTES:
        return error
    half = MAX_ERROR_BYTES // 2 - 64
    mark = f"\n[... {len(data) - 2 * half} bytes cut ...]\n"
    head = data[:half].decode(errors="ignore")
    tail = data[-half:].decode(errors="ignore")
    return head + mark + tail
