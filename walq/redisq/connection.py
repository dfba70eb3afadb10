"""Talking to the server: redis-py (an optional extra), the client, and errors as walq's.

A write is resent only when the server surely did not run it (the connection
could not be made, or a replica refused it: a failover in progress), for up to
`reconnect` seconds; once sent, a write is never resent (its outcome may be
unknown: BackendError says so). A read is retried across a dropped connection
for as long.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
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

        try:  # it asks the nodes for the slot map at once: unreachable is an error here
            return lib.RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],  # type: ignore[no-untyped-call]
                username=target.username,
                password=target.password,
                retry=Retry(NoBackoff(), 0),  # a write is never resent: its outcome may be unknown
                **common,
            )
        except (lib.RedisError, lib.exceptions.RedisClusterException) as exc:
            raise BackendError(f"{target.shown}: {exc}") from None
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


# How long a read, or a write the server surely did not run, is tried again by
# default: on one server, a moment; behind Sentinel or on a cluster, long enough
# for a failover (Sentinel's down-after plus an election: seconds).
RECONNECT_SINGLE = 0.75
RECONNECT_HA = 30.0

# What redis-py says when the command never reached a primary: no connection
# could be made, Sentinel knows no primary yet, or the primary was demoted.
_NOT_SENT = ("connecting to", "No master found", "previous master is now a slave")


def not_sent(exc: BaseException) -> bool:
    """Whether the server surely did not run the command that raised `exc`."""
    redis = redis_module()
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return True  # a replica refused it
    if isinstance(exc, redis.ConnectionError):
        return any(s in str(exc) for s in _NOT_SENT)
    return False


def _pauses(reconnect: float) -> Iterator[float]:
    """Waits before each retry (growing, jittered), until `reconnect` seconds are spent."""
    deadline = time.monotonic() + reconnect
    pause = 0.05
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield min(left, pause * (0.5 + random.random() / 2))
        pause = min(pause * 2, 1.0)


def write(
    client: Any, path: str, step: Callable[[Any], _T], reconnect: float = RECONNECT_SINGLE
) -> _T:
    """Run `step(client)`; again only while the server surely did not run it."""
    redis = redis_module()
    pauses = _pauses(reconnect)
    while True:
        try:
            return step(client)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            if not_sent(exc):
                pause = next(pauses, None)
                if pause is not None:
                    time.sleep(pause)
                    continue
                raise BackendError(f"{path}: {exc} (the write was not made)") from None
            if isinstance(exc, redis.ResponseError):
                raise BackendError(f"{path}: {exc}") from None
            raise BackendError(
                f"{path}: {exc} (whether the last write took effect is unknown)"
            ) from None
        except redis.RedisError as exc:
            raise BackendError(f"{path}: {exc}") from None
        except redis.exceptions.RedisClusterException as exc:  # not a RedisError
            raise BackendError(
                f"{path}: {exc} (whether the last write took effect is unknown)"
            ) from None


def read(
    client: Any, path: str, step: Callable[[Any], _T], reconnect: float = RECONNECT_SINGLE
) -> _T:
    """Run `step(client)`, which changes nothing, again after a dropped connection."""
    redis = redis_module()
    pauses = _pauses(reconnect)
    while True:
        try:
            return step(client)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError) as exc:
            pause = next(pauses, None)
            if pause is None:
                raise BackendError(f"{path}: {exc}") from None
            time.sleep(pause)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise BackendError(f"{path}: {exc}") from None


def text(value: Any) -> str:
    """A reply's bytes as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
