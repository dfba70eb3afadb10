"""`walq status`, `walq jobs`, `walq cancel`, `walq pause|resume`: a running queue, operated.

Beside a running owner they go through it (its socket: walq.producers.control);
with none, the reads read the files and the changes take the queue's lock.
"""

from __future__ import annotations

import contextlib

import click

from walq import backends
from walq.cli.app import queue_command
from walq.cli.render import attempt_lines, echo_lines, emit_json, job_lines, jobs_table
from walq.errors import WalqError
from walq.ops import live
from walq.ops.dump import dump_job
from walq.ops.scan import check_queue_dir
from walq.producers.control import Admin


def admin_of(target: str) -> Admin:
    """The Admin of a queue directory (checked first: never created) or a server's URL."""
    if not backends.is_url(target):
        check_queue_dir(target)
    return Admin(target)


@queue_command(json="The job as one JSON object.")
@click.argument("job_id", type=int)
def status(directory: str, job_id: int, as_json: bool) -> None:
    """One job: its state, task, attempts, key, last error, due time or lease, and
    each attempt the log still holds, with its worker, process, start and duration.

    Asks the running owner (milliseconds); with none, reads the files (read-only).
    """
    detail = live.job_status(directory, job_id)
    if as_json:
        emit_json(detail)
        return
    lines = job_lines(detail)
    if not backends.is_url(directory):
        from walq.ui.history import attempts  # noqa: PLC0415 - only for a directory

        # The job's own records, found by seeking (walq.ops.lookup); the detail above
        # stands without them if they do not read.
        with contextlib.suppress(WalqError, OSError):
            lines += attempt_lines(attempts(job_id, dump_job(directory, job_id, payload=False)))
    echo_lines(lines)


@queue_command(json="One JSON object per line.")
@click.option(
    "--state",
    type=click.Choice(["pending", "scheduled", "running", "dead", "waiting"]),
    help="Only jobs in this state.",
)
@click.option("--task", help="Only jobs of this task.")
@click.option("--limit", type=click.IntRange(1), default=100, help="At most this many jobs.")
@click.option("--after", type=click.IntRange(0), default=0, help="Only ids above this one.")
def jobs(
    directory: str, state: str | None, task: str | None, limit: int, after: int, as_json: bool
) -> None:
    """Live jobs in id order, a page at a time (--after the last id shown for the next).

    Asks the running owner; with none, reads the files (read-only).
    """
    rows = live.list_jobs(directory, state, task, limit=limit, after=after)
    if as_json:
        for row in rows:
            emit_json(row)
        return
    echo_lines(jobs_table(rows, limit))


@queue_command()
@click.argument("job_id", type=int)
def cancel(directory: str, job_id: int) -> None:
    """Cancel an unfinished job; a running one's handler is killed.

    Through the running owner; with none, the queue's lock is taken.
    """
    if admin_of(directory).cancel(job_id):
        click.echo(f"cancelled job {job_id}")
    else:
        click.echo(f"job {job_id} had already finished: nothing to cancel")


@queue_command()
@click.argument("task")
def pause(directory: str, task: str) -> None:
    """Stop claims of TASK's pending jobs (running ones finish), until `walq resume`.

    Durable: it survives restarts. Through the running owner, or with the lock.
    """
    if admin_of(directory).pause(task):
        click.echo(f"paused {task}: its pending jobs wait until `walq resume`")
    else:
        click.echo(f"{task} was already paused")


@queue_command()
@click.argument("task")
def resume(directory: str, task: str) -> None:
    """Let TASK's pending jobs be claimed again."""
    if admin_of(directory).resume(task):
        click.echo(f"resumed {task}")
    else:
        click.echo(f"{task} was not paused")
