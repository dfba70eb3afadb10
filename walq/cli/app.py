"""The `walq` command group: how errors are shown, exit codes, and `main`.

The commands (walq.cli.read, .dead, .admin, .worker) register on `main`;
they only parse and print: the work is walq.ops's, the text walq.cli.render's.

Exit codes (docs/OPERATIONS.md): 0 clean, 1 damage or failure found, 2 usage
error or cannot open (no such queue, an owner holds the lock, an unknown job).
Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

from walq import errors
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

EXIT_CLEAN, EXIT_DAMAGE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130

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
    like every other error, each command's own errors too (`one_line_errors`).
    NO_COLOR turns colours off for every command.
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

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command: its errors (and its subcommands') shown by `one_line_errors`."""
        with one_line_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a command's errors into one-line messages and their exit codes, never a traceback."""
    try:
        yield
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


def queue_command(
    name: str | None = None, *, group: click.Group = main, json: str | None = None
) -> Callable[[Callable[..., Any]], click.Command]:
    """A command of `group` whose first argument is the queue: a directory's path or a URL.

    With `json` (what it prints), the command has a `--json` flag, passed as `as_json`.
    """

    def make(fn: Callable[..., Any]) -> click.Command:
        if json is not None:
            fn = click.option("--json", "as_json", is_flag=True, help=json)(fn)
        fn = click.argument("directory", type=click.Path(file_okay=False))(fn)
        return group.command(name)(fn)

    return make
