"""The processes a torture run starts (tools/torture.py): the owner and the outside producers.

`python -m tools.torture_owner _owner DIR LEDGER ...`: a LedgerQueue (it writes
`acked` lines once an ack is durable), a producer thread (unless draining) and
a walq.Worker, until it is killed. `... _producer DIR LEDGER ...`: a walq.connect
producer that lives through every kill of the owner and stops on SIGTERM.
In the async mode the handlers are coroutines and both producers are asyncio
code (a walq.AsyncQueue over the owner's queue; walq.aconnect outside).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from tools.torture import ASYNC_PRODUCERS, MODES, OWNER_GRACE, OWNER_LEASE, task_of


def owner_main(argv: list[str]) -> int:
    """One owner: a producer thread (unless draining) and a worker pool, until killed."""
    # slow-import: the delay is for the worker processes' imports, not this one.
    delay = os.environ.pop("WALQ_TORTURE_IMPORT_DELAY", None)
    import walq
    from tools import torture_tasks

    if delay is not None:
        os.environ[torture_tasks.IMPORT_DELAY_ENV] = delay
    from walq.directory.checkpoint import Policy as CheckpointPolicy
    from walq.directory.compactor import Policy
    from walq.testing.plant import plant_from_env, queue_class, worker_class

    parser = argparse.ArgumentParser(prog="torture _owner")
    parser.add_argument("directory")
    parser.add_argument("ledger")
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync", default="always")
    parser.add_argument("--compaction", default="aggressive")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--payload-min", type=int, default=0)
    parser.add_argument("--payload-max", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--backlog", type=int, default=300)
    parser.add_argument("--fail-percent", type=float, default=5.0)
    parser.add_argument("--flow-percent", type=float, default=0.0)
    parser.add_argument("--mode", choices=MODES, default="kill9")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    planted = plant_from_env()
    if planted:
        logging.getLogger("torture").warning("planted bugs: %s", ", ".join(planted))
    os.environ[torture_tasks.LEDGER_ENV] = args.ledger
    compaction: Any = {
        "aggressive": Policy(garbage_ratio=0.2, max_sealed=2, interval=0.05),
        "default": True,
        "off": False,
    }[args.compaction]
    segment_size = 64 << 10 if args.compaction == "aggressive" else 4 << 20
    # Aggressive: a checkpoint whenever 16 KiB were appended, so kill -9 lands in them too.
    checkpoint: Any = (
        CheckpointPolicy(min_bytes=16 << 10, min_interval=0.05, cost_factor=2.0)
        if args.compaction == "aggressive"
        else args.compaction != "off"
    )

    class LedgerQueue(walq.Queue):
        """A Queue that writes `acked` lines once an ack is known to be durable."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            # Set before Queue.open returns it: no call may find them missing.
            self._ack_mu = threading.Lock()
            self._unconfirmed: list[tuple[int, int]] = []
            super().__init__(*args, **kw)

        def ack_many(self, job_ids: Sequence[int], **kw: Any) -> Any:
            refused = super().ack_many(job_ids, **kw)
            no = {jid for jid, _ in refused or ()}
            held = kw.get("attempts") or [0] * len(job_ids)
            done = [(j, a) for j, a in zip(job_ids, held, strict=True) if j not in no]
            sync = kw.get("sync")
            if sync or self._log.sync_mode != "always":
                # Committed, or (sync "never"/"interval") written to the kernel before
                # returning: either way it survives a kill -9, all this tool tests.
                self._confirm(done)
            else:
                with self._ack_mu:
                    self._unconfirmed += done
            return refused

        def claim_many(self, n: int, **kw: Any) -> list[walq.Job]:
            with self._ack_mu:
                covered = list(self._unconfirmed)
            jobs = super().claim_many(n, **kw)
            if jobs:  # the claim's fsync covered every ack written before it
                self._confirm(covered)
            return jobs

        def sync(self) -> None:
            with self._ack_mu:
                covered = list(self._unconfirmed)
            super().sync()
            self._confirm(covered)

        def _confirm(self, pairs: list[tuple[int, int]]) -> None:
            if not pairs:
                return
            with self._ack_mu:
                done = set(pairs)
                self._unconfirmed = [p for p in self._unconfirmed if p not in done]
            torture_tasks.append(args.ledger, [f"acked {j} {a}" for j, a in pairs])

    torture_tasks.append(args.ledger, [f"start {args.cycle} {os.getpid()} {int(args.drain)}"])
    q = queue_class(LedgerQueue, planted).open(
        args.directory,
        sync=args.sync,
        segment_size=segment_size,
        compaction=compaction,
        checkpoint=checkpoint,
        lock_timeout=10.0,
        max_pending=args.backlog,
        min_free_bytes=0,
    )
    stop = threading.Event()
    args.task = task_of(args.mode)
    registry = torture_tasks.atasks if args.mode == "async" else torture_tasks.tasks
    worker = worker_class(planted)(
        q, registry, processes=args.processes, shutdown_grace=OWNER_GRACE,
        # slow-import: workers are recycled often, so starts happen mid-run too
        max_tasks_per_child=10 if args.mode == "slow-import" else None,
        # Jobs a killed owner left running come back when their lease expires: a short
        # one (every handler here is far shorter) makes a planted bug show within the run.
        lease=OWNER_LEASE,
        # The schedule is in kill9's mix (the other modes time their handlers); the
        # final drain fires none: it ends when the queue is empty.
        schedules=args.mode == "kill9" and not args.drain,
    )  # fmt: skip
    threads = []
    if args.drain:
        threads.append(threading.Thread(target=_until_empty, args=(q, worker, stop), daemon=True))
    else:
        rng = random.Random(f"{args.seed}:{args.cycle}")
        produce = _produce_async if args.mode == "async" else _produce
        threads.append(threading.Thread(target=produce, args=(q, args, rng, stop), daemon=True))
    for t in threads:
        t.start()
    try:
        code = worker.run()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        q.close()
    return code


def _produce(q: Any, args: argparse.Namespace, rng: random.Random, stop: threading.Event) -> None:
    """Enqueue payloads, each between an `intent` line and an `enqueued` line.

    With --flow-percent, that share of jobs also enqueue a follow-up job from
    their handler and get a dependent enqueued after them (`after` lines).
    """
    import walq
    from tools import torture_tasks

    n = 0
    while not stop.is_set():
        items, nonces, flows = [], [], []
        for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 5)):
            nonce = f"c{args.cycle}n{n}"
            n += 1
            size = rng.randint(args.payload_min, args.payload_max)
            fail = rng.random() * 100 < args.fail_percent
            flow = rng.random() * 100 < args.flow_percent
            if flow:
                payload = torture_tasks.flow_payload(nonce, size, fail=fail, outbox=True)
            else:
                payload = torture_tasks.make_payload(
                    nonce, size, fail=fail, as_bytes=rng.random() < 0.3
                )
            items.append((args.task, payload))
            nonces.append(nonce)
            flows.append(flow)
        torture_tasks.append(args.ledger, [f"intent {nonce}" for nonce in nonces])
        try:
            ids = q.enqueue_many(items, timeout=0.5)
        except walq.QueueFull:
            continue
        except walq.WalqError:
            return  # closing
        torture_tasks.append(
            args.ledger, [f"enqueued {jid} {nonce}" for jid, nonce in zip(ids, nonces, strict=True)]
        )
        for jid, nonce, flow in zip(ids, nonces, flows, strict=True):
            if flow and not _dependent(q, args, jid, nonce):
                return
        stop.wait(rng.expovariate(args.rate))


def _dependent(q: Any, args: argparse.Namespace, parent: int, parent_nonce: str) -> bool:
    """Enqueue a job after `parent` (it checks its parent's result); False once closing."""
    import walq
    from tools import torture_tasks

    nonce = f"{parent_nonce}.d"
    payload = torture_tasks.flow_payload(nonce, 64, fail=False, after=parent,
                                         after_nonce=parent_nonce)  # fmt: skip
    torture_tasks.append(args.ledger, [f"intent {nonce}"])
    try:
        jid = q.enqueue(args.task, payload, after=[parent])
    except walq.WalqError:
        return False
    torture_tasks.append(args.ledger, [f"enqueued {jid} {nonce}", f"after {jid} {parent}"])
    return True


def _produce_async(
    q: Any, args: argparse.Namespace, rng: random.Random, stop: threading.Event
) -> None:
    """The async mode's producer: coroutines enqueueing through a walq.AsyncQueue over `q`,
    each payload between an `intent` line and an `enqueued` line."""
    import asyncio

    import walq
    from tools import torture_tasks

    async def one(aq: walq.AsyncQueue, index: int) -> None:
        n = 0
        while not stop.is_set():
            items, nonces = [], []
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 5)):
                nonce = f"c{args.cycle}a{index}n{n}"
                n += 1
                payload = torture_tasks.make_payload(
                    nonce,
                    rng.randint(args.payload_min, args.payload_max),
                    fail=rng.random() * 100 < args.fail_percent,
                    as_bytes=rng.random() < 0.3,
                )
                items.append((args.task, payload))
                nonces.append(nonce)
            torture_tasks.append(args.ledger, [f"intent {nonce}" for nonce in nonces])
            try:
                ids = await aq.enqueue_many(items, timeout=0.5)
            except walq.QueueFull:
                continue
            except walq.WalqError:
                return  # closing
            lines = [f"enqueued {jid} {nonce}" for jid, nonce in zip(ids, nonces, strict=True)]
            torture_tasks.append(args.ledger, lines)
            await asyncio.sleep(rng.expovariate(args.rate / ASYNC_PRODUCERS))

    async def run() -> None:
        aq = walq.AsyncQueue(q, asyncio.get_running_loop())  # the owner closes `q` itself
        await asyncio.gather(*(one(aq, i) for i in range(ASYNC_PRODUCERS)))

    asyncio.run(run())


def _until_empty(q: Any, worker: Any, stop: threading.Event) -> None:
    """Drain mode: stop the worker once nothing is unfinished and the spool is empty.

    The spool counts too: ingestion pauses while the queue is at its cap, so
    the queue can be empty for a moment while producers' files still wait.
    """
    from walq.producers import spool

    while not stop.wait(0.1):
        if q.stats()["unfinished"] == 0 and spool.backlog(q.fs, q.path)["files"] == 0:
            worker.stop()
            return


def producer_main(argv: list[str]) -> int:
    """An outside producer (walq.connect): socket to the owner when one answers, else the spool.

    It lives through every kill of the owner and stops on SIGTERM.
    """
    import walq
    from tools import torture_tasks

    parser = argparse.ArgumentParser(prog="torture _producer")
    parser.add_argument("directory")
    parser.add_argument("ledger")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--payload-min", type=int, default=0)
    parser.add_argument("--payload-max", type=int, default=2000)
    parser.add_argument("--fail-percent", type=float, default=5.0)
    parser.add_argument("--task", default="work")
    parser.add_argument("--coroutines", type=int, default=0,
                        help="enqueue from this many coroutines through walq.aconnect")  # fmt: skip
    args = parser.parse_args(argv)
    # A plain flag, not a threading.Event: a signal handler that takes the Event's
    # lock can deadlock against the main thread holding it inside Event.wait.
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(True))
    rng = random.Random(f"{args.seed}:producer:{args.index}")
    if args.coroutines:
        import asyncio

        asyncio.run(_aconnect_producer(args, rng, stopping))
        return 0
    n = 0
    with walq.connect(args.directory, timeout=10.0) as producer:
        while not stopping:
            nonce = f"p{args.index}n{n}"
            n += 1
            payload = torture_tasks.make_payload(
                nonce,
                rng.randint(args.payload_min, args.payload_max),
                fail=rng.random() * 100 < args.fail_percent,
                as_bytes=rng.random() < 0.3,
            )
            torture_tasks.append(args.ledger, [f"intent {nonce}"])
            try:
                jid = producer.enqueue(args.task, payload)
            except walq.QueueFull:
                time.sleep(0.05)
                continue
            line = f"enqueued {'-' if jid is None else jid} {nonce}"
            torture_tasks.append(args.ledger, [line])
            time.sleep(min(rng.expovariate(args.rate), 0.5))
    return 0


async def _aconnect_producer(
    args: argparse.Namespace, rng: random.Random, stopping: list[bool]
) -> None:
    """The async mode's outside producer: coroutines sharing one walq.aconnect producer."""
    import asyncio

    import walq
    from tools import torture_tasks

    async def one(producer: Any, index: int) -> None:
        n = 0
        while not stopping:
            nonce = f"p{args.index}a{index}n{n}"
            n += 1
            payload = torture_tasks.make_payload(
                nonce,
                rng.randint(args.payload_min, args.payload_max),
                fail=rng.random() * 100 < args.fail_percent,
                as_bytes=rng.random() < 0.3,
            )
            torture_tasks.append(args.ledger, [f"intent {nonce}"])
            try:
                jid = await producer.enqueue(args.task, payload)
            except walq.QueueFull:
                await asyncio.sleep(0.05)
                continue
            line = f"enqueued {'-' if jid is None else jid} {nonce}"
            torture_tasks.append(args.ledger, [line])
            await asyncio.sleep(min(rng.expovariate(args.rate / args.coroutines), 0.5))

    async with await walq.aconnect(args.directory, timeout=10.0) as producer:
        await asyncio.gather(*(one(producer, i) for i in range(args.coroutines)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_owner"]:
        return owner_main(argv[1:])
    if argv[:1] == ["_producer"]:
        return producer_main(argv[1:])
    print("usage: python -m tools.torture_owner _owner|_producer ... (tools/torture.py runs it)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
