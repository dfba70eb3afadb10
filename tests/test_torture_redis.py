"""The two-owner Redis torture (tools/torture_redis.py): its audit, a bounded run, a planted bug.

The runs start their own redis-server (a free loopback port, a temporary
directory), so they need the redis-server binary and redis-py, not WALQ_REDIS_URL.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_contract import REDIS_REQUIRED
from tests.test_torture import assert_no_strays
from tools import torture, torture_redis
from tools.torture_redis import Audit, Options, audit_ledger


def _skip_reason() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (bash .ci/redis.sh start installs it)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install 'walq[redis]')"
    return None


SKIP = _skip_reason()

# -- the audit (pure) --------------------------------------------------------------------------

CLEAN = [
    "enq 1 0.0",
    "enq 2 0.0",
    "start 1 1 a1 1.0",
    "start 2 1 b2 1.0",
    "killed a1 2.0",
    "back 1 a1 7.5",
    "end 2 1 b2 3.0",
    "start 1 2 b2 8.0",
    "end 1 2 b2 9.0",
]


def test_a_clean_ledger_has_no_violation() -> None:
    """A run cut by a kill, rescued within 2 leases and run again elsewhere: no violation."""
    audit = audit_ledger(CLEAN, lease=6.0, done={1, 2}, audit=Audit())
    assert audit.violations == 0, audit.examples
    assert audit.jobs == 2 and audit.runs == 3 and audit.rescued == 1
    assert audit.worst_rescue == pytest.approx(5.5)


def test_the_audit_finds_each_violation() -> None:
    """Overlapping runs, a late rescue and a job never done are each reported."""
    overlap = [*CLEAN, "enq 3 0.0", "start 3 1 a1 1.0", "start 3 2 b2 1.5", "end 3 2 b2 1.8"]
    audit = audit_ledger(overlap, lease=6.0, done={1, 2, 3}, audit=Audit())
    assert audit.overlap == 1 and audit.violations == 1, audit.examples
    late = [line.replace("back 1 a1 7.5", "back 1 a1 20.0") for line in CLEAN]
    late = [line for line in late if not line.startswith(("start 1 2", "end 1 2"))]
    audit = audit_ledger(late, lease=6.0, done={1, 2}, audit=Audit())
    assert audit.late_rescue == 1, audit.examples
    audit = audit_ledger(CLEAN, lease=6.0, done={2}, audit=Audit())
    assert audit.lost == 1, audit.examples


# Flow and ticks: the lines of tools/flow_audit.py, timed as the Redis ledger writes them.
FLOW = [
    "enq 5 0.0",
    "enq 6 0.0",
    "after 6 5 0.0",
    "start 5 1 a1 1.0",
    "outbox 5 1 n5.f 1.5",
    "end 5 1 a1 1.6",
    "acked 5 1 1.7",
    "start 7 1 b2 2.0",
    "child 5 7 n5.f 2.1",
    "end 7 1 b2 2.2",
    "start 6 1 b2 2.0",
    "end 6 1 b2 2.3",
    "tick 8 1 schedule:beat@2026-12-04T12:00:00Z 3.0",
    "tick 9 1 schedule:beat@2026-12-04T12:00:01Z 4.0",
]


def test_the_flow_checks_are_the_directory_tortures() -> None:
    """Follow-up jobs, dependents and ticks are checked by tools/flow_audit.py, as in
    tools/torture.py: a clean ledger passes and each fault is reported."""
    audit = audit_ledger(FLOW, lease=6.0, done={5, 6}, audit=Audit())
    assert audit.violations == 0, audit.examples
    assert (audit.outbox_jobs, audit.dependents, audit.ticks) == (1, 1, 2)
    lost = [line for line in FLOW if "n5.f" not in line or line.startswith("outbox")]
    assert audit_ledger(lost, lease=6.0, done={5, 6}, audit=Audit()).lost == 1
    twice = [*FLOW, "start 10 1 a1 5.0", "child 5 10 n5.f 5.1", "end 10 1 a1 5.2"]
    assert audit_ledger(twice, lease=6.0, done={5, 6}, audit=Audit()).outbox_duplicated == 1
    early = [*FLOW[:4], "start 7 1 b2 1.2", "child 5 7 n5.f 1.3", *FLOW[4:]]
    assert audit_ledger(early, lease=6.0, done={5, 6}, audit=Audit()).outbox_early == 1
    before = [*FLOW[:4], "start 6 1 b2 1.1", "end 6 1 b2 1.2", *FLOW[4:]]
    assert audit_ledger(before, lease=6.0, done={5, 6}, audit=Audit()).dependent_early == 1
    tick = [*FLOW, "tick 11 1 schedule:beat@2026-12-04T12:00:01Z 5.0"]
    assert audit_ledger(tick, lease=6.0, done={5, 6}, audit=Audit()).tick_twice == 1
    gap = [*FLOW, "tick 12 1 schedule:beat@2026-12-04T12:00:03Z 6.0"]
    assert audit_ledger(gap, lease=6.0, done={5, 6}, audit=Audit()).tick_lost == 1


# -- real runs -----------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.skipif(SKIP is not None and not REDIS_REQUIRED, reason=SKIP or "")
def test_a_bounded_two_owner_run_is_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two hosts, one killed -9 and replaced, the server killed and restarted: no violation,
    with schedules, follow-up jobs and dependents in the mix."""
    work = tmp_path / "torture"
    argv = ["--mode", "redis", "--duration", "36", "--kill-every", "8", "--seed", "3",
            "--flow-percent", "40"]  # fmt: skip
    assert torture.main([*argv, "--json", "--dir", str(work)]) == 0, capsys.readouterr().out
    summary = json.loads(capsys.readouterr().out)
    assert summary["violations"] == 0, summary["examples"]
    assert summary["owner-kills"] >= 1 and summary["server-restarts"] >= 1, summary
    assert summary["jobs"] > 0 and summary["rescued"] >= 1, summary
    assert summary["ticks"] >= 20 and summary["outbox-jobs"] >= 1, summary
    assert summary["dependents"] >= 1, summary
    assert_no_strays(str(work))


@pytest.mark.redis
@pytest.mark.skipif(SKIP is not None and not REDIS_REQUIRED, reason=SKIP or "")
def test_a_planted_missing_heartbeat_is_reported(tmp_path: Path) -> None:
    """With the lease heartbeat off (planted), long jobs run on two hosts at once: reported."""
    work = tmp_path / "torture"
    # Fewer jobs than worker processes: a lease that runs out is taken at once elsewhere.
    opts = Options(
        duration=15.0, seed=4, lease=1.5, work_min=3.0, work_max=5.0, kill_every=60.0,
        backlog=2, plant="heartbeat-off", drain_timeout=5.0, directory=str(work),
    )  # fmt: skip
    audit = torture_redis.torture(opts)
    assert audit.overlap > 0, audit.summary()
    assert audit.violations > 0
    assert_no_strays(str(work))
