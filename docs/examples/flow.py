"""A chain and a fan-in with results: walq's flow features on one queue directory.

    python docs/examples/flow.py [DIR]

Three downloads run in parallel; a `merge` job waits for all three (a fan-in)
and reads their results from `job.parents`; its handler enqueues a `publish`
follow-up job, committed in the same durable write as its own ack (a chain).
The script prints each result as `q.result` returns it.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from typing import Any

import walq

tasks = walq.Tasks()


@tasks.task(timeout=30.0)
def download(payload: Any, job: walq.Job) -> Any:
    return {"url": payload["url"], "bytes": len(payload["url"]) * 100}  # the job's result


@tasks.task(timeout=30.0)
def merge(payload: Any, job: walq.Job) -> Any:
    total = sum(result["bytes"] for result in job.parents.values())  # the parents' results
    job.enqueue("publish", {"total": total})  # exists once this job's ack is durable
    return total


@tasks.task(timeout=30.0)
def publish(payload: Any, job: walq.Job) -> Any:
    return f"published {payload['total']} bytes"


def main(directory: str) -> None:
    with walq.Queue.open(directory) as q:
        urls = ["https://a.example/1", "https://b.example/22", "https://c.example/333"]
        parts = [q.enqueue("download", {"url": url}) for url in urls]
        merged = q.enqueue("merge", None, after=parts)  # waits for all three
        print("merge is", q.status(merged))  # waiting

        worker = walq.Worker(q, tasks, processes=2)
        runner = threading.Thread(target=worker.run)
        runner.start()
        try:
            for jid in parts:
                print("download", jid, "->", q.result(jid, timeout=60))
            print("merge ->", q.result(merged, timeout=60))
            # merge's follow-up job: committed with merge's ack, the next id issued
            print("publish ->", q.result(merged + 1, timeout=60))
        finally:
            worker.stop()
            runner.join()


if __name__ == "__main__":  # worker processes import this file again
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="walq-flow-"))
