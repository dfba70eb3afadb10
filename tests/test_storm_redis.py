"""The storm simulation live on Redis: 3 owner processes, one queue. With the gates
shared on the server, the peak of attempts/s over all hosts is the task's configured
rate limit (plus its burst), not 3 times it; with each host's own gates it is about 3x."""

from __future__ import annotations

import attrs
import pytest

from tests.test_contract import REDIS_SKIP, SKIP_REDIS, need_redis, redis_url
from tests.test_storm import storm  # benchmarks/storm.py, loaded once


@pytest.mark.redis
@pytest.mark.skipif(SKIP_REDIS, reason=REDIS_SKIP or "")
def test_three_hosts_storm_no_harder_than_one_with_shared_gates() -> None:
    need_redis()
    url = redis_url()
    assert url is not None
    scenario = attrs.evolve(storm.LIVE, jobs=60)
    limit = scenario.rate + scenario.burst  # the most one host's gates admit in a second
    shared = storm.live(url, owners=3, scenario=scenario, shared=True)
    assert shared.done == 180 and shared.lost == 0
    assert shared.peak_per_second <= limit + 1, shared
    per_host = storm.live(url, owners=3, scenario=scenario, shared=False)
    assert per_host.done == 180
    assert per_host.peak_per_second > 1.5 * limit, per_host
