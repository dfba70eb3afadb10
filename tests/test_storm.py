"""The retry-storm simulation (benchmarks/storm.py) stays within its stated bounds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from walq.core.retry import CircuitBreaker, RetryBudget


def _load_storm() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "storm.py"
    spec = importlib.util.spec_from_file_location("walq_bench_storm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


storm = _load_storm()
SCENARIO = storm.Scenario()
LIMIT = SCENARIO.rate + SCENARIO.burst  # most calls the full policy's rate limit admits in 1 s
COOLDOWN = CircuitBreaker().cooldown
BUDGET = RetryBudget()


@pytest.fixture(scope="module")
def rows() -> dict[str, Any]:
    """One run of every policy in the default scenario, by name."""
    return {name: storm.simulate(name, SCENARIO) for name in storm.SETUPS}


class TestFullPolicy:
    """Backoff + budget + breaker (+ the task's rate limit)."""

    def test_peak_attempts_per_second_stay_within_the_configured_limit(
        self, rows: dict[str, Any]
    ) -> None:
        """No second of the run sees more attempts than the rate limit's rate + burst."""
        assert rows["full"].peak_per_second <= LIMIT

    def test_no_job_is_lost(self, rows: dict[str, Any]) -> None:
        """Every job eventually succeeds: the outage charges almost no attempts."""
        full = rows["full"]
        assert full.lost == 0 and full.done == SCENARIO.jobs

    def test_the_failing_downstream_is_left_alone(self, rows: dict[str, Any]) -> None:
        """While down: what was in flight when the breaker opened, then one probe per cooldown."""
        probes = SCENARIO.outage / COOLDOWN + 1
        assert rows["full"].attempts_while_down <= SCENARIO.slots + probes

    def test_drains_at_the_limit_right_after_recovery(self, rows: dict[str, Any]) -> None:
        """In the stated scenario the second probe lands just after recovery: backlog / rate."""
        assert rows["full"].drain <= SCENARIO.jobs / SCENARIO.rate + 1.0

    @pytest.mark.parametrize("outage", [10.0, 45.0, 61.0, 75.0, 100.0])
    def test_drains_within_one_cooldown_whatever_the_outage(self, outage: float) -> None:
        """Worst case, a probe just missed the recovery: one cooldown, then backlog / rate."""
        row = storm.simulate("full", storm.Scenario(outage=outage))
        assert row.lost == 0 and row.peak_per_second <= LIMIT
        assert row.drain <= COOLDOWN + SCENARIO.jobs / SCENARIO.rate + 1.0


class TestWithoutThePolicy:
    """What the policy prevents: these bounds fail if the policy does nothing."""

    def test_naive_retries_hammer_the_downstream_and_lose_every_job(
        self, rows: dict[str, Any]
    ) -> None:
        """Immediate retries: the peak far above the limit, max_attempts spent, all dead."""
        naive, full = rows["naive"], rows["full"]
        assert naive.peak_per_second > 3 * LIMIT
        assert naive.attempts_while_down > 500 * full.attempts_while_down
        assert naive.lost == SCENARIO.jobs

    def test_backoff_alone_still_storms_and_drains_slowly(self, rows: dict[str, Any]) -> None:
        """Backoff spreads the retries but still makes them, and pushes the drain out by minutes."""
        backoff, full = rows["backoff"], rows["full"]
        assert backoff.attempts_while_down > 5 * SCENARIO.jobs
        assert backoff.drain > 10 * full.drain

    def test_the_budget_alone_bounds_retries_and_drains_fast(self, rows: dict[str, Any]) -> None:
        """Budget without breaker: failing retries within ratio + floor; refunds drain fast."""
        budget = rows["budget"]
        retries_while_down = budget.attempts_while_down - SCENARIO.jobs
        ceiling = BUDGET.ratio * SCENARIO.jobs + BUDGET.floor * SCENARIO.outage + BUDGET.floor
        assert retries_while_down <= ceiling
        assert budget.lost == 0
        # At the floor's pace the backlog would take jobs / floor = 100 s.
        assert budget.drain < 0.3 * SCENARIO.jobs / BUDGET.floor


class TestSimulation:
    """The benchmark itself."""

    def test_same_seed_same_rows(self) -> None:
        """The simulated clock and seeded randomness make runs reproducible."""
        small = storm.Scenario(jobs=100, outage=5.0)
        assert storm.rows(small) == storm.rows(small)

    def test_table_prints_the_three_rows(self) -> None:
        """naive, backoff alone, and the full policy, with every measured column."""
        text = storm.table(storm.rows(storm.Scenario(jobs=50, outage=5.0)))
        assert "naive immediate retries" in text and "backoff alone" in text
        assert "backoff + budget + breaker" in text and "budget |" not in text
        assert "peak attempts/s" in text and "drain after recovery" in text and "lost" in text
