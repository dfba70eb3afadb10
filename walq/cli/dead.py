"""`walq dead list|show|requeue|purge`: dead-lettered jobs, on a directory or a server."""

from __future__ import annotations

import sys
from typing import TypeVar

import click

from walq.cli.app import fail, main, queue_command
from walq.cli.control import admin_of
from walq.cli.render import dead_detail, dead_table, echo_lines, emit_json, progress
from walq.ops.dead import DeadInfo, dead_jobs

T = TypeVar("T")


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


@main.group(cls=DeadGroup)
def dead() -> None:
    """Dead-lettered jobs: list and show read-only; requeue and purge through the owner."""


@queue_command("list", group=dead, json="One JSON object per line.")
def dead_list(directory: str, as_json: bool) -> None:
    """Every dead job: id, task, attempts, key and the first line of its last error."""
    jobs = _dead_jobs(directory)
    if as_json:
        for d in jobs:
            emit_json(d.summary())
        return
    echo_lines(dead_table(jobs))


@queue_command("show", group=dead, json="As one JSON object.")
@click.argument("job_id", type=int)
def dead_show(directory: str, job_id: int, as_json: bool) -> None:
    """One dead job in full: payload, and the stored error with its traceback."""
    (d,) = _dead_jobs(directory, ids=[job_id])
    if as_json:
        emit_json(d.detail())
        return
    echo_lines(dead_detail(d))


@queue_command("requeue", group=dead)
@click.argument("job_ids", type=int, nargs=-1, required=True)
def dead_requeue(directory: str, job_ids: tuple[int, ...]) -> None:
    """Give dead jobs a fresh start (attempts reset): all or none.

    Through the running owner; with none, the queue's lock is taken.
    """
    done = admin_of(directory).requeue(job_ids)
    click.echo(f"requeued {len(done)} jobs: {' '.join(str(j) for j in done)}")


@queue_command("purge", group=dead)
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(directory: str, job_ids: tuple[int, ...], yes: bool) -> None:
    """Delete dead jobs for good (all, or the ids given).

    Through the running owner; with none, the queue's lock is taken.
    """
    ids = list(job_ids) or None
    if not yes:
        count = len(ids) if ids is not None else len(_dead_jobs(directory))
        if not count:
            click.echo("no dead jobs")
            return
        if not sys.stdin.isatty():
            fail(f"purge deletes {count} dead jobs for good: pass --yes to confirm")
        click.confirm(f"delete {count} dead jobs for good?", abort=True)
    n = admin_of(directory).purge(ids)
    click.echo(f"purged {n} dead jobs")


def _dead_jobs(target: str, ids: list[int] | None = None) -> list[DeadInfo]:
    """Dead jobs of a queue directory or a server's URL, with a progress bar."""
    with progress("reading") as bar:
        return dead_jobs(target, ids=ids, progress=bar)
