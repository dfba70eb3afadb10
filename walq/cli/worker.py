"""`walq worker` (own a queue and run its jobs) and `walq demo` (a tour)."""

from __future__ import annotations

import logging
import os
import sys

import click

from walq import backends
from walq.cli.app import fail, main, queue_command
from walq.ops.admin import RECOVERY_MODES
from walq.worker.pool import DEFAULT_ASYNC_CONCURRENCY, DEFAULT_PREFETCH


@queue_command()
@click.option("--tasks", "tasks_spec", required=True, help="The walq.Tasks object, module:attr.")
@click.option("--processes", "-p", type=click.IntRange(1), default=None,
              help="Worker processes.  [default: the number of CPUs]")  # fmt: skip
@click.option("--prefetch", type=click.IntRange(1), default=DEFAULT_PREFETCH,
              help="Jobs a worker process may hold while jobs are short (WORKER.md).")  # fmt: skip
@click.option("--async-concurrency", type=click.IntRange(1), default=DEFAULT_ASYNC_CONCURRENCY,
              help="Coroutine (async def) jobs a worker process runs at once.")  # fmt: skip
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None,
              help="Replace a worker process after this many jobs.  [default: never]")  # fmt: skip
@click.option("--max-memory", type=click.IntRange(1), default=None,
              help="Replace a worker above this RSS in bytes.  [default: none]")  # fmt: skip
@click.option("--shutdown-grace", type=float, default=30.0, help="Seconds to drain on SIGTERM.")
@click.option("--sync", type=click.Choice(["always", "interval", "never"]), default="always",
              help="When the log is fsynced (README: durability modes).")  # fmt: skip
@click.option("--log-level", default="INFO", help="Python logging level.")
@click.option("--job-log-level", default="INFO",
              help="Level of the line per finished job (DEBUG: hidden at INFO).")  # fmt: skip
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
def worker(
    directory: str,
    tasks_spec: str,
    processes: int | None,
    prefetch: int,
    async_concurrency: int,
    max_tasks_per_child: int | None,
    max_memory: int | None,
    shutdown_grace: float,
    sync: str,
    log_level: str,
    job_log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    recovery: str,
    create: bool,
    trust_dir: bool,
) -> None:
    """Own the queue in DIRECTORY and run its jobs until SIGTERM or SIGINT."""
    from walq import metrics  # noqa: PLC0415 - only the worker command configures logging
    from walq.worker.pool import Worker  # noqa: PLC0415
    from walq.worker.tasks import load_tasks  # noqa: PLC0415

    try:
        metrics.configure_logging(log_level, json_lines=log_format == "json")
    except ValueError as exc:
        fail(f"--log-level: {exc}")
    job_level = logging.getLevelName(job_log_level.upper())
    if not isinstance(job_level, int):
        fail(f"--job-log-level: unknown level {job_log_level!r}")
    sys.path.insert(0, ".")
    tasks = load_tasks(tasks_spec)
    # --sync, --recovery, --create and --trust-dir are about a directory; a server has its own.
    options: dict[str, object] = {}
    if not backends.is_url(directory):
        if not create and not os.path.isdir(directory):
            fail(f"{directory}: no such queue directory (--create makes a new queue)")
        options = {"sync": sync, "recovery": recovery, "create": create, "trust_dir": trust_dir}
    if metrics_port is not None:
        # Bound before anything is opened or made: a busy port leaves no queue behind.
        serve_metrics(metrics_host, metrics_port)
    with backends.open(directory, **options) as q:
        w = Worker(
            q,
            tasks,
            processes=processes,
            prefetch=prefetch,
            async_concurrency=async_concurrency,
            max_tasks_per_child=max_tasks_per_child,
            max_memory=max_memory,
            shutdown_grace=shutdown_grace,
            job_log_level=job_level,
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
