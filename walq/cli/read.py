"""The read-only commands: `walq dump`, `walq stats`, `walq fsck` (and `fsck --repair`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from walq import backends
from walq.cli.app import EXIT_CLEAN, EXIT_DAMAGE, fail, queue_command
from walq.cli.render import (
    dump_line,
    echo_lines,
    emit_json,
    fsck_lines,
    progress,
    schedule_lines,
    stats_lines,
)
from walq.errors import ArgumentError, LockedError
from walq.ops import repair as ops_repair
from walq.ops import schedules as ops_schedules
from walq.ops import stats as ops_stats
from walq.ops.dump import (
    Dumper,
    DumpFilter,
    Position,
    dump_job,
    parse_position,
    spooled_rows,
)
from walq.ops.follow import follow as follow_rows
from walq.ops.repair import FsckReport


def _range(
    start: str | None, end: str | None, segment: str | None, offset_from: int | None,
    offset_to: int | None,
) -> tuple[Position | None, Position | None]:  # fmt: skip
    if segment is None:
        if offset_from is not None or offset_to is not None:
            raise ArgumentError("--start and --end are offsets within --segment: give --segment")
        return (
            None if start is None else parse_position(start),
            None if end is None else parse_position(end),
        )
    if start is not None or end is not None:
        raise ArgumentError("give --from/--to or --segment/--start/--end, not both")
    seq = parse_position(segment)[0]
    return (seq, offset_from or 0), (seq, offset_to) if offset_to is not None else (seq + 1, 0)


@queue_command(json="One JSON object per line.")
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
    damage was shown (an unfinished tail is not damage). `--job ID` alone
    reads only that job's records (it seeks to them), so it shows no damage
    elsewhere in the log: `walq fsck` does.
    """
    first, last = _range(start, end, segment, offset_from, offset_to)
    wanted = frozenset(t.strip() for spec in types for t in spec.split(",") if t.strip())
    flt = DumpFilter(job=job_id, task=task, types=wanted, start=first, end=last)
    dumper = Dumper(payload=not no_payload, full=full)
    damaged = False

    def show(row: dict[str, Any]) -> None:
        nonlocal damaged
        damaged = damaged or row["type"] == "damage"
        click.echo(json.dumps(row, default=str) if as_json else dump_line(row, full=full))

    one_job = job_id is not None and not (task or wanted or first or last or follow)
    if one_job and not backends.is_url(directory):
        assert job_id is not None
        # The job's own records, found without reading every record (walq.ops.lookup).
        rows = dump_job(directory, job_id, payload=not no_payload, full=full)
    else:
        rows = dumper.rows(directory, flt)
    for row in rows:
        show(row)
    for row in spooled_rows(directory, payload=not no_payload, full=full):
        if flt.matches(row):
            show(row)
    if follow:
        try:
            for row in follow_rows(directory, dumper.end, dumper=dumper, poll=interval):
                if flt.matches(row):
                    show(row)
        except KeyboardInterrupt:
            sys.exit(EXIT_CLEAN)
    if damaged:
        sys.exit(EXIT_DAMAGE)


@queue_command(json="The numbers as one JSON object.")
@click.option("--prometheus", is_flag=True, help="Prometheus text format (node exporter textfile).")
def stats(directory: str, as_json: bool, prometheus: bool) -> None:
    """Counts by state and task, ages, the log's size and garbage, damage (read-only).

    Read from the files without the lock, beside a running owner or none.
    """
    if prometheus:
        if backends.is_url(directory):
            fail("--prometheus reads a queue directory; for Redis, scrape the worker's port")
        from walq import metrics  # noqa: PLC0415 - an optional extra

        metrics.prometheus()  # the install hint before any work
    with progress("reading") as bar:
        st = ops_stats.read(directory, progress=bar)
    if prometheus:
        worker = st.workers[0] if st.workers else None
        click.echo(metrics.exposition(metrics.families(st, worker=worker)), nl=False)
    elif as_json:
        emit_json(st.data)
    else:
        echo_lines(stats_lines(st))


@queue_command(json="One JSON object per schedule.")
def schedules(directory: str, as_json: bool) -> None:
    """Every periodic schedule the queue records: its last tick enqueued and the next.

    Read from the files without the lock, beside a running owner or none (a
    URL: from the server). The next tick of a cron schedule needs walq[cron].
    """
    rows = ops_schedules.read(directory)
    if as_json:
        for row in rows:
            emit_json(row)
    else:
        echo_lines(schedule_lines(rows))


@queue_command(json="The report as one JSON object.")
@click.option("--repair", is_flag=True, help="Rewrite damaged segments (originals kept in cut/).")
def fsck(directory: str, as_json: bool, repair: bool) -> None:
    """Check every segment and record: exit 0 if clean, 1 if damage was found.

    With --repair (no owner may run), damaged ranges are cut out of their
    segments; each original is kept as DIRECTORY/cut/<segment>.damaged.
    """
    with progress("checking") as bar:
        report = ops_repair.fsck(directory, progress=bar)
    repaired: list[str] = []
    repair_error: str | None = None
    after: FsckReport | None = None
    if repair and not report.clean:
        try:
            repaired = ops_repair.repair(directory)
        except LockedError as exc:
            repair_error = f"cannot repair: {exc}; stop it first"
        else:
            after = ops_repair.fsck(directory)
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
        echo_lines(fsck_lines(directory, report, repair=repair, repaired=repaired, after=after))
    if repair_error is not None:
        fail(repair_error)
    if not report.clean:
        sys.exit(EXIT_DAMAGE)  # damage was found, even if --repair mended it
