"""The Redis deployments: URLs of a cluster and of Sentinel, the hash-tagged prefix,
and a queue of the untagged layout refused at open and moved by migrate_untagged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import walq
from tests import sentinel
from tests.test_contract import (
    REDIS_REQUIRED,
    REDIS_SKIP,
    REDIS_SKIPS,
    SKIP_REDIS,
    need_redis,
    redis_url,
)
from walq.errors import DurabilityWarning
from walq.redisq.url import CLUSTER, SENTINEL, key_prefix, parse_url


def test_a_cluster_url_names_its_nodes_and_hides_the_password() -> None:
    t = parse_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001/?prefix=jobs")
    assert (t.kind, t.prefix, t.nodes) == (
        CLUSTER,
        "jobs",
        (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
    )
    assert t.password == "s3cret" and "s3cret" not in t.shown
    assert t.shown == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001/?prefix=jobs"


def test_a_sentinel_url_names_its_service() -> None:
    t = parse_url("redis+sentinel://h1:26379,h2:26380/mymaster?prefix=q&require_durable=1")
    assert (t.kind, t.service, t.prefix, t.require_durable) == (SENTINEL, "mymaster", "q", True)
    assert t.nodes == (("h1", 26379), ("h2", 26380))


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+sentinel://h1:26379/?prefix=q", "service"),
        ("redis+cluster://h1:7000,h2/?prefix=q", "'h2' .* is not host:port"),
        ("redis+cluster://:pw@h1:7000,h2:x/", r"\*\*\*@h1:7000,h2:x"),
        ("redis+cluster://h1:7000/3", "only database 0"),
        ("redis://h1:6379/0?prefix={q}", "braces"),
        ("redis://[bad", r"^redis://\[bad: Invalid IPv6 URL$"),
        ("redis://h1:99999/0", "^redis://h1:99999/0: Port out of range"),
        ("redis://:secret@h1:x/0", r"^redis://\*\*\*@h1:x/0: Port could not be cast"),
    ],
)
def test_a_bad_deployment_url_is_one_clear_error(url: str, match: str) -> None:
    with pytest.raises(walq.ArgumentError, match=match):
        parse_url(url)


def test_an_unreachable_cluster_is_a_backend_error_naming_it() -> None:
    """redis-py asks a cluster's nodes for the slot map while it builds its client;
    none answering is walq's BackendError, not redis-py's own exception."""
    from walq.redisq.queue import RedisQueue

    with pytest.raises(walq.BackendError, match=r"^redis\+cluster://127\.0\.0\.1:1/.*cannot be"):
        RedisQueue.open("redis+cluster://127.0.0.1:1/?prefix=x")


def test_a_queue_s_keys_share_one_hash_tag() -> None:
    """Every key is P:..., and Redis Cluster hashes only what is inside the braces."""
    assert key_prefix("jobs") == "{jobs}"


@pytest.fixture
def single() -> Iterator[tuple[str, str]]:
    """(URL of a fresh queue name on the single test server, that name); keys deleted after."""
    if SKIP_REDIS:
        pytest.skip(REDIS_SKIP or "")
    need_redis()
    import redis

    base = redis_url()
    assert base is not None
    name = f"walqtest-{uuid.uuid4().hex[:12]}"
    yield f"{base}{'&' if '?' in base else '?'}prefix={name}", name
    client = redis.Redis.from_url(base)
    for pattern in (f"{name}:*", f"{{{name}}}:*"):
        names = list(client.scan_iter(match=pattern, count=1000))
        if names:
            client.delete(*names)
    client.close()


@pytest.mark.redis
def test_an_untagged_queue_is_refused_naming_its_prefix_then_migrated(
    single: tuple[str, str],
) -> None:
    """A queue written before the hash tag (NAME:*) is never silently shadowed by an
    empty {NAME} queue: open names the prefix; migrate_untagged moves every key."""
    import redis

    from walq.redisq.admin import migrate_untagged
    from walq.redisq.queue import RedisQueue

    url, name = single
    with RedisQueue.open(url) as q:
        jid = q.enqueue("t", {"n": 1})
        q.enqueue("t", {"n": 2})
    base = redis_url()
    assert base is not None
    client = redis.Redis.from_url(base)
    try:  # rename the keys back to the layout of walq before the hash tag
        for key in client.scan_iter(match=f"{{{name}}}:*"):
            client.rename(key, name.encode() + bytes(key)[len(name) + 2 :])
        with pytest.raises(walq.WalqError, match=f"prefix '{name}' is stored in the untagged"):
            RedisQueue.open(url)
        moved = migrate_untagged(url)
        assert moved >= 5 and not list(client.scan_iter(match=f"{name}:*"))
        with pytest.raises(walq.NotAQueueError):
            migrate_untagged(url)
    finally:
        client.close()
    with RedisQueue.open(url) as q:
        assert q.stats()["pending"] == 2
        job = q.claim()
        assert job is not None and job.id == jid and job.payload == {"n": 1}
        q.ack(job.id)


@pytest.mark.redis
def test_min_replicas_without_replicas_is_reported_and_every_change_fails_its_wait(
    single: tuple[str, str],
) -> None:
    """The durability check names the missing replicas; require_durable refuses; a
    change the replicas did not confirm is a BackendError, never a silent success."""
    from walq.redisq.queue import RedisQueue

    url, _ = single
    with pytest.warns(DurabilityWarning, match="min_replicas is 1 but the primary has 0"):
        q = RedisQueue.open(url + "&min_replicas=1&replica_timeout=0.2")
    try:
        assert q.persistence["replicas"] == "0" and q.persistence["min_replicas"] == "1"
        assert q.durable is False
        with pytest.raises(walq.BackendError, match=r"0 of 1 replicas confirmed it within 0\.2 s"):
            q.enqueue("t", 1)
    finally:
        q.close()
    with pytest.raises(walq.DurabilityError, match="min_replicas"):
        RedisQueue.open(url, min_replicas=1, require_durable=True)
    with pytest.raises(walq.ArgumentError, match="min_replicas"):
        RedisQueue.open(url, min_replicas=-1)


def test_min_replicas_on_a_cluster_is_refused() -> None:
    from walq.redisq.queue import RedisQueue

    with pytest.raises(walq.ArgumentError, match="not supported on a cluster"):
        RedisQueue.open("redis+cluster://127.0.0.1:1/?prefix=x", min_replicas=1)


@pytest.fixture
def sentinel_url() -> Iterator[str]:
    """A fresh queue on the Sentinel deployment's primary; its keys deleted after."""
    if REDIS_SKIPS["redis-sentinel"] is not None and not REDIS_REQUIRED:
        pytest.skip(REDIS_SKIPS["redis-sentinel"] or "")
    with sentinel.fresh_queue_url() as url:
        yield url


@pytest.mark.redis
def test_behind_sentinel_durable_needs_min_replicas(sentinel_url: str) -> None:
    """A failover may promote a replica without the last changes: without WAIT that is
    weaker than the guarantees, and require_durable says so; with min_replicas=1 it opens."""
    from walq.redisq.queue import RedisQueue

    with pytest.raises(walq.DurabilityError, match="behind Sentinel without min_replicas"):
        RedisQueue.open(sentinel_url, require_durable=True)
    with RedisQueue.open(sentinel_url + "&min_replicas=1", require_durable=True) as q:
        assert q.durable is True and q.persistence["deployment"] == "sentinel"
        jid = q.enqueue("t", 1)
        job = q.claim()
        assert job is not None and job.id == jid
        q.ack(jid)
