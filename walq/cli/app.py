"""The `walq` command: parses arguments and prints; the work lives in walq.ops.inspect.

Exit codes (docs/OPERATIONS.md): 0 clean, 1 damage or failure found, 2 usage
error or cannot open (no such queue, an owner holds the lock, an unknown job).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click

from walq import backends, errors
from walq.core.text import quoted, shown, shown_lines
from walq.directory.queue import RECOVERY_MODES
from walq.errors import (
    ArgumentError,
    LockedError,
    NotAQueueError,
    StateError,
    UnknownJobError,
    UnsafeDirectoryError,
    WalqError,
)
from walq.metrics import MetricsUnavailable
from walq.ops import inspect as insp
from walq.redisq import queue as redisq  # cheap: redis-py itself is imported only when used
from walq.worker.pool import DEFAULT_PREFETCH

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CLEAN, EXIT_DAMAGE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
SPOOLED_NOTE = "ingested when an owner starts or answers"

# Errors that mean "you asked for something that cannot be done", not damage.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    NotAQueueError,
    UnsafeDirectoryError,
    LockedError,
    ArgumentError,
    UnknownJobError,
    StateError,
    MetricsUnavailable,
    errors.BackendError,
    errors.MissingDependency,
)


def no_color() -> bool:
    """Whether NO_COLOR (https://no-color.org) is set to anything but the empty string."""
    return bool(os.environ.get("NO_COLOR"))


def fail(message: str, code: int = EXIT_USAGE, *, detail: str | None = None) -> NoReturn:
    """Print a one-line error on stderr (after `detail`, say a user's traceback) and exit."""
    if detail:
        click.echo(detail.rstrip("\n"), err=True)
    line = " ".join(message.split("\n", 1)[0].split())
    colour = False if no_color() else None
    click.echo(click.style(f"walq: {line}", fg="red"), err=True, color=colour)
    sys.exit(code)


def usage_line(exc: click.UsageError) -> str:
    """Click's usage error as one line, pointing at the command's --help."""
    message = exc.format_message().rstrip(".")
    if exc.ctx is None:
        return message
    return f"{message} (see '{exc.ctx.command_path} --help')"


# A group called with no arguments: click 8.2+ raises this to show its help; 8.1 shows it itself.
NO_ARGS_HELP: tuple[type[click.UsageError], ...] = tuple(
    e for e in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if e is not None
)


class WalqGroup(click.Group):
    """The `walq` command group: the one home of how click's own errors are shown.

    Click prints its usage errors as several lines (usage, hint, error); here
    they become one `walq: ...` line with click's exit code (2 for usage),
    like every other error. NO_COLOR turns colours off for every command.
    """

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if no_color():
            extra.setdefault("color", False)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NO_ARGS_HELP as exc:
            exc.show()  # `walq` or `walq dead` alone: the help, as click shows it
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            fail(usage_line(exc), exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", EXIT_DAMAGE)
        sys.exit(code if isinstance(code, int) else EXIT_CLEAN)


class DeadGroup(click.Group):
    """`walq dead`: its commands come before the directory (`walq dead list DIR`)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if len(args) > 1 and args[0] not in self.commands and args[1] in self.commands:
            raise click.UsageError(
                f"the command comes first: walq dead {args[1]} {args[0]} ...", ctx
            )
        return super().resolve_command(ctx, args)


def guarded(fn: F) -> F:
    """Turn every error into a one-line message and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except USAGE_ERRORS as exc:
            fail(str(exc), EXIT_USAGE, detail=getattr(exc, "detail", None))
        except WalqError as exc:
            fail(str(exc), EXIT_DAMAGE)
        except BrokenPipeError:
            # The reader went away (`walq dump DIR | head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_CLEAN)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}", EXIT_USAGE)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:
            if os.environ.get("WALQ_TRACEBACK"):
                raise
            fail(
                f"internal error: {type(exc).__name__}: {exc} (set WALQ_TRACEBACK=1 to see where)",
                EXIT_DAMAGE,
            )

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """One JSON document on one line."""
    click.echo(json.dumps(obj, sort_keys=True, default=str))


@contextlib.contextmanager
def progress(label: str) -> Iterator[insp.Progress | None]:
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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@click.group(
    cls=WalqGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(package_name="walq")
def main() -> None:
    """walq: a crash-safe job queue that lives in one directory.

    dump, stats, fsck and `dead list|show` only read: they take no lock and
    work beside a running owner. Exit codes: 0 clean, 1 damage or failure
    found, 2 usage error or cannot open.
    """


# -- dump -------------------------------------------------------------------------------

TYPE_COLOURS = {
    "enqueue": "green",
    "job": "green",
    "claim": "cyan",
    "ack": "blue",
    "fail": "yellow",
    "release": "cyan",
    "cancel": "magenta",
    "requeue": "magenta",
    "purge": "magenta",
    "meta": "white",
    "notice": "magenta",
    "spooled": "yellow",
}
LEADING = ("job", "task", "attempt", "counted", "key", "state", "dead")  # first, in this order
TRAILING = ("error", "payload")  # last, unquoted, in this order
HIDDEN = ("segment", "seq", "offset", "type", "size", "jobs", "attempts", "counts", "tasks",
          "payload_kind", "payload_bytes", "file")  # fmt: skip
TIMES = ("created", "due")


def _when(seconds: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):  # a due time beyond any calendar (old logs)
        return f"{seconds:g}"


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
        for key, label in (("attempts", "attempts"), ("counts", "counted"), ("tasks", "tasks")):
            if key in row:
                parts.append(f"{label}=" + ",".join(str(v) for v in row[key]))
    rest = [k for k in row if k not in LEADING and k not in TRAILING and k not in HIDDEN]
    for key in (*LEADING, *rest):
        value = row.get(key)
        if value is None or (key == "priority" and value == 0):
            continue
        if key in TIMES and isinstance(value, float):
            parts.append(f"{key}={_when(value)}")
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


def _range(
    start: str | None, end: str | None, segment: str | None, offset_from: int | None,
    offset_to: int | None,
) -> tuple[insp.Position | None, insp.Position | None]:  # fmt: skip
    if segment is None:
        if offset_from is not None or offset_to is not None:
            raise ArgumentError("--start and --end are offsets within --segment: give --segment")
        return (
            None if start is None else insp.parse_position(start),
            None if end is None else insp.parse_position(end),
        )
    if start is not None or end is not None:
        raise ArgumentError("give --from/--to or --segment/--start/--end, not both")
    seq = insp.parse_position(segment)[0]
    return (seq, offset_from or 0), (seq, offset_to) if offset_to is not None else (seq + 1, 0)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--job", "job_id", type=int, help="Only records about this job id.")
@click.option("--task", help="Only records about jobs of this task.")
@click.option(
    "--type", "types", multiple=True, help="Only records of this type (repeat, or a,b,c)."
)
@click.option("--from", "start", metavar="SEG:OFF", help="Start at this position (inclusive).")
@click.option("--to", "end", metavar="SEG:OFF", help="Stop before this position.")
@click.option("--segment", metavar="SEG", help="Only this segment (number or file name).")
@click.option("--start", "offset_from", type=click.IntRange(0), help="With --segment: from.")
@click.option("--end", "offset_to", type=click.IntRange(0), help="With --segment: before.")
@click.option("--no-payload", is_flag=True, help="Leave payload previews out.")
@click.option("--full", is_flag=True, help="Whole payloads and errors, not previews.")
@click.option("--follow", "-f", is_flag=True, help="Then print new records as they come.")
@click.option("--interval", type=click.FloatRange(0.01), default=0.25, help="--follow poll (s).")
@guarded
def dump(
    directory: str,
    as_json: bool,
    job_id: int | None,
    task: str | None,
    types: tuple[str, ...],
    start: str | None,
    end: str | None,
    segment: str | None,
    offset_from: int | None,
    offset_to: int | None,
    no_payload: bool,
    full: bool,
    follow: bool,
    interval: float,
) -> None:
    """Print every record of the queue in DIRECTORY, damage inline (read-only).

    Then the jobs waiting in the spool (type "spooled": no id or position
    yet; an owner ingests them).

    Positions are SEG:OFFSET as printed at the start of each line. Exit 1 if
    damage was shown (an unfinished tail is not damage).
    """
    first, last = _range(start, end, segment, offset_from, offset_to)
    wanted = frozenset(t.strip() for spec in types for t in spec.split(",") if t.strip())
    flt = insp.DumpFilter(job=job_id, task=task, types=wanted, start=first, end=last)
    dumper = insp.Dumper(payload=not no_payload, full=full)
    damaged = False

    def show(row: dict[str, Any]) -> None:
        nonlocal damaged
        damaged = damaged or row["type"] == "damage"
        click.echo(json.dumps(row, default=str) if as_json else dump_line(row, full=full))

    for row in dumper.rows(directory, flt):
        show(row)
    for row in insp.spooled_rows(directory, payload=not no_payload, full=full):
        if flt.matches(row):
            show(row)
    if follow:
        try:
            for row in insp.follow(directory, dumper.end, dumper=dumper, poll=interval):
                if flt.matches(row):
                    show(row)
        except KeyboardInterrupt:
            sys.exit(EXIT_CLEAN)
    if damaged:
        sys.exit(EXIT_DAMAGE)


# -- stats ------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The numbers as one JSON object.")
@click.option("--prometheus", is_flag=True, help="Prometheus text format (node exporter textfile).")
@guarded
def stats(directory: str, as_json: bool, prometheus: bool) -> None:
    """Counts by state and task, ages, the log's size and garbage, damage (read-only).

    Read from the files without the lock, beside a running owner or none.
    """
    if backends.is_url(directory):
        if prometheus:
            fail("--prometheus reads a queue directory; for Redis, scrape the worker's port")
        st = redisq.inspect_stats(directory)
        if as_json:
            emit_json(st)
        else:
            for line in redisq.stats_lines(st):
                click.echo(line)
        return
    if prometheus:
        from walq import metrics  # noqa: PLC0415 - an optional extra

        metrics.prometheus()  # the install hint before any work
    with progress("reading") as bar:
        st = insp.stats(directory, progress=bar)
    if prometheus:
        click.echo(metrics.exposition(metrics.families(st, worker=st["worker"])), nl=False)
    elif as_json:
        emit_json(st)
    else:
        for line in stats_lines(st):
            click.echo(line)


def stats_lines(st: dict[str, Any]) -> list[str]:
    """`walq stats` as text."""
    own = st["owner"]
    if own["running"] is None:
        owner = "unknown (cannot read /proc/locks)"
    elif own["running"]:
        owner = click.style("running", fg="green") + (f" (pid {own['pid']})" if own["pid"] else "")
    else:
        owner = "none"
    lines = [f"queue     {st['path']}", f"owner     {owner}"]
    dead = click.style(f"{st['dead']} dead", fg="red" if st["dead"] else None)
    lines.append(
        f"jobs      {st['pending']} pending, {st['scheduled']} scheduled, "
        f"{st['running']} running, {dead} ({st['unfinished']} unfinished)"
    )
    if st["spooled"]:
        lines.append(f"spooled   {st['spooled']} requests, not counted above ({SPOOLED_NOTE})")
    if st["interrupted"]:
        lines.append(
            f"          ({st['interrupted']} of the pending were running when the owner "
            "stopped: they run again, the attempt counted)"
        )
    if st["oldest_pending_job"] is not None:
        age = st["oldest_pending_age"]
        when = "" if age is None else f", enqueued {_age(age)} ago"
        lines.append(f"oldest    pending job {st['oldest_pending_job']}{when}")
    if st["next_due_in"] is not None:
        lines.append(f"next due  in {_age(st['next_due_in'])}")
    lines.append(f"done      {st['done_in_log']} acked since the last compaction")
    breakers = st["breakers"]
    if st["tasks"]:
        lines.append(
            f"tasks     {'TASK':<20} {'PENDING':>8} {'SCHEDULED':>9} {'RUNNING':>8} "
            f"{'DEAD':>6}  BREAKER"
        )
        for name, c in st["tasks"].items():
            state = breakers.get(name, "unknown") if isinstance(breakers, dict) else "unknown"
            colour = {"open": "red", "half-open": "yellow", "closed": "green"}.get(state)
            lines.append(
                f"          {shown(name):<20} {c['pending']:>8} {c['scheduled']:>9} "
                f"{c['running']:>8} {c['dead']:>6}  {click.style(state, fg=colour)}"
            )
    lines.append(
        f"log       {st['segments']} segments, {_size(st['disk_bytes'])} of files, "
        f"{_size(st['log_bytes'])} written, {_size(st['bytes'])} live; "
        f"garbage {st['garbage_ratio']:.0%} (sealed segments {st['sealed_garbage_ratio']:.0%})"
    )
    if st["damaged"]:
        lines.append(
            click.style(f"damage    {st['damaged']} damaged ranges", fg="red", bold=True)
            + ": run `walq fsck` for details"
        )
        lines += [f"          {d}" for d in st["damage"]]
    else:
        lines.append("damage    none")
    if st["tail_bytes"]:
        lines.append(
            f"tail      {st['tail_bytes']} bytes unfinished (a writer at work, or a crash: "
            "cut on the next open)"
        )
    for aside in st["spool_set_aside"]:
        why = shown(aside["reason"]) if aside["reason"] else "(no reason)"
        lines.append(f"spool     set aside: {aside['file']}: {why}")
    if st["cut_files"]:
        lines.append(f"cut/      {st['cut_files']} files of bytes cut by recovery or repair")
    if st["compactor"]:
        lines.append(click.style(f"compactor {st['compactor']['text']}", fg="red", bold=True))
    w = st["worker"]
    if w is None:
        lines.append("worker    unknown (no recent worker-status.json)")
    else:
        counters = w.get("counters") or {}
        summary = ", ".join(f"{k} {v}" for k, v in counters.items() if v)
        lines.append(
            f"worker    pid {w.get('pid')}, {w.get('processes')} processes, status "
            f"{w['age']:.0f} s old" + (f"; {summary}" if summary else "")
        )
    return lines


# -- fsck -------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option("--repair", is_flag=True, help="Rewrite damaged segments (originals kept in cut/).")
@guarded
def fsck(directory: str, as_json: bool, repair: bool) -> None:
    """Check every segment and record: exit 0 if clean, 1 if damage was found.

    With --repair (no owner may run), damaged ranges are cut out of their
    segments; each original is kept as DIRECTORY/cut/<segment>.damaged.
    """
    with progress("checking") as bar:
        report = insp.fsck(directory, progress=bar)
    repaired: list[str] = []
    repair_error: str | None = None
    after: insp.FsckReport | None = None
    if repair and not report.clean:
        try:
            repaired = insp.repair(directory)
        except LockedError as exc:
            repair_error = f"cannot repair: {exc}; stop it first"
        else:
            after = insp.fsck(directory)
    if as_json:
        emit_json(
            {
                "segments": report.segments,
                "records": report.records,
                "clean": report.clean,
                "problems": report.problems,
                "warnings": report.warnings,
                "lost": report.lost.as_dict() if report.lost is not None else None,
                "repaired": repaired,
                "repair_error": repair_error,
                "clean_after_repair": None if after is None else after.clean,
            }
        )
    else:
        for p in report.problems:
            click.echo(click.style("DAMAGE  ", fg="red", bold=True) + p)
        for w in report.warnings:
            click.echo(click.style("warning ", fg="yellow") + w)
        if report.lost is not None and not repaired:  # a repair lists them itself
            for line in report.lost.lines():
                click.echo(click.style("LOST    ", fg="red", bold=True) + line)
        for r in repaired:
            click.echo(click.style("repaired ", fg="green") + r)
        verdict = (
            click.style("clean", fg="green")
            if report.clean
            else click.style(f"{len(report.problems)} problem(s)", fg="red", bold=True)
        )
        click.echo(f"{report.segments} segments, {report.records} records: {verdict}")
        if after is not None:
            now = "clean" if after.clean else f"{len(after.problems)} problem(s) remain"
            click.echo(f"after repair: {after.segments} segments, {after.records} records: {now}")
        if not report.clean and not repair:
            click.echo(
                f"to repair: stop the owner, then run `walq fsck --repair {directory}` "
                "(what it cuts is kept in cut/)"
            )
    if repair_error is not None:
        fail(repair_error, EXIT_USAGE)
    if not report.clean:
        sys.exit(EXIT_DAMAGE)  # damage was found, even if --repair mended it


# -- dead -------------------------------------------------------------------------------


@main.group(cls=DeadGroup)
def dead() -> None:
    """Dead-lettered jobs: list and show read-only; requeue and purge need the lock."""


@dead.command("list")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@guarded
def dead_list(directory: str, as_json: bool) -> None:
    """Every dead job: id, task, attempts, key and the first line of its last error."""
    jobs = _dead_jobs(directory)
    if as_json:
        for d in jobs:
            emit_json(d.summary())
        return
    if not jobs:
        click.echo("no dead jobs")
        return
    click.echo(f"{'ID':>8}  {'TASK':<20} {'ATTEMPTS':>8}  {'KEY':<16} ERROR")
    for d in jobs:
        error = shown(d.error.split("\n", 1)[0])
        key = "-" if d.key is None else shown(d.key)
        click.echo(f"{d.id:>8}  {shown(d.task):<20} {d.attempts:>8}  {key:<16} {error}")
    click.echo(
        f"{len(jobs)} dead jobs: `walq dead show DIR ID` for one job's payload and traceback"
    )


@dead.command("show")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
@guarded
def dead_show(directory: str, job_id: int, as_json: bool) -> None:
    """One dead job in full: payload, and the stored error with its traceback."""
    (d,) = _dead_jobs(directory, ids=[job_id])
    if as_json:
        emit_json(d.detail())
        return
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created)) if d.created else "-"
    click.echo(f"job       {d.id}")
    click.echo(f"task      {shown(d.task)}")
    click.echo(f"attempts  {d.attempts}")
    click.echo(f"key       {'-' if d.key is None else shown(d.key)}")
    click.echo(f"enqueued  {created}")
    payload = d.payload_text()
    if d.payload_kind == "json":
        with contextlib.suppress(ValueError):
            payload = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    click.echo(f"payload   ({d.payload_kind}, {len(d.payload)} bytes)")
    click.echo("  " + shown_lines(payload).replace("\n", "\n  "))
    click.echo(click.style("error", fg="red"))
    click.echo("  " + shown_lines((d.error or "(none recorded)").rstrip()).replace("\n", "\n  "))


@dead.command("requeue")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("job_ids", type=int, nargs=-1, required=True)
@guarded
def dead_requeue(directory: str, job_ids: tuple[int, ...]) -> None:
    """Give dead jobs a fresh start (attempts reset). No owner may be running."""
    if backends.is_url(directory):
        done = redisq.requeue(directory, job_ids)
    else:
        done = _admin(lambda: insp.requeue(directory, job_ids), "requeue")
    click.echo(f"requeued {len(done)} jobs: {' '.join(str(j) for j in done)}")


@dead.command("purge")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@guarded
def dead_purge(directory: str, job_ids: tuple[int, ...], yes: bool) -> None:
    """Delete dead jobs for good (all, or the ids given). No owner may be running."""
    ids = list(job_ids) or None
    if not yes:
        count = len(ids) if ids is not None else len(_dead_jobs(directory))
        if not count:
            click.echo("no dead jobs")
            return
        if not sys.stdin.isatty():
            fail(f"purge deletes {count} dead jobs for good: pass --yes to confirm")
        click.confirm(f"delete {count} dead jobs for good?", abort=True)
    if backends.is_url(directory):
        n = redisq.purge(directory, ids)
    else:
        n = _admin(lambda: insp.purge(directory, ids), "purge")
    click.echo(f"purged {n} dead jobs")


T = TypeVar("T")


def _dead_jobs(target: str, ids: list[int] | None = None) -> list[insp.DeadInfo]:
    """Dead jobs of a queue directory or a Redis URL."""
    if backends.is_url(target):
        return redisq.dead_jobs(target, ids=ids)
    with progress("reading") as bar:
        return insp.dead_jobs(target, ids=ids, progress=bar)


def _admin(step: Callable[[], T], what: str) -> T:
    """Run an administrative step; an owner running is a one-line refusal (exit 2)."""
    try:
        return step()
    except LockedError as exc:
        fail(f"{exc}: {what} needs the queue's lock; stop the owner (SIGTERM drains) and retry")


# -- enqueue, compact, worker, demo ----------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("task")
@click.option("--payload", default=None, help="The payload as JSON.")
@click.option(
    "--payload-file",
    type=click.File("rb"),
    default=None,
    help="A file whose bytes are the payload (a bytes payload); - reads stdin.",
)
@click.option("--key", default=None, help="Idempotency key: an unfinished job with it is reused.")
@click.option("--delay", type=click.FloatRange(0), default=0.0, help="Seconds before it is due.")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    help="Seconds to wait for a running owner's reply.",
)
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.option("--create", is_flag=True, help="Make the queue directory if it is missing.")
@guarded
def enqueue(
    directory: str,
    task: str,
    payload: str | None,
    payload_file: Any,
    key: str | None,
    delay: float,
    priority: int,
    timeout: float,
    as_json: bool,
    create: bool,
) -> None:
    """Add a job durably (with or without an owner running); print its id.

    With no owner running, the job is enqueued directly (the queue's lock is
    taken for a moment); only an owner that holds the lock but does not
    answer leaves it in the spool.
    """
    if payload is not None and payload_file is not None:
        fail("give --payload or --payload-file, not both")
    value: Any = None
    if payload is not None:
        try:
            value = json.loads(payload)
        except json.JSONDecodeError as exc:
            fail(f"--payload is not valid JSON: {exc}")
    elif payload_file is not None:
        value = payload_file.read()
    if backends.is_url(directory):
        jid = redisq.enqueue(directory, task, value, key=key, delay=delay, priority=priority)
        done = insp.Enqueued(job=jid, route="redis")
    else:
        done = insp.enqueue(
            directory,
            task,
            value,
            key=key,
            delay=delay,
            priority=priority,
            timeout=timeout,
            create=create,
        )
    if as_json:
        emit_json({"id": done.job, "route": done.route, "spooled": done.job is None})
    elif done.job is None:
        click.echo(f"spooled: {SPOOLED_NOTE}; the owner did not answer")
    else:
        click.echo(done.job)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@guarded
def compact(directory: str, as_json: bool) -> None:
    """Compact the sealed segments of a queue with no owner (an owner compacts by itself)."""
    try:
        with progress("compacting") as bar:
            r = insp.compact(directory, progress=bar)
    except LockedError as exc:
        fail(f"{exc}: the owner compacts in the background; nothing to do here")
    if as_json:
        emit_json(
            {
                "segments_in": r.segments_in,
                "bytes_in": r.bytes_in,
                "bytes_out": r.bytes_out,
                "jobs": r.jobs,
                "seconds": r.seconds,
                "disk_before": r.disk_before,
                "disk_after": r.disk_after,
            }
        )
        return
    if not r.segments_in:
        click.echo(
            "nothing to compact: no sealed segments (the segment being written is "
            "compacted once it fills and is sealed)"
        )
    else:
        click.echo(
            f"compacted {r.segments_in} sealed segments: {_size(r.bytes_in)} -> "
            f"{_size(r.bytes_out)}, {r.jobs} live jobs kept, {r.seconds:.2f} s"
        )
    click.echo(
        f"segment files: {r.segments_before} -> {r.segments_after}, "
        f"{_size(r.disk_before)} -> {_size(r.disk_after)}"
    )


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--tasks", "tasks_spec", required=True, help="The walq.Tasks object, module:attr.")
@click.option("--processes", "-p", type=click.IntRange(1), default=None,
              help="Worker processes.  [default: the number of CPUs]")  # fmt: skip
@click.option("--prefetch", type=click.IntRange(1), default=DEFAULT_PREFETCH,
              help="Jobs a worker process may hold while jobs are short (WORKER.md).")  # fmt: skip
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None,
              help="Replace a worker process after this many jobs.  [default: never]")  # fmt: skip
@click.option("--max-memory", type=click.IntRange(1), default=None,
              help="Replace a worker above this RSS in bytes.  [default: none]")  # fmt: skip
@click.option("--shutdown-grace", type=float, default=30.0, help="Seconds to drain on SIGTERM.")
@click.option("--sync", type=click.Choice(["always", "interval", "never"]), default="always",
              help="When the log is fsynced (README: durability modes).")  # fmt: skip
@click.option("--log-level", default="INFO", help="Python logging level.")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", help="Log lines."
)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics here (walq[metrics]).  [default: off]")  # fmt: skip
@click.option("--metrics-host", default="127.0.0.1",
              help="The address --metrics-port listens on (0.0.0.0: every interface).")  # fmt: skip
@click.option("--recovery", type=click.Choice(RECOVERY_MODES), default="strict",
              help="skip: open past damage, logging and counting it (see walq fsck).")  # fmt: skip
@click.option("--create", is_flag=True, help="Make the queue directory if it is missing.")
@click.option("--trust-dir", is_flag=True,
              help="Accept a queue directory of another owner or writable by others.")  # fmt: skip
@guarded
def worker(
    directory: str,
    tasks_spec: str,
    processes: int | None,
    prefetch: int,
    max_tasks_per_child: int | None,
    max_memory: int | None,
    shutdown_grace: float,
    sync: str,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    recovery: str,
    create: bool,
    trust_dir: bool,
) -> None:
    """Own the queue in DIRECTORY and run its jobs until SIGTERM or SIGINT."""
    from walq import metrics  # noqa: PLC0415 - only the worker command configures logging
    from walq.directory.queue import Queue  # noqa: PLC0415
    from walq.worker.pool import Worker  # noqa: PLC0415
    from walq.worker.tasks import load_tasks  # noqa: PLC0415

    try:
        metrics.configure_logging(log_level, json_lines=log_format == "json")
    except ValueError as exc:
        fail(f"--log-level: {exc}")
    sys.path.insert(0, ".")
    tasks = load_tasks(tasks_spec)
    if not create and not backends.is_url(directory) and not os.path.isdir(directory):
        fail(f"{directory}: no such queue directory (--create makes a new queue)")
    if metrics_port is not None:
        # Bound before anything is opened or made: a busy port leaves no queue behind.
        serve_metrics(metrics_host, metrics_port)
    with Queue.open(
        directory, sync=sync, recovery=recovery, create=create, trust_dir=trust_dir
    ) as q:
        w = Worker(
            q,
            tasks,
            processes=processes,
            prefetch=prefetch,
            max_tasks_per_child=max_tasks_per_child,
            max_memory=max_memory,
            shutdown_grace=shutdown_grace,
        )
        if metrics_port is not None:
            metrics.QueueCollector(q, w).register()
        code = w.run()
    sys.exit(code)


def serve_metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics on host:port; an error names the address (say, in use)."""
    from walq import metrics  # noqa: PLC0415 - an optional extra

    try:
        metrics.prometheus().start_http_server(port, addr=host)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f"--metrics-port {host}:{port}") from exc


@main.command()
@click.option("--jobs", type=click.IntRange(10), default=300, help="How many jobs to run.")
def demo(jobs: int) -> None:
    """A tour: enqueue, run a pool, kill -9 the owner midway, restart, show nothing was lost."""
    from walq.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(jobs, echo=click.echo))
