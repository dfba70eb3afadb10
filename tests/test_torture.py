"""Kill -9 torture (tools/torture.py): the ledger audit, bounded runs, and a planted bug."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import pytest

from tests import procs
from tools import torture
from tools.torture import Options, audit_ledger


def assert_no_strays(marker: str) -> None:
    deadline = time.monotonic() + 5
    while procs.naming(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not procs.naming(marker)


# -- the audit ------------------------------------------------------------------------------

CLEAN = [
    "start 0 100 0",
    "intent c0n0",
    "enqueued 1 c0n0",
    "intent c0n1",
    "enqueued 2 c0n1",
    "raised 2 1 c0n1",
    "ran 1 1 c0n0 7",
    "acked 1 1",
    "ran 2 2 c0n1 7",
    "acked 2 2",
]


def test_a_clean_ledger_has_no_violation() -> None:
    """Enqueued, ran (one after a planned failure), acked: nothing to report."""
    audit = audit_ledger(CLEAN)
    assert audit.violations == 0 and audit.jobs == 2 and audit.runs == 2
    assert audit.duplicates == 0 and audit.acked == 2


def test_a_job_that_never_ran_is_lost() -> None:
    """A confirmed enqueue with no run is lost."""
    audit = audit_ledger([*CLEAN, "intent c0n2", "enqueued 3 c0n2"])
    assert audit.lost == 1 and audit.violations == 1


def test_a_run_nobody_enqueued_is_a_phantom() -> None:
    """A run of an unknown payload, or of a payload under another job's id, is a phantom."""
    assert audit_ledger([*CLEAN, "ran 9 1 c9n9 7"]).phantoms == 1
    assert audit_ledger([*CLEAN, "ran 1 2 c0n1 7"]).phantoms == 1


def test_a_rerun_before_the_ack_was_durable_is_a_duplicate_not_a_violation() -> None:
    """At-least-once: a run again after a kill is counted, not reported."""
    lines = [*CLEAN[:6], "ran 1 1 c0n0 7", "start 1 101 0", "ran 1 2 c0n0 8", *CLEAN[7:]]
    audit = audit_ledger(lines)
    assert audit.duplicates == 1 and audit.violations == 0


def test_a_run_after_a_durable_ack_is_a_redelivery() -> None:
    """Guarantee 3: once an ack is durable, the job never runs again."""
    audit = audit_ledger([*CLEAN, "start 1 101 0", "ran 1 2 c0n0 8"])
    assert audit.redelivered_after_ack == 1 and audit.duplicates == 1


def test_a_rerun_with_the_same_attempt_number_breaks_durable_starts() -> None:
    """Guarantee 5: a start is durable before the handler runs, so attempts only grow."""
    audit = audit_ledger([*CLEAN[:7], "start 1 101 0", "ran 1 1 c0n0 8"])
    assert audit.attempt_reused == 1


def test_an_unconfirmed_enqueue_may_run() -> None:
    """An intent whose enqueue was never confirmed (killed in between) may still run."""
    audit = audit_ledger([*CLEAN, "intent c0n2", "ran 3 1 c0n2 7"])
    assert audit.violations == 0 and audit.unconfirmed_ran == 1


def test_a_tick_run_under_two_job_ids_was_enqueued_twice() -> None:
    """The schedule in the mix: one job id per tick key, else tick-twice (at once)."""
    ticks = [
        "tick 3 1 schedule:beat@2026-12-04T12:00:00Z",
        "tick 3 2 schedule:beat@2026-12-04T12:00:00Z",  # a rerun of the same job: fine
        "tick 4 1 schedule:beat@2026-12-04T12:00:01Z",
    ]
    audit = audit_ledger([*CLEAN, *ticks], final=True)
    assert audit.violations == 0 and audit.ticks == 2
    twice = audit_ledger([*CLEAN, *ticks, "tick 9 1 schedule:beat@2026-12-04T12:00:01Z"])
    assert twice.tick_twice == 1 and twice.violations == 1


def test_a_tick_missing_between_the_first_and_last_is_lost_once_drained() -> None:
    """A gap in the ticks that ran is tick-lost, in the final audit only."""
    ticks = [
        "tick 3 1 schedule:beat@2026-12-04T12:00:00Z",
        "tick 5 1 schedule:beat@2026-12-04T12:00:02Z",
    ]
    assert audit_ledger([*CLEAN, *ticks]).tick_lost == 0  # it may not have run yet
    assert audit_ledger([*CLEAN, *ticks], final=True).tick_lost == 1


def test_a_spooled_job_is_followed_by_its_nonce() -> None:
    """An outside producer's spooled job has no id until ingested: it is matched by payload."""
    lines = [*CLEAN, "intent p0n0", "enqueued - p0n0", "ran 3 1 p0n0 9"]
    assert audit_ledger(lines).violations == 0
    assert audit_ledger([*CLEAN, "intent p0n0", "enqueued - p0n0"]).lost == 1
    # a request the owner enqueued but could not answer, sent again: twice, at-least-once
    twice = audit_ledger([*lines, "ran 4 1 p0n0 9"])
    assert twice.duplicates == 1 and twice.violations == 0


FLOW = [
    *CLEAN,
    "intent c0n5",
    "enqueued 5 c0n5",
    "intent c0n5.d",
    "enqueued 6 c0n5.d",
    "after 6 5",
    "intent c0n5.f",
    "outbox 5 1 c0n5.f",
    "ran 5 1 c0n5 7",
    "acked 5 1",
    "child 5 7 c0n5.f",
    "ran 7 1 c0n5.f 7",
    "ran 6 1 c0n5.d 7",
]


def test_follow_up_jobs_and_dependents_in_a_clean_ledger() -> None:
    """A follow-up job runs after its parent's run; the dependent after its parent."""
    audit = audit_ledger(FLOW)
    assert audit.violations == 0, audit.examples
    assert audit.outbox_jobs == 1 and audit.dependents == 1


def test_a_follow_up_job_missing_after_its_parents_durable_ack_is_lost() -> None:
    audit = audit_ledger([line for line in FLOW if "c0n5.f 7" not in line])
    assert audit.lost == 1


def test_a_follow_up_job_added_twice_or_before_its_parent_ran_is_reported() -> None:
    """Exactly once: one committed ack adds the follow-up job once, never ahead of the run."""
    assert audit_ledger([*FLOW, "child 5 8 c0n5.f", "ran 8 1 c0n5.f 7"]).outbox_duplicated == 1
    early = [*FLOW[:12], "child 5 7 c0n5.f", "ran 7 1 c0n5.f 7", *FLOW[12:]]
    assert audit_ledger(early).outbox_early >= 1


def test_a_dependent_that_ran_before_its_parent_is_reported() -> None:
    early = [*FLOW[:15], "ran 6 1 c0n5.d 7", *FLOW[15:]]
    assert audit_ledger(early).dependent_early >= 1
    assert audit_ledger([*FLOW, "early 6 5 None"]).dependent_early == 1


# -- real owners, really killed ------------------------------------------------------------------


def test_a_bounded_torture_run_breaks_no_guarantee(tmp_path: Path) -> None:
    """About 25 s of kill -9 cycles with compactions under way: nothing lost or redelivered."""
    work = tmp_path / "torture"
    audit = torture.torture(Options(duration=25.0, seed=7, directory=str(work)))
    assert audit.violations == 0, audit.examples
    assert audit.cycles >= 10 and audit.jobs >= 100
    assert_no_strays(str(work))


def test_a_bounded_flow_run_breaks_no_guarantee(tmp_path: Path) -> None:
    """Kill -9 cycles long enough for handlers to ack with follow-up jobs and for
    dependents to wait on their parents: none early, none twice, none lost."""
    work = tmp_path / "torture"
    opts = Options(duration=25.0, seed=7, directory=str(work), flow_percent=40.0,
                   kill_min=2.0, kill_max=5.0)  # fmt: skip
    audit = torture.torture(opts)
    assert audit.violations == 0, audit.examples
    assert audit.outbox_jobs >= 1 and audit.dependents >= 1
    assert_no_strays(str(work))


def test_schedule_ticks_survive_kill_cycles(tmp_path: Path) -> None:
    """Owners that live long enough to fire their schedule, killed -9: no tick twice or lost."""
    work = tmp_path / "torture"
    options = Options(duration=30.0, seed=9, kill_min=1.0, kill_max=4.0, directory=str(work))
    audit = torture.torture(options)
    assert audit.violations == 0, audit.examples
    assert audit.ticks >= 3 and audit.cycles >= 4
    assert_no_strays(str(work))


def test_sync_never_without_compaction_loses_nothing_to_kill_9(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sync="never" still reaches the kernel before returning: kill -9 loses nothing (CLI, JSON)."""
    work = tmp_path / "torture"
    argv = ["--duration", "10", "--seed", "8", "--sync", "never", "--compaction", "off"]
    assert torture.main([*argv, "--json", "--dir", str(work)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["violations"] == 0, summary["examples"]
    assert summary["cycles"] >= 4 and summary["jobs"] > 0
    for name in ("lost", "phantoms", "duplicates", "redelivered-after-ack"):
        assert name in summary
    assert_no_strays(str(work))


def test_a_planted_forgotten_ack_is_reported_within_the_duration(tmp_path: Path) -> None:
    """With acks forgotten (planted), acked jobs come back: the tool says so, in time."""
    work = tmp_path / "torture"
    started = time.monotonic()
    audit = torture.torture(Options(duration=20.0, seed=9, plant="forget-ack", directory=str(work)))
    assert audit.redelivered_after_ack > 0
    assert audit.violations > 0
    # within the run's duration, give or take a loaded machine (not a 180 s drain)
    assert time.monotonic() - started < 20.0 + 15.0
    assert_no_strays(str(work))


def test_scratch_directories_go_to_the_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the current directory, where an interrupted run would leave them behind."""
    scratch, here = tmp_path / "tmp", tmp_path / "here"
    scratch.mkdir()
    here.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(here)
    torture.torture(Options(duration=1.0, seed=10, producers=0, keep=True))
    assert list(here.iterdir()) == []
    (made,) = scratch.iterdir()
    assert made.name.startswith("walq-torture-") and (made / "ledger").exists()
    assert_no_strays(str(made))


# -- the dispatcher modes -------------------------------------------------------------------


def test_a_handler_that_began_and_never_ended_is_killed_in_a_drain() -> None:
    """Only when no owner was killed (group-sigterm): then every begin has its end."""
    lines = [*CLEAN[:5], "begin 1 1 c0n0", "begin 2 1 c0n1", "raised 2 1 c0n1",
             "begin 2 2 c0n1", "ran 2 2 c0n1 7"]  # fmt: skip
    assert audit_ledger(lines, drained=True).killed_in_drain == 1
    assert audit_ledger(lines).killed_in_drain == 0  # a kill -9 may cut a handler short
    assert audit_ledger([*lines, "ran 1 1 c0n0 7"], drained=True).killed_in_drain == 0


def test_recorded_timeouts_are_counted_from_the_owner_log() -> None:
    audit = torture.Audit()
    torture.count_timeouts(
        "x walq.worker WARNING job 9 (work_timed) attempt 2 failed (timeout): handler exceeded"
        "\nx walq.worker WARNING job 8 (work) attempt 1 failed (exception): boom\n",
        audit,
    )
    assert audit.timeouts == 1 and audit.violations == 1 and "job 9" in audit.examples[0]


def mode_options(mode: str, **kw: object) -> Options:
    return Options(mode=mode, **{**torture.mode_defaults(mode), **kw})  # type: ignore[arg-type]


def planted_run(
    tmp_path: Path, mode: str, plant: str, *, duration: float, seed: int
) -> torture.Audit:
    """A run of `mode` with `plant`ed: it ends within its duration, give or take a
    loaded machine (not a drain's grace period), and leaves no process behind."""
    work = tmp_path / "torture"
    started = time.monotonic()
    options = mode_options(mode, duration=duration, seed=seed, plant=plant, directory=str(work))
    audit = torture.torture(options)
    assert time.monotonic() - started < duration + 15.0
    assert_no_strays(str(work))
    return audit


def test_group_sigterm_mode_drains_every_cycle(tmp_path: Path) -> None:
    """Each cycle ends with SIGTERM to the owner's process group: every handler finishes,
    every owner exits 0, nothing is lost."""
    work = tmp_path / "torture"
    audit = torture.torture(
        mode_options("group-sigterm", duration=25.0, seed=11, directory=str(work))
    )
    assert audit.violations == 0, audit.examples
    assert audit.cycles >= 3 and audit.runs > 0
    assert_no_strays(str(work))


def test_group_sigterm_mode_reports_workers_that_die_of_it(tmp_path: Path) -> None:
    audit = planted_run(tmp_path, "group-sigterm", "die-on-group-sigterm", duration=25.0, seed=12)
    assert audit.killed_in_drain > 0, audit.examples


def test_slow_import_mode_records_no_timeout(tmp_path: Path) -> None:
    """The task module imports slower than the task's timeout; handlers stay well within it."""
    work = tmp_path / "torture"
    audit = torture.torture(
        mode_options("slow-import", duration=30.0, seed=13, directory=str(work))
    )
    assert audit.violations == 0, audit.examples
    assert audit.runs > 0
    assert_no_strays(str(work))


def test_slow_import_mode_reports_a_timeout_clock_started_at_dispatch(tmp_path: Path) -> None:
    audit = planted_run(tmp_path, "slow-import", "timeout-from-dispatch", duration=30.0, seed=14)
    assert audit.timeouts > 0, audit.examples


def test_async_mode_breaks_no_guarantee(tmp_path: Path) -> None:
    """Coroutine handlers many at once, asyncio producers (AsyncQueue in the owner, aconnect
    outside), kill -9 cycles: nothing lost or redelivered, and both producers' jobs ran."""
    work = tmp_path / "torture"
    audit = torture.torture(mode_options("async", duration=25.0, seed=15, directory=str(work)))
    assert audit.violations == 0, audit.examples
    assert audit.cycles >= 3 and audit.runs > 0
    ran = [line.split()[3] for line in (work / "ledger").read_text().splitlines()
           if line.startswith("ran ")]  # fmt: skip
    assert any(re.fullmatch(r"p\d+a\d+n\d+", nonce) for nonce in ran)  # through aconnect
    assert any(re.fullmatch(r"c\d+a\d+n\d+", nonce) for nonce in ran)  # through AsyncQueue
    assert_no_strays(str(work))


def test_async_mode_reports_a_planted_forgotten_ack(tmp_path: Path) -> None:
    audit = planted_run(tmp_path, "async", "forget-ack", duration=20.0, seed=16)
    assert audit.redelivered_after_ack > 0, audit.examples


@pytest.mark.slow
def test_a_thousand_kill_cycles(tmp_path: Path) -> None:
    """The long run (--runslow): 1,000 kill cycles."""
    work = tmp_path / "torture"
    audit = torture.torture(
        Options(cycles=1000, duration=float("inf"), seed=1000, directory=str(work))
    )
    assert audit.cycles == 1000
    assert audit.violations == 0, audit.examples


@pytest.mark.parametrize(
    "script", ["tools/torture.py", "tools/torture_redis.py", "tools/reliability.py"]
)
def test_the_tools_run_as_scripts_from_anywhere(script: str, tmp_path: Path) -> None:
    """README runs them as `python tools/X.py`: `tools` is then not an importable package
    unless the script makes it one (a top-level import of a sibling module broke this)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, str(root / script), "--help"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout
