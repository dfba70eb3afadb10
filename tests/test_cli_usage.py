"""The `walq` command as the docs show it: every documented command line parses,
every option has help and shows its default, every error is one line naming
what it is about, and `enqueue` puts the job where `stats` and `dump` see it.
"""

from __future__ import annotations

import errno
import inspect
import itertools
import json
import re
import shlex
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

import walq
from walq.cli import main
from walq.cli.app import usage_line
from walq.directory.lock import ProcessLock
from walq.directory.queue import LOCK_FILE
from walq.producers import wire
from walq.worker.pool import DEFAULT_PREFETCH

from .test_cli import HAS_PROMETHEUS, ROOT, cli, one_line_error, run, varied

# -- every documented command line parses -------------------------------------------------------

# Placeholders the docs use where a typed value goes; other words pass as strings.
PLACEHOLDERS = {"ID": "1", "ID...": "1", "N": "2", "S": "1", "P": "9108"}


def _tokens(text: str) -> list[str]:
    """Shell words, with [ ] | as tokens of their own; stops at a shell pipe, `#`, `>` or `&&`."""
    out: list[str] = []
    depth = 0
    for word in shlex.split(text.replace("\\|", " \\| "), comments=True):
        for tok in re.split(r"([\[\]|])", word):
            if not tok:
                continue
            if tok == "[":
                depth += 1
            elif tok == "]":
                depth -= 1
            elif tok in ("\\|", ">", "&&") or (tok == "|" and depth == 0):
                return out
            out.append(tok)
    return out


def _expand(tokens: list[str]) -> list[list[str]]:
    """Every command line a usage synopsis allows: each [a | b] group absent, or one branch."""

    def seq(i: int, stop: str | None) -> tuple[list[list[list[str]]], int]:
        parts: list[list[list[str]]] = []  # each part: the alternatives at that place
        while i < len(tokens) and tokens[i] not in ("]", "|"):
            if tokens[i] == "[":
                branches: list[list[str]] = [[]]
                i += 1
                while True:
                    inner, i = seq(i, "]")
                    branches += [list(itertools.chain(*c)) for c in itertools.product(*inner)]
                    if tokens[i] == "]":
                        i += 1
                        break
                    i += 1  # "|"
                parts.append(branches)
            else:
                parts.append([[tokens[i]]])
                i += 1
        return parts, i

    parts, _ = seq(0, None)
    return [list(itertools.chain(*c)) for c in itertools.product(*parts)]


def _concrete(words: list[str], payload_file: str) -> list[str]:
    """A synopsis' words with typed placeholders filled and an elided `...` dropped."""
    out: list[str] = []
    for i, w in enumerate(words):
        if w == "...":
            if i and words[i - 1].startswith("--"):
                out.append("x")  # `--tasks ...`: an elided value
            continue
        if w == "F":
            out.append(payload_file)
        else:
            out.append(PLACEHOLDERS.get(w, w))
    return out


def _unparsed(ctx: click.Context) -> list[str]:
    """A group's arguments left for its command (click 9 keeps them all in `args`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def _parse(args: list[str]) -> None:
    """Parse `walq ARGS` with the CLI's own click parser (no command is run)."""
    with main.make_context("walq", list(args)) as top:
        group: click.Command = main
        ctx, rest = top, _unparsed(top)
        while isinstance(group, click.Group):
            assert rest, f"no command after {ctx.command_path}"
            _, cmd, rest = group.resolve_command(ctx, rest)
            assert cmd is not None
            ctx = cmd.make_context(cmd.name or "", rest, parent=ctx)
            group = cmd
            if isinstance(cmd, click.Group):
                rest = _unparsed(ctx)


def readme_block() -> list[str]:
    """The lines of README's "Command line" code block (synopsis; descriptions cut off)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Command line\n+```\n(.*?)```", text, re.S | re.M)
    assert block is not None, "README has no 'Command line' block"
    return [re.split(r"\s{2,}", line)[0] for line in block[1].splitlines() if line.strip()]


def doc_lines() -> list[tuple[str, str, str | None]]:
    """(where, command, the error shown below it) for each `walq ...` in the docs.

    Commands in backticks, and `$ walq ...` lines of examples, whose next
    line, if it starts with `walq: `, is the error the example shows.
    """
    found: list[tuple[str, str, str | None]] = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = doc.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            where = f"{doc.name}:{n}"
            found += [(where, m, None) for m in re.findall(r"`(walq [^`]+)`", line)]
            if line.startswith("$ walq "):
                after = lines[n] if n < len(lines) else ""
                found.append((where, line[2:], after if after.startswith("walq: ") else None))
    return found


def _check(where: str, line: str, payload_file: str, shown: str | None = None) -> None:
    """Parse every form of `line`; a usage error must be the one the docs show below it."""
    tokens = _tokens(line)
    assert tokens[0] == "walq", (where, line)
    if len(tokens) == 2 and not tokens[1].startswith("-"):  # `walq stats`: a command named
        assert tokens[1] in main.commands, (where, line)
        return
    for words in _expand(tokens[1:]):
        args = _concrete(words, payload_file)
        try:
            _parse(args)
        except click.exceptions.Exit as exc:  # --help: parsed, and the help shown
            assert exc.exit_code == 0, (where, line)
        except click.UsageError as exc:
            if shown != f"walq: {usage_line(exc)}":
                pytest.fail(f"{where}: `{line}` as `walq {shlex.join(args)}`: {usage_line(exc)}")


def test_readme_command_block_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every form README's "Command line" block allows is accepted by the CLI's parser."""
    monkeypatch.chdir(tmp_path)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x")
    lines = readme_block()
    assert any(line.startswith("walq dead list DIR") for line in lines)
    for line in lines:
        _check("README.md Command line", line, str(payload))


def test_every_command_line_in_the_docs_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every `walq ...` command in README.md and docs/*.md is accepted by the CLI's parser."""
    monkeypatch.chdir(tmp_path)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x")
    lines = doc_lines()
    assert len(lines) > 40
    for where, line, shown in lines:
        _check(where, line, str(payload), shown)


def test_the_checker_catches_the_old_dead_form(tmp_path: Path) -> None:
    """`walq dead DIR list` is refused, with a line saying which way round it goes."""
    with pytest.raises(pytest.fail.Exception, match="the command comes first"):
        _check("here", "walq dead DIR list", str(tmp_path))
    r = cli("dead", str(tmp_path), "list")
    assert "walq dead list" in one_line_error(r, 2)


# -- help: every option explained, defaults shown ------------------------------------------------


def _commands(group: click.Group, path: str = "walq") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in group.commands.items():
        yield f"{path} {name}", cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{path} {name}")


def test_every_option_of_every_command_has_help() -> None:
    """No option is left unexplained in --help."""
    assert isinstance(main, click.Group)
    missing = [
        f"{path} {param.opts[0]}"
        for path, cmd in _commands(main)
        for param in cmd.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert missing == []


def test_worker_help_shows_defaults_and_the_librarys_prefetch() -> None:
    """`walq worker --help` shows each default; --prefetch is the library's, as WORKER.md says."""
    r = cli("worker", "--help", terminal_width=200)
    assert r.exit_code == 0
    assert f"[default: {DEFAULT_PREFETCH};" in r.stdout
    assert "[default: 127.0.0.1]" in r.stdout and "[default: 30.0]" in r.stdout
    signature = inspect.signature(walq.Worker).parameters["prefetch"]
    assert signature.default == DEFAULT_PREFETCH
    worker_doc = (ROOT / "docs" / "WORKER.md").read_text()
    documented = re.search(r"`prefetch`\s[^.]*?\(default (\d+)\)", worker_doc)
    assert documented is not None and int(documented[1]) == DEFAULT_PREFETCH


# -- errors: one line, naming what they are about -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["stats", "/etc/passwd"], "'/etc/passwd' is a file"),
        (["enqueue", "{dir}", "t", "--payload-file", "/nonexistent"], "/nonexistent"),
        (["enqueue", "{dir}", "t", "--payload-file", "{dir}"], "Is a directory"),
        (["worker", "{dir}", "--tasks", "m:a", "-p", "0"], "--processes"),
        (["stats", "{dir}", "--bogus"], "--bogus"),
        (["nosuchcommand"], "nosuchcommand"),
        (["stats"], "DIRECTORY"),
    ],
    ids=[
        "a-file",
        "no-payload-file",
        "payload-file-dir",
        "p-0",
        "no-option",
        "no-command",
        "no-dir",
    ],
)
def test_clicks_usage_errors_are_one_line(qdir: str, args: list[str], words: str) -> None:
    """Click's own usage errors: one `walq: ...` line naming the value, exit 2."""
    varied(qdir)
    line = one_line_error(cli(*[qdir if a == "{dir}" else a for a in args]), 2)
    assert words in line and "--help" in line


def test_an_unreadable_directory_is_one_line(tmp_path: Path) -> None:
    """A directory this user cannot read: one line, exit 2 (as root it reads as no queue)."""
    shut = tmp_path / "shut"
    shut.mkdir(mode=0)
    try:
        one_line_error(cli("stats", str(shut)), 2)
    finally:
        shut.chmod(0o700)


def test_usage_errors_are_one_line_as_a_process() -> None:
    """The same over a real process boundary."""
    assert "is a file" in one_line_error(run("stats", "/etc/passwd"), 2)


def test_no_color_is_honoured(qdir: str) -> None:
    """NO_COLOR=1 turns colours off even where they would be drawn (records and errors)."""
    varied(qdir)
    coloured = cli("dump", qdir, color=True)
    assert "\x1b[" in coloured.stdout
    plain = cli("dump", qdir, color=True, env={"NO_COLOR": "1"})
    assert plain.exit_code == 0 and "\x1b[" not in plain.stdout
    assert plain.stdout == click.unstyle(coloured.stdout)
    err = cli("dead", "show", qdir, "999", color=True, env={"NO_COLOR": "1"})
    assert "\x1b[" not in one_line_error(err, 2)


def test_a_socket_error_names_the_socket(qdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer refused by the owner's socket (another user's: EACCES) names the socket."""
    varied(qdir)

    class Refused(socket.socket):
        def connect(self, address: Any) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("walq.producers.client.socket.socket", Refused)
    lock = ProcessLock.acquire(str(Path(qdir) / LOCK_FILE))  # an owner holds the queue
    try:
        line = one_line_error(cli("enqueue", qdir, "mail"), 2)
    finally:
        lock.release()
    assert line == f"walq: {wire.socket_address(qdir)}: Permission denied"


def test_another_users_queue_names_its_socket(qdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue whose lock file this user may not open: the error names the owner's socket."""
    varied(qdir)

    def no_lock(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(qdir) / LOCK_FILE))

    class Refused(socket.socket):
        def connect(self, address: Any) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("walq.directory.fs.OsFileSystem.lock", no_lock)
    monkeypatch.setattr("walq.producers.client.socket.socket", Refused)
    line = one_line_error(cli("enqueue", qdir, "mail"), 2)
    assert line == f"walq: {wire.socket_address(qdir)}: Permission denied"


@pytest.mark.skipif(not HAS_PROMETHEUS, reason="needs walq[metrics]")
def test_a_metrics_port_in_use_names_the_address(qdir: str) -> None:
    """--metrics-port on a port in use: one line naming host and port, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("worker", qdir, "--create", "--tasks", "tests.worker_tasks:tasks", "-p", "1",
                "--metrics-port", str(port), timeout=60)  # fmt: skip
    line = one_line_error(r, 2)
    assert line == f"walq: --metrics-port 127.0.0.1:{port}: Address already in use"


# -- --tasks: the user's module, the user's error -------------------------------------------------


def worker_in(tmp_path: Path, spec: str) -> subprocess.CompletedProcess[str]:
    """`walq worker` as a process run from `tmp_path` (where the tasks modules are)."""
    return subprocess.run(
        [sys.executable, "-m", "walq", "worker", str(tmp_path / "q"), "--tasks", spec],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_tasks_module_that_raises_shows_its_own_traceback(tmp_path: Path) -> None:
    """A module raising at import: its traceback (its frames only), then one walq line; exit 2."""
    (tmp_path / "boomjobs.py").write_text(
        "import walq\n\n\ndef setup():\n    raise RuntimeError('boom at import')\n\n\nsetup()\n"
    )
    r = worker_in(tmp_path, "boomjobs:tasks")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert 'boomjobs.py", line 8, in <module>' in lines[1]
    assert "importlib" not in r.stderr and "internal error" not in r.stderr
    assert lines[-2] == "RuntimeError: boom at import"
    assert lines[-1] == (
        "walq: cannot import tasks module 'boomjobs': RuntimeError: boom at import"
    )
    assert not (tmp_path / "q").exists()  # nothing opened


TASKS_SOURCE = "import walq\ntasks = walq.Tasks()\n"


@pytest.mark.parametrize(
    ("source", "spec", "line"),
    [
        ("", "nomodule_xyz:tasks", "no module named 'nomodule_xyz'"),
        (TASKS_SOURCE, "jobs:nope", "module 'jobs' has no attribute 'nope'"),
        (TASKS_SOURCE, "jobs", "--tasks takes module:attribute"),
        ("tasks = 3\n", "jobs:tasks", "jobs:tasks is of type int, not a walq.Tasks"),
        ("import missing_dep_xyz\n", "jobs:tasks",
         "cannot import tasks module 'jobs': ModuleNotFoundError: "
         "No module named 'missing_dep_xyz'"),
    ],
    ids=["no-module", "no-attribute", "no-colon", "not-tasks", "module-imports-missing"],
)  # fmt: skip
def test_a_wrong_tasks_spec_says_what_is_wrong(
    tmp_path: Path, source: str, spec: str, line: str
) -> None:
    """Each wrong --tasks is one clear line, exit 2."""
    (tmp_path / "jobs.py").write_text(source)
    r = worker_in(tmp_path, spec)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"walq: {line}"), r.stderr
    if "cannot import" not in line:
        one_line_error(r, 2)


# -- enqueue: the job is where stats and dump look ------------------------------------------------


def test_enqueue_with_no_owner_enqueues_directly(qdir: str) -> None:
    """No owner: the job is in the log at once; stats counts it, dump shows it."""
    varied(qdir)
    r = cli("enqueue", qdir, "mail", "--payload", '{"to": "x@y"}', "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"id": 5, "route": "direct", "spooled": False}
    st = json.loads(cli("stats", qdir, "--json").stdout)
    assert st["pending"] == 2 and st["spooled"] == 0
    assert 'enqueue   job=5 task="mail"' in cli("dump", qdir, "--job", "5").stdout


def test_enqueue_into_an_empty_directory_starts_the_queue(tmp_path: Path) -> None:
    """An empty directory is a queue to be: the job gets id 1."""
    assert cli("enqueue", str(tmp_path), "mail").stdout.strip() == "1"


def test_enqueue_goes_through_a_running_owner(qdir: str) -> None:
    """An owner running (in this process): the job goes over its socket and gets its id."""
    with walq.Queue.open(qdir, compaction=False) as q:
        r = cli("enqueue", qdir, "mail", "--key", "k", "--json")
        assert json.loads(r.stdout) == {"id": 1, "route": "owner", "spooled": False}
        assert q.status(1) == "pending"


def test_enqueue_spools_when_the_lock_holder_does_not_answer(qdir: str) -> None:
    """Lock held, no socket: spooled; stats and dump show it as spooled, also in JSON."""
    varied(qdir)
    lock = ProcessLock.acquire(str(Path(qdir) / LOCK_FILE))
    try:
        r = cli("enqueue", qdir, "mail", "--payload-file", "-", input=b"\x00raw")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.startswith("spooled: ingested when an owner starts")
        j = cli("enqueue", qdir, "mail", "--key", "k9", "--json")
        assert json.loads(j.stdout) == {"id": None, "route": "spool", "spooled": True}
    finally:
        lock.release()
    st = json.loads(cli("stats", qdir, "--json").stdout)
    assert st["spooled"] == 2 and st["pending"] == 1
    text = cli("stats", qdir).stdout
    assert "spooled   2 requests, not counted above (ingested when an owner starts" in text
    rows = [
        json.loads(x) for x in cli("dump", qdir, "--json", "--type", "spooled").stdout.splitlines()
    ]
    assert [(x["task"], x["key"], x["payload_kind"]) for x in rows] == [
        ("mail", None, "bytes"), ("mail", "k9", "json"),
    ]  # fmt: skip
    assert rows[0]["payload"] == "00726177"  # stdin's bytes, as hex
    dumped = cli("dump", qdir).stdout.splitlines()
    assert dumped[-1].startswith('spool      spooled   task="mail" key="k9"')
    assert cli("dump", qdir, "--job", "1").stdout.count("spooled") == 0  # no id: not a job's row
    # The next owner takes them in: the rows become ENQUEUE records with the same origin.
    with walq.Queue.open(qdir, compaction=False) as q:
        assert q.stats()["pending"] == 3
    after = [
        json.loads(x) for x in cli("dump", qdir, "--json", "--type", "enqueue").stdout.splitlines()
    ]
    assert {x.get("origin") for x in after} >= {x["origin"] for x in rows}


def test_enqueue_to_a_stalled_owner_gives_up_after_timeout(qdir: str) -> None:
    """An owner that accepts but never answers: --timeout bounds the wait; one line, exit 1."""
    varied(qdir)
    lock = ProcessLock.acquire(str(Path(qdir) / LOCK_FILE))
    address = wire.socket_address(qdir)
    assert address is not None
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stalled.bind(address)
        stalled.listen()  # never accepted, never read
        r = cli("enqueue", qdir, "mail", "--timeout", "0.5")
    finally:
        stalled.close()
        Path(address).unlink(missing_ok=True)
        lock.release()
    assert "no reply within 0.5s" in one_line_error(r, 1)
