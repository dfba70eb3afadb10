"""`walq ui` without a browser: its rate series, bind rules, token, lists and actions.

The server is the real `python -m walq ui` process; the browser tests are in
tests/test_ui_browser.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import walq
from tests.procs import wait_for
from tests.test_contract import REDIS_SKIP, SKIP_REDIS, need_redis, redis_url
from tests.ui_procs import Dashboard, dashboard, fresh_redis_queue, start_worker, stop
from walq.errors import ArgumentError
from walq.ops import live
from walq.ops import stats as ops_stats
from walq.ops.dump import parse_position
from walq.ui.actions import Ledger, OfflineActions, make_actions
from walq.ui.history import attempts, with_reports
from walq.ui.series import Series
from walq.ui.server import address, choose_token, is_loopback
from walq.ui.source import DirectorySource, Sampler, iter_pages, running_by_workers, totals


def seeded(path: str, dead: int = 3) -> dict[str, list[int]]:
    """A queue with pending, scheduled and dead jobs, and no owner; their ids by state."""
    with walq.Queue.open(path) as q:
        pending = q.enqueue_many([("resize", {"n": i}) for i in range(120)])
        scheduled = [q.enqueue("report", {"n": i}, delay=3600 + i) for i in range(3)]
        keyed = q.enqueue("report", {"n": 99}, delay=7200, key="monthly")
        dead_ids = []
        for i in range(dead):
            jid = q.enqueue("report", {"n": i, "fail": True}, max_attempts=1)
            dead_ids.append(jid)
        for _ in dead_ids:
            job = q.claim(tasks=["report"])
            assert job is not None
            q.fail(job.id, f"Traceback (most recent call last):\nLookupError: report {job.id}")
    return {"pending": pending, "scheduled": [*scheduled, keyed], "dead": dead_ids}


# -- the pure parts ---------------------------------------------------------------------------


def test_series_counts_events_per_second_and_survives_a_counter_reset() -> None:
    """Deltas of running totals, per 10 s bin; a total that went down began again."""
    s = Series(["enqueued"], window=60, step=10)
    s.add(100.0, {"enqueued": 1000})  # the first total only sets the base
    s.add(105.0, {"enqueued": 1050})
    s.add(112.0, {"enqueued": 20})  # the owner restarted: 20 since
    s.add(118.0, {"enqueued": None})  # not known this time: no change, no base lost
    s.add(119.0, {"enqueued": 40})
    rates = s.rates(119.0)
    assert rates["step"] == 10 and rates["since"] == 100.0
    # The first read's bin holds only part of its events, and before it nothing is known.
    assert rates["rates"]["enqueued"] == [None, None, None, None, None, 4.0]
    s.add(121.0, {"enqueued": 60})
    assert s.rates(121.0)["rates"]["enqueued"][-2:] == [4.0, 2.0]
    s.add(1000.0, {"enqueued": 70})
    assert sum(s.rates(1000.0)["rates"]["enqueued"]) == 1.0  # older bins left the window


def test_a_bind_beyond_loopback_needs_a_token() -> None:
    """No token is allowed on loopback only; a given token must be long enough."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert choose_token("127.0.0.1", "") is None
    with pytest.raises(ArgumentError, match=r"0\.0\.0\.0: a dashboard bound beyond loopback"):
        choose_token("0.0.0.0", "")
    with pytest.raises(ArgumentError, match="at least 16"):
        choose_token("127.0.0.1", "short")
    made = choose_token("0.0.0.0", None)
    assert made is not None and len(made) >= 24
    assert address("::1", 8700, "t") == "http://[::1]:8700/?token=t"


def test_the_cli_refuses_an_open_bind_without_a_token(qdir: str) -> None:
    """`walq ui DIR --host 0.0.0.0 --token ''` exits 2 with one line, before listening."""
    import subprocess
    import sys

    seeded(qdir)
    cmd = [sys.executable, "-m", "walq", "ui", qdir, "--host", "0.0.0.0", "--token", ""]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "walq: 0.0.0.0: a dashboard bound beyond loopback needs an access token; "
        "leave --token out to get one"
    ]


# -- reading ----------------------------------------------------------------------------------


def test_lists_are_paged_off_one_read(qdir: str) -> None:
    """With no owner, each state's list comes from the last read of the files, by id."""
    ids = seeded(qdir)
    source = DirectorySource(qdir)
    st = source.read()
    assert st.jobs == {"pending": 120, "scheduled": 4, "running": 0, "dead": 3, "waiting": 0}
    page = source.jobs("pending", ids["pending"][49], 50)
    assert page.total == 120 and [r["id"] for r in page.rows] == ids["pending"][50:100]
    assert page.next == ids["pending"][99] and page.source == "files"
    assert source.jobs("pending", ids["pending"][99], 50).next is None
    assert [r["id"] for r in iter_pages(source, "pending", 50)] == ids["pending"]
    sched = source.jobs("scheduled", 0, 50).rows
    assert [r["id"] for r in sched] == ids["scheduled"]
    assert all(a["due"] < b["due"] for a, b in itertools.pairwise(sched))
    dead = source.jobs("dead", 0, 50).rows
    assert [r["id"] for r in dead] == ids["dead"]
    assert dead[0]["error"].endswith(f"LookupError: report {ids['dead'][0]}")
    assert source.find_key("monthly") == ids["scheduled"][-1]
    job = source.job(ids["dead"][1])
    assert job["status"] == "dead" and "Traceback" in job["error"]
    history = source.history(ids["dead"][1], None, 100)
    assert [r["type"] for r in history["rows"]] == ["enqueue", "claim", "fail"]
    steps = history["attempts"]
    assert [s["kind"] for s in steps] == ["created", "attempt"]
    assert steps[1]["attempt"] == 1 and steps[1]["outcome"] == "dead"
    assert steps[1]["summary"] == f"LookupError: report {ids['dead'][1]}"
    first = source.history(ids["dead"][1], None, 1)
    assert len(first["rows"]) == 1 and first["next"] is not None
    rest = source.history(ids["dead"][1], parse_position(first["next"]), 100)
    assert [r["type"] for r in rest["rows"]] == ["claim", "fail"] and rest["next"] is None


def test_the_sampler_keeps_one_snapshot_with_rates(qdir: str) -> None:
    """Pages read the sampler's last snapshot; enqueues show as a rate."""
    seeded(qdir)
    now = [1_000_000.0]
    sampler = Sampler(DirectorySource(qdir), clock=lambda: now[0])
    first = sampler.sample()
    assert first["jobs"]["pending"] == 120 and sampler.latest() is first
    with walq.Queue.open(qdir) as q:
        q.enqueue_many([("resize", {}) for _ in range(50)])
    now[0] += 10
    second = sampler.sample()
    assert second["series"]["rates"]["enqueued"][-1] == 5.0  # 50 in a 10 s bin
    assert totals(ops_stats.read(qdir))["enqueued"] == 127 + 50


def test_running_jobs_are_placed_by_the_workers_reports() -> None:
    """Each worker process's job, and how long it has run by the time it is read."""
    workers = [
        {"pid": 10, "age": 1.5, "children": [
            {"pid": 11, "jobs": [{"job": 7, "task": "resize", "attempt": 1, "running_for": 2.0}]},
            {"pid": 12, "jobs": []},
        ]},
        {"pid": 20, "children": [{"pid": 21, "jobs": [
            {"job": 9, "task": "email", "attempt": 3, "running_for": 0.25},
            {"job": 8, "task": "email", "attempt": 1, "running_for": 1.0},
        ]}]},
    ]  # fmt: skip
    assert running_by_workers(workers) == {
        7: {"worker": 10, "process": 11, "task": "resize", "attempt": 1, "running_for": 3.5},
        9: {"worker": 20, "process": 21, "task": "email", "attempt": 3, "running_for": 0.2},
        8: {"worker": 20, "process": 21, "task": "email", "attempt": 1, "running_for": 1.0},
    }


# -- acting -----------------------------------------------------------------------------------


def test_actions_act_on_the_queue_and_are_logged(qdir: str) -> None:
    """Requeue, cancel, purge through the lock (no owner); pause says what it needs."""
    ids = seeded(qdir)
    ledger = Ledger(OfflineActions(qdir))
    done = ledger.run("ui", "requeue", {"ids": [ids["dead"][0]]})
    assert done.ok and done.result == f"requeued job {ids['dead'][0]}"
    done = ledger.run("ui", "cancel", {"ids": [ids["scheduled"][0]]})
    assert done.ok and done.result == f"cancelled job {ids['scheduled'][0]}"
    done = ledger.run("ui", "purge", {"ids": [ids["dead"][1]]})
    assert done.ok and done.result == "purged 1 dead job"
    done = ledger.run("ui", "requeue", {"ids": [ids["pending"][0]]})
    assert not done.ok and done.result == f"job {ids['pending'][0]} is pending, not dead"
    done = ledger.run("ui", "pause", {"task": "resize"})
    assert not done.ok and "control channel" in done.result
    done = ledger.run("ui", "explode", {})
    assert not done.ok and done.result.startswith("unknown action 'explode'")
    assert [d["action"] for d in ledger.recent()][:3] == ["explode", "pause", "requeue"]
    assert all(d["who"] == "ui" for d in ledger.recent())
    with walq.Queue.open(qdir) as q:
        assert q.status(ids["dead"][0]) == "pending"
        assert q.status(ids["scheduled"][0]) == "cancelled"
        assert q.status(ids["dead"][2]) == "dead"
        assert len(q.dead_jobs()) == 1


def test_control_actions_take_the_lock_when_no_owner_runs(qdir: str) -> None:
    """The dashboard's own actions: the owner's control channel, or the lock with none."""
    ids = seeded(qdir)
    ledger = Ledger(make_actions(qdir))
    assert ledger.actions.can_pause
    done = ledger.run("ui", "pause", {"task": "resize"})
    assert done.ok and done.result == "paused resize (the queue's lock taken)"
    done = ledger.run("ui", "pause", {"task": "resize"})
    assert done.ok and done.result == "was already paused: resize (the queue's lock taken)"
    done = ledger.run("ui", "requeue", {"ids": ids["dead"][:2]})
    assert done.ok and done.result.startswith(f"requeued jobs {ids['dead'][0]}, {ids['dead'][1]}")
    done = ledger.run("ui", "cancel", {"ids": [ids["dead"][2]]})
    assert not done.ok and "dead" in done.result
    with walq.Queue.open(qdir) as q:
        assert q.paused() == ["resize"]
        assert q.status(ids["dead"][0]) == "pending"
    done = ledger.run("ui", "resume", {"task": "resize"})
    assert done.ok and done.result == "resumed resize (the queue's lock taken)"


def test_read_only_refuses_every_action(qdir: str) -> None:
    ids = seeded(qdir)
    ledger = Ledger(OfflineActions(qdir), read_only=True)
    done = ledger.run("ui", "requeue", {"ids": ids["dead"][:1]})
    assert not done.ok and "read-only" in done.result
    with walq.Queue.open(qdir) as q:
        assert q.status(ids["dead"][0]) == "dead"


# -- the real server --------------------------------------------------------------------------


def test_every_request_needs_the_token(qdir: str) -> None:
    """No token: 403. The token once: a cookie. An action also needs the token header."""
    import urllib.request

    ids = seeded(qdir)
    with dashboard(qdir) as ui:
        assert len(ui.token) >= 24
        for path in ("/", "/api/snapshot", "/static/ui.js", "/api/jobs?state=dead"):
            status, body = ui.get(path, token=False)
            assert status == 403, path
            assert "access token" in body
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(ui.url, timeout=30) as response:  # redirected, the cookie set
            assert response.status == 200 and response.url == ui.base + "/"
            assert "ui.js" in response.read().decode()
        with opener.open(ui.base + "/api/snapshot", timeout=30) as response:
            assert response.status == 200
        status, _ = ui.post("/api/action", {"action": "purge"}, header=False)
        assert status == 403
        with walq.Queue.open(qdir) as q:  # the dashboard holds no lock
            assert len(q.dead_jobs()) == len(ids["dead"])


def test_the_snapshot_matches_stats_and_actions_change_the_queue(qdir: str) -> None:
    ids = seeded(qdir)
    with dashboard(qdir) as ui:
        status, snap = ui.get("/api/snapshot")
        assert status == 200
        st = ops_stats.read(qdir)
        assert snap["jobs"] == dict(st.jobs)
        assert snap["tasks"] == {t: dict(c) for t, c in st.tasks.items()}
        status, page = ui.get("/api/jobs?state=dead&limit=2")
        assert status == 200 and page["total"] == 3 and len(page["rows"]) == 2
        status, found = ui.get("/api/find?q=monthly")
        assert found == {"id": ids["scheduled"][-1]}
        status, reply = ui.post("/api/action", {"action": "requeue", "ids": ids["dead"][:1]})
        assert status == 200 and reply["ok"], reply
        wait_for(lambda: ui.get("/api/snapshot")[1]["jobs"]["dead"] == 2)
        status, reply = ui.post("/api/action", {"action": "requeue", "ids": ids["dead"][:1]})
        assert status == 409 and reply["result"] == f"job {ids['dead'][0]} is pending, not dead"
        status, log = ui.get("/api/snapshot")
        assert [(a["who"], a["ok"]) for a in log["actions"]] == [("ui", False), ("ui", True)]
        status, err = ui.get("/api/job/99999")
        assert status == 404 and err["error"] == "job 99999 does not exist"
    with walq.Queue.open(qdir) as q:
        assert q.status(ids["dead"][0]) == "pending"


def test_read_only_dashboard_refuses_actions(qdir: str) -> None:
    ids = seeded(qdir)
    with dashboard(qdir, "--read-only") as ui:
        status, reply = ui.post("/api/action", {"action": "purge", "ids": ids["dead"]})
        assert status == 403 and "read-only" in reply["result"]
        assert ui.get("/api/snapshot")[1]["read_only"] is True
    with walq.Queue.open(qdir) as q:
        assert len(q.dead_jobs()) == 3


@pytest.fixture
def url() -> Iterator[str]:
    """A Redis queue URL with a fresh prefix, its keys deleted afterwards."""
    base = redis_url()
    assert base is not None
    with fresh_redis_queue(base) as queue_url:
        yield queue_url


def page_ids(ui: Dashboard, state: str, limit: int) -> list[int]:
    """Every id of a list read through the dashboard's API, `limit` at a time."""
    ids: list[int] = []
    after = 0
    while True:
        status, page = ui.get(f"/api/jobs?state={state}&after={after}&limit={limit}")
        assert status == 200, page
        assert len(page["rows"]) <= limit
        ids += [r["id"] for r in page["rows"]]
        if page["next"] is None:
            return ids
        after = page["next"]


@pytest.mark.redis
@pytest.mark.skipif(SKIP_REDIS, reason=str(REDIS_SKIP))
def test_a_server_queue_is_shown_and_acted_on(url: str) -> None:
    """The same dashboard over a Redis URL: every state listed and paged, a job, actions."""
    need_redis()
    with walq.open(url) as q:
        pending = q.enqueue_many([("resize", {"n": i}) for i in range(5)])
        later = [q.enqueue("report", {"n": i}, delay=3600, key=f"k{i}") for i in range(3)]
        jid = q.enqueue("report", {"fail": True}, max_attempts=1)
        job = q.claim(tasks=["report"])
        assert job is not None and job.id == jid
        q.fail(jid, "Traceback (most recent call last):\nLookupError: gone")
        held = q.enqueue("email", {}, priority=5)
        running = q.claim(tasks=["email"], lease=3600)
        assert running is not None and running.id == held
    with dashboard(url) as ui:
        snap = ui.get("/api/snapshot")[1]
        assert snap["backend"] == "redis" and snap["read_from"] == "server"
        assert snap["jobs"]["dead"] == 1 and snap["jobs"]["pending"] == 5
        assert page_ids(ui, "pending", 2) == pending
        assert page_ids(ui, "scheduled", 2) == later
        assert page_ids(ui, "running", 2) == [held]
        assert page_ids(ui, "dead", 2) == [jid]
        status, first = ui.get("/api/jobs?state=pending&limit=2")
        assert first["total"] == 5 and first["source"] == "server"
        dead = ui.get("/api/jobs?state=dead")[1]["rows"][0]
        assert dead["error"].endswith("LookupError: gone") and dead["task"] == "report"
        sched = ui.get("/api/jobs?state=scheduled")[1]["rows"]
        assert all(r["due"] > snap["read_at"] + 3000 for r in sched)
        lease = ui.get("/api/jobs?state=running")[1]["rows"][0]
        assert lease["lease_until"] > snap["read_at"] + 3000
        status, detail = ui.get(f"/api/job/{later[1]}")
        assert status == 200 and detail["status"] == "scheduled" and detail["key"] == "k1"
        assert ui.get("/api/find?q=k2")[1] == {"id": later[2]}
        assert ui.get(f"/api/job/{jid}/history")[1]["note"]
        status, reply = ui.post("/api/action", {"action": "requeue", "ids": [jid]})
        assert status == 200 and reply["ok"], reply
        status, reply = ui.post("/api/action", {"action": "cancel", "ids": [later[0]]})
        assert status == 200 and reply["ok"], reply
    with walq.open(url) as q:
        assert q.status(jid) == "pending" and q.status(later[0]) == "cancelled"


def test_beside_a_running_owner_nothing_is_replayed(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an owner, numbers, lists, a job and a key come over its control channel: a
    replay of the log (what each refresh cost before) would fail this test."""
    ids = seeded(qdir)
    with walq.Queue.open(qdir) as q:
        more = q.enqueue_many([("later", {"n": i}, {"delay": 3600}) for i in range(7)])
    worker = start_worker(qdir)
    try:
        source = DirectorySource(qdir)
        wait_for(lambda: source.read().data.get("source") == "owner")

        def no_replay(*args: object, **kwargs: object) -> None:
            raise AssertionError("the log was replayed beside a running owner")

        monkeypatch.setattr(ops_stats, "directory_snapshot", no_replay)
        monkeypatch.setattr("walq.ops.live.replay", no_replay)
        sampler = Sampler(source)
        snap = sampler.sample()
        assert snap["read_from"] == "owner", snap.get("error")
        wait_for(lambda: source.read().jobs["scheduled"] == 4 + 7)
        page = source.jobs("scheduled", 0, 5)
        assert page.source == "owner" and page.total == 11 and len(page.rows) == 5
        assert [r["id"] for r in iter_pages(source, "scheduled", 5)] == sorted(
            ids["scheduled"] + more
        )
        assert all(r["due"] > time.time() + 3000 for r in page.rows)
        dead = source.jobs("dead", 0, 50).rows
        assert [r["id"] for r in dead] == ids["dead"]
        assert dead[0]["error"].endswith(f"LookupError: report {ids['dead'][0]}")
        assert source.find_key("monthly") == ids["scheduled"][-1]
        job = source.job(ids["scheduled"][-1])
        assert job["status"] == "scheduled" and job["key"] == "monthly" and job["due"]
        steps = source.history(ids["dead"][0], None, 100)["attempts"]
        assert [(s["kind"], s.get("outcome")) for s in steps] == [
            ("created", None),
            ("attempt", "dead"),
        ]
    finally:
        assert stop(worker) == 0


def test_with_no_owner_unchanged_files_are_not_read_again(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No owner writes the log, so a refresh of an unchanged queue costs a few stat calls."""
    seeded(qdir)
    source = DirectorySource(qdir)
    reads = []
    real = ops_stats.directory_snapshot

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops_stats, "directory_snapshot", counted)
    first = source.read()
    assert source.read() is first and source.read() is first
    assert len(reads) == 1
    with walq.Queue.open(qdir) as q:
        q.enqueue("resize", {})
    assert source.read().jobs["pending"] == 121 and len(reads) == 2


def test_reports_go_to_the_latest_attempt_of_their_number() -> None:
    """After a requeue the attempts count from 1 again: a report of attempt 1 that ended
    last belongs to the second attempt 1, the earlier one to the first."""
    steps = attempts(
        7,
        [
            {"type": "enqueue", "seq": 1, "offset": 40, "job": 7, "task": "t", "created": 5.0},
            {"type": "claim", "seq": 1, "offset": 90, "job": 7, "attempt": 1},
            {"type": "fail", "seq": 1, "offset": 120, "job": 7, "attempt": 1, "dead": True,
             "error": "Traceback\nValueError: x"},
            {"type": "requeue", "seq": 2, "offset": 40, "jobs": [7], "job": 7},
            {"type": "claim", "seq": 2, "offset": 60, "jobs": [3, 7], "attempts": [2, 1]},
            {"type": "ack", "seq": 2, "offset": 99, "jobs": [7, 3]},
        ],
    )  # fmt: skip
    assert [(s["kind"], s.get("outcome")) for s in steps] == [
        ("created", None),
        ("attempt", "dead"),
        ("requeued", None),
        ("attempt", "acked"),
    ]
    assert steps[1]["summary"] == "ValueError: x"
    reports = [
        {"job": 7, "attempt": 1, "worker": 10, "process": 11, "seconds": 0.5, "ended": 100.0},
        {"job": 7, "attempt": 1, "worker": 10, "process": 12, "seconds": 0.25, "ended": 200.0},
    ]
    with_reports(steps, reports)
    assert steps[1]["reported"]["process"] == 11 and steps[3]["reported"]["process"] == 12
    assert steps[3]["reported"]["seconds"] == 0.25


def test_each_attempt_shows_the_worker_process_and_time_from_the_log(qdir: str) -> None:
    """The worker writes how each attempt ran (its attempt record) with the outcome: the
    dashboard shows each attempt's worker, process, start and duration from the log."""
    with walq.Queue.open(qdir) as q:
        jid = q.enqueue("report", {"n": 1, "fail": True, "work": 0.0})  # fails twice: dead
        ok = q.enqueue("resize", {"n": 2, "work": 0.2})
    with dashboard(qdir) as ui:
        worker = start_worker(qdir)
        try:
            wait_for(lambda: walq_status(qdir, jid) == "dead" and walq_status(qdir, ok) == "done")

            def attempts_of(job: int) -> list[dict[str, Any]]:
                status, out = ui.get(f"/api/job/{job}/history")
                assert status == 200, out
                return [s for s in out["attempts"] if s["kind"] == "attempt"]

            wait_for(lambda: all("reported" in s for s in attempts_of(jid) + attempts_of(ok)))
            failed = attempts_of(jid)
            assert [(s["attempt"], s["outcome"]) for s in failed] == [(1, "failed"), (2, "dead")]
            for s in failed:
                assert s["reported"]["worker"] == worker.pid and s["reported"]["source"] == "log"
                assert s["reported"]["process"] not in (None, worker.pid)
                assert s["reported"]["started"] <= s["reported"]["ended"] <= time.time() + 5
                assert s["summary"]  # the last line of its error
            done = attempts_of(ok)
            assert [(s["attempt"], s["outcome"]) for s in done] == [(1, "acked")]
            assert 0.2 <= done[0]["reported"]["seconds"] < 60
            assert done[0]["reported"]["source"] == "log"

            # A running job: its worker, process and time so far, and its lease, in the list
            # (read from the owner) and on its page; cancelled, its attempt says so.
            slow = walq.connect(qdir).enqueue("resize", {"n": 3, "work": 600})
            assert slow is not None

            def running_row() -> dict[str, Any] | None:
                rows = ui.get("/api/jobs?state=running")[1]["rows"]
                row = next((r for r in rows if r["id"] == slow), None)
                return row if row is not None and row.get("running_for") is not None else None

            wait_for(lambda: running_row() is not None)
            row = running_row()
            assert row is not None and row["worker"] == worker.pid and row["process"]
            assert row["lease_until"] > time.time() and row["attempt"] == 1
            detail = ui.get(f"/api/job/{slow}")[1]
            assert detail["status"] == "running" and detail["running"]["process"] == row["process"]
            status, reply = ui.post("/api/action", {"action": "cancel", "ids": [slow]})
            assert status == 200 and "by the running owner" in reply["result"], reply
            assert [(s["attempt"], s["outcome"]) for s in attempts_of(slow)] == [(1, "cancelled")]
        finally:
            assert stop(worker) == 0


def walq_status(path: str, jid: int) -> str:
    """A job's status, as `walq status` would say (the owner's answer or the files')."""
    return str(live.job_status(path, jid)["status"])
