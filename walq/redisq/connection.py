"""Talking to the server: redis-py (an optional extra), the client, and errors as walq's.

A write is never resent (its outcome may be unknown: BackendError says so); a
read is retried a few times across a dropped connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from walq.errors import ArgumentError, BackendError, MissingDependency
from walq.redisq.url import CLUSTER, SENTINEL, Target

_T = TypeVar("_T")


def redis_module() -> Any:
    """redis-py, imported when first used; MissingDependency names the extra."""
    try:
        import redis  # noqa: PLC0415 - an optional extra, imported when first used
    except ImportError:
        raise MissingDependency(
            "walq's Redis backend needs redis-py: pip install 'walq[redis]'"
        ) from None
    return redis


def connect(target: Target, socket_timeout: float) -> Any:
    """A redis-py client for `target` (one server, a cluster, or Sentinel's primary)
    that never resends a command by itself."""
    lib = redis_module()
    from redis.backoff import NoBackoff  # noqa: PLC0415 - optional extra
    from redis.retry import Retry  # noqa: PLC0415

    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 10.0),
    }
    if target.options and target.kind != "redis":
        raise ArgumentError(f"{target.shown}: unknown parameters: {', '.join(target.options)}")
    if target.kind == CLUSTER:
        from redis.cluster import ClusterNode  # noqa: PLC0415 - optional extra

        return lib.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],  # type: ignore[no-untyped-call]
            username=target.username,
            password=target.password,
            retry=Retry(NoBackoff(), 0),  # a write is never resent: its outcome may be unknown
            **common,
        )
    if target.kind == SENTINEL:
        from redis.sentinel import Sentinel  # noqa: PLC0415 - optional extra

        auth: dict[str, Any] = {"username": target.username, "password": target.password}
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={**common, **auth},
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
            **common,
            **auth,
        )
        return sentinel.master_for(target.service)
    return lib.Redis.from_url(
        target.client_url,
        retry=Retry(NoBackoff(), 0),  # a write is never resent: its outcome may be unknown
        health_check_interval=30,
        **common,
    )


def write(client: Any, path: str, step: Callable[[Any], _T]) -> _T:
    """Run `step(client)` once; a dropped connection leaves its outcome unknown."""
    redis = redis_module()
    try:
        return step(client)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendError(
            f"{path}: {exc} (whether the last write took effect is unknown)"
        ) from None
    except redis.RedisError as exc:
        raise BackendError(f"{path}: {exc}") from None


def read(client: Any, path: str, step: Callable[[Any], _T]) -> _T:
    """Run `step(client)`, which changes nothing, again after a dropped connection."""
    redis = redis_module()
    for wait in (0.05, 0.2, 0.5, None):
        try:
            return step(client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if wait is None:
                raise BackendError(f"{path}: {exc}") from None
            time.sleep(wait)
        except redis.RedisError as exc:
            raise BackendError(f"{path}: {exc}") from None
    raise AssertionError("unreachable")


def text(value: Any) -> str:
    """A reply's bytes as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
