"""`walq ui`: a live web dashboard of a queue (walq.ui; the `walq[ui]` extra)."""

from __future__ import annotations

import click

from walq.cli.app import queue_command


@queue_command()
@click.option("--host", default="127.0.0.1", help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, help="Port (0: any free).")
@click.option("--read-only", is_flag=True, help="Show the queue; turn every action off.")
@click.option(
    "--token",
    envvar="WALQ_UI_TOKEN",
    default=None,
    help="Access token (default: a new one each run; '' for none, loopback only).",
)
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, help="Seconds between reads.")
def ui(
    directory: str, host: str, port: int, read_only: bool, token: str | None, interval: float
) -> None:
    """Serve a live dashboard of the queue in DIRECTORY (or at a URL) in a web browser.

    Prints the address to open, with its access token. Actions (requeue,
    cancel, purge, pause, resume) go through the running owner, or take the
    queue's lock when none runs; each is logged as asked by "ui".
    """
    from walq.ui.server import serve  # noqa: PLC0415 - Starlette is an optional extra

    serve(
        directory,
        host=host,
        port=port,
        read_only=read_only,
        token=token,
        echo=click.echo,
        interval=interval,
    )
