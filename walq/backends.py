"""Which backend serves a target: a registry of URL schemes, and `walq.open`.

A target with a registered scheme ("redis://...") opens that backend; any
other string without a scheme is a queue directory. A string that looks like
a URL of an unknown scheme is refused rather than taken for a directory of
that name ("redis+sentinel://host" must not become a local folder).
Backends are imported only when used: redis-py is an optional extra.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from walq.backend import QueueBackend
from walq.errors import ArgumentError

# scheme -> "module:class" of the backend serving it (the class has an `open`).
_REGISTRY: dict[str, str] = {
    "redis": "walq.redisq.queue:RedisQueue",
    "rediss": "walq.redisq.queue:RedisQueue",
    "unix": "walq.redisq.queue:RedisQueue",
    "redis+cluster": "walq.redisq.queue:RedisQueue",
    "redis+sentinel": "walq.redisq.queue:RedisQueue",
}
DIRECTORY = "walq.directory.queue:Queue"  # a target without a scheme

_URL = re.compile(r"([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


def register(scheme: str, where: str) -> None:
    """Serve `scheme://...` targets with the backend class at "module:Class"."""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or ":" not in where:
        raise ArgumentError(f"register takes a lower-case scheme and 'module:Class', not {where!r}")
    _REGISTRY[scheme] = where


def schemes() -> list[str]:
    """The registered URL schemes, each as "scheme://"."""
    return [f"{s}://" for s in sorted(_REGISTRY)]


def scheme_of(target: object) -> str | None:
    """The URL scheme `target` starts with (lower case), or None for a directory's path.

    ArgumentError for a URL whose scheme no backend serves. Only the scheme is
    shown: the rest of a URL may hold a password.
    """
    if not isinstance(target, str):
        return None
    match = _URL.match(target)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme not in _REGISTRY:
        raise ArgumentError(
            f"unknown URL scheme {match.group()!r}: walq knows {', '.join(schemes())} "
            "(anything else is a queue directory's path)"
        )
    return scheme


def is_url(target: object) -> bool:
    """Whether `target` names a server (a registered scheme) rather than a directory."""
    try:
        return scheme_of(target) is not None
    except ArgumentError:
        return False


def check_not_url(target: object) -> None:
    """ArgumentError if `target`, taken for a queue directory, is a URL walq does not know."""
    scheme_of(target)


def backend_class(target: object) -> Any:
    """The class serving `target` (ArgumentError for an unknown scheme)."""
    scheme = scheme_of(target)
    module, _, name = (DIRECTORY if scheme is None else _REGISTRY[scheme]).partition(":")
    return getattr(importlib.import_module(module), name)


def open(target: str, **options: Any) -> QueueBackend:
    """Open the queue at `target`: a directory's path, or a URL of a registered scheme.

    `options` go to that backend's `open` (docs/REDIS.md lists which apply where).
    """
    queue: QueueBackend = backend_class(target).open(target, **options)
    return queue
