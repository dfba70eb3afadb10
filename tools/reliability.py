"""The long reliability run: power-loss states, kill -9 cycles and fuzz cases, in one command.

    python tools/reliability.py                 # 10,000 states, 1,000 kill cycles, 5,000 cases
    python tools/reliability.py --states 20000 --cycles 2000 --cases 10000 --seed 7

Runs tools/powerloss.py, tools/torture.py and tools/fuzz.py one after the
other and prints the table docs/RELIABILITY.md keeps (date, machine, command,
what was explored, violations found). Exit status 1 if any tool found one.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import fuzz, powerloss, torture


def machine() -> str:
    """CPU model, cores, memory and OS, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / (1 << 30):.0f} GiB"
    except (OSError, ValueError):
        mem = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=10_000, help="power-loss crash states")
    parser.add_argument("--cycles", type=int, default=1_000, help="kill -9 cycles")
    parser.add_argument("--cases", type=int, default=5_000, help="fuzz cases")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.getLogger("walq").setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    command = "python tools/reliability.py " + " ".join(
        f"--{k} {v}" for k, v in (("states", args.states), ("cycles", args.cycles),
                                  ("cases", args.cases), ("seed", seed))
    )  # fmt: skip
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []

    t = time.monotonic()
    pl = powerloss.explore(args.states, seed)
    rows.append(("power-loss crash states (tools/powerloss.py)", pl.crash_states, pl.failing,
                 time.monotonic() - t))  # fmt: skip
    print(f"powerloss: {pl.summary()}", flush=True)

    t = time.monotonic()
    audit = torture.torture(
        torture.Options(cycles=args.cycles, duration=float("inf"), seed=seed, echo=True)
    )
    rows.append(("kill -9 cycles (tools/torture.py)", audit.cycles, audit.violations,
                 time.monotonic() - t))  # fmt: skip
    print(f"torture: {audit.summary()}", flush=True)
    for line in audit.examples:
        print(f"  {line}")

    t = time.monotonic()
    fz = fuzz.fuzz(args.cases, seed)
    rows.append(("fuzz cases (tools/fuzz.py)", fz.cases, len(fz.failing), time.monotonic() - t))
    print(f"fuzz: {fz.summary()}", flush=True)

    print()
    print(f"- date: {started:%Y-%m-%d %H:%M} UTC")
    print(f"- machine: {machine()}; Python {platform.python_version()}")
    print(f"- command: `{command}`")
    print(
        f"- torture: {audit.jobs} jobs confirmed, {audit.runs} runs, "
        f"{audit.duplicates} duplicates (at-least-once), {audit.acked} durable acks"
    )
    print()
    print("| what | explored | violations | time |")
    print("|---|---:|---:|---:|")
    for name, explored, violations, seconds in rows:
        print(f"| {name} | {explored:,} | {violations} | {seconds / 60:.1f} min |")
    return 1 if any(r[2] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
