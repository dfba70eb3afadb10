"""The `walq` command: every command through CliRunner, each also as a real process.

Bad input -- a missing directory, one that is not a queue, damaged files,
malformed JSON, an unknown job id, an owner holding the lock -- is one line on
stderr and the documented exit code (0 clean, 1 damage, 2 usage or cannot
open), never a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import walq
from walq.cli import main
from walq.core import format as fmt
from walq.ops import dead as ops_dead
from walq.ops import dump as ops_dump
from walq.ops import stats as ops_stats

ROOT = Path(__file__).resolve().parent.parent
SMALL = 4096
HAS_PRODUCER = importlib.util.find_spec("walq.producers.client") is not None
HAS_PROMETHEUS = importlib.util.find_spec("prometheus_client") is not None


def cli(*args: str, **kwargs: Any) -> Result:
    """Run the command in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


def run(*args: str, timeout: float = 30.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `python -m walq ARGS` as a real process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "walq", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def one_line_error(result: Result | subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the command failed with `code` and exactly one line on stderr; return it."""
    out = result.stdout if isinstance(result, subprocess.CompletedProcess) else result.output
    err = result.stderr
    status = result.returncode if isinstance(result, subprocess.CompletedProcess) else None
    status = result.exit_code if status is None else status  # type: ignore[union-attr]
    assert status == code, (status, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("walq: "), err
    return lines[0]


def varied(qdir: str, **opts: Any) -> dict[str, int]:
    """A queue with a job in every state; the owner closed. Returns ids by state."""
    with walq.Queue.open(qdir, compaction=False, **opts) as q:
        done = q.enqueue("mail", {"to": "a@b"}, key="mail:1")
        dead = q.enqueue("resize", {"w": 640})
        scheduled = q.enqueue("mail", {"to": "c@d"})
        pending = q.enqueue("mail", {"to": "e@f"})
        for _ in range(3):
            assert q.claim() is not None
        q.ack(done)
        q.fail(dead, "ValueError: bad width\nTraceback (most recent call last):\n  boom", True)
        q.fail(scheduled, "later", delay=3600)
    return {"done": done, "dead": dead, "scheduled": scheduled, "pending": pending}


def damaged(qdir: str) -> tuple[Path, int]:
    """A queue whose first (sealed) segment has a damaged record; returns (file, offset)."""
    from walq.core import framing

    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
        q.enqueue_many([("mail", {"i": i}) for i in range(150)])
    first = sorted(Path(qdir).glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    offset = list(framing.records(bytes(data), fmt.SEGMENT_HEADER_SIZE))[2].offset
    data[offset + 20] ^= 0xFF
    first.write_bytes(bytes(data))
    return first, offset


# -- dump ------------------------------------------------------------------------------------


class TestDump:
    """walq dump: text and JSON, filters, damage inline, exit codes."""

    def test_text_has_one_line_per_record_with_position_type_and_fields(self, qdir: str) -> None:
        """Each line starts SEG:OFFSET, then the type, job, task, attempt, key, payload."""
        ids = varied(qdir)
        r = cli("dump", qdir)
        assert r.exit_code == 0 and r.stderr == ""
        lines = r.stdout.splitlines()
        assert lines[0].startswith("1:40 ") and "enqueue" in lines[0]
        assert f"job={ids['done']}" in lines[0] and 'task="mail"' in lines[0]
        assert 'key="mail:1"' in lines[0] and 'payload={"to":"a@b"}' in lines[0]
        fail = next(line for line in lines if " fail " in line and "dead=True" in line)
        assert "attempt=1" in fail and "error=ValueError: bad width (+2 lines" in fail
        assert "\x1b[" not in r.stdout  # no colours when not on a terminal

    def test_json_lines_parse_back_to_the_rows(self, qdir: str) -> None:
        """--json: one object per line, the same rows walq.ops.dump.dump gives."""
        varied(qdir)
        r = cli("dump", qdir, "--json")
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert rows == json.loads(json.dumps(list(ops_dump.dump(qdir))))
        assert {"segment", "seq", "offset", "type", "job", "task"} <= set(rows[0])

    def test_filters(self, qdir: str) -> None:
        """--job, --task, --type (repeated or a,b), ranges, --no-payload and --full."""
        ids = varied(qdir)

        def types(*args: str) -> list[str]:
            r = cli("dump", qdir, "--json", *args)
            assert r.exit_code == 0, r.stderr
            return [json.loads(line)["type"] for line in r.stdout.splitlines()]

        assert types("--job", str(ids["dead"])) == ["enqueue", "claim", "fail"]
        assert types("--task", "resize") == ["enqueue", "claim", "fail"]
        assert sorted(types("--type", "ack,fail")) == sorted(
            types("--type", "ack", "--type", "fail")
        )
        assert sorted(types("--type", "ack,fail")) == ["ack", "fail", "fail"]
        rows = list(ops_dump.dump(qdir))
        second, fourth = rows[1]["offset"], rows[3]["offset"]
        assert len(types("--from", f"1:{second}", "--to", f"1:{fourth}")) == 2
        assert len(types("--segment", "1", "--start", str(second), "--end", str(fourth))) == 2
        assert len(types("--segment", fmt.segment_name(1))) == len(rows)
        assert "payload" not in cli("dump", qdir, "--no-payload").stdout
        full = cli("dump", qdir, "--full", "--type", "fail").stdout
        assert "    Traceback (most recent call last):" in full

    @pytest.mark.parametrize(
        "args",
        [
            ["--from", "x:1"],
            ["--start", "10"],
            ["--segment", "1", "--from", "1:0"],
            ["--type", "bogus"],
            ["--job", "seven"],
        ],
        ids=str,
    )
    def test_bad_arguments_are_usage_errors(self, qdir: str, args: list[str]) -> None:
        """A malformed position, a misspelt type or a stray option: exit 2, no traceback."""
        varied(qdir)
        r = cli("dump", qdir, *args)
        assert r.exit_code == 2 and "Traceback" not in r.output

    def test_damage_is_shown_inline_and_exits_1(self, qdir: str) -> None:
        """The damaged range is a DAMAGE line with its hex; the records after it follow."""
        _, offset = damaged(qdir)
        r = cli("dump", qdir)
        assert r.exit_code == 1
        lines = r.stdout.splitlines()
        hit = [i for i, line in enumerate(lines) if "DAMAGE" in line]
        assert len(hit) == 1 and lines[hit[0]].startswith(f"1:{offset} ")
        assert "checksum mismatch" in lines[hit[0]] and "[" in lines[hit[0]]
        assert len(lines) > hit[0] + 100  # the dump went on
        as_json = [
            json.loads(x)
            for x in cli("dump", qdir, "--json", "--type", "damage").stdout.splitlines()
        ]
        assert [(d["type"], d["offset"]) for d in as_json] == [("damage", offset)]

    def test_colours_only_when_asked_for_a_terminal(self, qdir: str) -> None:
        """click styles the lines; they reach the output only on a terminal."""
        damaged(qdir)
        r = CliRunner().invoke(main, ["dump", qdir, "--type", "damage"], color=True)
        assert "\x1b[" in r.stdout


# -- stats ------------------------------------------------------------------------------------


class TestStats:
    """walq stats: text, JSON and the Prometheus text format."""

    def test_text(self, qdir: str) -> None:
        """The numbers an operator needs, one topic per line."""
        varied(qdir)
        r = cli("stats", qdir)
        assert r.exit_code == 0, r.stderr
        out = r.stdout
        assert "owner     none" in out
        assert "1 pending, 1 scheduled, 0 running, 1 dead" in out
        assert "mail" in out and "resize" in out and "BREAKER" in out
        assert "damage    none" in out and "worker    unknown" in out

    def test_json(self, qdir: str) -> None:
        """--json: one object with the documented keys."""
        varied(qdir)
        st = json.loads(cli("stats", qdir, "--json").stdout)
        assert (st["pending"], st["scheduled"], st["dead"]) == (1, 1, 1)
        for key in ("tasks", "oldest_pending_age", "segments", "disk_bytes", "bytes",
                    "garbage_ratio", "breakers", "owner", "damaged", "spooled"):  # fmt: skip
            assert key in st

    @pytest.mark.skipif(not HAS_PROMETHEUS, reason="needs walq[metrics]")
    def test_prometheus_text_parses(self, qdir: str) -> None:
        """--prometheus prints what a node exporter's textfile collector reads."""
        from prometheus_client.parser import text_string_to_metric_families

        varied(qdir)
        out = cli("stats", qdir, "--prometheus").stdout
        metrics = {m.name: m for m in text_string_to_metric_families(out)}
        pending = [s for s in metrics["walq_jobs"].samples if s.labels == {"state": "pending"}]
        assert pending[0].value == 1.0
        assert metrics["walq_owner_running"].samples[0].value == 0.0

    def test_prometheus_without_the_extra_is_a_clear_error(
        self, qdir: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No prometheus_client: one line naming the extra to install, exit 2."""
        varied(qdir)
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        line = one_line_error(cli("stats", qdir, "--prometheus"), 2)
        assert "walq[metrics]" in line

    def test_damage_is_counted(self, qdir: str) -> None:
        """A damaged queue still reports its numbers, with the damage listed."""
        damaged(qdir)
        r = cli("stats", qdir)
        assert r.exit_code == 0 and "1 damaged ranges" in r.stdout


# -- fsck -------------------------------------------------------------------------------------


class TestFsck:
    """walq fsck: exit 0 clean, 1 damage found, 2 cannot open; --repair keeps what it cuts."""

    def test_clean(self, qdir: str) -> None:
        """A healthy queue: a one-line verdict, exit 0."""
        varied(qdir)
        r = cli("fsck", qdir)
        assert r.exit_code == 0 and r.stdout.strip().endswith("records: clean")

    def test_damage_then_repair(self, qdir: str) -> None:
        """Damage: exit 1 with file, offset and how to repair; --repair mends it, keeping a copy."""
        seg, offset = damaged(qdir)
        original = seg.read_bytes()
        r = cli("fsck", qdir)
        assert r.exit_code == 1
        assert f"{seg}: offset {offset}" in r.stdout and "fsck --repair" in r.stdout
        report = json.loads(cli("fsck", qdir, "--json").stdout)
        assert report["clean"] is False and len(report["problems"]) == 1
        r = cli("fsck", qdir, "--repair")
        assert r.exit_code == 1 and "repaired" in r.stdout
        assert (Path(qdir) / "cut" / (seg.name + ".damaged")).read_bytes() == original
        assert cli("fsck", qdir).exit_code == 0
        with walq.Queue.open(qdir) as q:
            assert q.stats()["pending"] == 149

    def test_repair_beside_an_owner_is_refused(self, qdir: str) -> None:
        """--repair needs the lock: the report, then one line naming the owner, exit 2."""
        damaged(qdir)
        with walq.Queue.open(qdir, segment_size=SMALL, recovery="skip", compaction=False):
            r = cli("fsck", qdir, "--repair")
        line = one_line_error(r, 2)
        assert "an owner is running" in line and "DAMAGE" in r.stdout


# -- dead ---------------------------------------------------------------------------------------


class TestDead:
    """walq dead list|show|requeue|purge."""

    def test_list_and_show(self, qdir: str) -> None:
        """list: one line per dead job; show: payload and the whole traceback."""
        ids = varied(qdir)
        r = cli("dead", "list", qdir)
        assert r.exit_code == 0
        assert f"{ids['dead']}" in r.stdout and "ValueError: bad width" in r.stdout
        (row,) = [json.loads(x) for x in cli("dead", "list", qdir, "--json").stdout.splitlines()]
        assert row["id"] == ids["dead"] and row["task"] == "resize"
        r = cli("dead", "show", qdir, str(ids["dead"]))
        assert r.exit_code == 0
        assert '"w": 640' in r.stdout and "Traceback (most recent call last):" in r.stdout
        detail = json.loads(cli("dead", "show", qdir, str(ids["dead"]), "--json").stdout)
        assert detail["error"].endswith("boom") and json.loads(detail["payload"]) == {"w": 640}

    def test_show_of_an_unknown_or_live_job_is_a_usage_error(self, qdir: str) -> None:
        """An id that does not exist, or is not dead: one line, exit 2."""
        ids = varied(qdir)
        assert "999 does not exist" in one_line_error(cli("dead", "show", qdir, "999"), 2)
        line = one_line_error(cli("dead", "show", qdir, str(ids["pending"])), 2)
        assert "pending, not dead" in line

    def test_requeue_and_purge(self, qdir: str) -> None:
        """No owner: requeue revives; purge needs --yes when it cannot ask."""
        ids = varied(qdir)
        r = cli("dead", "requeue", qdir, str(ids["dead"]))
        assert r.exit_code == 0 and "requeued 1" in r.stdout
        assert "no dead jobs" in cli("dead", "list", qdir).stdout
        one_line_error(cli("dead", "requeue", qdir, str(ids["dead"])), 2)  # not dead now
        with walq.Queue.open(qdir) as q:
            job = q.claim()
            while job is not None and job.id != ids["dead"]:
                job = q.claim()
            assert job is not None
            q.fail(job.id, "again", permanent=True)
        assert "--yes" in one_line_error(cli("dead", "purge", qdir), 2)
        r = cli("dead", "purge", qdir, "--yes")
        assert r.exit_code == 0 and "purged 1" in r.stdout

    def test_requeue_and_purge_beside_an_owner(self, qdir: str) -> None:
        """An owner holds the lock: the commands go through it (its socket)."""
        ids = varied(qdir)
        with walq.Queue.open(qdir, compaction=False) as q:
            assert cli("dead", "requeue", qdir, str(ids["dead"])).exit_code == 0
            assert q.status(ids["dead"]) == "pending"
            job = q.claim()
            while job is not None and job.id != ids["dead"]:
                job = q.claim()
            assert job is not None
            q.fail(job.id, "again", permanent=True)
            assert "purged 1 dead jobs" in cli("dead", "purge", qdir, "--yes").stdout
        assert ops_dead.dead_jobs(qdir) == []

    def test_requeue_beside_an_owner_that_does_not_answer(self, qdir: str) -> None:
        """The lock is held but no socket answers: one line saying so, exit 2."""
        ids = varied(qdir)
        with walq.Queue.open(qdir, compaction=False, serve=False):
            line = one_line_error(cli("dead", "requeue", qdir, str(ids["dead"])), 2)
            assert "an owner holds the lock but does not answer" in line
        assert [d.id for d in ops_dead.dead_jobs(qdir)] == [ids["dead"]]


# -- compact, enqueue, worker ---------------------------------------------------------------


class TestCompact:
    """walq compact: an owner-less queue; refused beside an owner."""

    def test_compact_prints_sizes(self, qdir: str) -> None:
        """Bytes before and after."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            ids = q.enqueue_many([("mail", {"i": i}) for i in range(300)])
            for jid in ids[:290]:
                q.claim()
                q.ack(jid)
        r = cli("compact", qdir)
        assert r.exit_code == 0 and "compacted" in r.stdout and "segment files:" in r.stdout
        again = json.loads(cli("compact", qdir, "--json").stdout)
        assert again["disk_after"] <= again["disk_before"]

    def test_nothing_to_compact_says_why(self, qdir: str) -> None:
        """One segment, being written: nothing to do, and the reason."""
        varied(qdir)
        assert "nothing to compact" in cli("compact", qdir).stdout

    def test_beside_an_owner(self, qdir: str) -> None:
        """The owner compacts in the background: exit 2 with that message."""
        varied(qdir)
        with walq.Queue.open(qdir, compaction=False):
            line = one_line_error(cli("compact", qdir), 2)
        assert "compacts in the background" in line


class TestEnqueue:
    """walq enqueue: argument checks always; the enqueue itself if walq.producers.client exists."""

    @pytest.mark.parametrize(
        ("args", "words"),
        [
            (["--payload", "{bad json"], "not valid JSON"),
            (["--payload", "1", "--payload-file", __file__], "not both"),
        ],
        ids=["malformed-json", "both-payloads"],
    )
    def test_bad_payload_arguments(self, qdir: str, args: list[str], words: str) -> None:
        """Malformed JSON or two payloads: one line, exit 2."""
        varied(qdir)
        assert words in one_line_error(cli("enqueue", qdir, "mail", *args), 2)

    @pytest.mark.skipif(not HAS_PRODUCER, reason="walq.producers.client is not there yet")
    def test_enqueue_without_an_owner_enqueues_directly(self, qdir: str) -> None:
        """No owner: the command takes the lock and enqueues; the id is printed."""
        varied(qdir)
        r = cli("enqueue", qdir, "mail", "--payload", '{"to": "x@y"}', "--key", "k1")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip() == "5"

    def test_enqueue_with_run_at_after_and_unique_for(self, qdir: str) -> None:
        """--run-at (aware ISO 8601), --after ID..., --after-policy, --unique-for SECONDS."""
        ids = varied(qdir)
        parent, done = ids["pending"], ids["done"]
        later = cli("enqueue", qdir, "mail", "--run-at", "2036-01-01T00:00:00+01:00")
        dep = cli("enqueue", qdir, "mail", "--after", str(parent), "--after", str(done),
                  "--after-policy", "always", "--key", "u", "--unique-for", "3600")  # fmt: skip
        assert later.exit_code == 0 and dep.exit_code == 0, (later.stderr, dep.stderr)
        with walq.Queue.open(qdir, compaction=False) as q:
            assert q.status(int(later.stdout)) == "scheduled"
            assert q.status(int(dep.stdout)) == "waiting"
            assert q.job_detail(int(later.stdout))["due_in"] > 3600 * 24 * 300

    @pytest.mark.parametrize(
        ("args", "words"),
        [
            (["--run-at", "2036-01-01T00:00:00"], "naive 2036-01-01T00:00:00 names no time"),
            (["--run-at", "soon"], "--run-at 'soon' is not an ISO 8601 time"),
            (["--run-at", "2999-01-01T00:00:00Z"], "run_at (seconds from now) must be at most"),
            (["--run-at", "2036-01-01T00:00:00Z", "--delay", "5"], "delay or run_at"),
            (["--unique-for", "-5", "--key", "k"], "unique_for must be non-negative"),
            (["--unique-for", "5"], "unique_for needs a key"),
            (["--unique-for", "inf", "--key", "k"], "unique_for must be a finite number"),
            (["--unique-for", "1e12", "--key", "k"], "unique_for must be at most"),
            (["--after", "999"], "job 999 does not exist"),
            (["--after", "0"], "'--after': 0 is not in the range"),
            (["--after-policy", "always"], "after_policy needs after"),
        ],
    )
    def test_enqueue_refuses_bad_times_and_parents_in_one_line(
        self, qdir: str, args: list[str], words: str
    ) -> None:
        """Bad --run-at, --unique-for or --after: one line naming the option, exit 2."""
        varied(qdir)
        assert words in one_line_error(cli("enqueue", qdir, "mail", *args), 2)
        with walq.Queue.open(qdir, compaction=False) as q, pytest.raises(walq.UnknownJobError):
            q.status(5)  # nothing was added

    @pytest.mark.skipif(not HAS_PRODUCER, reason="walq.producers.client is not there yet")
    def test_enqueue_into_a_missing_directory_is_refused(self, tmp_path: Path) -> None:
        """A typo in the path is not a new queue."""
        missing = tmp_path / "typo"
        one_line_error(cli("enqueue", str(missing), "mail"), 2)
        assert not missing.exists()


class TestWorkerCommand:
    """walq worker: a bad --tasks is a usage error before anything is opened."""

    @pytest.mark.parametrize("spec", ["nomodule_xyz:tasks", "tests.worker_tasks:nothing", "bad"])
    def test_bad_tasks_spec(self, qdir: str, spec: str) -> None:
        """An unimportable module, a missing attribute, a malformed spec: exit 2."""
        one_line_error(cli("worker", qdir, "--tasks", spec), 2)

    def test_bad_log_level(self, qdir: str) -> None:
        """An unknown logging level: exit 2."""
        line = one_line_error(cli("worker", qdir, "--tasks", "x:y", "--log-level", "LOUD"), 2)
        assert "--log-level" in line


# -- bad input common to every command ----------------------------------------------------------

READERS = [
    ["dump"],
    ["stats"],
    ["fsck"],
    ["dead", "list"],
    ["dead", "show", "{dir}", "1"],
    ["dead", "requeue", "{dir}", "1"],
    ["dead", "purge", "{dir}", "--yes"],
    ["compact"],
    ["status", "{dir}", "1"],
    ["jobs"],
    ["cancel", "{dir}", "1"],
    ["pause", "{dir}", "t"],
    ["resume", "{dir}", "t"],
]


def command(spec: list[str], directory: str) -> list[str]:
    if "{dir}" in spec:
        return [directory if part == "{dir}" else part for part in spec]
    return [*spec, directory]


@pytest.mark.parametrize("spec", READERS, ids=lambda s: " ".join(s[:2]))
def test_a_missing_directory_is_exit_2_and_is_not_created(tmp_path: Path, spec: list[str]) -> None:
    """No such directory: one line, exit 2, and nothing created."""
    missing = tmp_path / "nope"
    assert "no such directory" in one_line_error(cli(*command(spec, str(missing))), 2)
    assert not missing.exists()


@pytest.mark.parametrize("spec", READERS, ids=lambda s: " ".join(s[:2]))
def test_a_directory_that_is_not_a_queue_is_exit_2(tmp_path: Path, spec: list[str]) -> None:
    """A directory of other files: one line saying it is not a queue, exit 2."""
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a walq queue" in one_line_error(cli(*command(spec, str(tmp_path))), 2)


@pytest.mark.parametrize("spec", [["dead", "requeue", "{dir}", "1"], ["compact"]], ids=str)
def test_administration_on_a_damaged_queue_is_exit_1(qdir: str, spec: list[str]) -> None:
    """Opening a damaged queue as owner fails with the file and offset: exit 1."""
    seg, offset = damaged(qdir)
    line = one_line_error(cli(*command(spec, qdir)), 1)
    assert seg.name in line and str(offset) in line


def test_an_unreadable_segment_is_one_line(qdir: str) -> None:
    """A directory where a segment file should be: an OS error, one line, exit 2."""
    varied(qdir)
    (Path(qdir) / fmt.segment_name(9)).mkdir()
    one_line_error(cli("dump", qdir), 2)


def test_an_internal_error_is_one_line_unless_asked(
    qdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is one line naming it (exit 1); WALQ_TRACEBACK=1 shows the traceback."""
    varied(qdir)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no such luck")

    monkeypatch.setattr(ops_stats, "directory_stats", broken)
    assert "internal error: RuntimeError: no such luck" in one_line_error(cli("stats", qdir), 1)
    monkeypatch.setenv("WALQ_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli("stats", qdir)


# -- real processes ------------------------------------------------------------------------------


class TestProcesses:
    """Each command at least once as `python -m walq ...`."""

    def test_read_commands(self, qdir: str) -> None:
        """dump, stats, fsck, dead list and dead show as processes."""
        ids = varied(qdir)
        r = run("dump", qdir, "--json")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 10
        assert json.loads(run("stats", qdir, "--json").stdout)["dead"] == 1
        assert run("fsck", qdir).returncode == 0
        assert "ValueError" in run("dead", "list", qdir).stdout
        assert "Traceback" in run("dead", "show", qdir, str(ids["dead"])).stdout

    def test_write_commands(self, qdir: str) -> None:
        """dead requeue, dead purge and compact as processes."""
        ids = varied(qdir)
        assert run("dead", "requeue", qdir, str(ids["dead"])).returncode == 0
        assert run("dead", "purge", qdir, "--yes").stdout.strip() == "purged 0 dead jobs"
        assert run("compact", qdir).returncode == 0

    def test_bad_input_as_a_process(self, tmp_path: Path) -> None:
        """Exit codes and the one-line error survive a real process boundary."""
        assert "no such directory" in one_line_error(run("stats", str(tmp_path / "x")), 2)
        damaged(str(tmp_path / "q"))
        assert run("fsck", str(tmp_path / "q")).returncode == 1

    @pytest.mark.skipif(not HAS_PRODUCER, reason="walq.producers.client is not there yet")
    def test_enqueue(self, qdir: str) -> None:
        """enqueue as a process, owner-less: enqueued directly."""
        varied(qdir)
        r = run("enqueue", qdir, "mail", "--payload", "{}")
        assert r.returncode == 0, r.stderr

    def test_demo(self) -> None:
        """The tour runs and finds nothing lost."""
        r = run("demo", "--jobs", "10", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing was lost" in r.stdout

    def test_a_closed_pipe_stops_the_dump_quietly(self, qdir: str) -> None:
        """`walq dump DIR | head -1`: no traceback, exit 0."""
        with walq.Queue.open(qdir, compaction=False) as q:
            q.enqueue_many([("mail", {"i": i, "pad": "x" * 100}) for i in range(3000)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "walq", "dump", qdir],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().startswith("1:40")
        proc.stdout.close()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err


def lines_of(proc: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Collect a process's stdout lines in a thread."""
    got: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return got, t


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_follow_tails_a_live_queue_and_stops_on_ctrl_c(qdir: str) -> None:
    """dump --follow prints records appended later (across a roll); SIGINT exits 0."""
    q = walq.Queue.open(qdir, segment_size=SMALL, compaction=False)
    try:
        q.enqueue("mail", {"i": -1})
        # As a terminal starts it: a test run started in the background (`cmd &` in a
        # script) ignores SIGINT, and an ignored signal is inherited across exec, while
        # a handled one is reset to its default there.
        ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "walq", "dump", qdir, "--follow", "--json",
                 "--type", "enqueue", "--interval", "0.02"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        finally:
            signal.signal(signal.SIGINT, ignored)
        got, reader = lines_of(proc)
        wait_for(lambda: len(got) >= 1)
        for i in range(120):
            q.enqueue("mail", {"i": i})
        wait_for(lambda: len(got) >= 121)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        reader.join(5)
    finally:
        q.close()
        if proc.poll() is None:  # the test failed before the follower stopped: stop it
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    payloads = [json.loads(line)["payload"] for line in got]
    assert payloads == [f'{{"i":{i}}}' for i in range(-1, 120)]
    assert len(list(Path(qdir).glob("*.wal"))) > 1


@pytest.fixture
def live_owner(qdir: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real owner process running tests.worker_tasks, with a slow job in flight."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        q.enqueue("sleeps", {"ledger": str(ledger), "seconds": 30})
        q.enqueue("raises", {"n": 1})
        q.enqueue_many([("ok", {}) for _ in range(20)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "walq", "worker", qdir, "--tasks", "tests.worker_tasks:tasks",
         "--processes", "2", "--log-level", "WARNING", "--shutdown-grace", "0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: ledger.exists() and "start" in ledger.read_text())
        yield proc, ledger
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # a second signal skips the drain
            proc.wait(timeout=20)


def test_tools_beside_a_real_owner_process(
    qdir: str, live_owner: tuple[subprocess.Popen[str], Path]
) -> None:
    """An owner process runs jobs: reads work beside it; writes are refused, naming it."""
    proc, _ = live_owner
    st = json.loads(run("stats", qdir, "--json").stdout)
    assert st["owner"] == {"running": True, "pid": proc.pid}
    assert st["running"] >= 1  # the slow job, in flight: not lost, not pending
    wait_for(lambda: json.loads(run("stats", qdir, "--json").stdout)["worker"] is not None)
    st = json.loads(run("stats", qdir, "--json").stdout)
    assert "sleeps" in st["breakers"]
    r = run("dump", qdir, "--json")
    assert r.returncode == 0
    types = {json.loads(line)["type"] for line in r.stdout.splitlines()}
    assert {"enqueue", "claim"} <= types and "damage" not in types
    assert run("fsck", qdir).returncode == 0
    line = one_line_error(run("compact", qdir), 2)
    assert f"an owner is running (pid {proc.pid})" in line
    r = run("dead", "purge", qdir, "--yes")  # through the owner (tests/test_cli_control.py)
    assert r.returncode == 0 and "purged 1 dead jobs" in r.stdout, r.stderr


def test_dump_and_stats_beside_a_writing_owner_thread(qdir: str) -> None:
    """An owner enqueuing, acking and failing in a thread: the commands read it cleanly."""
    from tests.test_inspect import LiveOwner

    with LiveOwner(qdir, segment_size=SMALL):
        for _ in range(5):
            r = cli("dump", qdir, "--json")
            assert r.exit_code == 0, r.stderr
            rows = [json.loads(line) for line in r.stdout.splitlines()]
            assert rows and not [x for x in rows if x["type"] == "damage"]
            st = json.loads(cli("stats", qdir, "--json").stdout)
            assert st["owner"]["running"] is True and st["damaged"] == 0
            assert cli("stats", qdir).exit_code == 0


@pytest.mark.skipif(not HAS_PROMETHEUS, reason="needs walq[metrics]")
def test_worker_serves_metrics_and_logs_json_lines(qdir: str) -> None:
    """worker --metrics-port serves the exposition; --log-format json logs one object a line."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with walq.Queue.open(qdir) as q:
        q.enqueue("raises", {"n": 1})
    proc = subprocess.Popen(
        [sys.executable, "-m", "walq", "worker", qdir, "--tasks", "tests.worker_tasks:tasks",
         "--processes", "1", "--log-format", "json", "--metrics-port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        body = ""

        def scraped() -> bool:
            nonlocal body
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                return False
            return "walq_jobs_failed_total 1.0" in body

        wait_for(scraped)
        assert "walq_worker_processes" in body and "walq_jobs{" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failed = [x for x in logged if "attempt 1 failed" in x["message"]]
    assert failed and failed[0]["task"] == "raises" and failed[0]["job_id"] == 1
