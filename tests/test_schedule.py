"""Periodic schedules, run_at and unique_for: the tick maths (pure) and the directory queue."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import walq
from walq.core import events as ev
from walq.core.jobspec import delay_until
from walq.core.schedule import (
    GRACE,
    MAX_CATCHUP,
    Every,
    TimeState,
    due,
    parse_tick_key,
    tick_key,
)
from walq.cron import Cron, cron, schedule
from walq.errors import ArgumentError

from .test_queue import FakeClock, open_q


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0


def at(*args: int, tz: ZoneInfo | timezone = timezone.utc) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[arg-type,misc]


def local(ts: float, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()


class TestEvery:
    """Ticks at whole multiples of the period since the epoch."""

    def test_ticks(self) -> None:
        """latest, before and after agree with each other."""
        table = Every(60.0)
        assert table.latest(125.0) == 120.0
        assert table.latest(120.0) == 120.0
        assert table.before(120.0) == 60.0
        assert table.after(120.0) == 180.0


class TestDue:
    """Which ticks are enqueued, by misfire policy."""

    table = Every(HOUR)
    noon = at(2026, 12, 4, 12)

    def test_first_sight_starts_at_the_newest_tick(self) -> None:
        """A new schedule runs the current tick only if it is on time, and records it."""
        assert due(self.table, None, self.noon + 5, "all").fire == (self.noon,)
        late = due(self.table, None, self.noon + 600, "all")
        assert late.fire == () and late.last == self.noon

    def test_nothing_due(self) -> None:
        """Between ticks nothing is due; a clock that went back changes nothing."""
        assert due(self.table, self.noon, self.noon + 100, "once").fire == ()
        assert due(self.table, self.noon, self.noon - 7200, "once").last == self.noon

    def test_on_time_tick_runs_under_every_policy(self) -> None:
        """The next tick, seen within GRACE, runs whatever the policy."""
        for misfire in ("skip", "once", "all"):
            d = due(self.table, self.noon, self.noon + HOUR + 1, misfire)
            assert d.fire == (self.noon + HOUR,) and d.skipped == 0

    def test_skip_after_downtime(self) -> None:
        """skip: missed ticks are not run; the schedule moves on to the newest."""
        d = due(self.table, self.noon, self.noon + 5 * HOUR + GRACE + 1, "skip")
        assert d.fire == () and d.last == self.noon + 5 * HOUR and d.skipped == 5

    def test_once_after_downtime(self) -> None:
        """once: one catch-up run, for the newest missed tick."""
        d = due(self.table, self.noon, self.noon + 5 * HOUR + 600, "once")
        assert d.fire == (self.noon + 5 * HOUR,) and d.skipped == 4

    def test_all_after_downtime(self) -> None:
        """all: every missed tick, oldest first."""
        d = due(self.table, self.noon, self.noon + 3 * HOUR + 600, "all")
        assert d.fire == (self.noon + HOUR, self.noon + 2 * HOUR, self.noon + 3 * HOUR)

    def test_all_is_bounded(self) -> None:
        """all: at most MAX_CATCHUP ticks, the newest; the rest are counted as skipped."""
        d = due(Every(60.0), 0.0, 60.0 * (MAX_CATCHUP + 50), "all")
        assert len(d.fire) == MAX_CATCHUP
        assert d.fire[-1] == 60.0 * (MAX_CATCHUP + 50)
        assert d.skipped == 50

    def test_all_is_bounded_for_cron(self) -> None:
        """The bound holds for a cron timetable too (counted up to the bound)."""
        d = due(cron("* * * * *"), 0.0, 60.0 * (3 * MAX_CATCHUP), "all")
        assert len(d.fire) == MAX_CATCHUP and d.skipped >= 1


class TestCronDst:
    """Cron ticks across daylight-saving changes (Europe/Berlin, 2026)."""

    def test_daily_job_runs_once_on_fall_back_night(self) -> None:
        """02:30 happens twice on 25 October; the job runs once."""
        table = cron("30 2 * * *", "Europe/Berlin")
        t = table.latest(at(2026, 10, 27, 12))
        ticks = []
        while t is not None and t > at(2026, 10, 23, 12):
            ticks.append(local(t))
            t = table.before(t)
        assert ticks == [
            "2026-10-27T02:30:00+01:00",
            "2026-10-26T02:30:00+01:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-24T02:30:00+02:00",
        ]

    def test_skipped_time_runs_once_after_the_gap(self) -> None:
        """02:30 does not exist on 29 March: the job runs at 03:00 that day."""
        table = cron("30 2 * * *", "Europe/Berlin")
        nxt = table.after(at(2026, 3, 28, 12))
        assert nxt is not None and local(nxt) == "2026-03-29T03:00:00+02:00"
        nxt = table.after(nxt)
        assert nxt is not None and local(nxt) == "2026-03-30T02:30:00+02:00"

    def test_hourly_ticks_are_real_hours_across_fall_back(self) -> None:
        """An hourly schedule ticks every real hour, both 02:00s included."""
        table = cron("0 * * * *", "Europe/Berlin")
        start = at(2026, 10, 24, 23)  # 01:00 local, summer time
        ticks = []
        t = table.after(start)
        for _ in range(4):
            assert t is not None
            ticks.append(t)
            t = table.after(t)
        assert [b - a for a, b in itertools.pairwise(ticks)] == [HOUR] * 3

    def test_due_over_the_dst_change_with_all(self) -> None:
        """misfire=all over a fall-back night of downtime: each real hour once."""
        table = cron("0 * * * *", "Europe/Berlin")
        last = at(2026, 10, 24, 22)  # 00:00 local, summer time
        d = due(table, last, last + 5 * HOUR + 1, "all")
        assert len(d.fire) == 5 and len(set(d.fire)) == 5

    def test_bad_cron_and_zone(self) -> None:
        """A bad expression or zone is one line naming it."""
        with pytest.raises(ArgumentError, match="bad cron expression"):
            cron("61 * * * *")
        with pytest.raises(ArgumentError, match="unknown time zone"):
            cron("* * * * *", "Mars/Olympus")
        assert isinstance(cron("* * * * *"), Cron)


class TestTickKey:
    """A tick's job key names the schedule and the tick, and reads back."""

    def test_round_trip(self) -> None:
        key = tick_key("report:daily", at(2026, 12, 4, 12))
        assert key == "schedule:report:daily@2026-12-04T12:00:00Z"
        assert parse_tick_key(key) == ("report:daily", at(2026, 12, 4, 12))
        assert parse_tick_key("email:42") is None
        assert parse_tick_key("schedule:x@not-a-time") is None


class TestScheduleArgs:
    """periodic()'s arguments are checked when registered."""

    @pytest.mark.parametrize(
        ("kw", "match"),
        [
            ({}, "exactly one of cron= and every="),
            ({"every": 60, "cron": "* * * * *"}, "exactly one"),
            ({"every": 0.5}, "every must be"),
            ({"every": True}, "every must be"),
            ({"every": 60, "misfire": "later"}, "misfire must be one of"),
            ({"every": 60, "payload": object()}, "payload"),
        ],
    )
    def test_refused(self, kw: dict[str, object], match: str) -> None:
        with pytest.raises(walq.WalqError, match=match):
            schedule("s", "t", **kw)  # type: ignore[arg-type]

    def test_tasks_periodic(self) -> None:
        """The decorator registers the task and the schedule; a name is registered once."""
        tasks = walq.Tasks()

        @tasks.periodic("tick", every=60)
        def tick(payload: object, job: walq.Job) -> None: ...

        assert "tick" in tasks and [s.name for s in tasks.schedules()] == ["tick"]
        with pytest.raises(ArgumentError, match="already registered"):
            tasks.periodic("tick", every=60)


class TestRunAt:
    """run_at= is an aware datetime; naive ones are refused."""

    def test_delay_until(self) -> None:
        now = at(2026, 12, 4, 12)
        assert delay_until(datetime(2026, 12, 4, 13, tzinfo=timezone.utc), now) == HOUR
        assert delay_until(datetime(2026, 12, 4, 11, tzinfo=timezone.utc), now) == 0.0
        with pytest.raises(ArgumentError, match="aware datetime"):
            delay_until(datetime(2026, 12, 4, 13), now)
        with pytest.raises(ArgumentError, match="datetime"):
            delay_until(1234.0, now)
        with pytest.raises(ArgumentError, match="at most"):
            delay_until(datetime(2100, 1, 1, tzinfo=timezone.utc), now)

    def test_enqueue_run_at(self, tmp_path: Path) -> None:
        with open_q(str(tmp_path / "q")) as q:
            soon = datetime.now(timezone.utc) + timedelta(hours=1)
            assert q.status(q.enqueue("t", run_at=soon)) == "scheduled"
            past = datetime.now(timezone.utc) - timedelta(hours=1)
            assert q.status(q.enqueue("t", run_at=past)) == "pending"
            with pytest.raises(ArgumentError, match="naive"):
                q.enqueue("t", run_at=datetime(2030, 1, 1))
            with pytest.raises(ArgumentError, match="not both"):
                q.enqueue("t", run_at=soon, delay=5.0)


class TestTimeState:
    """The records' state: schedules never move back; kept keys expire."""

    def test_schedule_never_moves_back(self) -> None:
        s = TimeState()
        s.apply(ev.Schedule(name="a", last=200.0, spec="{}"), 0.0)
        s.apply(ev.Schedule(name="a", last=100.0, spec="{}"), 0.0)
        assert s.last_tick("a") == 200.0

    def test_kept_keys_expire(self) -> None:
        s = TimeState()
        s.apply(ev.Keep(id=7, key="k", until=100.0), 50.0)
        assert s.holder("k", 99.0) == 7
        assert s.holder("k", 100.0) is None and not s.kept
        s.apply(ev.Keep(id=8, key="old", until=10.0), 50.0)  # already past: not kept
        assert not s.kept
        s.keep("a", 1, 60.0, 50.0)
        s.keep("b", 2, 200.0, 70.0)  # adding expires what is past
        assert list(s.kept) == ["b"]


def every_minute(name: str = "rep", misfire: str = "once") -> walq.core.schedule.Schedule:
    return schedule(name, "report", every=60, payload={"n": 1}, misfire=misfire)


class TestDirectory:
    """fire_schedule and unique_for on a directory queue, with a fake clock."""

    def test_ticks_enqueued_once_and_durable(self, tmp_path: Path, clock: FakeClock) -> None:
        """Each tick is one job with the tick's key; the last tick survives reopen."""
        path = str(tmp_path / "q")
        clock.wall = at(2026, 12, 4, 12) + 1
        sched = every_minute()
        with open_q(path, clock) as q:
            first = q.fire_schedule(sched)
            assert len(first) == 1 and q.fire_schedule(sched) == []
            job = q.claim()
            assert job is not None
            assert job.key == tick_key("rep", at(2026, 12, 4, 12))
            assert job.task == "report" and job.payload == {"n": 1}
            q.ack(job.id)
            clock.advance(60)
            assert len(q.fire_schedule(sched)) == 1
        with open_q(path, clock) as q:
            assert q.fire_schedule(sched) == []
            rows = q.schedules()
            assert [(r["name"], r["last"]) for r in rows] == [("rep", at(2026, 12, 4, 12, 1))]

    @pytest.mark.parametrize(("misfire", "runs"), [("skip", 0), ("once", 1), ("all", 10)])
    def test_misfire_after_downtime(
        self, tmp_path: Path, clock: FakeClock, misfire: str, runs: int
    ) -> None:
        """Ten minutes down: skip runs none of the missed ticks, once one, all ten."""
        path = str(tmp_path / "q")
        clock.wall = at(2026, 12, 4, 12) + 1
        sched = every_minute(misfire=misfire)
        with open_q(path, clock) as q:
            assert len(q.fire_schedule(sched)) == 1
        clock.advance(600 + GRACE + 1)
        with open_q(path, clock) as q:
            before = q.stats()["pending"]
            assert len(q.fire_schedule(sched)) == runs
            assert q.stats()["pending"] == before + runs
            assert q.fire_schedule(sched) == []

    def test_compaction_carries_schedules_and_kept_keys(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """After a compaction drops the tick's records, the schedule and a kept key remain."""
        path = str(tmp_path / "q")
        clock.wall = at(2026, 12, 4, 12) + 1
        with open_q(path, clock, segment_size=4096, compaction=False) as q:
            (tick,) = q.fire_schedule(every_minute())
            jid = q.enqueue("email", b"x", key="welcome:1", unique_for=HOUR)
            for _ in range(2):
                job = q.claim()
                assert job is not None
                q.ack(job.id)
            for _ in range(100):  # fill segments, so that the ticks' is sealed
                q.enqueue("pad", b"p" * 64)
                q.ack(q.claim_many(1)[0].id)
            result = q.compact()
            assert result.segments_in >= 2 and result.jobs == 0
        with open_q(path, clock) as q:
            assert q.status(tick) == "done"
            assert q.schedules()[0]["last"] == at(2026, 12, 4, 12)
            assert q.enqueue("email", b"y", key="welcome:1") == jid
            assert q.fire_schedule(every_minute()) == []

    def test_unique_for(self, tmp_path: Path, clock: FakeClock) -> None:
        """A done job's key is remembered for unique_for seconds, across reopen, then forgotten."""
        path = str(tmp_path / "q")
        with open_q(path, clock) as q:
            jid = q.enqueue("email", b"x", key="k", unique_for=100.0)
            job = q.claim()
            assert job is not None
            q.ack(job.id)
            assert q.status(jid) == "done"
            assert q.enqueue("email", b"again", key="k") == jid
            other = q.enqueue("email", b"x", key="plain")
            q.ack(q.claim_many(1)[0].id)
            assert q.enqueue("email", b"x", key="plain") != other  # no unique_for: not kept
        clock.advance(50)
        with open_q(path, clock) as q:
            assert q.enqueue("email", b"again", key="k") == jid
        clock.advance(51)
        with open_q(path, clock) as q:
            assert q.enqueue("email", b"again", key="k") != jid

    def test_unique_for_needs_a_key(self, tmp_path: Path) -> None:
        with open_q(str(tmp_path / "q")) as q:
            with pytest.raises(ArgumentError, match="needs a key"):
                q.enqueue("t", unique_for=10.0)
            with pytest.raises(ArgumentError, match="unique_for"):
                q.enqueue("t", key="k", unique_for=-1.0)

    def test_torn_schedule_record_is_repaired_from_the_tick_key(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """An enqueue that survived without its schedule record still counts as the tick."""
        path = str(tmp_path / "q")
        clock.wall = at(2026, 12, 4, 12) + 1
        with open_q(path, clock) as q:
            q.fire_schedule(every_minute())
            clock.advance(60)
            # What a crash between the two records of a firing leaves: the enqueue only.
            q.enqueue("report", {"n": 1}, key=tick_key("rep", at(2026, 12, 4, 12, 1)))
        with open_q(path, clock) as q:
            assert q.schedules()[0]["last"] == at(2026, 12, 4, 12, 1)
            assert q.fire_schedule(every_minute()) == []


def test_walq_schedules_lists_last_and_next_tick(tmp_path: Path) -> None:
    """`walq schedules DIR`: each schedule with its timetable, last and next tick; --json too."""
    import json

    from click.testing import CliRunner

    from walq.cli import main

    path = str(tmp_path / "q")
    runner = CliRunner()
    assert runner.invoke(main, ["schedules", path]).exit_code == 2  # no queue there
    with walq.Queue.open(path) as q:
        q.fire_schedule(schedule("nightly", "report", cron="30 2 * * *", tz="Europe/Berlin"))
        q.fire_schedule(schedule("beat", "beat", every=60, misfire="all"))
        result = runner.invoke(main, ["schedules", path])  # beside the running owner
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("beat: every 60 s, task beat, misfire=all; last tick ")
    assert lines[1].startswith("nightly: cron '30 2 * * *' (Europe/Berlin), task report")
    rows = [
        json.loads(line)
        for line in runner.invoke(main, ["schedules", "--json", path]).output.splitlines()
    ]
    assert rows[0]["next"] == rows[0]["last"] + 60 and not rows[0]["overdue"]
    assert rows[1]["next"] - rows[1]["last"] in (23 * HOUR, 24 * HOUR, 25 * HOUR)


def test_a_checkpoint_carries_schedules_and_kept_keys(tmp_path: Path, clock: FakeClock) -> None:
    """Opened from a checkpoint, the queue still knows the last tick and the kept key."""
    path = str(tmp_path / "q")
    clock.wall = at(2026, 12, 4, 12) + 1
    with open_q(path, clock) as q:
        q.fire_schedule(every_minute())
        jid = q.enqueue("email", b"x", key="welcome:1", unique_for=HOUR)
        for _ in range(2):
            job = q.claim()
            assert job is not None
            q.ack(job.id)
        assert q.write_checkpoint() is not None
    with open_q(path, clock) as q:
        assert q.schedules()[0]["last"] == at(2026, 12, 4, 12)
        assert q.enqueue("email", b"y", key="welcome:1") == jid
        assert q.fire_schedule(every_minute()) == []


def test_a_copy_with_shared_policies_keeps_the_schedules() -> None:
    """Tasks.with_policies (a worker on a server shares its gates) keeps every schedule."""
    tasks = walq.Tasks()

    @tasks.periodic("tick", every=60)
    def tick(payload: object, job: walq.Job) -> None: ...

    copy = tasks.with_policies(lambda t: t.policy)
    assert [s.name for s in copy.schedules()] == ["tick"]
