"""huey's side of the worker-pool rows: the same no-op task, on SqliteHuey(fsync=True).

The consumer imports this module (`huey_consumer huey_tasks.huey`), so the
database path comes from $WALQ_BENCH_HUEY_DB.
"""

from __future__ import annotations

import os
from typing import Any

from benchutil import mark_done
from huey import SqliteHuey

huey = SqliteHuey(
    "walq-bench-pool",
    filename=os.environ.get("WALQ_BENCH_HUEY_DB", "huey-bench.db"),
    fsync=True,
    results=False,
)


@huey.task()  # type: ignore[untyped-decorator]  # huey ships no type hints
def noop(payload: Any) -> None:
    mark_done()
