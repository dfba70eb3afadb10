"""Two-owner Redis torture: two Worker hosts on one server; kill -9 one, restart the server.

`python tools/torture.py --mode redis --duration 60` (or `python -m tools.torture_redis`)
starts its own redis-server (a free loopback port, a temporary directory,
`appendonly yes`, `appendfsync always`), two owner processes (`python -m
tools.torture_redis _owner ...`: each a `walq.Worker` on the queue, a "host"),
and a producer in this process. During the run it:

- kills one owner with SIGKILL (its worker processes die with it) and starts
  a new one in its place: the dead host's running jobs must come back and
  finish elsewhere within 2 leases;
- kills redis-server with SIGKILL and restarts it on the same port and
  directory: the owners must ride out the outage, keep their handlers
  running and report their results once it is back.

The audit reads an external ledger, one fsynced line per fact:

    enq <id>                      enqueue returned (the server has the job)
    start <id> <attempt> <host>   the handler starts (written before any work)
    end <id> <attempt> <host>     the handler finished (written before it returns)
    killed <host>                 this host was killed -9
    back <id> <host>              a job that died with that host is claimable again
    acked <id> <attempt>          the owner's ack returned (durable: appendfsync always)

and the flow and tick lines of tools/flow_audit.py: `--flow-percent` of the
jobs enqueue a follow-up job from their handler (outbox, child) and get a
dependent enqueued after them (after, early), and both owners carry a schedule
ticking every second with misfire="all" (tick): each tick is one job whatever
host fires it, across owner kills and server restarts.

(each line ends with the time, CLOCK_MONOTONIC, shared by every process), and
at the end which enqueued jobs the server says are done. It asserts:

- overlap: no two runs of one job on two hosts at the same time (a run that
  started and never ended belongs to a killed host, and ends at its kill);
- lost: every enqueued job is done at the end (no acknowledged job lost);
- late-rescue: every job running on a killed host starts again elsewhere
  within 2 leases of the kill;
- owner-failures: an owner that exits by itself (a Worker that dies with the
  server's connection), and a queue that does not end empty;
- outbox-early, outbox-duplicated, dependent-early, tick-twice, tick-lost (the
  checks tools/torture.py makes too, from the same code: tools/flow_audit.py);
  a follow-up job whose parent's ack was durable and that never ran is lost.

`--plant heartbeat-off` turns the owners' lease heartbeat off: jobs longer
than the lease are then run twice at once, and the run must fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.flow_audit import FlowChecks

ROOT = Path(__file__).resolve().parent.parent
VIOLATIONS = ("overlap", "lost", "late-rescue", "owner-failures", "unfinished", "dead",
              "outbox-early", "outbox-duplicated", "dependent-early", "tick-twice",
              "tick-lost")  # fmt: skip


# -- a redis-server of the tool's own ------------------------------------------------------------


class RedisServer:
    """A durable redis-server on a free loopback port, in its own directory; restartable."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the server's own stdout
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
             str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited ({self.proc.returncode})"
                )
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout:g} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (only the process this object started) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# -- the ledger ---------------------------------------------------------------------------------


def note(path: str, line: str) -> None:
    """Append one fsynced line (O_APPEND: one write per line, from any process)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line} {time.monotonic():.6f}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class Audit:
    """What the ledger and the final queue say."""

    jobs: int = 0
    runs: int = 0
    owner_kills: int = 0
    server_restarts: int = 0
    rescued: int = 0
    worst_rescue: float = 0.0
    overlap: int = 0
    lost: int = 0
    late_rescue: int = 0
    owner_failures: int = 0
    unfinished: int = 0
    dead: int = 0
    outbox_jobs: int = 0  # follow-up jobs committed with a durable ack
    outbox_duplicated: int = 0
    outbox_early: int = 0
    dependents: int = 0
    dependent_early: int = 0
    ticks: int = 0
    tick_twice: int = 0
    tick_lost: int = 0
    examples: list[str] = attrs.field(factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)

    @property
    def violations(self) -> int:
        return sum(getattr(self, v.replace("-", "_")) for v in VIOLATIONS)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobs": self.jobs,
            "runs": self.runs,
            "owner-kills": self.owner_kills,
            "server-restarts": self.server_restarts,
            "rescued": self.rescued,
            "worst-rescue-seconds": round(self.worst_rescue, 2),
            "outbox-jobs": self.outbox_jobs,
            "dependents": self.dependents,
            "ticks": self.ticks,
        }
        out.update({v: getattr(self, v.replace("-", "_")) for v in VIOLATIONS})
        out["violations"] = self.violations
        return out


def audit_ledger(
    lines: Sequence[str], lease: float, done: set[int], audit: Audit, *, final: bool = True
) -> Audit:
    """Check the ledger (see the module docstring); `done`: the ids done on the server.

    `final`: the queue was drained, so every tick enqueued has run (tick-lost).
    """
    kills: dict[str, float] = {}
    backs: dict[tuple[int, str], float] = {}
    enqueued: set[int] = set()
    # (job, attempt, host) -> [start, end or None]
    runs: dict[tuple[int, int, str], list[float | None]] = {}
    flow = FlowChecks(audit)
    for number, line in enumerate(lines, 1):
        x = line.split()
        if not x:
            continue
        try:
            if flow.line(x[0], x[1:], number, line):
                continue
            if x[0] == "acked":
                flow.acked(int(x[1]))
                continue
            if x[0] == "end":
                flow.ran(int(x[1]), number)
        except (ValueError, IndexError):
            audit.note(f"line {number}: unreadable: {line!r}")
            continue
        if x[0] == "enq":
            enqueued.add(int(x[1]))
        elif x[0] == "killed":
            kills[x[1]] = float(x[2])
        elif x[0] == "back":
            backs.setdefault((int(x[1]), x[2]), float(x[3]))
        elif x[0] in ("start", "end"):
            key = (int(x[1]), int(x[2]), x[3])
            at = float(x[4])
            if x[0] == "start":
                runs[key] = [at, None]
            elif key in runs:
                runs[key][1] = at
    audit.jobs = len(enqueued)
    audit.runs = len(runs)
    by_job: dict[int, list[tuple[float, float, str, int]]] = {}
    for (jid, attempt, host), (start, ended) in runs.items():
        assert start is not None
        # A run that never ended belongs to a killed host: it ended with it.
        end = ended if ended is not None else kills.get(host, float("inf"))
        by_job.setdefault(jid, []).append((start, end, host, attempt))
    for jid, spans in sorted(by_job.items()):
        spans.sort()
        for i, (_s1, e1, h1, a1) in enumerate(spans):
            for s2, _e2, h2, a2 in spans[i + 1 :]:
                if s2 < e1:
                    audit.overlap += 1
                    audit.note(f"job {jid}: attempt {a1} on {h1} and {a2} on {h2} ran at once")
        for s1, e1, h1, a1 in spans:
            if h1 not in kills or e1 != kills[h1]:
                continue
            later = [s for s, _, h, _ in spans if s > s1 and h != h1]
            if (jid, h1) in backs:
                later.append(backs[jid, h1])
            if not later:
                if jid not in done:
                    continue  # counted as lost below
                audit.late_rescue += 1
                audit.note(f"job {jid}: attempt {a1} died with {h1} and never ran again")
                continue
            took = min(later) - kills[h1]
            audit.rescued += 1
            audit.worst_rescue = max(audit.worst_rescue, took)
            if took > 2 * lease:
                audit.late_rescue += 1
                audit.note(f"job {jid}: rescued {took:.1f} s after {h1} died (lease {lease:g} s)")
    for jid in sorted(enqueued - done):
        audit.lost += 1
        audit.note(f"job {jid}: enqueued, never done")
    for nonce in flow.children_lost():
        audit.lost += 1
        audit.note(f"follow-up job {nonce}: its parent's ack was durable, it never ran")
    flow.finish(final=final)
    return audit


def read_ledger(ledger: str) -> list[list[str]]:
    """The ledger's complete lines, split (a line being appended right now is left out)."""
    try:
        text = Path(ledger).read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.split("\n")[:-1] if line]


def running_on(ledger: str, host: str) -> set[int]:
    """Jobs whose handler started on `host` and has not ended, as the ledger says."""
    open_runs: set[tuple[int, int]] = set()
    for x in read_ledger(ledger):
        if len(x) >= 4 and x[0] in ("start", "end") and x[3] == host:
            key = (int(x[1]), int(x[2]))
            if x[0] == "start":
                open_runs.add(key)
            else:
                open_runs.discard(key)
    return {jid for jid, _ in open_runs}


def watch_rescue(url: str, ledger: str, host: str, lease: float, stop: threading.Event) -> None:
    """Note `back ID HOST` when a job that died with `host` can be claimed again.

    The status call settles an expired lease, as any claim would; a job already
    started elsewhere is found in the ledger (its start line).
    """
    from walq.errors import WalqError
    from walq.redisq.queue import RedisQueue

    since = time.monotonic()
    left = running_on(ledger, host)
    dead_attempt = {
        int(x[1]): x[2] for x in read_ledger(ledger) if x[0] == "start" and x[3] == host
    }
    deadline = since + 10 * lease
    q: RedisQueue | None = None
    while left and not stop.is_set() and time.monotonic() < deadline:
        try:
            if q is None:
                q = RedisQueue.open(url, socket_timeout=5.0)
            elsewhere = {
                int(x[1])
                for x in read_ledger(ledger)
                if x[0] == "start" and len(x) >= 5 and x[3] != host and float(x[4]) > since
            }
            for jid in sorted(left):
                # Settled (an expired lease moved), then: not running, or running a later
                # attempt (claimed by another host, maybe waiting in its prefetch).
                if (
                    jid in elsewhere
                    or q.status(jid) != "running"
                    or (_attempt(q, jid) != dead_attempt.get(jid))
                ):
                    if jid not in elsewhere:
                        note(ledger, f"back {jid} {host}")
                    left.discard(jid)
        except WalqError:
            if q is not None:
                with contextlib.suppress(Exception):
                    q.close()
            q = None
        stop.wait(0.1)
    if q is not None:
        q.close()


def _attempt(q: Any, jid: int) -> str | None:
    """The job's current attempt number, read from its hash on the server."""
    raw = q._read(lambda c: c.hget(f"{q.prefix}:j:{jid}", "a"))
    return None if raw is None else raw.decode()


# -- an owner (a "host") ---------------------------------------------------------------------------

TASKS_MODULE = "tools.torture_redis_tasks"


def owner_main(argv: list[str]) -> int:
    """One host: a Worker on the queue until SIGTERM (or SIGKILL)."""
    import logging

    parser = argparse.ArgumentParser(prog="torture_redis _owner")
    parser.add_argument("url")
    parser.add_argument("host")
    parser.add_argument("--lease", type=float, default=6.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--no-schedules", action="store_true", help="fire no schedule (the drain)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.host} %(name)s %(levelname)s %(message)s"
    )
    from walq.redisq.queue import RedisQueue
    from walq.testing.plant import plant_from_env, worker_class

    worker = worker_class(plant_from_env())
    tasks = __import__(TASKS_MODULE, fromlist=["tasks"]).tasks
    os.environ["WALQ_TORTURE_HOST"] = args.host  # the worker processes inherit it
    ledger = os.environ["WALQ_TORTURE_LEDGER"]

    class LedgerQueue(RedisQueue):
        """Notes `acked` once an ack returned: the script ran, durable under appendfsync
        always (an ack whose reply was lost is not noted, and not audited as durable)."""

        def _ack_many(self, job_ids: Sequence[int], attempts: Sequence[int] | None,
                      *rest: Any, **kw: Any) -> Any:  # fmt: skip
            refused = super()._ack_many(job_ids, attempts, *rest, **kw)
            no = {jid for jid, _ in refused}
            for i, jid in enumerate(job_ids):
                if jid not in no:
                    note(ledger, f"acked {jid} {0 if attempts is None else attempts[i]}")
            return refused

    q = LedgerQueue.open(args.url, require_durable=True)
    w = worker(
        q, tasks, processes=args.processes, prefetch=args.prefetch, lease=args.lease,
        shutdown_grace=60.0, kill_grace=1.0, schedules=not args.no_schedules,
    )  # fmt: skip
    code = w.run()
    q.close()
    print(f"{args.host} counters {json.dumps(w.counters)}", flush=True)
    return code


# -- the run ------------------------------------------------------------------------------------


@attrs.define
class Options:
    duration: float = 60.0
    seed: int = 0
    lease: float = 6.0
    processes: int = 2
    prefetch: int = 4
    work_min: float = 0.05  # seconds a job runs, uniform draw
    work_max: float = 15.0  # longer than 2 leases: only the heartbeat keeps them leased
    backlog: int = 20  # unfinished jobs the producer keeps around
    flow_percent: float = 10.0  # jobs with a follow-up job and a dependent
    kill_every: float = 12.0  # seconds between owner kills (and server restarts), about
    plant: str | None = None
    drain_timeout: float = 120.0
    directory: str | None = None
    keep: bool = False
    echo: bool = False


class Run:
    """The processes of one torture run, and the ledger they write to."""

    def __init__(self, opts: Options, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.ledger = str(work / "ledger")
        self.server = RedisServer(work / "redis")
        self.url = f"{self.server.url}?prefix=torture"
        self.owners: dict[str, subprocess.Popen[bytes]] = {}
        self.generation = 0
        self.log = open(work / "owners.log", "ab")  # noqa: SIM115 - closed in close()

    def start_owner(self, slot: str, *, schedules: bool = True) -> str:
        self.generation += 1
        host = f"{slot}{self.generation}"
        env = dict(os.environ)
        env.pop("WALQ_PLANT_BUG", None)
        if self.opts.plant:
            env["WALQ_PLANT_BUG"] = self.opts.plant
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["WALQ_TORTURE_LEDGER"] = self.ledger
        cmd = [
            sys.executable, "-m", "tools.torture_redis", "_owner", self.url, host,
            "--lease", str(self.opts.lease), "--processes", str(self.opts.processes),
            "--prefetch", str(self.opts.prefetch),
            *([] if schedules else ["--no-schedules"]),
        ]  # fmt: skip
        self.owners[host] = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return host

    def kill_owner(self, host: str) -> None:
        """SIGKILL an owner, then its process group (its workers), and note when."""
        proc = self.owners.pop(host)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        note(self.ledger, f"killed {host}")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_owners(self, audit: Audit, timeout: float) -> None:
        for host, proc in self.owners.items():
            if proc.poll() is not None:
                audit.owner_failures += 1
                audit.note(f"owner {host} exited by itself ({proc.returncode})")
            else:
                proc.send_signal(signal.SIGTERM)
        for host, proc in self.owners.items():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                audit.owner_failures += 1
                audit.note(f"owner {host} did not stop within {timeout:g} s of SIGTERM")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.owners.clear()

    def close(self) -> None:
        for proc in self.owners.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.owners.clear()
        self.server.stop()
        self.log.close()


def _produce(run: Run, rng: random.Random, stop: threading.Event, audit: Audit) -> None:
    """Keep about `backlog` jobs unfinished; ride out the server's restarts."""
    import redis  # noqa: F401 - redis-py's errors arrive as BackendError

    from walq.errors import WalqError
    from walq.redisq.queue import RedisQueue

    q: RedisQueue | None = None
    while not stop.is_set():
        try:
            if q is None:
                q = RedisQueue.open(run.url, require_durable=True, socket_timeout=5.0)
            if q.stats()["unfinished"] < run.opts.backlog:
                seconds = round(rng.uniform(run.opts.work_min, run.opts.work_max), 3)
                if rng.random() * 100 >= run.opts.flow_percent:
                    jid = q.enqueue("work", {"seconds": seconds})
                    note(run.ledger, f"enq {jid}")
                    continue
                # A flow job: its handler enqueues a follow-up job; a dependent waits for it.
                nonce = f"n{rng.getrandbits(48):x}"
                jid = q.enqueue("work", {"seconds": seconds, "nonce": nonce, "outbox": True})
                note(run.ledger, f"enq {jid}")
                dep = q.enqueue("work", {"seconds": 0.05, "nonce": f"{nonce}.d", "after": jid,
                                         "after_nonce": nonce}, after=[jid])  # fmt: skip
                note(run.ledger, f"enq {dep}")
                note(run.ledger, f"after {dep} {jid}")
                continue
        except WalqError:
            if q is not None:
                with contextlib.suppress(Exception):
                    q.close()
                q = None  # an enqueue whose reply was lost is not in the ledger: not audited
        stop.wait(0.2)
    if q is not None:
        q.close()


def torture(opts: Options) -> Audit:
    """Run, drain, audit; return the audit (violations counted in it)."""
    from walq.redisq.queue import RedisQueue

    made = opts.directory is None
    work = Path(opts.directory or tempfile.mkdtemp(prefix="walq-torture-redis-"))
    work.mkdir(parents=True, exist_ok=True)
    audit = Audit()
    rng = random.Random(opts.seed)
    run = Run(opts, work)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(run, rng, stop, audit), daemon=True)
    try:
        run.server.start()
        hosts = [run.start_owner("a"), run.start_owner("b")]
        producer.start()
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < opts.duration:
            time.sleep(min(rng.uniform(0.5, 1.5) * opts.kill_every, opts.duration))
            if time.monotonic() - started >= opts.duration:
                break
            for host in hosts:
                proc = run.owners[host]
                if proc.poll() is not None:
                    audit.owner_failures += 1
                    audit.note(f"owner {host} exited by itself ({proc.returncode})")
                    run.owners.pop(host)
                    hosts[hosts.index(host)] = run.start_owner(host[0])
            if step % 2 == 0:
                victim = rng.randrange(2)
                run.kill_owner(hosts[victim])
                watcher = threading.Thread(
                    target=watch_rescue,
                    args=(run.url, run.ledger, hosts[victim], opts.lease, stop),
                    daemon=True,
                )
                watcher.start()
                audit.owner_kills += 1
                hosts[victim] = run.start_owner(hosts[victim][0])
            else:
                run.server.kill()
                time.sleep(rng.uniform(0.2, 2.0))
                run.server.start()
                audit.server_restarts += 1
            step += 1
            if opts.echo:
                print(
                    f"  {time.monotonic() - started:.0f} s: {audit.owner_kills} owner kills, "
                    f"{audit.server_restarts} server restarts",
                    flush=True,
                )
        stop.set()
        producer.join(30)
        # The drain: everything enqueued must finish, on hosts that fire no schedule (a
        # tick enqueued as the owners stop would be left): the ones alive stop first.
        with RedisQueue.open(run.url) as q:
            run.stop_owners(audit, timeout=60.0)
            run.start_owner("z", schedules=False)
            deadline = time.monotonic() + opts.drain_timeout
            while q.stats()["unfinished"] and time.monotonic() < deadline:
                time.sleep(0.5)
            run.stop_owners(audit, timeout=60.0)
            st = q.stats()
            audit.unfinished, audit.dead = st["unfinished"], st["dead"]
            if audit.unfinished or audit.dead:
                audit.note(f"the queue ends with {audit.unfinished} unfinished, {audit.dead} dead")
            lines = Path(run.ledger).read_text().splitlines() if Path(run.ledger).exists() else []
            ids = {int(x.split()[1]) for x in lines if x.startswith("enq ")}
            done = {jid for jid in ids if q.status(jid) == "done"}
        audit_ledger(lines, opts.lease, done, audit)
        if audit.violations:
            tail = (work / "owners.log").read_text(errors="replace").splitlines()[-15:]
            audit.examples += [f"owners.log: {line}" for line in tail]
    finally:
        stop.set()
        run.close()
        if made and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    return audit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This mode's options (shared with tools/torture.py --mode redis)."""
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lease", type=float, default=6.0, help="the Workers' lease, seconds")
    parser.add_argument("--processes", type=int, default=2, help="worker processes per owner")
    parser.add_argument("--work-max", type=float, default=15.0, help="longest job, seconds")
    parser.add_argument("--kill-every", type=float, default=12.0, help="seconds between faults")
    parser.add_argument(
        "--flow-percent", type=float, default=10.0,
        help="percent of jobs with a follow-up job and a dependent",
    )  # fmt: skip
    parser.add_argument("--plant", choices=["heartbeat-off"], help="plant a known bug")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_owner"]:
        return owner_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    opts = Options(
        duration=args.duration,
        seed=seed,
        lease=args.lease,
        processes=args.processes,
        work_max=args.work_max,
        kill_every=args.kill_every,
        flow_percent=args.flow_percent,
        plant=args.plant,
        drain_timeout=args.drain_timeout,
        directory=args.dir,
        keep=args.keep,
        echo=not args.json,
    )
    audit = torture(opts)
    summary = audit.summary() | {"seed": seed}
    if args.json:
        print(json.dumps(summary | {"examples": audit.examples}, sort_keys=True))
    else:
        for name, value in summary.items():
            print(f"{name}: {value}")
        for line in audit.examples:
            print(f"  {line}")
    return 1 if audit.violations else 0


if __name__ == "__main__":
    sys.exit(main())
