"""walq.metrics: metric values as plain data, their Prometheus text, and job context in logs."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from typing import Any

import pytest

import walq
from walq import metrics
from walq.metrics import Histogram, HistogramValue, JobContext, JsonFormatter, QueueCollector
from walq.ops import stats as ops_stats


def by_name(fams: list[metrics.Family]) -> dict[str, metrics.Family]:
    return {f.name: f for f in fams}


def parse(text: str) -> dict[str, Any]:
    """Prometheus text -> {name: family} through the client's own parser."""
    parser = pytest.importorskip("prometheus_client.parser")
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


class TestHistogram:
    """The histogram behind fsync latency and job run time."""

    def test_buckets_are_cumulative_and_end_at_inf(self) -> None:
        """Each observation lands in the first bound >= it; +Inf holds the count."""
        h = Histogram([0.1, 1.0])
        for v in (0.05, 0.1, 0.5, 2.0, 3.0):
            h.observe(v)
        snap = h.snapshot()
        assert snap.buckets == ((0.1, 2), (1.0, 3), (float("inf"), 5))
        assert snap.count == 5 and snap.sum == pytest.approx(5.65)

    def test_concurrent_observations_are_all_counted(self) -> None:
        """Observed from many threads at once, nothing is lost."""
        h = Histogram(metrics.FSYNC_BUCKETS)

        def work() -> None:
            for _ in range(2000):
                h.observe(0.001)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert h.snapshot().count == 8000


class TestFamilies:
    """The metric values, computed from stats without prometheus_client."""

    def test_from_queue_stats(self, qdir: str) -> None:
        """Gauges by state and task, counters since open, log size."""
        with walq.Queue.open(qdir, compaction=False) as q:
            ids = q.enqueue_many([("mail", {}), ("mail", {}), ("resize", {})])
            q.claim()
            q.ack(ids[0])
            q.claim()
            q.fail(ids[1], "x", permanent=True)
            fams = by_name(metrics.families(q.stats()))
        jobs = dict(fams["walq_jobs"].samples)
        assert jobs[("pending",)] == 1 and jobs[("dead",)] == 1 and jobs[("running",)] == 0
        assert dict(fams["walq_task_jobs"].samples)[("resize", "pending")] == 1
        assert fams["walq_jobs_enqueued"].kind == "counter"
        assert fams["walq_jobs_enqueued"].samples[0][1] == 3
        assert fams["walq_jobs_acked"].samples[0][1] == 1
        assert fams["walq_jobs_dead"].samples[0][1] == 1
        assert fams["walq_log_segments"].samples[0][1] == 1

    def test_from_the_files_read_by_walq_stats(self, qdir: str) -> None:
        """The offline numbers: no counters since open, but ages, garbage and the owner."""
        with walq.Queue.open(qdir, compaction=False) as q:
            q.enqueue("mail", {})
        fams = by_name(metrics.families(ops_stats.directory_stats(qdir)))
        assert "walq_jobs_enqueued" not in fams
        assert fams["walq_owner_running"].samples[0][1] == 0.0
        assert "walq_oldest_pending_age_seconds" in fams and "walq_log_garbage_ratio" in fams

    def test_worker_status_gives_counters_and_breaker_states(self) -> None:
        """One gauge per breaker state, 1 for the current one; worker counters."""
        status = {"processes": 3, "counters": {"ok": 7, "crashes": 1},
                  "tasks": {"mail": {"running": 2, "breaker": "half-open"},
                            "sms": {"running": 0, "breaker": "off"}}}  # fmt: skip
        fams = by_name(metrics.families({}, worker=status))
        states = dict(fams["walq_breaker_state"].samples)
        assert states == {("mail", "closed"): 0.0, ("mail", "open"): 0.0,
                          ("mail", "half-open"): 1.0}  # fmt: skip
        assert fams["walq_worker_ok"].samples[0][1] == 7
        assert dict(fams["walq_task_running"].samples)[("mail",)] == 2
        assert fams["walq_worker_processes"].samples[0][1] == 3


class TestExposition:
    """The Prometheus text format, through prometheus_client."""

    def test_exposition_parses_with_the_values(self) -> None:
        """Counters get _total; histograms get buckets, count and sum."""
        pytest.importorskip("prometheus_client")
        fsync = HistogramValue(((0.001, 3), (float("inf"), 4)), 4, 0.01)
        fams = metrics.families({"pending": 5, "enqueued": 9}, fsync=fsync,
                                runs={("mail", "ok"): fsync})  # fmt: skip
        parsed = parse(metrics.exposition(fams))
        assert parsed["walq_jobs_enqueued"].samples[0].value == 9
        assert parsed["walq_jobs_enqueued"].samples[0].name == "walq_jobs_enqueued_total"
        hist = {(s.name, s.labels.get("le")): s.value for s in parsed["walq_fsync_seconds"].samples}
        assert hist[("walq_fsync_seconds_bucket", "0.001")] == 3
        assert hist[("walq_fsync_seconds_count", None)] == 4
        run = parsed["walq_job_run_seconds"].samples[0]
        assert run.labels["task"] == "mail" and run.labels["outcome"] == "ok"

    def test_collector_over_a_live_queue(self, qdir: str) -> None:
        """Registered in a registry, each scrape reads the queue's stats at that moment."""
        client = pytest.importorskip("prometheus_client")
        registry = client.CollectorRegistry()
        with walq.Queue.open(qdir, compaction=False) as q:
            QueueCollector(q).register(registry)
            q.enqueue_many([("mail", {})] * 4)
            first = parse(client.generate_latest(registry).decode())
            q.enqueue("mail", {})
            second = parse(client.generate_latest(registry).decode())
        assert first["walq_jobs_enqueued"].samples[0].value == 4
        assert second["walq_jobs_enqueued"].samples[0].value == 5
        fsync = {s.name: s.value for s in second["walq_fsync_seconds"].samples}
        assert fsync["walq_fsync_seconds_count"] >= 2

    def test_missing_prometheus_client_is_a_clear_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the extra: MetricsUnavailable naming walq[metrics]."""
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        with pytest.raises(metrics.MetricsUnavailable, match=r"walq\[metrics\]"):
            metrics.exposition([])
        with pytest.raises(metrics.MetricsUnavailable):
            QueueCollector(object())


class FakeLog:
    def __init__(self, hooked: bool) -> None:
        self.fsyncs = 2
        self.sync_seconds = 0.5
        if hooked:
            self.on_sync: Any = None


class FakeQueue:
    def __init__(self, hooked: bool) -> None:
        self._log = FakeLog(hooked)

    def stats(self) -> dict[str, Any]:
        return {"pending": 1, "fsyncs": self._log.fsyncs}


class FakeWorker:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, bool]] = []
        self.on_job_done: Any = lambda task, seconds, ok: self.seen.append((task, seconds, ok))

    def status(self) -> dict[str, Any]:
        return {"processes": 1, "counters": {}, "tasks": {}}


class TestHooks:
    """The collector fills its histograms through the log's and the worker's hooks."""

    def test_fsync_hook_fills_the_histogram(self) -> None:
        """With Log.on_sync, every fsync is an observation in its bucket."""
        pytest.importorskip("prometheus_client")
        q = FakeQueue(hooked=True)
        c = QueueCollector(q)
        assert c.fsync_hooked
        q._log.on_sync(0.0015)
        fsync = by_name(c.families())["walq_fsync_seconds"].samples[0][1]
        assert isinstance(fsync, HistogramValue) and fsync.count == 1
        assert dict(fsync.buckets)[0.002] == 1 and dict(fsync.buckets)[0.001] == 0

    def test_without_the_hook_count_and_sum_come_from_the_log(self) -> None:
        """No Log.on_sync: one +Inf bucket, with the log's fsync count and total seconds."""
        pytest.importorskip("prometheus_client")
        c = QueueCollector(FakeQueue(hooked=False))
        assert not c.fsync_hooked
        fsync = by_name(c.families())["walq_fsync_seconds"].samples[0][1]
        assert fsync == HistogramValue(((float("inf"), 2),), 2, 0.5)

    def test_job_hook_chains_the_one_already_set(self) -> None:
        """Worker.on_job_done: run times by task and outcome; an earlier hook still runs."""
        pytest.importorskip("prometheus_client")
        w = FakeWorker()
        c = QueueCollector(FakeQueue(hooked=False), w)
        assert c.runs_hooked
        w.on_job_done("mail", 0.2, True)
        w.on_job_done("mail", 3.0, False)
        assert w.seen == [("mail", 0.2, True), ("mail", 3.0, False)]
        runs = dict(by_name(c.families())["walq_job_run_seconds"].samples)
        assert runs[("mail", "ok")].count == 1 and runs[("mail", "failed")].sum == 3.0  # type: ignore[union-attr]


# -- logs ------------------------------------------------------------------------------------------


def record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("walq.queue", logging.WARNING, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


class TestLogs:
    """Job id and task on every record about a job."""

    def test_job_context_from_the_message(self) -> None:
        """ "job %d (%s): ..." gives job_id and task; "job %d: ..." the id only."""
        f = JobContext()
        rec = record("job %d (%s): %s", 7, "mail", "timeout")
        assert f.filter(rec) and (rec.job_id, rec.task) == (7, "mail")  # type: ignore[attr-defined]
        rec = record("job %d: lease expired", 8)
        f.filter(rec)
        assert (rec.job_id, rec.task) == (8, None)  # type: ignore[attr-defined]
        rec = record("compacted %d segments", 3)
        f.filter(rec)
        assert (rec.job_id, rec.task) == (None, None)  # type: ignore[attr-defined]

    def test_extra_wins_over_the_message(self) -> None:
        """extra={"job_id": ..., "task": ...} passed by the caller is kept."""
        rec = record("job %d (%s): x", 7, "mail", job_id=9, task="sms")
        JobContext().filter(rec)
        assert (rec.job_id, rec.task) == (9, "sms")  # type: ignore[attr-defined]

    def test_json_lines(self) -> None:
        """JsonFormatter: one object per line with the context."""
        rec = record("job %d (%s): failed", 7, "mail")
        JobContext().filter(rec)
        out = json.loads(JsonFormatter().format(rec))
        assert out["job_id"] == 7 and out["task"] == "mail"
        assert out["message"] == "job 7 (mail): failed" and out["level"] == "WARNING"

    def test_a_real_walq_message_carries_its_job(self, qdir: str) -> None:
        """A lease expiring in a real queue logs a record with the job's id."""
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.addFilter(JobContext())
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("walq")
        level = logger.level
        logger.setLevel(logging.INFO)  # whatever an earlier test (the fuzzer) set it to
        logger.addHandler(handler)
        try:
            with walq.Queue.open(qdir, compaction=False) as q:
                jid = q.enqueue("mail", {})
                q.claim(lease=0.01)
                time.sleep(0.05)
                assert q.status(jid) == "pending"
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert any(x.get("job_id") == jid and "lease expired" in x["message"] for x in lines)

    def test_configure_logging_installs_one_handler(self) -> None:
        """configure_logging: a stderr handler with the filter and the chosen format."""
        root = logging.getLogger()
        level = root.level
        handler = metrics.configure_logging("warning", json_lines=True)
        try:
            assert handler in root.handlers and root.level == logging.WARNING
            assert isinstance(handler.formatter, JsonFormatter)
            assert any(isinstance(f, JobContext) for f in handler.filters)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
