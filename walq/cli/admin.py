"""`walq enqueue` (a job into a queue, owner or none) and `walq compact` (a queue with no owner)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from walq.cli.app import fail, queue_command
from walq.cli.render import SPOOLED_NOTE, compact_lines, echo_lines, emit_json, progress
from walq.errors import LockedError
from walq.ops import admin


@queue_command(json="The result as one JSON object.")
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
    "--run-at",
    default=None,
    metavar="TIME",
    help="When it is due: an ISO 8601 time with its UTC offset (2026-12-24T18:00:00+01:00).",
)
@click.option(
    "--after",
    "after",
    type=click.IntRange(1),
    multiple=True,
    metavar="ID",
    help="A job it waits for (repeat for several): it runs once they are all done.",
)
@click.option(
    "--after-policy",
    type=click.Choice(["cancel", "always"]),
    default=None,
    help="A parent dead or cancelled cancels it (cancel, the default) or not (always).",
)
@click.option(
    "--unique-for",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Remember --key this long once the job is done (an enqueue with it returns this job).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    help="Seconds to wait for a running owner's reply.",
)
@click.option("--create", is_flag=True, help="Make the queue directory if it is missing.")
def enqueue(
    directory: str,
    task: str,
    payload: str | None,
    payload_file: Any,
    key: str | None,
    delay: float,
    priority: int,
    run_at: str | None,
    after: tuple[int, ...],
    after_policy: str | None,
    unique_for: float | None,
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
    when = None
    if run_at is not None:
        try:
            when = datetime.fromisoformat(run_at)
        except ValueError:
            fail(f"--run-at {run_at!r} is not an ISO 8601 time (say 2026-12-24T18:00:00+00:00)")
    done = admin.enqueue(
        directory,
        task,
        value,
        key=key,
        delay=delay,
        priority=priority,
        timeout=timeout,
        create=create,
        after=after or None,
        after_policy=after_policy or "cancel",
        run_at=when,
        unique_for=unique_for,
    )
    if as_json:
        emit_json({"id": done.job, "route": done.route, "spooled": done.job is None})
    elif done.job is None:
        click.echo(f"spooled: {SPOOLED_NOTE}; the owner did not answer")
    else:
        click.echo(done.job)


@queue_command(json="The result as one JSON object.")
def compact(directory: str, as_json: bool) -> None:
    """Compact the sealed segments of a queue with no owner (an owner compacts by itself)."""
    try:
        with progress("compacting") as bar:
            r = admin.compact(directory, progress=bar)
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
    echo_lines(compact_lines(r))
