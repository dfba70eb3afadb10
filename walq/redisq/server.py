"""What a queue checks of its server on opening: version, format, persistence."""

from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple

from walq.errors import BackendError, DurabilityError, DurabilityWarning, NotAQueueError, WalqError
from walq.redisq.connection import read, redis_module, text, write
from walq.redisq.url import CLUSTER, SENTINEL, key_prefix

log = logging.getLogger("walq.redisq")

FORMAT_VERSION = "1"
MIN_SERVER = (6, 2)


class Server(NamedTuple):
    """What opening learned of the server."""

    version: str
    durable: bool
    persistence: dict[str, str]


def check_server(
    client: Any,
    path: str,
    name: str,
    *,
    require_durable: bool,
    create: bool,
    kind: str = "redis",
    min_replicas: int = 0,
    reconnect: float = 0.75,
) -> Server:
    """Server version, format marker, and whether its persistence meets the guarantees.

    Weaker than `appendonly yes` and `appendfsync always` on the primary, fewer
    connected replicas than `min_replicas`, or Sentinel without min_replicas (a
    failover may promote a replica without the last acknowledged changes) warns
    (DurabilityWarning), or raises DurabilityError if `require_durable`.
    create=False: NotAQueueError if no queue named `name` exists yet. A queue
    stored under the untagged prefix of walq before Cluster support (`name:meta`,
    not `{name}:meta`) is refused, naming the prefix: move it with
    walq.redisq.admin.migrate_untagged first (docs/REDIS.md).
    """
    info = read(client, path, lambda c: c.info("server"), reconnect)
    server_version = str(info.get("redis_version", "?"))
    version = tuple(int(x) for x in server_version.split(".")[:2] if x.isdigit())
    if version < MIN_SERVER:
        raise BackendError(
            f"{path}: Redis {server_version} is too old "
            f"(walq needs {MIN_SERVER[0]}.{MIN_SERVER[1]} or newer)"
        )
    prefix = name
    meta = f"{key_prefix(name)}:meta"
    if read(client, path, lambda c: c.exists(meta)) == 0 and read(
        client, path, lambda c: c.exists(f"{name}:meta")
    ):
        raise WalqError(
            f"{path}: the queue under prefix {name!r} is stored in the untagged layout "
            f"({name}:*); with its workers stopped, move it to {key_prefix(name)}:* with "
            f"`python -m walq.redisq.admin migrate URL` (docs/REDIS.md)"
        )
    if create:
        write(client, path, lambda c: c.hsetnx(meta, "format", FORMAT_VERSION))
    found_raw = read(client, path, lambda c: c.hget(meta, "format"))
    if found_raw is None:
        raise NotAQueueError(f"{path}: no walq queue under prefix {prefix!r}")
    found = text(found_raw)
    if found != FORMAT_VERSION:
        raise WalqError(
            f"{path}: data under prefix {prefix!r} has format {found}, "
            f"this walq reads format {FORMAT_VERSION}"
        )
    persistence, problem = _persistence(client, path)
    problems = [problem] if problem else []
    persistence["deployment"] = {"redis": "single", CLUSTER: "cluster", SENTINEL: "sentinel"}[kind]
    persistence["min_replicas"] = str(min_replicas)
    if kind != CLUSTER:
        replication = read(client, path, lambda c: c.info("replication"), reconnect)
        replicas = int(replication.get("connected_slaves", 0))
        persistence["replicas"] = str(replicas)
        if replicas < min_replicas:
            problems.append(
                f"min_replicas is {min_replicas} but the primary has {replicas} replicas "
                "connected (every change would fail its WAIT)"
            )
        if kind == SENTINEL and min_replicas == 0:
            problems.append(
                "behind Sentinel without min_replicas, a failover may promote a replica "
                "that lacks the last acknowledged changes (set min_replicas=1)"
            )
    problem = "; ".join(problems) or None
    server = Server(server_version, problem is None, persistence)
    if problem is None:
        return server
    message = (
        f"{path}: {problem}; guarantees 1-3 (a returned enqueue or ack survives "
        "a crash of the server) need `appendonly yes` and `appendfsync always`, "
        "and behind Sentinel min_replicas >= 1 (docs/REDIS.md)"
    )
    if require_durable:
        raise DurabilityError(message)
    log.warning("%s", message)
    warnings.warn(message, DurabilityWarning, stacklevel=3)
    return server


def _persistence(client: Any, path: str) -> tuple[dict[str, str], str | None]:
    """The server's persistence settings, and what about them falls short (or None)."""
    redis = redis_module()
    try:
        conf: dict[Any, Any] = {}
        for name in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy"):
            conf.update(client.config_get(name))
    except redis.ResponseError as exc:
        return {}, f"cannot read the server's persistence settings (CONFIG GET: {exc})"
    except redis.RedisError as exc:
        raise BackendError(f"{path}: {exc}") from None
    got = {text(k): text(v) for k, v in conf.items()}
    problems = []
    if got.get("appendonly") != "yes":
        problems.append(f"appendonly is {got.get('appendonly')!r}")
    if got.get("appendfsync") != "always":
        problems.append(f"appendfsync is {got.get('appendfsync')!r}")
    if got.get("maxmemory", "0") != "0" and got.get("maxmemory-policy") != "noeviction":
        problems.append(
            f"maxmemory-policy is {got.get('maxmemory-policy')!r} (jobs may be evicted)"
        )
    return got, "; ".join(problems) or None
