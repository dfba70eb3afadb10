"""Parsing a walq Redis URL: which deployment, redis-py's part, walq's own parameters.

Three deployments (docs/REDIS.md):
  redis://[:password@]host:port/db?prefix=NAME              one server (also rediss://, unix://)
  redis+cluster://[:password@]host:port,host:port/?prefix=NAME          a Redis Cluster
  redis+sentinel://[:password@]host:port,host:port/SERVICE?prefix=NAME  Sentinel's primary
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from walq.backends import is_url
from walq.errors import ArgumentError

DEFAULT_PREFIX = "walq"
CLUSTER, SENTINEL = "redis+cluster", "redis+sentinel"


def key_prefix(name: str) -> str:
    """The prefix P every key of queue `name` starts with: the name as a hash tag.

    All of a queue's keys then hash to one Cluster slot, so each script stays
    one atomic step on one node; different queues spread over the cluster.
    """
    return "{" + name + "}"


@dataclass(frozen=True)
class Target:
    """A parsed walq Redis URL.

    `kind` is "redis" (one server), CLUSTER or SENTINEL; `client_url` is what
    redis-py opens for one server; `nodes` the cluster's or sentinels' addresses;
    `service` Sentinel's name for the primary; `options` the query parameters
    left for redis-py; `shown` the URL without its password.
    """

    kind: str
    prefix: str  # the queue's name; its keys start with key_prefix(prefix)
    shown: str
    require_durable: bool = False
    min_replicas: int | None = None
    replica_timeout: float | None = None
    client_url: str = ""
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def _truth(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def _nodes(url: str, netloc: str) -> tuple[tuple[str, int], ...]:
    """host:port,host:port of a cluster or sentinel URL (the credentials taken off)."""
    hosts = netloc.rpartition("@")[2]
    out = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ArgumentError(f"{item!r} in {_safe(url)} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def _safe(url: str) -> str:
    """`url` with any password replaced, for an error message."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return scheme + sep + netloc + slash + tail


def parse_url(url: str) -> Target:
    """The Target of a walq Redis URL.

    walq's own query parameters (prefix, require_durable, min_replicas,
    replica_timeout) are taken out; the rest go to redis-py. The shown URL has no password.
    """
    if not is_url(url):
        raise ArgumentError(
            "not a Redis URL (redis://, rediss://, unix://, redis+cluster:// or "
            f"redis+sentinel://): {_safe(url)!r}"
        )
    scheme = url.partition("://")[0].lower()
    rest_url = url.partition("://")[2]
    netloc, _, tail = rest_url.partition("/")
    query_text = tail.partition("?")[2] if "?" in tail else ""
    path = tail.partition("?")[0]
    query = parse_qsl(query_text.partition("#")[0], keep_blank_values=True)
    prefix, durable, rest = DEFAULT_PREFIX, False, []
    own: dict[str, Any] = {}
    for name, value in query:
        if name == "prefix":
            prefix = value
        elif name == "require_durable":
            durable = _truth(value)
        elif name == "min_replicas":
            if not value.isdigit():
                raise ArgumentError(f"min_replicas must be a whole number, not {value!r}")
            own["min_replicas"] = int(value)
        elif name == "replica_timeout":
            try:
                own["replica_timeout"] = float(value)
            except ValueError:
                raise ArgumentError(
                    f"replica_timeout must be a number of seconds, not {value!r}"
                ) from None
        else:
            rest.append((name, value))
    if not prefix or any(c.isspace() or c in "{}" for c in prefix):
        raise ArgumentError(
            f"prefix must be a non-empty string without spaces or braces, not {prefix!r} "
            "(walq puts it in braces itself: a Redis Cluster hash tag)"
        )
    if scheme in (CLUSTER, SENTINEL):
        creds = netloc.rpartition("@")[0] if "@" in netloc else ""
        user, _, password = creds.partition(":") if ":" in creds else ("", "", creds)
        nodes = _nodes(url, netloc)
        hosts = ",".join(f"{h}:{p}" for h, p in nodes)
        service = unquote(path.strip("/"))
        if scheme == SENTINEL and not service:
            raise ArgumentError(f"{_safe(url)}: name the primary's service: /SERVICE after hosts")
        if scheme == CLUSTER and service not in ("", "0"):
            raise ArgumentError(f"{_safe(url)}: a Redis Cluster has only database 0")
        shown = f"{scheme}://{hosts}/{service}?" + urlencode([("prefix", prefix)])
        return Target(
            kind=scheme,
            prefix=prefix,
            shown=shown,
            require_durable=durable,
            **own,
            nodes=nodes,
            service=service,
            username=unquote(user) or None,
            password=unquote(password) or None,
            options=dict(rest),
        )
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError as exc:  # a bad IPv6 literal, a port that is not a port
        raise ArgumentError(f"{_safe(url)}: {exc}") from None
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    if port is not None:
        host += f":{port}"
    shown = urlunsplit(parts._replace(netloc=host, query=urlencode([("prefix", prefix)])))
    return Target(
        kind="redis",
        prefix=prefix,
        shown=shown,
        require_durable=durable,
        client_url=client_url,
        **own,
    )
