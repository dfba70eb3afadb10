"""`walq ui` in a real browser: Debian's chromium driven by Playwright, a real worker beside it.

Skipped when /usr/bin/chromium or Playwright is missing, unless
WALQ_REQUIRE_BROWSER is set (CI sets it): then those are failures. No browser
is ever downloaded: Playwright drives the system's chromium.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import walq
from tests import procs
from tests.procs import wait_for
from tests.test_contract import REDIS_SKIP, SKIP_REDIS, need_redis, redis_url
from tests.ui_procs import dashboard, fresh_redis_queue, start_worker, stop
from walq.errors import UnknownJobError
from walq.ops import stats as ops_stats
from walq.ops.dump import DumpFilter, dump
from walq.ops.replay import replay

CHROMIUM = "/usr/bin/chromium"
# Quiet, sandbox-free flags for a headless chromium run as root in CI.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REQUIRED = os.environ.get("WALQ_REQUIRE_BROWSER", "") not in ("", "0")


def _why_not() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"no {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; no browser download needed)"
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return "walq[ui] is not installed"
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None and not REQUIRED, reason=str(WHY_NOT))

STATES = ("pending", "scheduled", "running", "dead", "waiting")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if WHY_NOT is not None:
        pytest.fail(f"WALQ_REQUIRE_BROWSER is set, but: {WHY_NOT}")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            # Chromium can die while starting on a machine under heavy load (SIGTRAP
            # before its first page): a fresh launch then succeeds.
            for tries_left in (2, 1, 0):
                try:
                    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    break
                except PlaywrightError:
                    if not tries_left:
                        raise
                    time.sleep(2.0)
            yield b
            b.close()
    finally:
        # Whatever the browser or its driver left behind must not outlive the module
        # (the worker tests fail on any child of this process still alive).
        for pid in procs.descendants(os.getpid()):
            proc = procs.read(pid)
            if proc is not None and ("chrom" in proc.cmd or "playwright" in proc.cmd):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"{e} {e.stack}"))
    # A refused action answers 409 and a stopped dashboard refuses connections: the
    # browser logs both; anything else logged as an error (a CSP refusal...) fails.
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield pg
    context.close()
    assert errors == [], errors  # no script error, no refused inline style or script


def seed(path: str) -> dict[str, Any]:
    """Demo-like work: resizes and emails that succeed, reports of which two fail for good."""
    with walq.Queue.open(path) as q:
        q.enqueue_many([("resize", {"n": i, "work": 0.04}) for i in range(150)])
        q.enqueue_many([("email", {"n": i}) for i in range(100)])
        failing = [q.enqueue("report", {"n": i, "fail": True}) for i in range(2)]
        q.enqueue_many([("report", {"n": i}) for i in range(8)])
        monthly = q.enqueue("report", {"n": 99}, delay=3600, key="monthly-report")
    return {"failing": failing, "monthly": monthly}


def card(page: Any, state: str) -> int:
    """The number on a state's card."""
    text = page.locator(f".card [data-count={state}]").inner_text()
    return int(text.replace(",", "")) if text.strip().isdigit() or "," in text else -1


def cards(page: Any) -> dict[str, int]:
    return {s: card(page, s) for s in STATES}


def stats_counts(path: str) -> dict[str, int]:
    return dict(ops_stats.read(path).jobs)


def settled(path: str) -> bool:
    """Every job run: only the scheduled monthly job and the two dead ones are left."""
    return stats_counts(path) == {
        "pending": 0,
        "scheduled": 1,
        "running": 0,
        "dead": 2,
        "waiting": 0,
    }


def toast(page: Any, pattern: str) -> str:
    """Wait for the result line of an action matching `pattern`; return it."""
    el = page.locator("#toast")
    el.filter(has_text=re.compile(pattern)).wait_for(state="visible")
    return str(el.inner_text())


def test_a_live_queue_in_the_browser(page: Any, qdir: str) -> None:
    """Counts match stats(), move while a real worker runs; a dead job is opened, requeued
    (refused while the owner holds the lock, done once it stops), purged and cancelled."""
    ids = seed(qdir)
    with dashboard(qdir) as ui:
        response = page.goto(ui.url)
        assert response is not None and response.ok
        assert "token" not in page.url  # the token became a cookie
        page.locator(".card [data-count=pending]").wait_for()
        wait_for(lambda: cards(page) == stats_counts(qdir))  # no owner: nothing moves
        before = cards(page)
        assert before["pending"] == 260
        assert page.locator("#live").get_attribute("data-from") == "files"
        # The log keeps no time for an ack: the charts say they count from the dashboard's start.
        assert "since the dashboard started" in page.locator("#chart-since").inner_text()

        worker = start_worker(qdir)
        try:
            # The numbers move while the jobs run, read from the owner (nothing replayed).
            page.locator("#live[data-from=owner]").wait_for()
            wait_for(lambda: 0 < card(page, "pending") < before["pending"])
            wait_for(lambda: card(page, "done") > 0)
            page.locator("[data-chart=completed] polyline").wait_for(state="attached")
            wait_for(lambda: settled(qdir), timeout=180)
            wait_for(lambda: cards(page) == stats_counts(qdir))
            # The worker's view: breakers and limits per task, and the retry budget.
            row = page.locator("tr[data-task=resize]")
            wait_for(lambda: "of 2" in row.inner_text())  # concurrency 2
            assert "closed" in row.inner_text()
            assert "20/s" in page.locator("tr[data-task=email]").inner_text()
            page.locator("[data-budget=balance]").wait_for()
            # The worker and its two processes.
            page.click("nav a[data-view=workers]")
            owner_row = page.locator(f"#workers tr[data-worker='{worker.pid}']")
            owner_row.wait_for()
            assert len(re.findall(r"(?m)^\d+: (?:idle|job \d+)", owner_row.inner_text())) == 2
            assert f"pid {worker.pid}" in page.locator("#owner-line").inner_text()

            # A dead job: its last error with the traceback, its history from the log.
            page.click("nav a[data-view=dead]")
            dead_row = page.locator(f"#list tr[data-job='{ids['failing'][0]}']")
            dead_row.wait_for()
            assert "LookupError" in dead_row.inner_text()
            dead_row.click()
            page.locator("#job-error").filter(has_text="Traceback").wait_for()
            assert "the source table is missing" in page.locator("#job-error").inner_text()
            # Beside an owner its answer has no payload: the enqueue record gives it.
            payload = page.locator("#job-fields [data-field=payload]")
            payload.filter(has_text='"fail":true').wait_for()
            history = page.locator("#job-history")
            history.filter(has_text="fail").wait_for()
            kinds = [c.strip() for c in history.locator("tr td:nth-child(2)").all_inner_texts()]
            attempts = history.locator("tr td:nth-child(3)").all_inner_texts()
            # (a claimed job may be handed back uncharged, as "release", in between; each
            # outcome the worker writes is followed by its "attempt" record)
            pairs = list(zip(kinds, attempts, strict=True))
            seen = [(k, a) for k, a in pairs if k not in ("release", "attempt")]
            assert seen == [
                ("enqueue", ""),
                ("claim", "1"),
                ("fail", "1"),
                ("claim", "2"),
                ("fail", "2"),
            ]
            assert {("attempt", "1"), ("attempt", "2")} <= set(pairs)
            # The same records as attempts: each one's outcome, the last one's error.
            steps = page.locator("#job-attempts tr[data-step]")
            kinds_outcomes = steps.evaluate_all(
                "rows => rows.map(r => [r.dataset.step, r.dataset.outcome || ''])"
            )
            assert [k for k in kinds_outcomes if k[1] != "released"] == [
                ["created", ""],
                ["attempt", "failed"],
                ["attempt", "dead"],
            ]
            last = page.locator("#job-attempts tr[data-outcome=dead]").inner_text()
            assert "LookupError: report 0: the source table is missing" in last
            # The attempt record in the log names the worker, its host and the process.
            worker_cell = page.locator("#job-attempts tr[data-outcome=dead] td:nth-child(3)")
            assert re.fullmatch(r"worker \d+ on \S+, process \d+", worker_cell.inner_text())

            # The running owner requeues it at once, through its control channel.
            x = ids["failing"][0]
            page.click("#job-tools button[data-action=requeue]")
            assert toast(page, "requeued") == f"requeue: requeued job {x} (by the running owner)"
            wait_for(lambda: "requeue" in record_types(qdir, x))
            wait_for(lambda: walq_status(qdir, x) == "dead", timeout=120)  # it fails again

            # Purge asks first: "Keep them" keeps it; "Yes" purges it.
            page.goto(f"{ui.base}/#job/{ids['failing'][1]}")
            page.click("#job-tools button[data-action=purge]")
            page.locator("#confirm").filter(has_text="cannot be undone").wait_for()
            page.click("#confirm-no")
            assert walq_status(qdir, ids["failing"][1]) == "dead"
            page.click("#job-tools button[data-action=purge]")
            page.click("#confirm-yes")
            assert toast(page, "purged") == "purge: purged 1 dead job (by the running owner)"
            assert walq_status(qdir, ids["failing"][1]) == "purged"

            # A job found by its key, cancelled (after the question).
            page.fill("#find-q", "monthly-report")
            page.click("#find button")
            page.locator("#job-title").filter(has_text=f"Job {ids['monthly']}").wait_for()
            page.click("#job-tools button[data-action=cancel]")
            page.click("#confirm-yes")
            assert toast(page, "cancelled") == (
                f"cancel: cancelled job {ids['monthly']} (by the running owner)"
            )
            assert walq_status(qdir, ids["monthly"]) == "cancelled"
        finally:
            assert stop(worker) == 0

        # No owner now: the dashboard takes the queue's lock for the call.
        page.goto(f"{ui.base}/#job/{x}")
        page.locator("#job-fields [data-field=status]").filter(has_text="dead").wait_for()
        page.click("#job-tools button[data-action=requeue]")
        assert toast(page, "lock taken") == f"requeue: requeued job {x} (the queue's lock taken)"
        assert walq_status(qdir, x) == "pending"

        # Every action is in the log, asked by "ui", with its result.
        page.click("nav a[data-view=actions]")
        log = page.locator("#action-log")
        log.filter(has_text="lock taken").wait_for()
        assert log.locator("tr td:nth-child(2)").all_inner_texts() == ["ui"] * 4
        assert log.locator("tr td:nth-child(3)").all_inner_texts() == [
            "requeue", "cancel", "purge", "requeue",
        ]  # fmt: skip
        assert "refused" not in log.inner_text()


def record_types(path: str, jid: int) -> list[str]:
    """The types of the job's records in the queue's log."""
    return [row["type"] for row in dump(path, DumpFilter(job=jid))]


def walq_status(path: str, jid: int) -> str:
    """The job's status as the queue's log says (read beside a running owner too)."""
    r = replay(path)
    if jid in r.running:
        return "running"
    try:
        return r.state.status(jid)
    except UnknownJobError as exc:
        return "purged" if "purged" in str(exc) else "unknown"


def pending_of(path: str, task: str) -> int:
    return int(ops_stats.read(path).tasks.get(task, {}).get("pending", 0))


def test_pause_and_resume_a_task(page: Any, qdir: str) -> None:
    """Paused with no owner (the lock), the task's jobs wait while a worker runs the others;
    resumed through the running owner, they run."""
    seed(qdir)
    with dashboard(qdir) as ui:
        page.goto(ui.url)
        page.locator("tr[data-task=email] button[data-action=pause]").click()
        assert toast(page, "paused") == "pause: paused email (the queue's lock taken)"
        page.locator("tr[data-task=email][data-paused=yes]").wait_for()
        assert ops_stats.read(qdir).paused == ("email",)
        worker = start_worker(qdir)
        try:
            wait_for(lambda: pending_of(qdir, "resize") == 0, timeout=180)
            assert pending_of(qdir, "email") == 100  # held while the rest ran
            page.locator("tr[data-task=email] button[data-action=resume]").click()
            assert toast(page, "resumed") == "resume: resumed email (by the running owner)"
            wait_for(lambda: pending_of(qdir, "email") == 0, timeout=180)
            page.locator("tr[data-task=email][data-paused=no]").wait_for(state="attached")
            assert ops_stats.read(qdir).paused == ()
        finally:
            assert stop(worker) == 0


def test_no_token_no_page(browser: Any, qdir: str) -> None:
    """A browser without the token gets a 403; with it once, the cookie lets it back."""
    seed(qdir)
    with dashboard(qdir) as ui:
        context = browser.new_context()
        try:
            pg = context.new_page()
            response = pg.goto(ui.base + "/")
            assert response is not None and response.status == 403
            assert "access token" in pg.content()
            response = pg.goto(ui.base + "/static/ui.js")
            assert response is not None and response.status == 403
            response = pg.goto(ui.url)
            assert response is not None and response.status == 200
            response = pg.goto(ui.base + "/api/snapshot")  # the cookie, no token in the address
            assert response is not None and response.status == 200
        finally:
            context.close()


def test_a_long_list_pages_forward_and_back(page: Any, qdir: str) -> None:
    """260 pending jobs, 50 a page, by id: Older and Newer walk the pages."""
    seed(qdir)
    with walq.Queue.open(qdir) as q:
        pending = [j["id"] for j in q.jobs("pending", limit=1000)]
    with dashboard(qdir) as ui:
        page.goto(ui.url)
        page.goto(f"{ui.base}/#pending")

        def shown() -> list[int]:
            rows = page.locator("#list tr[data-job]")
            return [int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.job)")]

        wait_for(lambda: shown() == pending[:50])
        assert page.locator("#list-range").inner_text().startswith("1\u201350 of 260")
        page.click("#next")
        wait_for(lambda: shown() == pending[50:100])
        for _ in range(4):
            page.click("#next")
        wait_for(lambda: shown() == pending[250:])
        assert page.locator("#next").is_disabled()
        page.click("#prev")
        wait_for(lambda: shown() == pending[200:250])


def test_read_only_turns_the_buttons_off(page: Any, qdir: str) -> None:
    ids = seed(qdir)
    with dashboard(qdir, "--read-only") as ui:
        page.goto(f"{ui.url}")
        page.goto(f"{ui.base}/#job/{ids['monthly']}")
        button = page.locator("#job-tools button[data-action=cancel]")
        button.wait_for()
        assert button.is_disabled()
        assert button.get_attribute("title") == "read-only dashboard"
        assert walq_status(qdir, ids["monthly"]) == "scheduled"


@pytest.fixture
def redis_queue() -> Iterator[str]:
    base = redis_url()
    assert base is not None
    with fresh_redis_queue(base) as url:
        yield url


@pytest.mark.redis
@pytest.mark.skipif(SKIP_REDIS, reason=str(REDIS_SKIP))
def test_a_redis_queue_in_the_browser(page: Any, redis_queue: str) -> None:
    """The same page over a Redis URL, a real worker on it: counts match stats(), and a
    dead job is requeued at once (a server has no lock to wait for)."""
    need_redis()
    with walq.open(redis_queue) as q:
        q.enqueue_many([("resize", {"n": i, "work": 0.02}) for i in range(60)])
        failing = q.enqueue("report", {"n": 1, "fail": True}, max_attempts=1)
        later = q.enqueue("report", {"n": 2}, delay=3600)
    worker = start_worker(redis_queue)
    try:
        with dashboard(redis_queue) as ui:
            page.goto(ui.url)
            page.locator(".card [data-count=pending]").wait_for()
            wait_for(lambda: stats_counts(redis_queue)["dead"] == 1, timeout=120)
            wait_for(lambda: stats_counts(redis_queue)["pending"] == 0, timeout=120)
            wait_for(lambda: cards(page) == stats_counts(redis_queue))
            # Every state is listed on a server too, not only the dead jobs.
            page.goto(f"{ui.base}/#scheduled")
            page.locator(f"#list tr[data-job='{later}']").wait_for()
            due = page.locator(f"#list tr[data-job='{later}']").inner_text()
            assert re.search(r"\(in [45]\d min", due), due
            page.goto(f"{ui.base}/#job/{later}")
            page.locator("#job-fields [data-field=status]").filter(has_text="scheduled").wait_for()
            page.goto(f"{ui.base}/#job/{failing}")
            page.locator("#job-error").filter(has_text="the source table is missing").wait_for()
            page.click("#job-tools button[data-action=requeue]")
            assert toast(page, "requeued") == f"requeue: requeued job {failing}"
            # Requeued beside the running worker, which runs it (and it dies again).
            wait_for(lambda: stats_counts(redis_queue)["dead"] == 1, timeout=120)

            # No log on a server: the attempt its worker reported (after the requeue) is shown.
            def reported() -> list[Any]:
                steps = ui.get(f"/api/job/{failing}/history")[1]["attempts"]
                return [s["reported"] for s in steps if s.get("reported")]

            wait_for(lambda: any(r["worker"] == worker.pid for r in reported()), timeout=60)
            page.goto(f"{ui.base}/#overview")  # the job's view is read again when opened
            page.goto(f"{ui.base}/#job/{failing}")
            page.locator("#job-attempts").filter(has_text=f"worker {worker.pid}").wait_for()
            with walq.open(redis_queue) as q:
                assert q.status(failing) == "dead"
                assert "the source table is missing" in q.dead_jobs()[0].error
    finally:
        stop(worker)
