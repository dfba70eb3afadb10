"""Kill -9 torture: a real owner process is killed at random moments, restarted, and audited.

Each cycle starts an owner (`python -m tools.torture_owner _owner ...`): it opens the
queue, runs a producer thread and a `walq.Worker` pool whose handler is
`tools/torture_tasks.py:work`, and is SIGKILLed after a random interval. Beside
it, outside producer processes (`walq.connect`, `--producers`) live through all
the kills: they reach the owner's socket when it answers and the spool when it
does not (guarantee 8). After the last cycle the producers stop and an owner
runs without a producer until the queue is empty.

The audit is an external ledger, one fsynced line per fact, in the order the
facts happened:

    intent <nonce>               the producer is about to enqueue this payload
    enqueued <id> <nonce>        enqueue returned (durable under sync="always";
                                 under any sync mode a kill -9 loses nothing);
                                 id "-": an outside producer spooled it (no id yet)
    ran <id> <attempt> <nonce>   the handler finished (written before it returns)
    raised <id> <attempt> ...    the handler failed on purpose (a retry follows)
    damaged <id> ...             the handler got a payload other than the one enqueued
    acked <id> <attempt>         the ack is durable: the owner writes this after a
                                 later claim or sync (both fsync the log) returned

The worker acks with sync=False and relies on the next claim's fsync; the
owner's queue records which acks each claim or sync covered (a subclass of
walq.Queue: see `LedgerQueue`). Then, at the end:

- lost: an enqueued id that never ran;
- phantoms: a run of a payload nobody intended, or under another job's id;
- redelivered-after-ack: a run of an attempt after a later one's ack was durable;
- attempt-reused: a rerun whose attempt number did not grow (starts must be durable);
- duplicates: extra runs (at-least-once allows them; counted, not a violation);
- tick-twice, tick-lost (kill9 mode): the owner also runs a schedule ticking every
  second, misfire="all" (tools/torture_tasks.py: beat; its handler writes
  `tick <id> <attempt> <key>`): a tick's key run under two job ids was enqueued
  twice; a tick missing between the first and the last was lost;
- and the queue must end empty, with nothing dead and fsck clean.

Dispatcher modes (`--mode`) end each cycle another way and add their checks:

- `group-sigterm`: each cycle ends with SIGTERM to the owner's whole process
  group (as systemd's KillMode=control-group, timeout(1)); handlers record
  `begin` too. killed-in-drain: a handler that began and never finished (all
  are far shorter than the owner's shutdown_grace); the owner must exit 0.
  `--plant die-on-group-sigterm` must make it fail.
- `slow-import`: the task module takes longer to import than the task's
  timeout, every worker process pays it (they are recycled often), and each
  handler takes at most a quarter of that timeout. timeouts: any timeout the
  owner records. `--plant timeout-from-dispatch` must make it fail.
- `async`: kill -9 cycles as in kill9, with coroutine handlers
  (`torture_tasks.atasks`: many jobs at once on each worker process's event
  loop) and asyncio producers: the owner's producer is a set of coroutines
  enqueueing through a walq.AsyncQueue over the owner's queue, the outside
  producers are walq.aconnect producers, each with several coroutines.

Every mode also reports a recorded timeout (no handler comes near its own).
Monotone violations (phantoms, redeliveries, reused attempts, damage, killed
handlers, timeouts) are checked after every cycle and during the final drain,
so a run stops and reports as soon as one appears, within its duration.

`python tools/torture.py --duration 60` or `--cycles 1000`; `--plant forget-ack`
must make it fail. Exit status 1 on any violation. `--mode redis` runs the
two-owner Redis mode instead (tools/torture_redis.py has its options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.flow_audit import FlowChecks

ROOT = Path(__file__).resolve().parent.parent
VIOLATIONS = (
    "lost",
    "outbox-duplicated",
    "outbox-early",
    "dependent-early",
    "phantoms",
    "redelivered-after-ack",
    "attempt-reused",
    "damaged",
    "unfinished",
    "dead",
    "owner-failures",
    "fsck-problems",
    "killed-in-drain",
    "timeouts",
    "tick-twice",
    "tick-lost",
)
# Facts that cannot be undone by anything later: checked as the run goes.
MONOTONE = ("phantoms", "redelivered-after-ack", "attempt-reused", "damaged", "killed-in-drain",
            "timeouts", "outbox-duplicated", "outbox-early", "dependent-early",
            "tick-twice")  # fmt: skip
MODES = ("kill9", "group-sigterm", "slow-import", "async")
ASYNC_PRODUCERS = 8  # coroutines enqueueing at once in each asyncio producer (the async mode)
OWNER_GRACE = 5.0  # the owner's shutdown_grace (seconds)
OWNER_LEASE = 5.0  # the owner's claim lease (seconds)
# Kept out of the kill cycles for the final drain: what a forgotten ack leaves
# running comes back one lease later, so a planted bug shows within the duration.
DRAIN_RESERVE = OWNER_LEASE + 10.0
TIMEOUT_LINE = re.compile(r"job (\d+) \((\w+)\) attempt (\d+) failed \(timeout\)")


# -- the ledger audit (pure) ----------------------------------------------------------


@attrs.define
class Audit:
    """What the ledger and the final queue say."""

    cycles: int = 0
    jobs: int = 0
    runs: int = 0
    lost: int = 0
    phantoms: int = 0
    duplicates: int = 0
    redelivered_after_ack: int = 0
    attempt_reused: int = 0
    damaged: int = 0
    unconfirmed_ran: int = 0
    acked: int = 0
    unfinished: int = 0
    dead: int = 0
    owner_failures: int = 0
    fsck_problems: int = 0
    killed_in_drain: int = 0
    timeouts: int = 0
    outbox_jobs: int = 0  # follow-up jobs committed with an ack (their parents' acks durable)
    outbox_duplicated: int = 0  # a follow-up job added by more than one ack
    outbox_early: int = 0  # a follow-up job that ran before its parent's handler finished
    dependents: int = 0
    dependent_early: int = 0  # a dependent that ran before its parent was done
    ticks: int = 0  # schedule ticks whose job ran
    tick_twice: int = 0  # ticks run under two job ids: enqueued twice
    tick_lost: int = 0  # ticks missing between the first and the last run (misfire="all")
    drain_killed: bool = False
    examples: list[str] = attrs.Factory(list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)

    @property
    def violations(self) -> int:
        return sum(getattr(self, name.replace("-", "_")) for name in VIOLATIONS)

    def summary(self) -> dict[str, Any]:
        out = {
            name.replace("_", "-"): getattr(self, name)
            for name in (
                "cycles",
                "jobs",
                "runs",
                "lost",
                "phantoms",
                "duplicates",
                "redelivered_after_ack",
                "attempt_reused",
                "damaged",
                "unconfirmed_ran",
                "acked",
                "unfinished",
                "dead",
                "owner_failures",
                "fsck_problems",
                "killed_in_drain",
                "timeouts",
                "outbox_jobs",
                "outbox_duplicated",
                "outbox_early",
                "dependents",
                "dependent_early",
                "ticks",
                "tick_twice",
                "tick_lost",
            )
        }
        out["violations"] = self.violations
        return out


def audit_ledger(
    lines: Sequence[str], audit: Audit | None = None, *, drained: bool = False, final: bool = False
) -> Audit:
    """Check the ledger's facts against each other (see the module docstring).

    Jobs are followed by nonce (a spooled job has no id until the owner ingests
    it), runs and acks by id. `drained`: no owner was ever killed, so every
    handler that began must have finished (killed-in-drain otherwise).
    `final`: the queue was drained, so every tick enqueued has run (tick-lost).
    """
    audit = audit or Audit()
    intents: set[str] = set()
    confirmed: set[str] = set()
    nonce_of: dict[int, str] = {}  # ids the ledger knows: whose payload they carry
    ran: dict[str, int] = {}  # nonce -> successful runs
    attempts: dict[int, int] = {}
    acked: dict[int, int] = {}  # id -> highest attempt whose ack was durable
    redelivered: set[int] = set()
    began: dict[tuple[int, int], int] = {}  # (id, attempt) -> its `begin` line
    ended: set[tuple[int, int]] = set()
    flow = FlowChecks(audit)  # outbox, child, after, early, tick (tools/flow_audit.py)
    for number, line in enumerate(lines, 1):
        word, *rest = line.split() or [""]
        try:
            if flow.line(word, rest, number, line):
                pass
            elif word == "intent":
                intents.add(rest[0])
            elif word == "enqueued":
                nonce = rest[1]
                confirmed.add(nonce)
                if rest[0] != "-":  # "-": spooled by an outside producer, no id yet
                    jid = int(rest[0])
                    if nonce_of.get(jid, nonce) != nonce:
                        audit.phantoms += 1
                        audit.note(f"line {number}: id {jid} given to {nonce} and {nonce_of[jid]}")
                    nonce_of[jid] = nonce
            elif word in ("ran", "raised"):
                jid, attempt, nonce = int(rest[0]), int(rest[1]), rest[2]
                if nonce not in intents or nonce_of.get(jid, nonce) != nonce:
                    audit.phantoms += 1
                    audit.note(f"line {number}: job {jid} ran payload {nonce}, never enqueued so")
                if attempt <= attempts.get(jid, 0):
                    audit.attempt_reused += 1
                    audit.note(f"line {number}: job {jid} ran attempt {attempt} again")
                attempts[jid] = max(attempt, attempts.get(jid, 0))
                if jid in acked and attempt > acked[jid] and jid not in redelivered:
                    redelivered.add(jid)
                    audit.note(
                        f"line {number}: job {jid} ran attempt {attempt} after attempt "
                        f"{acked[jid]}'s ack was durable"
                    )
                if word == "ran":
                    ran[nonce] = ran.get(nonce, 0) + 1
                    flow.ran(jid, number)
                ended.add((jid, attempt))
            elif word == "begin":
                began.setdefault((int(rest[0]), int(rest[1])), number)
            elif word == "damaged":
                audit.damaged += 1
                audit.note(f"line {number}: {line}")
                with contextlib.suppress(ValueError, IndexError):
                    ended.add((int(rest[0]), int(rest[1])))
            elif word == "acked":
                jid, attempt = int(rest[0]), int(rest[1])
                acked[jid] = max(attempt, acked.get(jid, 0))
                child = flow.acked(jid)
                if child is not None:
                    confirmed.add(child)  # committed with this ack: it must run
            elif word != "start":
                raise ValueError(word)
        except (ValueError, IndexError):
            audit.note(f"line {number}: unreadable: {line!r}")
    audit.jobs = len(confirmed)
    audit.runs = sum(ran.values())
    audit.acked = len(acked)
    audit.redelivered_after_ack = len(redelivered)
    audit.duplicates = sum(n - 1 for n in ran.values())
    audit.unconfirmed_ran = len(set(ran) - confirmed)
    missing = sorted(confirmed - set(ran))
    audit.lost = len(missing)
    flow.finish(final=final)
    if missing:
        audit.note(f"enqueued but never ran: {missing[:20]}")
    if drained:
        killed = sorted(began[k] for k in set(began) - ended)
        audit.killed_in_drain = len(killed)
        for number in killed[:5]:
            audit.note(f"line {number}: {lines[number - 1]}: the handler never finished")
    return audit


def count_timeouts(log_text: str, audit: Audit) -> None:
    """Timeouts the owners recorded (their log): no torture handler comes near its own."""
    found = TIMEOUT_LINE.findall(log_text)
    audit.timeouts = len(found)
    for jid, task, attempt in found[:5]:
        audit.note(f"owner.log: job {jid} ({task}) attempt {attempt} recorded as a timeout")


def early_violations(work: Path, mode: str, *, owner_running: bool = False) -> Audit | None:
    """The monotone violations so far (ledger and owner log), or None if there are none.

    While an owner runs, a handler that began may yet finish: killed-in-drain waits.
    """
    ledger, log = work / "ledger", work / "owner.log"
    audit = Audit()
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    audit_ledger(lines, audit, drained=mode == "group-sigterm" and not owner_running)
    count_timeouts(log.read_text(errors="replace") if log.exists() else "", audit)
    if not any(getattr(audit, name.replace("-", "_")) for name in MONOTONE):
        return None
    return audit


# -- the driver -----------------------------------------------------------------------------


def task_of(mode: str) -> str:
    """The task producers enqueue in this mode."""
    return "work_timed" if mode == "slow-import" else "work"


@attrs.define
class Options:
    """How to torture (see the command-line help)."""

    duration: float = 30.0
    cycles: int = 1_000_000
    seed: int = 0
    kill_min: float = 0.3
    kill_max: float = 1.5
    sync: str = "always"
    compaction: str = "aggressive"
    processes: int = 2
    payload_min: int = 0
    payload_max: int = 2000
    rate: float = 300.0
    fail_percent: float = 5.0
    flow_percent: float = 10.0  # jobs with a follow-up job and a dependent
    work_ms: float = 5.0
    producers: int = 1  # outside producer processes (walq.connect), alive across the kills
    producer_rate: float = 50.0
    plant: str | None = None
    mode: str = "kill9"
    import_delay: float = 2.5  # slow-import: seconds the task module takes to import
    drain_timeout: float = 180.0
    directory: str | None = None
    keep: bool = False
    echo: bool = False


def mode_defaults(mode: str) -> dict[str, float]:
    """The Options a mode changes from kill9's: slow-import's handlers and starts are
    slow, so fewer jobs and longer cycles; group-sigterm's and async's handlers take
    a while."""
    if mode == "slow-import":
        return {"kill_min": 4.0, "kill_max": 8.0, "work_ms": 300.0, "rate": 3.0,
                "producer_rate": 1.0}  # fmt: skip
    if mode == "async":
        # handlers long enough to overlap on the event loops; owners that live long
        # enough to start their asyncio producer
        return {"kill_min": 1.5, "kill_max": 3.5, "work_ms": 50.0}
    if mode == "group-sigterm":
        # two processes run ~13 of these handlers a second: enqueue fewer
        return {"work_ms": 300.0, "rate": 5.0, "producer_rate": 2.0}
    return {}


def start_owner(opts: Options, qdir: Path, ledger: Path, log: Any, cycle: int, drain: bool) -> Any:
    cmd = [
        sys.executable, "-m", "tools.torture_owner", "_owner", str(qdir), str(ledger),
        "--cycle", str(cycle), "--seed", str(opts.seed), "--sync", opts.sync,
        "--compaction", opts.compaction, "--processes", str(opts.processes),
        "--payload-min", str(opts.payload_min), "--payload-max", str(opts.payload_max),
        "--rate", str(opts.rate), "--fail-percent", str(opts.fail_percent),
        "--flow-percent", str(opts.flow_percent), "--mode", opts.mode,
    ]  # fmt: skip
    if drain:
        cmd.append("--drain")
    env = dict(os.environ)
    env["WALQ_TORTURE_WORK_MS"] = str(opts.work_ms)
    env.pop("WALQ_TORTURE_BEGIN", None)
    env.pop("WALQ_TORTURE_IMPORT_DELAY", None)
    if opts.mode != "kill9":
        env["WALQ_TORTURE_BEGIN"] = "1"
    if opts.mode == "slow-import":
        env["WALQ_TORTURE_IMPORT_DELAY"] = str(opts.import_delay)
    env.pop("WALQ_PLANT_BUG", None)
    if opts.plant:
        env["WALQ_PLANT_BUG"] = opts.plant
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log.write(f"--- cycle {cycle}{' (drain)' if drain else ''}\n")
    log.flush()
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_running(proc: Any, qdir: Path, timeout: float = 60.0) -> None:
    """Until the owner's Worker runs (its status file names it), it exits, or `timeout`."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((qdir / "worker-status.json").read_text())["pid"] == proc.pid:
                return
        time.sleep(0.02)


def term_group(proc: Any, audit: Audit, what: str) -> None:
    """SIGTERM to the owner's whole process group (systemd's stop); it must drain and exit 0."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=OWNER_GRACE + 30)
    except subprocess.TimeoutExpired:
        kill_owner(proc)
        audit.owner_failures += 1
        audit.note(f"{what}: the owner did not stop within {OWNER_GRACE + 30:g} s of SIGTERM")
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # nothing should be left; make sure
    if code != 0:
        audit.owner_failures += 1
        audit.note(f"{what}: the owner exited {code} after a group SIGTERM, not 0")


def kill_owner(proc: Any) -> None:
    """SIGKILL the owner alone (its workers die of their parent-death signal), then its group.

    The owner is reaped last, so its process-group id cannot be reused meanwhile.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _state(proc.pid) not in ("Z", None):
        time.sleep(0.005)
    time.sleep(0.02)  # let the parent-death signals land first
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def torture(opts: Options) -> Audit:
    """Run the cycles, drain, audit; return the audit (violations counted in it)."""
    import walq
    from walq.ops.repair import fsck

    made = opts.directory is None
    work = Path(opts.directory or tempfile.mkdtemp(prefix="walq-torture-"))
    work.mkdir(parents=True, exist_ok=True)
    qdir, ledger = work / "q", work / "ledger"
    audit = Audit()
    rng = random.Random(opts.seed)
    started = time.monotonic()
    producers: list[Any] = []
    early: Audit | None = None
    try:
        with open(work / "owner.log", "a") as log:
            qdir.mkdir(mode=0o700, exist_ok=True)
            producers = [start_producer(opts, qdir, ledger, log, i) for i in range(opts.producers)]
            cycling = opts.duration - min(opts.duration / 2, DRAIN_RESERVE)
            while audit.cycles < opts.cycles and time.monotonic() - started < cycling:
                proc = start_owner(opts, qdir, ledger, log, audit.cycles, drain=False)
                if opts.mode == "group-sigterm":
                    wait_running(proc, qdir)  # the stop under test is the pool's, not the start's
                try:
                    code = proc.wait(timeout=rng.uniform(opts.kill_min, opts.kill_max))
                except subprocess.TimeoutExpired:
                    if opts.mode == "group-sigterm":
                        term_group(proc, audit, f"cycle {audit.cycles}")
                    else:
                        kill_owner(proc)
                else:
                    audit.owner_failures += 1
                    audit.note(f"cycle {audit.cycles}: the owner exited by itself ({code})")
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                audit.cycles += 1
                if opts.echo and audit.cycles % 50 == 0:
                    print(
                        f"  {audit.cycles} cycles, {time.monotonic() - started:.0f} s", flush=True
                    )
                log.flush()
                early = early_violations(work, opts.mode)
                if early is not None:
                    break
            stop_producers(producers, audit)
            if early is None:
                early = final_drain(opts, qdir, ledger, log, audit, work)
        if early is not None:
            # A violation nothing later can undo: reported now, without waiting out a
            # drain (the queue is not expected to end empty, so that is not checked).
            audit.note(f"stopped after {audit.cycles} cycles: a violation was found")
            for name in (*MONOTONE, "jobs", "runs", "duplicates", "acked"):
                attr = name.replace("-", "_")
                setattr(audit, attr, getattr(early, attr))
            # (what has not run yet is no finding: the run stopped before its drain)
            audit.examples += [e for e in early.examples if not e.startswith("enqueued but")]
            return audit
        with walq.Queue.open(str(qdir), compaction=False, lock_timeout=10.0, serve=False) as q:
            stats = q.stats()
        audit.unfinished = stats["unfinished"]
        audit.dead = stats["dead"]
        if audit.unfinished or audit.dead:
            audit.note(f"the queue ends with {audit.unfinished} unfinished, {audit.dead} dead")
        report = fsck(str(qdir))
        audit.fsck_problems = len(report.problems)
        for problem in report.problems[:5]:
            audit.note(f"fsck: {problem}")
        audit_ledger(
            ledger.read_text().splitlines() if ledger.exists() else [], audit,
            drained=opts.mode == "group-sigterm" and not audit.drain_killed,
            final=not audit.drain_killed,
        )  # fmt: skip
        log_text = (work / "owner.log").read_text(errors="replace")
        count_timeouts(log_text, audit)
        if audit.violations and (work / "owner.log").exists():
            tail = (work / "owner.log").read_text().splitlines()[-15:]
            audit.examples += [f"owner.log: {line}" for line in tail]
    finally:
        for proc in producers:  # only if something above failed: they were stopped
            if proc.poll() is None:
                kill_owner(proc)
        if made and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    return audit


def final_drain(
    opts: Options, qdir: Path, ledger: Path, log: Any, audit: Audit, work: Path
) -> Audit | None:
    """One owner with no producer until the queue is empty; a monotone violation found
    meanwhile ends it at once (then returned)."""
    proc = start_owner(opts, qdir, ledger, log, audit.cycles, drain=True)
    deadline = time.monotonic() + opts.drain_timeout
    while True:
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            log.flush()
            early = early_violations(work, opts.mode, owner_running=True)
            if early is not None:
                kill_owner(proc)
                return early
            if time.monotonic() >= deadline:
                kill_owner(proc)
                audit.drain_killed = True  # its handlers cut short are not the owner's doing
                audit.note(f"the final drain did not finish in {opts.drain_timeout:g} s")
                return None
            continue
        if code != 0:
            audit.owner_failures += 1
            audit.note(f"the final drain exited with {code}")
        return None


def start_producer(opts: Options, qdir: Path, ledger: Path, log: Any, index: int) -> Any:
    cmd = [
        sys.executable, "-m", "tools.torture_owner", "_producer", str(qdir), str(ledger),
        "--index", str(index), "--seed", str(opts.seed), "--rate", str(opts.producer_rate),
        "--payload-min", str(opts.payload_min), "--payload-max", str(opts.payload_max),
        "--fail-percent", str(opts.fail_percent), "--task", task_of(opts.mode),
    ]  # fmt: skip
    if opts.mode == "async":
        cmd += ["--coroutines", str(ASYNC_PRODUCERS)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_producers(producers: list[Any], audit: Audit) -> None:
    """SIGTERM the outside producers (each finishes its request); a dead one is a failure."""
    for proc in producers:
        if proc.poll() is not None:
            audit.owner_failures += 1
            audit.note(f"producer {proc.pid} died on its own ({proc.returncode})")
            continue
        proc.send_signal(signal.SIGTERM)
    for proc in producers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_owner(proc)
            audit.owner_failures += 1
            audit.note(f"producer {proc.pid} did not stop within 30 s of SIGTERM")


def _mode(argv: list[str]) -> str | None:
    """The value of `--mode` (`--mode redis` hands the run to tools/torture_redis.py)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--mode="):
            return arg.partition("=")[2]
        if arg == "--mode" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _mode(argv) == "redis":  # two Worker hosts on one redis-server: tools/torture_redis.py
        from tools import torture_redis

        return torture_redis.main([a for a in argv if a not in ("--mode", "redis", "--mode=redis")])
    from walq.testing.plant import BUGS, WORKER_BUGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds: kill cycles, then the final drain (a violation is reported within it)",
    )
    parser.add_argument("--cycles", type=int, default=None, help="stop after this many kills")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="kill9",
        help="how each cycle ends and what is checked (see the module docstring); "
        "group-sigterm and slow-import change other defaults (mode_defaults); "
        "--mode redis runs tools/torture_redis.py",
    )
    parser.add_argument(
        "--kill-min", type=float, default=None, help="seconds (uniform draw; slow-import: 4)"
    )
    parser.add_argument(
        "--kill-max", type=float, default=None, help="seconds (uniform draw; slow-import: 8)"
    )
    parser.add_argument("--sync", choices=["always", "interval", "never"], default="always")
    parser.add_argument(
        "--compaction",
        choices=["aggressive", "default", "off"],
        default="aggressive",
        help="aggressive: 64 KiB segments, a compaction every 50 ms when there is garbage "
        "and a checkpoint every 16 KiB appended (kill -9 lands in both)",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--payload-min", type=int, default=0, help="bytes")
    parser.add_argument("--payload-max", type=int, default=2000, help="bytes")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="enqueues per second at most (default 300; group-sigterm: 5; slow-import: 3)",
    )
    parser.add_argument("--fail-percent", type=float, default=5.0, help="jobs failing once")
    parser.add_argument(
        "--flow-percent",
        type=float,
        default=10.0,
        help="jobs whose handler enqueues a follow-up job and that get a dependent (default 10)",
    )
    parser.add_argument(
        "--work-ms",
        type=float,
        default=None,
        help="handler time, at most (default 5; group-sigterm and slow-import: 300)",
    )
    parser.add_argument(
        "--producers", type=int, default=1, help="outside walq.connect producer processes"
    )
    parser.add_argument(
        "--producer-rate",
        type=float,
        default=None,
        help="enqueues per second per producer (default 50; group-sigterm: 2; slow-import: 1)",
    )
    parser.add_argument(
        "--plant", choices=sorted({*BUGS, *WORKER_BUGS}), help="plant a known bug in the owner"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=180.0, help="seconds for the final drain"
    )
    parser.add_argument(
        "--dir", help="work directory (default: a new one in $TMPDIR or /tmp, removed after)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    defaults = {**attrs.asdict(Options()), **mode_defaults(args.mode)}

    def given(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    opts = Options(
        duration=args.duration if args.cycles is None else float("inf"),
        cycles=args.cycles if args.cycles is not None else 1_000_000,
        seed=seed,
        kill_min=given("kill_min"),
        kill_max=given("kill_max"),
        sync=args.sync,
        compaction=args.compaction,
        processes=args.processes,
        payload_min=args.payload_min,
        payload_max=args.payload_max,
        rate=given("rate"),
        fail_percent=args.fail_percent,
        flow_percent=args.flow_percent,
        work_ms=given("work_ms"),
        producers=args.producers,
        producer_rate=given("producer_rate"),
        plant=args.plant,
        mode=args.mode,
        drain_timeout=args.drain_timeout,
        directory=args.dir,
        keep=args.keep,
        echo=not args.json,
    )
    audit = torture(opts)
    summary = audit.summary()
    summary["seed"] = seed
    if args.json:
        summary["examples"] = audit.examples
        print(json.dumps(summary, sort_keys=True))
    else:
        for name in ("cycles", "jobs", "lost", "phantoms", "duplicates", "redelivered-after-ack",
                     "outbox-jobs", "dependents", "ticks"):  # fmt: skip
            print(f"{name}: {summary[name]}")
        for name in ("attempt-reused", "damaged", "unfinished", "dead", "owner-failures",
                     "killed-in-drain", "timeouts", "outbox-duplicated", "outbox-early",
                     "dependent-early", "tick-twice", "tick-lost"):  # fmt: skip
            if summary[name]:
                print(f"{name}: {summary[name]}")
        print(f"violations: {audit.violations} (seed {seed})")
        for line in audit.examples:
            print(f"  {line}")
    return 1 if audit.violations else 0


if __name__ == "__main__":
    sys.exit(main())
