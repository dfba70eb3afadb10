"""The text the `walq` command prints: dump lines, stats, fsck reports, dead jobs.

Each function turns walq.ops's data into lines; the commands only echo them.
Nothing printed comes from a file or a server without walq.core.text's
escaping (`shown`, `quoted`).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import click

from walq.core.text import quoted, shown, shown_lines
from walq.ops.admin import Compacted
from walq.ops.dead import DeadInfo
from walq.ops.owner import Owner
from walq.ops.repair import FsckReport
from walq.ops.scan import Progress
from walq.ops.stats import QueueStats

SPOOLED_NOTE = "ingested when an owner starts or answers"
BREAKER_COLOURS = {"open": "red", "half-open": "yellow", "closed": "green"}


def emit_json(obj: Any) -> None:
    """One JSON document on one line."""
    click.echo(json.dumps(obj, sort_keys=True, default=str))


def echo_lines(lines: Iterable[str]) -> None:
    """Print each of `lines`."""
    for line in lines:
        click.echo(line)


@contextlib.contextmanager
def progress(label: str) -> Iterator[Progress | None]:
    """A progress callback drawing click's bar on stderr if it is a terminal; else None."""
    err = sys.stderr
    if not err.isatty():
        yield None
        return
    with click.progressbar(length=1, label=label, file=err, show_pos=True) as bar:

        def update(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield update


def size(n: float) -> str:
    """A number of bytes for people (B, KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def age(seconds: float) -> str:
    """A duration for people (s, min, h, days)."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def when(seconds: float) -> str:
    """A time as local ISO 8601 (a number if no calendar holds it)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):  # a due time beyond any calendar (old logs)
        return f"{seconds:g}"


# -- dump --------------------------------------------------------------------------------

TYPE_COLOURS = {
    "enqueue": "green",
    "job": "green",
    "claim": "cyan",
    "ack": "blue",
    "fail": "yellow",
    "release": "cyan",
    "attempt": "cyan",
    "cancel": "magenta",
    "requeue": "magenta",
    "purge": "magenta",
    "meta": "white",
    "schedule": "white",
    "unique": "white",
    "keep": "white",
    "notice": "magenta",
    "spooled": "yellow",
}
LEADING = ("job", "task", "attempt", "counted", "key", "state", "dead")  # first, in this order
TRAILING = ("error", "payload")  # last, unquoted, in this order
HIDDEN = ("segment", "seq", "offset", "type", "size", "jobs", "attempts", "counts", "tasks",
          "payload_kind", "payload_bytes", "file", "starts", "durations", "pids")  # fmt: skip
TIMES = ("created", "due", "last", "until", "started")


def dump_line(row: dict[str, Any], *, full: bool = False) -> str:
    """One dump row as one line of text (JSON keeps every field; this keeps the useful ones)."""
    kind = row["type"]
    head = f"{'spool':<11}" if kind == "spooled" else f"{row['seq']}:{row['offset']:<9} "
    if kind in ("damage", "torn-tail"):
        hexed = " ".join(row["hex"][i : i + 2] for i in range(0, len(row["hex"]), 2))
        more = "..." if row["length"] * 2 > len(row["hex"]) else ""
        label = "DAMAGE" if kind == "damage" else "TAIL"
        what = "" if kind == "damage" else " unfinished (a writer at work, or a crash tore it)"
        text = f"{label:<9} {row['length']} bytes{what}: {row['reason']} [{hexed}{more}]"
        return head + click.style(text, fg="red" if kind == "damage" else "yellow", bold=True)
    if kind == "notice":
        return head + click.style(f"{'NOTICE':<9} {row['text']}", fg="magenta")
    parts = [click.style(f"{kind:<9}", fg=TYPE_COLOURS.get(kind))]
    if "jobs" in row and "job" not in row:
        parts.append("jobs=" + ",".join(str(j) for j in row["jobs"]))
        for key, label in (("attempts", "attempts"), ("counts", "counted"), ("tasks", "tasks"),
                           ("pids", "pids"), ("durations", "seconds")):  # fmt: skip
            if key in row:
                parts.append(f"{label}=" + ",".join(str(v) for v in row[key]))
        if "starts" in row:
            parts.append("started=" + ",".join(when(v) for v in row["starts"]))
    rest = [k for k in row if k not in LEADING and k not in TRAILING and k not in HIDDEN]
    for key in (*LEADING, *rest):
        value = row.get(key)
        if value is None or (key == "priority" and value == 0):
            continue
        if key in TIMES and isinstance(value, float):
            parts.append(f"{key}={when(value)}")
        else:
            parts.append(f"{key}={quoted(value) if isinstance(value, str) else value}")
    for key in TRAILING:
        value = row.get(key)
        if value is None:
            continue
        text = str(value)
        if key == "error" and not full and "\n" in text:
            lines = text.count("\n")
            text = text.split("\n", 1)[0] + f" (+{lines} lines: --full shows them)"
        # A traceback, indented under its record; no line reaches the terminal raw.
        text = shown_lines(text.rstrip("\n")).replace("\n", "\n    ")
        if key == "payload" and row.get("payload_kind") == "bytes":
            text = f"<{row.get('payload_bytes')} bytes> {text}"
        parts.append(f"{key}={text}")
    return head + " ".join(parts)


# -- stats ------------------------------------------------------------------------------


def stats_lines(st: QueueStats) -> list[str]:
    """`walq stats` as text, for any backend: one topic a line, where the backend has it."""
    server = st.server
    lines = [f"queue     {st.where}" + (f" ({server.name} {server.version})" if server else "")]
    if st.owner is not None:
        lines.append(f"owner     {_owner(st.owner)}")
    if server is not None:
        lines.append(f"durable   {_durable(server.durable, server.persistence)}")
    jobs = st.jobs
    dead = click.style(f"{jobs['dead']} dead", fg="red" if jobs["dead"] else None)
    lines.append(
        f"jobs      {jobs['pending']} pending, {jobs['scheduled']} scheduled, "
        f"{jobs['running']} running, {dead} ({st.unfinished} unfinished)"
    )
    if st.spooled:
        lines.append(f"spooled   {st.spooled} requests, not counted above ({SPOOLED_NOTE})")
    if st.interrupted:
        lines.append(
            f"          ({st.interrupted} of the pending were running when the owner "
            "stopped: they run again, the attempt counted)"
        )
    if server is not None and (server.due_now or server.expired_leases):
        lines.append(
            f"          ({server.due_now} scheduled are due and {server.expired_leases} leases "
            "have expired: the next claim moves them to pending)"
        )
    if st.oldest_pending is not None:
        job, waited = st.oldest_pending
        since = "" if waited is None else f", enqueued {age(waited)} ago"
        lines.append(f"oldest    pending job {job}{since}")
    if st.next_due_in is not None:
        lines.append(f"next due  in {age(st.next_due_in)}")
    if st.done is not None:
        next_id = "" if st.next_id is None else f"; next id {st.next_id}"
        lines.append(f"done      {st.done} acked{st.done_since}{next_id}")
    lines += _task_lines(st)
    if st.paused:
        lines.append(
            f"paused    {', '.join(shown(t) for t in st.paused)}"
            " (their pending jobs are not claimed)"
        )
    if st.counters:
        lines.append("counters  " + ", ".join(f"{c} {st.counters[c]}" for c in st.counters))
    lines += _file_lines(st)
    if st.checkpoint is not None:
        lines.append(_checkpoint_line(st.checkpoint))
    if st.compactor:
        lines.append(click.style(f"compactor {st.compactor['text']}", fg="red", bold=True))
    if not st.workers:
        lines.append("worker    unknown (none reported in the last 30 s)")
    for w in st.workers:
        counters = w.get("counters") or {}
        summary = ", ".join(f"{k} {v}" for k, v in counters.items() if v)
        host = f"{shown(str(w['host']))} " if w.get("host") else ""
        old = f", status {w['age']:.0f} s old" if w.get("age") is not None else ""
        lines.append(
            f"worker    {host}pid {w.get('pid')}, {w.get('processes')} processes{old}"
            + (f"; {summary}" if summary else "")
        )
    return lines


def _owner(own: Owner) -> str:
    if own.running is None:
        return "unknown (cannot read /proc/locks)"
    if own.running:
        pid = f" (pid {own.pid})" if own.pid else ""
        return click.style("running", fg="green") + pid
    return "none"


def _durable(durable: bool, persistence: Any) -> str:
    if durable:
        return "yes (appendonly yes, appendfsync always)"
    return (
        f"NO (appendonly {persistence.get('appendonly', '?')}, "
        f"appendfsync {persistence.get('appendfsync', '?')})"
    )


def _task_lines(st: QueueStats) -> list[str]:
    if not st.tasks:
        return []
    lines = [
        f"tasks     {'TASK':<20} {'PENDING':>8} {'SCHEDULED':>9} {'RUNNING':>8} "
        f"{'DEAD':>6}  BREAKER"
    ]
    for name, c in st.tasks.items():
        state = (st.breakers or {}).get(name, "unknown")
        lines.append(
            f"          {shown(name):<20} {c['pending']:>8} {c['scheduled']:>9} "
            f"{c['running']:>8} {c['dead']:>6}  {click.style(state, fg=BREAKER_COLOURS.get(state))}"
        )
    return lines


def _file_lines(st: QueueStats) -> list[str]:
    """A queue directory's files: the log, damage, tail, spool and cut/."""
    lines = []
    log = st.log
    if log is not None and log.log_bytes is not None:
        lines.append(
            f"log       {log.segments} segments, {size(log.disk_bytes)} of files, "
            f"{size(log.log_bytes)} written, {size(st.live_bytes)} live; "
            f"garbage {log.garbage_ratio or 0:.0%} "
            f"(sealed segments {log.sealed_garbage_ratio or 0:.0%})"
        )
    if st.damage is not None:
        if st.damaged:
            lines.append(
                click.style(f"damage    {st.damaged} damaged ranges", fg="red", bold=True)
                + ": run `walq fsck` for details"
            )
            lines += [f"          {d}" for d in st.damage]
        else:
            lines.append("damage    none")
    if log is not None and log.tail_bytes:
        lines.append(
            f"tail      {log.tail_bytes} bytes unfinished (a writer at work, or a crash: "
            "cut on the next open)"
        )
    for aside in st.spool_set_aside:
        why = shown(aside["reason"]) if aside["reason"] else "(no reason)"
        lines.append(f"spool     set aside: {aside['file']}: {why}")
    if log is not None and log.cut_files:
        lines.append(f"cut/      {log.cut_files} files of bytes cut by recovery or repair")
    return lines


# -- fsck, compact, dead ----------------------------------------------------------------


def _checkpoint_line(cp: Mapping[str, Any]) -> str:
    """`checkpoint 12 s old, covers the log to segment 3 offset 4096 (1000 jobs)`, or why not."""
    if "error" in cp:
        return f"checkpoint unreadable ({cp['error']}): open replays the whole log"
    return (
        f"checkpoint {age(cp['age'])} old, covers the log to segment {cp['seq']} "
        f"offset {cp['offset']} ({cp['jobs']} jobs); `walq fsck` checks it agrees with the log"
    )


def fsck_lines(
    directory: str,
    report: FsckReport,
    *,
    repair: bool,
    repaired: list[str],
    after: FsckReport | None,
) -> list[str]:
    """`walq fsck [--repair]` as text: the problems, then the verdict and what to do."""
    lines = [click.style("DAMAGE  ", fg="red", bold=True) + p for p in report.problems]
    lines += [click.style("warning ", fg="yellow") + w for w in report.warnings]
    if report.lost is not None and not repaired:  # a repair lists them itself
        lines += [click.style("LOST    ", fg="red", bold=True) + x for x in report.lost.lines()]
    lines += [click.style("repaired ", fg="green") + r for r in repaired]
    if report.checkpoint is not None:
        lines.append("checkpoint " + report.checkpoint)
    verdict = (
        click.style("clean", fg="green")
        if report.clean
        else click.style(f"{len(report.problems)} problem(s)", fg="red", bold=True)
    )
    lines.append(f"{report.segments} segments, {report.records} records: {verdict}")
    if after is not None:
        now = "clean" if after.clean else f"{len(after.problems)} problem(s) remain"
        lines.append(f"after repair: {after.segments} segments, {after.records} records: {now}")
    if not report.clean and not repair:
        lines.append(
            f"to repair: stop the owner, then run `walq fsck --repair {directory}` "
            "(what it cuts is kept in cut/)"
        )
    return lines


def compact_lines(r: Compacted) -> list[str]:
    """`walq compact` as text: what was compacted, and the files before and after."""
    if not r.segments_in:
        done = (
            "nothing to compact: no sealed segments (the segment being written is "
            "compacted once it fills and is sealed)"
        )
    else:
        done = (
            f"compacted {r.segments_in} sealed segments: {size(r.bytes_in)} -> "
            f"{size(r.bytes_out)}, {r.jobs} live jobs kept, {r.seconds:.2f} s"
        )
    files = (
        f"segment files: {r.segments_before} -> {r.segments_after}, "
        f"{size(r.disk_before)} -> {size(r.disk_after)}"
    )
    return [done, files]


def schedule_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`walq schedules`: one line per schedule, its timetable, last and next tick (local time)."""
    if not rows:
        return ["no schedules recorded"]
    lines = []
    for row in rows:
        if "cron" in row:
            table = f"cron {row['cron']!r} ({row.get('tz', 'UTC')})"
        elif "every" in row:
            table = f"every {row['every']:g} s"
        else:
            table = "(timetable unknown)"
        nxt = "unknown (cron= needs walq[cron])" if row["next"] is None else when(row["next"])
        if row.get("overdue"):
            nxt += " (overdue: no owner is enqueueing its ticks)"
        lines.append(
            f"{row['name']}: {table}, task {row.get('task', '?')}, "
            f"misfire={row.get('misfire', '?')}; last tick {when(row['last'])}, next {nxt}"
        )
    return lines


def job_lines(d: Mapping[str, Any]) -> list[str]:
    """`walq status DIR ID` as text: the job's state and, while it is live, its detail."""
    lines = [f"job       {d['id']}", f"status    {d['status']}"]
    if d.get("cause"):
        lines.append(f"cause     {shown(str(d['cause']))}")
    if "task" not in d:
        return lines
    lines += [
        f"task      {shown(str(d['task']))}",
        f"attempts  {d['attempts']} of {d['max_attempts']}",
        f"priority  {d['priority']}",
        f"key       {'-' if d.get('key') is None else shown(str(d['key']))}",
    ]
    if d.get("due_in") is not None:
        lines.append(f"due       in {age(float(d['due_in']))}")
    if d.get("lease_left") is not None:
        lines.append(f"lease     {age(float(d['lease_left']))} left")
    if d.get("worker") is not None:
        lines.append(f"worker    pid {d['worker']}")
    if d.get("progress") is not None:
        lines.append(f"progress  {d['progress']}")
    if d.get("error"):
        lines.append(click.style("error", fg="red"))
        lines.append("  " + shown_lines(str(d["error"]).rstrip()).replace("\n", "\n  "))
    return lines


def attempt_lines(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """The job's attempts from its records (walq.ui.history): outcome, worker, process, time."""
    lines = []
    for st in steps:
        if st.get("kind") != "attempt":
            continue
        text = f"  {st.get('attempt') or '?':>3}  {st.get('outcome', ''):<9}"
        rep = st.get("reported")
        if rep:
            proc = f"process {rep['process']}" if rep.get("process") else "not started"
            host = f" on {shown(str(rep['host']))}" if rep.get("host") else ""
            start = rep.get("started")
            span = f", started {when(float(start))}" if start else ""
            took = f"{float(rep['seconds']):.3f} s"
            text += f" worker {rep.get('worker')}{host}, {proc}, {took}{span}"
        else:
            text += " worker and time not recorded"
        if st.get("summary"):
            text += f": {shown(str(st['summary']))}"
        lines.append(text)
    return ["attempts (from the log)", *lines] if lines else []


def jobs_table(rows: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """`walq jobs` as text: a row per job, and how to ask for the next page."""
    if not rows:
        return ["no jobs"]
    lines = [f"{'ID':>8}  {'STATUS':<9} {'TASK':<20} {'ATTEMPTS':>8}  {'PRIO':>5}  KEY"]
    for r in rows:
        key = "-" if r.get("key") is None else shown(str(r["key"]))
        lines.append(
            f"{r['id']:>8}  {r['status']:<9} {shown(str(r['task'])):<20} {r['attempts']:>8}"
            f"  {r['priority']:>5}  {key}"
        )
    if len(rows) >= limit:
        lines.append(f"more may follow: --after {rows[-1]['id']}")
    return lines


def dead_table(jobs: list[DeadInfo]) -> list[str]:
    """`walq dead list` as text: a row per job, the first line of its error."""
    if not jobs:
        return ["no dead jobs"]
    lines = [f"{'ID':>8}  {'TASK':<20} {'ATTEMPTS':>8}  {'KEY':<16} ERROR"]
    for d in jobs:
        error = shown(d.error.split("\n", 1)[0])
        key = "-" if d.key is None else shown(d.key)
        lines.append(f"{d.id:>8}  {shown(d.task):<20} {d.attempts:>8}  {key:<16} {error}")
    lines.append(
        f"{len(jobs)} dead jobs: `walq dead show DIR ID` for one job's payload and traceback"
    )
    return lines


def dead_detail(d: DeadInfo) -> list[str]:
    """`walq dead show` as text: the job, its payload, and its error with the traceback."""
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created)) if d.created else "-"
    payload = d.payload_text()
    if d.payload_kind == "json":
        with contextlib.suppress(ValueError):
            payload = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    return [
        f"job       {d.id}",
        f"task      {shown(d.task)}",
        f"attempts  {d.attempts}",
        f"key       {'-' if d.key is None else shown(d.key)}",
        f"enqueued  {created}",
        f"payload   ({d.payload_kind}, {len(d.payload)} bytes)",
        "  " + shown_lines(payload).replace("\n", "\n  "),
        click.style("error", fg="red"),
        "  " + shown_lines((d.error or "(none recorded)").rstrip()).replace("\n", "\n  "),
    ]
