"""An enqueue item, validated and normalised once for every way in.

The queue (directory and Redis), the producer and its spool all build a
`JobSpec` here: the same checks, the same messages, the payload encoded the
same way. Payloads are JSON values or `bytes`, never pickles: a log is data,
not code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from walq.core import events as ev
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
MIN_PRIORITY, MAX_PRIORITY = -(1 << 15), (1 << 15) - 1
MAX_ATTEMPTS = 0xFFFF


class JobSpec(NamedTuple):
    """One job to add, validated, its payload encoded (a NamedTuple: the enqueue hot path).

    `delay` is in seconds (0.0: due now); `max_attempts` 0 means the queue's
    default; `origin` names a spool file the job came from ("" if none).
    """

    task: str
    kind: int
    data: bytes
    key: str | None
    delay: float
    priority: int
    max_attempts: int
    origin: str


class Output(NamedTuple):
    """What an ack commits with a job: its result (ev.RESULT_* kind, bytes) and follow-up jobs."""

    kind: int
    data: bytes
    follow: tuple[JobSpec, ...]


_new_spec = tuple.__new__  # skips the NamedTuple's Python-level __new__: half the cost
_PRIORITY_RANGE = f"priority must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}"
_ATTEMPTS_RANGE = f"max_attempts must be 1..{MAX_ATTEMPTS} or None"


def make_spec(
    task: object,
    payload: object,
    *,
    key: object = None,
    delay: object = 0.0,
    priority: object = 0,
    max_attempts: object = None,
    origin: str = "",
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> JobSpec:
    """A checked JobSpec; ArgumentError/PayloadError naming what is wrong.

    Bools are refused where numbers are wanted (priority, max_attempts, delay).
    """
    check_task(task)
    if key is not None:
        check_key(key)
    if delay != 0.0 or type(delay) is not float:
        delay = check_delay(delay)
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ArgumentError(_PRIORITY_RANGE)
    if max_attempts is None:
        max_attempts = 0
    elif type(max_attempts) is not int or not 0 <= max_attempts <= MAX_ATTEMPTS:
        raise ArgumentError(_ATTEMPTS_RANGE)
    if type(payload) is bytes and len(payload) <= max_payload:
        kind, data = PAYLOAD_BYTES, payload
    else:
        kind, data = encode_payload(payload, max_payload)
    return _new_spec(JobSpec, (task, kind, data, key, delay, priority, max_attempts, origin or ""))


def spec_from(raw: Any, max_payload: int = DEFAULT_MAX_PAYLOAD) -> JobSpec:
    """A checked JobSpec from an enqueue_many item: (task, payload[, options])."""
    if type(raw) is tuple and len(raw) == 2:
        task, payload = raw
        # The common bulk case, (task, bytes), validated inline.
        if type(payload) is bytes and len(payload) <= max_payload and check_task(task) is task:
            return _new_spec(JobSpec, (task, PAYLOAD_BYTES, payload, None, 0.0, 0, 0, ""))
    task, payload, opts = split_item(raw)
    return make_spec(
        task,
        payload,
        key=opts.get("key"),
        delay=opts.get("delay", 0.0),
        priority=opts.get("priority", 0),
        max_attempts=opts.get("max_attempts"),
        origin=opts.get("origin") or "",
        max_payload=max_payload,
    )


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


DEFAULT_MAX_RESULT = 1 << 20  # bytes of one stored result (a queue's max_result_bytes)
DEFAULT_KEEP_RESULTS = 3600.0  # seconds a result is kept (a queue's keep_results)


def encode_result(value: Any, limit: int, job_id: int) -> tuple[int, bytes]:
    """(result kind, bytes) of a handler's return value: JSON or bytes, at most `limit` bytes.

    None is RESULT_NONE (nothing stored); anything else not JSON or bytes is a PayloadError.
    """
    if value is None:
        return ev.RESULT_NONE, b""
    try:
        kind, data = encode_payload(value, limit)
    except PayloadError as exc:
        text = str(exc).replace("payload", "result").replace("max_result", "max_result_bytes")
        raise PayloadError(f"job {job_id}: {text}") from None
    return (ev.RESULT_BYTES if kind == PAYLOAD_BYTES else ev.RESULT_JSON), data


def decode_result(kind: int, data: bytes) -> Any:
    """The value a result record holds."""
    if kind == ev.RESULT_NONE:
        return None
    return decode_payload(PAYLOAD_BYTES if kind == ev.RESULT_BYTES else PAYLOAD_JSON, data)


def check_after(after: Any, policy: Any) -> tuple[tuple[int, ...], int]:
    """(parent ids, ev.AFTER_* policy) of an enqueue's `after=` and `after_policy=`."""
    if isinstance(after, int | str | bytes) or not isinstance(after, Iterable):
        raise ArgumentError(f"after must be a list of job ids, not {excerpt(after)}")
    ids = tuple(after)
    if not ids or len(ids) > MAX_PARENTS:
        raise ArgumentError(f"after must name 1..{MAX_PARENTS} job ids, not {len(ids)}")
    for jid in ids:
        if type(jid) is not int or jid < 1:
            raise ArgumentError(f"after must be a list of job ids, not {excerpt(after)}")
    if policy not in AFTER_POLICIES:
        raise ArgumentError(f'after_policy must be "cancel" or "always", not {excerpt(policy)}')
    return tuple(dict.fromkeys(ids)), AFTER_POLICIES[policy]


MAX_PARENTS = 10_000  # jobs one job may be enqueued after
AFTER_POLICIES = {"cancel": ev.AFTER_CANCEL, "always": ev.AFTER_ALWAYS}


ENQUEUE_OPTIONS = frozenset({"key", "delay", "priority", "max_attempts", "origin"})


def split_item(
    raw: Any, options: frozenset[str] = ENQUEUE_OPTIONS
) -> tuple[Any, Any, Mapping[str, Any]]:
    """(task, payload, options) of an enqueue_many item; ArgumentError if malformed.

    `options`: the option names this caller takes (a producer's items have no origin).
    """
    if not isinstance(raw, tuple | list) or len(raw) not in (2, 3):
        raise ArgumentError(
            f"enqueue_many items are (task, payload[, options]), not {excerpt(raw)}"
        )
    opts = raw[2] if len(raw) == 3 and raw[2] else {}
    if not isinstance(opts, Mapping):
        raise ArgumentError(f"enqueue_many options must be a mapping, not {excerpt(opts)}")
    unknown = set(opts) - options
    if unknown:
        raise ArgumentError(f"unknown enqueue options: {', '.join(sorted(map(str, unknown)))}")
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


def state_code(state: object) -> int:
    """The code of a live job state named `state` (pending, scheduled, running, dead)."""
    from walq.core.packed import STATE_NAMES  # noqa: PLC0415 - packed is below the specs

    for code, name in STATE_NAMES.items():
        if state == name:
            return code
    raise ArgumentError(
        f"state must be one of {', '.join(STATE_NAMES.values())}, not {excerpt(state)}"
    )


MAX_PAGE = 100_000  # jobs in one page of a listing


def check_listing(state: object, limit: object, after: object) -> int | None:
    """Check a listing's arguments (QueueBackend.jobs); the state's code, None for any state."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise ArgumentError(f"limit must be a whole number in 1..{MAX_PAGE}, not {excerpt(limit)}")
    if type(after) is not int or after < 0:
        raise ArgumentError(f"after must be a job id (a whole number >= 0), not {excerpt(after)}")
    return None if state is None else state_code(state)


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


def delay_until(run_at: object, now: float) -> float:
    """The delay until `run_at`, an aware datetime, from wall time `now`; ArgumentError if
    it is naive or not a datetime. A time past is due now; one further than
    check_delay allows is refused like such a delay."""
    if not isinstance(run_at, datetime):
        raise ArgumentError(f"run_at must be an aware datetime.datetime, not {excerpt(run_at)}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise ArgumentError(
            f"run_at must be an aware datetime (naive {run_at.isoformat()} names no time zone): "
            "pass tzinfo, say datetime(..., tzinfo=timezone.utc)"
        )
    return check_delay(max(0.0, run_at.timestamp() - now), "run_at (seconds from now)")


def check_unique_for(value: object, key: object) -> float:
    """Seconds a done job's key is remembered (unique_for=): positive, bounded like a delay,
    and only with a key; ArgumentError otherwise."""
    if key is None:
        raise ArgumentError("unique_for needs a key: it is the key that is remembered")
    seconds = check_delay(value, "unique_for")
    if not seconds:
        raise ArgumentError("unique_for must be positive")
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
