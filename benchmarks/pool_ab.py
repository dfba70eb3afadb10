"""The worker-pool rows for two versions of walq, run alternately: jobs/s and owner CPU.

    python benchmarks/pool_ab.py [--base REV] [--rounds N] [--jobs N]

REV (default main) is exported with `git archive` into a scratch directory;
the other side is this checkout. Each round runs every row once for each side,
in alternating order, each in a fresh process (benchmarks/child.py walq-pool),
so both see the same machine state; the table shows each side's medians and
the median of the per-round ratios (new / base). A loaded machine moves the
rates a lot from round to round: compare ratios, and the owner's CPU per job
(user + system of the owner process, every thread), which moves less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ASYNC_FACTOR = 4  # the coroutine rows push this many times --jobs (as run.py does)
ROWS = [  # (processes, bench_tasks registry, task)
    (1, "tasks", "noop"),
    (2, "tasks", "noop"),
    (1, "atasks", "noop"),
    (2, "atasks", "noop"),
    (2, "atasks", "sleep50"),
]


def run_row(tree: Path, scratch: Path, jobs: int, row: tuple[int, str, str]) -> dict[str, Any]:
    """One pool run with walq imported from `tree`: {"rate": ..., "owner_cpu_us": ...}."""
    procs, registry, task = row
    n = jobs * (ASYNC_FACTOR if registry == "atasks" else 1)
    work = Path(tempfile.mkdtemp(dir=scratch))
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{HERE}")
    env["WALQ_BENCH_MARKER"] = str(work / "marker")
    args = [sys.executable, str(HERE / "child.py"), "walq-pool", str(work / "queue"), str(n)]
    args += [str(procs), "120", registry, task]
    out = subprocess.run(
        args, check=False, env=env, cwd=HERE, capture_output=True, text=True, timeout=300
    )
    lines = out.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000, help="no-op jobs per plain row")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="walq-pool-ab-") as tmp:
        scratch = Path(tmp)
        base = scratch / "base"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        sides = {"base": base, "new": ROOT}
        got: dict[tuple[str, tuple[int, str, str]], list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            for row in ROWS:
                order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
                for side in order:
                    out = run_row(sides[side], scratch, args.jobs, row)
                    got.setdefault((side, row), []).append(out)
                    print(f"round {r + 1} {side} {row}: {out}", file=sys.stderr, flush=True)
    print(f"base = {args.base}, new = this checkout; {args.rounds} rounds, medians")
    print(
        "| row | base jobs/s | new jobs/s | ratio | base owner µs/job | new owner µs/job | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in ROWS:
        pairs = [
            (b, n)
            for b, n in zip(got[("base", row)], got[("new", row)], strict=True)
            if "rate" in b and "rate" in n
        ]
        if not pairs:
            print(f"| {row} | failed | | | | | |")
            continue
        cells = []
        for key in ("rate", "owner_cpu_us"):
            cells += [
                f"{statistics.median(b[key] for b, _ in pairs):,.1f}",
                f"{statistics.median(n[key] for _, n in pairs):,.1f}",
                f"{statistics.median(n[key] / b[key] for b, n in pairs):.2f}x",
            ]
        procs, registry, task = row
        name = f"{'async def' if registry == 'atasks' else 'def'} {task}, {procs} processes"
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
