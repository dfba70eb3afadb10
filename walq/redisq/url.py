"""Parsing a walq Redis URL: redis-py's part, walq's own parameters, and what to show."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from walq.backends import is_url
from walq.errors import ArgumentError

DEFAULT_PREFIX = "walq"


def parse_url(url: str) -> tuple[str, str, bool, str]:
    """(redis-py URL, prefix, require_durable, display URL) from a walq Redis URL.

    walq's own query parameters (prefix, require_durable) are taken out; the
    rest go to redis-py. The display URL has no password.
    """
    if not is_url(url):
        raise ArgumentError(f"not a Redis URL (redis://, rediss:// or unix://): {url!r}")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix, durable, rest = DEFAULT_PREFIX, False, []
    for name, value in query:
        if name == "prefix":
            prefix = value
        elif name == "require_durable":
            durable = value.lower() in ("1", "true", "yes", "on")
        else:
            rest.append((name, value))
    if not prefix or any(c.isspace() for c in prefix):
        raise ArgumentError(f"prefix must be a non-empty string without spaces, not {prefix!r}")
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    shown = urlunsplit(parts._replace(netloc=netloc, query=urlencode([("prefix", prefix)])))
    return client_url, prefix, durable, shown
