"""Observability: Prometheus metrics (the `walq[metrics]` extra) and job context in logs.

    from prometheus_client import start_http_server
    from walq.metrics import QueueCollector

    QueueCollector(q, worker).register()     # the default registry
    start_http_server(9108)

The metric values are computed here as plain data (`families`), from the one
stats model (walq.ops.stats.QueueStats) of `Queue.stats()` or of what
`walq stats` reads, so they are the same numbers the CLI prints;
`prometheus_client` only renders them and is imported when first needed.
Histograms of fsync latency and of job run time are filled by hooks of the
log and the worker when those exist (see docs/OPERATIONS.md); without the
fsync hook the fsync histogram still has its count and sum, from the log's
own counters.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from walq.errors import WalqError
from walq.ops.stats import QueueStats

FSYNC_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BREAKER_STATES = ("closed", "open", "half-open")

# Queue.stats() counters since open -> (metric name, help).
QUEUE_COUNTERS = {
    "enqueued": ("jobs_enqueued", "Jobs added since the queue was opened."),
    "coalesced": ("jobs_coalesced", "Enqueues answered by an unfinished job with the same key."),
    "claimed": ("jobs_claimed", "Attempts started."),
    "acked": ("jobs_acked", "Jobs finished successfully."),
    "failed": ("jobs_failed", "Attempts that failed (retried or dead)."),
    "retried": ("jobs_retried", "Failed attempts scheduled for a retry."),
    "dead_lettered": ("jobs_dead", "Jobs moved to the dead-letter state."),
    "expired": ("leases_expired", "Running jobs whose lease expired (back to pending)."),
}
# Worker.status() counters since the worker started -> help.
WORKER_COUNTERS = {
    "ok": "Jobs whose handler returned.",
    "failed": "Attempts that failed in the worker pool.",
    "retried": "Failed attempts the pool scheduled for a retry.",
    "dead": "Attempts that dead-lettered their job.",
    "timeouts": "Handlers killed for running past their timeout.",
    "crashes": "Worker processes that died during a job.",
    "memory": "Worker processes killed for exceeding max_memory.",
    "stale": "Results dropped because their attempt no longer held the job.",
    "spawned": "Worker processes started.",
    "recycled": "Worker processes retired after max_tasks_per_child jobs.",
    "lease_lost": "Leases the heartbeat found lost (another worker may run the job).",
}


class MetricsUnavailable(WalqError):
    """prometheus_client is not installed (pip install 'walq[metrics]')."""


def prometheus() -> Any:
    """The prometheus_client module, or MetricsUnavailable with the install hint."""
    try:
        import prometheus_client  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise MetricsUnavailable(
            "Prometheus metrics need the prometheus-client package: pip install 'walq[metrics]'"
        ) from None
    return prometheus_client


# -- values ------------------------------------------------------------------------------


class Histogram:
    """A thread-safe histogram with fixed upper bounds (what Prometheus calls buckets)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self._sum = 0.0
        self._mu = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one observation."""
        i = bisect.bisect_left(self.bounds, value)
        with self._mu:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> HistogramValue:
        """Cumulative counts per bound (+Inf last), count and sum, at one instant."""
        with self._mu:
            counts, total = list(self._counts), self._sum
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramValue(tuple(cumulative), running, total)


@attrs.frozen
class HistogramValue:
    """One histogram's state: cumulative (upper bound, count) pairs ending at +Inf."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


@attrs.frozen
class Family:
    """One metric with its samples: (label values, value) pairs, in the label order given."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float | HistogramValue], ...] = ()


def _one(name: str, kind: str, text: str, value: float) -> Family:
    return Family(name, kind, text, (), (((), float(value)),))


def families(
    stats: QueueStats | Mapping[str, Any],
    *,
    worker: Mapping[str, Any] | None = None,
    fsync: HistogramValue | None = None,
    runs: Mapping[tuple[str, str], HistogramValue] | None = None,
    namespace: str = "walq",
) -> list[Family]:
    """The metrics for one queue, from its stats model (walq.ops.stats.QueueStats).

    A backend's stats dict (`Queue.stats()`, `walq stats --json`) is read
    into the model first. `worker` is `Worker.status()` (or the worker's
    status file); `fsync` and `runs` ((task, outcome) -> histogram) come
    from the hooks.
    """
    st = stats if isinstance(stats, QueueStats) else QueueStats.of(stats)
    p = namespace + "_"
    log = st.log
    out = [
        Family(
            p + "jobs",
            "gauge",
            "Live jobs by state.",
            ("state",),
            tuple(((s,), float(n)) for s, n in st.jobs.items()),
        ),
        Family(
            p + "task_jobs",
            "gauge",
            "Live jobs by task and state.",
            ("task", "state"),
            tuple(
                ((task, s), float(n))
                for task, counts in st.tasks.items()
                for s, n in sorted(counts.items())
            ),
        ),
        _one(p + "log_segments", "gauge", "Segment files.", log.segments if log else 0),
        _one(
            p + "log_disk_bytes", "gauge", "Bytes of segment files.", log.disk_bytes if log else 0
        ),
        _one(p + "live_bytes", "gauge", "Bytes of the live jobs' records.", st.live_bytes),
        _one(p + "damaged_ranges", "gauge", "Damaged ranges found.", st.damaged),
    ]
    for key, (name, text) in QUEUE_COUNTERS.items():
        if key in st.counters:
            out.append(_one(p + name, "counter", text, st.counters[key]))
    optional_gauges = {
        "log_garbage_ratio": (
            log.garbage_ratio if log else None,
            "Share of record bytes a compaction would drop.",
        ),
        "oldest_pending_age_seconds": (
            st.oldest_pending[1] if st.oldest_pending else None,
            "Age of the oldest pending job.",
        ),
        "spooled_requests": (st.spooled, "Producer requests in the spool awaiting an owner."),
        "tail_bytes": (log.tail_bytes if log else None, "Bytes of an unfinished or torn tail."),
    }
    for name, (value, text) in optional_gauges.items():
        if value is not None:
            out.append(_one(p + name, "gauge", text, value))
    if st.has_compactor:  # None: working; else failing since, with how many failures
        failing = st.compactor or {}
        out.append(
            _one(
                p + "compactor_failing",
                "gauge",
                "Whether background compaction keeps failing (it is retried with backoff).",
                float(bool(failing)),
            )
        )
        out.append(
            _one(
                p + "compactor_failures",
                "gauge",
                "Background compaction failures in a row (0 once one succeeds).",
                failing.get("failures", 0),
            )
        )
    if st.owner is not None and st.owner.running is not None:
        running = float(bool(st.owner.running))
        out.append(_one(p + "owner_running", "gauge", "Whether an owner holds the lock.", running))
    if fsync is not None:
        out.append(
            Family(p + "fsync_seconds", "histogram", "fdatasync latency.", (), (((), fsync),))
        )
    if runs:
        out.append(
            Family(
                p + "job_run_seconds",
                "histogram",
                "Handler run time by task and outcome.",
                ("task", "outcome"),
                tuple(((task, outcome), v) for (task, outcome), v in sorted(runs.items())),
            )
        )
    if worker is not None:
        out += _worker_families(worker, p)
    return out


def _worker_families(worker: Mapping[str, Any], p: str) -> list[Family]:
    out = [_one(p + "worker_processes", "gauge", "Worker processes.", worker.get("processes", 0))]
    counters = worker.get("counters") or {}
    for key, text in WORKER_COUNTERS.items():
        if key in counters:
            out.append(_one(f"{p}worker_{key}", "counter", text, counters[key]))
    tasks = worker.get("tasks") or {}
    out.append(
        Family(
            p + "task_running",
            "gauge",
            "Jobs running in the pool, by task.",
            ("task",),
            tuple(((t,), float(v.get("running", 0))) for t, v in sorted(tasks.items())),
        )
    )
    states = [
        ((t, s), float(v.get("breaker") == s))
        for t, v in sorted(tasks.items())
        if v.get("breaker") in BREAKER_STATES
        for s in BREAKER_STATES
    ]
    out.append(
        Family(
            p + "breaker_state",
            "gauge",
            "Circuit breaker state (1 for the current one).",
            ("task", "state"),
            tuple(states),
        )
    )
    return out


# -- rendering through prometheus_client ----------------------------------------------------


def to_prometheus(family: Family) -> Any:
    """A prometheus_client metric family for `family`."""
    prometheus()
    from prometheus_client import core  # noqa: PLC0415 - an optional extra

    labels = list(family.labels)
    metric: Any
    if family.kind == "counter":
        metric = core.CounterMetricFamily(family.name, family.help, labels=labels)
    elif family.kind == "gauge":
        metric = core.GaugeMetricFamily(family.name, family.help, labels=labels)
    else:
        metric = core.HistogramMetricFamily(family.name, family.help, labels=labels)
    for values, value in family.samples:
        if isinstance(value, HistogramValue):
            buckets = [(_le(b), float(n)) for b, n in value.buckets]
            metric.add_metric(list(values), buckets, value.sum)
        else:
            metric.add_metric(list(values), value)
    return metric


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Static:
    """A collector of fixed families (for one exposition)."""

    def __init__(self, fams: Sequence[Family]) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Any]:
        for family in self.fams:
            yield to_prometheus(family)


def exposition(fams: Sequence[Family]) -> str:
    """The Prometheus text format of `fams` (for a node exporter's textfile collector)."""
    client = prometheus()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(_Static(fams))
    return str(client.generate_latest(registry).decode())


class QueueCollector:
    """A prometheus_client collector over a live Queue (and optionally its Worker).

    Each scrape calls `queue.stats()` and `worker.status()`. Creating it
    installs the fsync and job-run hooks where the log and the worker offer
    them (`Log.on_sync(seconds)`, `Worker.on_job_done(task, seconds, ok)`),
    chaining any hook already set.
    """

    def __init__(self, queue: Any, worker: Any | None = None, *, namespace: str = "walq") -> None:
        prometheus()  # fail now, with the install hint, rather than at the first scrape
        self.queue = queue
        self.worker = worker
        self.namespace = namespace
        self.fsync = Histogram(FSYNC_BUCKETS)
        self.fsync_hooked = _chain(getattr(queue, "_log", None), "on_sync", self.fsync.observe)
        self.runs: dict[tuple[str, str], Histogram] = {}
        self._runs_mu = threading.Lock()
        self.runs_hooked = worker is not None and _chain(worker, "on_job_done", self.job_done)

    def job_done(self, task: str, seconds: float, ok: bool) -> None:
        """Observe one finished attempt (the worker's hook)."""
        key = (task, "ok" if ok else "failed")
        with self._runs_mu:
            hist = self.runs.get(key)
            if hist is None:
                hist = self.runs[key] = Histogram(RUN_BUCKETS)
        hist.observe(seconds)

    def families(self) -> list[Family]:
        """The current values as plain data."""
        stats = self.queue.stats()
        return families(
            QueueStats.of(stats),
            worker=self.worker.status() if self.worker is not None else None,
            fsync=self._fsync_value(stats),
            runs={k: h.snapshot() for k, h in list(self.runs.items())},
            namespace=self.namespace,
        )

    def _fsync_value(self, stats: Mapping[str, Any]) -> HistogramValue | None:
        if self.fsync_hooked:
            return self.fsync.snapshot()
        log = getattr(self.queue, "_log", None)
        count = getattr(log, "fsyncs", stats.get("fsyncs"))
        seconds = getattr(log, "sync_seconds", None)
        if not isinstance(count, int) or not isinstance(seconds, float):
            return None
        # No per-fsync observations without the hook: only the count and the sum.
        return HistogramValue(((float("inf"), count),), count, seconds)

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol."""
        for family in self.families():
            yield to_prometheus(family)

    def register(self, registry: Any | None = None) -> QueueCollector:
        """Register with `registry` (default: prometheus_client's global one)."""
        client = prometheus()
        (registry if registry is not None else client.REGISTRY).register(self)
        return self

    def exposition(self) -> str:
        """The current values in the Prometheus text format."""
        return exposition(self.families())


def _chain(target: Any, attr: str, fn: Callable[..., None]) -> bool:
    """Set `target.attr` to call `fn` after any hook already there; False if no such hook."""
    if target is None or not hasattr(target, attr):
        return False
    previous = getattr(target, attr)
    if previous is None:
        setattr(target, attr, fn)
    else:

        def both(*args: Any) -> None:
            previous(*args)
            fn(*args)

        setattr(target, attr, both)
    return True


# -- job context on log records ------------------------------------------------------------

# walq's messages about a job start "job %d" or "job %d (%s)" (id, then task).
_JOB_MSG = re.compile(r"^job %d(?: \(%s\))?")


class JobContext(logging.Filter):
    """Give every log record `job_id` and `task` attributes (None when not about a job).

    Taken from `extra={"job_id": ..., "task": ...}` when the call passed
    them, else from the arguments of a "job %d (%s): ..." message. Attach it
    to a handler so formatters may use %(job_id)s and %(task)s.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = None
            args = record.args if isinstance(record.args, tuple) else ()
            m = _JOB_MSG.match(record.msg) if isinstance(record.msg, str) else None
            if m is not None and args and isinstance(args[0], int):
                record.job_id = args[0]
                if m.group(0).endswith("(%s)") and len(args) > 1 and not hasattr(record, "task"):
                    record.task = str(args[1])
        if not hasattr(record, "task"):
            record.task = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, task, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job_id", "task"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(level: str | int = "INFO", *, json_lines: bool = False) -> logging.Handler:
    """Log to stderr with job context: text lines, or JSON lines for a log shipper."""
    handler = logging.StreamHandler()
    handler.addFilter(JobContext())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
