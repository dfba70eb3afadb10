"""The Sentinel deployment of .ci/redis.sh (WALQ_REDIS_SENTINEL_URL), for the tests that
use it: a fresh queue URL on it, its sentinels, its primary and replica as processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from tests.test_contract import need_redis, redis_url


@contextmanager
def fresh_queue_url() -> Iterator[str]:
    """A queue URL with a prefix of its own on the Sentinel deployment; its keys deleted after."""
    from walq.redisq.connection import connect
    from walq.redisq.url import parse_url

    need_redis("redis-sentinel")
    base = redis_url("redis-sentinel")
    assert base is not None
    prefix = f"walqtest-{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base}{'&' if '?' in base else '?'}prefix={prefix}"
    finally:
        client = connect(parse_url(base), 10.0)
        names = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if names:
            client.delete(*names)
        client.close()


def sentinels() -> tuple[Any, str]:
    """A redis-py Sentinel client for the deployment, and its service name."""
    from redis.sentinel import Sentinel

    from walq.redisq.url import parse_url

    url = redis_url("redis-sentinel")
    assert url is not None
    target = parse_url(url)
    return Sentinel(list(target.nodes), socket_timeout=2.0), target.service


def primary(sentinel: Any, service: str) -> tuple[str, int]:
    """The address the sentinels give for the primary now."""
    host, port = sentinel.discover_master(service)
    return str(host), int(port)


@attrs.frozen
class Server:
    """A redis-server of the deployment: where it listens, its pid and its config file."""

    host: str
    port: int
    pid: int
    config: str


def server(host: str, port: int) -> Server:
    """The redis-server listening at host:port, as it describes itself."""
    import redis

    c = redis.Redis(host=host, port=port, socket_timeout=2.0)
    try:
        info = c.info("server")
    finally:
        c.close()
    return Server(host, port, int(info["process_id"]), str(info["config_file"]))


def replicas(host: str, port: int) -> list[tuple[str, int]]:
    """The replicas of the server at host:port that are online now: connected and past
    their initial sync, so a WAIT can count them (none if it is not a primary)."""
    import redis

    c = redis.Redis(host=host, port=port, socket_timeout=2.0)
    try:
        info = c.info("replication")
    finally:
        c.close()
    if info.get("role") != "master":
        return []
    found = []
    for i in range(int(info.get("connected_slaves", 0))):
        slave = info.get(f"slave{i}")
        if isinstance(slave, dict) and slave.get("state") == "online":
            found.append((str(slave["ip"]), int(slave["port"])))
    return found


def wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until true; errors while the servers move count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the servers are moving: ask again
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")
