"""The `walq` command: parses arguments and prints; the work lives in plain functions.

Exit codes: 0 clean, 1 damage or failure found, 2 usage error or cannot open.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from walq import inspect as insp
from walq.errors import LockedError, NotAQueueError, WalqError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CLEAN, EXIT_DAMAGE, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print a one-line error on stderr and exit with `code`."""
    click.echo(f"walq: {message}", err=True)
    sys.exit(code)


def guarded(fn: F) -> F:
    """Turn walq's errors into one-line messages and exit codes, never tracebacks."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NotAQueueError, LockedError) as exc:
            fail(str(exc), EXIT_USAGE)
        except WalqError as exc:
            fail(str(exc), EXIT_DAMAGE)
        except OSError as exc:
            fail(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_USAGE)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """One JSON document on one line."""
    click.echo(json.dumps(obj, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="walq")
def main() -> None:
    """walq: a crash-safe job queue that lives in one directory."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--job", "job_id", type=int, help="Only records about this job id.")
@click.option("--task", help="Only records of jobs of this task.")
@click.option("--type", "rtype", help="Only records of this type (enqueue, claim, ack, ...).")
@click.option("--no-payload", is_flag=True, help="Leave payload previews out.")
@guarded
def dump(
    directory: str,
    as_json: bool,
    job_id: int | None,
    task: str | None,
    rtype: str | None,
    no_payload: bool,
) -> None:
    """Print every record of the queue in DIRECTORY (read-only; safe beside an owner)."""
    scans = insp.scan_dir(directory)
    damaged = False
    for row in insp.dump_rows(scans, payload=not no_payload):
        if row["type"] == "damage":
            damaged = True
        if not _matches(row, job_id, task, rtype):
            continue
        if as_json:
            emit_json(row)
        else:
            click.echo(_dump_line(row))
    if damaged:
        sys.exit(EXIT_DAMAGE)


def _matches(row: dict[str, Any], job_id: int | None, task: str | None, rtype: str | None) -> bool:
    if row["type"] in ("damage", "torn-tail"):
        return True
    if rtype is not None and row["type"] != rtype:
        return False
    if job_id is not None and row.get("job") != job_id and job_id not in row.get("jobs", ()):
        return False
    return task is None or row.get("task") == task


def _dump_line(row: dict[str, Any]) -> str:
    head = f"{row['segment']}:{row['offset']:<8} {row['type']:<9}"
    if row["type"] in ("damage", "torn-tail"):
        return f"{head} {row['length']} bytes: {row['reason']} [{row['hex']}]"
    fields = {k: v for k, v in row.items() if k not in ("segment", "offset", "type")}
    return (
        head
        + " "
        + " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
    )


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option("--repair", is_flag=True, help="Rewrite damaged segments (originals kept in cut/).")
@guarded
def fsck(directory: str, as_json: bool, repair: bool) -> None:
    """Check every segment and record; exit 0 if clean, 1 if damage was found."""
    report = insp.fsck(directory)
    repaired: list[str] = []
    if repair and not report.clean:
        repaired = insp.repair(directory)
    if as_json:
        emit_json(
            {
                "segments": report.segments,
                "records": report.records,
                "clean": report.clean,
                "problems": report.problems,
                "warnings": report.warnings,
                "repaired": repaired,
            }
        )
    else:
        for p in report.problems:
            click.echo(f"DAMAGE  {p}")
        for w in report.warnings:
            click.echo(f"warning {w}")
        for r in repaired:
            click.echo(f"repaired {r}")
        verdict = "clean" if report.clean else f"{len(report.problems)} problem(s)"
        click.echo(f"{report.segments} segments, {report.records} records: {verdict}")
    if not report.clean:
        sys.exit(EXIT_DAMAGE)  # damage was found, even if --repair mended it


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--tasks", "tasks_spec", required=True, help="The walq.Tasks object, module:attr.")
@click.option("--processes", "-p", type=click.IntRange(1), default=None, help="Worker processes.")
@click.option("--prefetch", type=click.IntRange(1), default=1, help="Jobs queued per process.")
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None)
@click.option("--max-memory", type=click.IntRange(1), default=None, help="Bytes of RSS per worker.")
@click.option("--shutdown-grace", type=float, default=30.0, help="Seconds to drain on SIGTERM.")
@click.option("--sync", type=click.Choice(["always", "interval", "never"]), default="always")
@click.option("--log-level", default="INFO", help="Python logging level.")
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
) -> None:
    """Own the queue in DIRECTORY and run its jobs until SIGTERM or SIGINT."""
    import logging  # noqa: PLC0415 - only the worker command configures logging

    from walq.queue import Queue  # noqa: PLC0415
    from walq.tasks import load_tasks  # noqa: PLC0415
    from walq.worker import Worker  # noqa: PLC0415

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    sys.path.insert(0, ".")
    tasks = load_tasks(tasks_spec)
    with Queue.open(directory, sync=sync) as q:
        w = Worker(
            q,
            tasks,
            processes=processes,
            prefetch=prefetch,
            max_tasks_per_child=max_tasks_per_child,
            max_memory=max_memory,
            shutdown_grace=shutdown_grace,
        )
        code = w.run()
    sys.exit(code)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("task")
@click.option("--payload", default=None, help="The payload as JSON.")
@click.option("--payload-file", type=click.File("rb"), default=None, help="Payload bytes file.")
@click.option("--key", default=None, help="Idempotency key.")
@click.option("--delay", type=float, default=0.0, help="Seconds before the job is due.")
@click.option("--priority", type=int, default=0)
@guarded
def enqueue(
    directory: str,
    task: str,
    payload: str | None,
    payload_file: Any,
    key: str | None,
    delay: float,
    priority: int,
) -> None:
    """Add a job durably (with or without an owner running); print its id."""
    from walq.producer import connect  # noqa: PLC0415

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
    with connect(directory) as producer:
        jid = producer.enqueue(task, value, key=key, delay=delay, priority=priority)
    click.echo(jid)


@main.command()
@click.option("--jobs", type=click.IntRange(10), default=300, help="How many jobs to run.")
def demo(jobs: int) -> None:
    """A tour: enqueue, run a pool, kill -9 the owner midway, restart, show nothing was lost."""
    from walq.demo import run_demo  # noqa: PLC0415

    sys.exit(run_demo(jobs, echo=click.echo))
