"""What an open `walq ui` page costs the owner: enqueue throughput beside it and without it.

    python benchmarks/ui_cost.py [--rounds N] [--duration S] [--pages N] [--view V] [--json FILE]

One queue directory, one owner (`walq worker`, 2 processes, running every job
it is given), producers enqueueing through the owner's socket as fast as
they can (4 processes, each `walq.connect(...).enqueue` of a small payload,
durable). Each round measures both, without a dashboard and with `walq ui`
running and N chromium pages open on one view (`--view`: the overview, or
the scheduled list, which also reads a page of jobs and each one's detail
every 3 s), refreshing every second (the page's own polling), in alternating
order. The queue holds 20,000 scheduled jobs; beside its owner the dashboard
asks the owner (its control channel) and replays nothing. The figure is the
median of each kind's rounds, in the same run, and their ratio. Needs
walq[ui], Playwright and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import walq  # noqa: E402
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.ui_procs import dashboard, start_worker, stop  # noqa: E402

PRODUCERS = 4


def _produce(path: str, seconds: float, start: Any, out: Any) -> None:
    """One producer process: enqueue until the time is up; put how many returned."""
    n = 0
    with walq.connect(path) as producer:
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            producer.enqueue("email", {"n": n, "work": 0.0})
            n += 1
    out.put(n)


def enqueue_rate(path: str, seconds: float) -> float:
    """Enqueues per second from PRODUCERS processes through the owner, for `seconds`."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_produce, args=(path, seconds, start, out)) for _ in range(PRODUCERS)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every producer connected before the clock starts
    start.set()
    total: float = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--pages", type=int, default=1)
    parser.add_argument("--view", choices=("overview", "scheduled"), default="overview")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    path = os.path.join(tempfile.mkdtemp(prefix="walq-ui-cost-"), "queue")
    with walq.Queue.open(path) as q:
        # A queue with 20,000 jobs in its log that stay put (due in an hour): each of
        # the dashboard's reads replays them all, and the worker has no backlog to drain.
        q.enqueue_many([("resize", {"n": i}, {"delay": 3600}) for i in range(20_000)])
    worker = start_worker(path)
    rates: dict[str, list[float]] = {"without": [], "with": []}
    reads: list[float] = []
    read_from = ""
    try:
        time.sleep(2.0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for r in range(args.rounds):
                # A B, then B A: neither kind always runs first in its round.
                for kind in ("without", "with") if r % 2 == 0 else ("with", "without"):
                    if kind == "without":
                        rates[kind].append(enqueue_rate(path, args.duration))
                        continue
                    with dashboard(path, "--interval", "1") as ui:
                        pages = [browser.new_page() for _ in range(args.pages)]
                        for page in pages:
                            page.goto(ui.url)
                            page.locator(".card [data-count=pending]").wait_for()
                            if args.view != "overview":
                                page.goto(f"{ui.base}/#{args.view}")
                                page.locator("#list tr[data-job]").first.wait_for()
                        rates[kind].append(enqueue_rate(path, args.duration))
                        snap = ui.get("/api/snapshot")[1]
                        reads.append(float(snap["read_seconds"]))
                        read_from = str(snap.get("read_from"))
                        for page in pages:
                            page.close()
                print(
                    f"round {r + 1}: without {rates['without'][-1]:,.0f}/s, "
                    f"with {rates['with'][-1]:,.0f}/s",
                    flush=True,
                )
            browser.close()
    finally:
        stop(worker)
    without = statistics.median(rates["without"])
    beside = statistics.median(rates["with"])
    result = {
        "producers": PRODUCERS,
        "pages": args.pages,
        "view": args.view,
        "read_from": read_from,
        "rounds": args.rounds,
        "duration": args.duration,
        "enqueue_per_s_without_ui": round(without),
        "enqueue_per_s_with_ui": round(beside),
        "ratio": round(beside / without, 3),
        "dashboard_read_seconds": round(statistics.median(reads), 4),
        "cpus": os.cpu_count(),
    }
    print(
        f"enqueue through the owner, {PRODUCERS} producers, median of {args.rounds} rounds: "
        f"{without:,.0f}/s without a dashboard, {beside:,.0f}/s with {args.pages} page(s) "
        f"open on the {args.view} ({beside / without:.0%}); a dashboard read took "
        f"{result['dashboard_read_seconds']} s, from the {read_from}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
