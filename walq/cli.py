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
