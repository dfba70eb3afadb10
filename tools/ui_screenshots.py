"""Take the README's and docs/OPERATIONS.md's screenshots of `walq ui` (docs/img/ui-*.png).

A demo-like queue with a real worker and a producer feeding it for a minute,
the dashboard beside them, Debian's chromium driven by Playwright:

    python tools/ui_screenshots.py [--seconds 60] [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import walq  # noqa: E402
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.ui_procs import dashboard, start_worker, stop  # noqa: E402


def feed(path: str, seconds: float) -> int:
    """Enqueue demo-like work through the running owner for `seconds`; how many jobs."""
    n = 0
    deadline = time.monotonic() + seconds
    with walq.connect(path) as producer:
        while time.monotonic() < deadline:
            batch: list[tuple[str, object]] = [
                ("resize", {"n": n + i, "work": 0.03}) for i in range(8)
            ]
            batch += [("email", {"n": n + i}) for i in range(12)]
            batch.append(("report", {"n": n, "fail": False}))
            producer.enqueue_many(batch)
            n += len(batch)
            time.sleep(0.5)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from playwright.sync_api import sync_playwright

    path = os.path.join(tempfile.mkdtemp(prefix="walq-ui-shots-"), "queue")
    with walq.Queue.open(path) as q:
        q.enqueue_many([("resize", {"n": i, "work": 0.03}) for i in range(200)])
        for i in range(3):
            q.enqueue("report", {"n": i, "fail": True})
            q.enqueue("report", {"n": 1000 + i}, delay=600 * (i + 1), key=f"report-{i}")
    worker = start_worker(path)
    try:
        with dashboard(path) as ui, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(ui.url)
            fed = feed(path, args.seconds)
            print(f"fed {fed} jobs")

            def shot(name: str, hash_: str, wait: str) -> None:
                page.goto(f"{ui.base}/{hash_}")
                page.locator(wait).first.wait_for()
                page.wait_for_timeout(1500)
                out = os.path.join(args.out, f"ui-{name}.png")
                page.screenshot(path=out, full_page=True)
                print(out)

            page.goto(f"{ui.base}/#overview")
            page.click("#chart-span button[data-minutes='5']")
            page.wait_for_timeout(1500)
            page.screenshot(path=os.path.join(args.out, "ui-overview.png"), full_page=True)
            print(os.path.join(args.out, "ui-overview.png"))
            shot("dead", "#dead", "#list tr[data-job]")
            first = page.locator("#list tr[data-job]").first.get_attribute("data-job")
            shot("job", f"#job/{first}", "#job-attempts tr[data-step=attempt]")
            shot("scheduled", "#scheduled", "#list tr[data-job]")
            shot("storage", "#storage", "#storage dd")
            shot("workers", "#workers", "#workers tr[data-worker]")
            browser.close()
    finally:
        stop(worker)


if __name__ == "__main__":
    main()
