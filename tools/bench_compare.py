"""Compare two walq trees on benchmarks/run.py: rounds alternate, medians and new/old per row.

    python tools/bench_compare.py OLD_TREE NEW_TREE [--rounds N] [--dir DIR] [-- RUN_ARGS ...]

Each round runs `benchmarks/run.py RUN_ARGS --json FILE` once per tree, each
tree's own harness importing that tree's walq (PYTHONPATH=TREE; checked before
the first round). The order alternates (old, new; new, old; ...) so that a
noisy spell on a shared machine weighs on both trees alike. RUN_ARGS default to
`--quick`; e.g. `-- --quick --only walq pool` runs only walq's rows.

The table shows, per row, the median over the rounds of each run's median, its
spread (half the range, as a share of the median), and the ratio new/old; rows
without a figure on either side (peers not installed, targets over them) are
left out. Include `disk` in `--only`: those rows do not use walq, so their
ratio shows the noise of the machine. Whether higher is better depends on the
unit: rates (rec/s, jobs/s, MB/s) want a ratio >= 1, seconds and bytes <= 1.
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

DEFAULT_RUN_ARGS = ["--quick"]


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes `import walq` (here and in children) load `tree`'s walq."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    return env


def check_tree(tree: Path, python: str) -> None:
    """SystemExit unless `tree` has the harness and its walq is the one Python imports."""
    if not (tree / "benchmarks" / "run.py").is_file():
        raise SystemExit(f"bench_compare: {tree} has no benchmarks/run.py")
    code = "import walq, pathlib; print(pathlib.Path(walq.__file__).resolve().parent)"
    out = subprocess.run(
        [python, "-c", code],
        env=tree_env(tree),
        cwd=tree,  # `-c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=False,
    )
    found = out.stdout.strip()
    if out.returncode != 0 or Path(found) != (tree / "walq").resolve():
        raise SystemExit(
            f"bench_compare: with PYTHONPATH={tree}, {python} imports walq from "
            f"{found or out.stderr.strip().splitlines()[-1:]}, not {tree / 'walq'}"
        )


def run_once(
    tree: Path, python: str, run_args: list[str], workdir: Path
) -> dict[str, dict[str, object]]:
    """One run of `tree`'s benchmarks/run.py; its rows by key (from its --json output)."""
    out = workdir / "rows.json"
    command = [python, str(tree / "benchmarks" / "run.py"), *run_args, "--json", str(out)]
    print(f"bench_compare: {tree}: {' '.join(run_args)}", file=sys.stderr, flush=True)
    env, quiet = tree_env(tree), subprocess.DEVNULL
    done = subprocess.run(command, env=env, cwd=workdir, stdout=quiet, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_compare: {tree}/benchmarks/run.py exited with {done.returncode}")
    rows = json.loads(out.read_text())["rows"]
    out.unlink()
    return {str(row["key"]): row for row in rows}


def fmt(value: float | None) -> str:
    """A figure with three significant digits or so; "-" for none."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def spread(values: list[float]) -> str:
    """Half the range of `values` as a share of their median: how far to trust a ratio."""
    if len(values) < 2 or not statistics.median(values):
        return "-"
    return f"{(max(values) - min(values)) / 2 / statistics.median(values):.0%}"


def table(
    labels: dict[str, tuple[str, str]], old: dict[str, list[float]], new: dict[str, list[float]]
) -> str:
    """Per row with a figure: label, unit, each side's median and spread, new/old, runs."""
    head = ("measurement", "unit", "old", "+-", "new", "+-", "new/old", "runs")
    lines = [head]
    for key, (label, unit) in labels.items():
        a, b = old.get(key, []), new.get(key, [])
        if not a and not b:
            continue
        ma = statistics.median(a) if a else None
        mb = statistics.median(b) if b else None
        ratio = f"{mb / ma:.3f}" if ma and mb is not None else "-"
        runs = f"{len(a)}/{len(b)}"
        lines.append((label, unit, fmt(ma), spread(a), fmt(mb), spread(b), ratio, runs))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i >= 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def main(argv: list[str]) -> int:
    """Parse the arguments, run the rounds, print the table."""
    if "--" in argv:
        split = argv.index("--")
        argv, run_args = argv[:split], argv[split + 1 :]
    else:
        run_args = list(DEFAULT_RUN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the tree before (a git worktree)")
    parser.add_argument("new", type=Path, help="the tree after")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tree (default 3)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run with")
    parser.add_argument(
        "--dir", type=Path, default=Path.cwd(), help="where run.py puts its scratch (on a disk)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every run's median of every row"
    )
    args = parser.parse_args(argv)
    if "--json" in run_args or "--dir" in run_args:
        parser.error("RUN_ARGS may not hold --json or --dir: bench_compare sets them")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for tree in trees.values():
        check_tree(tree, args.python)
    run_args = [*run_args, "--dir", str(args.dir.resolve())]
    samples: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    labels: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for side in order:
                print(f"bench_compare: round {r + 1}/{args.rounds}", file=sys.stderr)
                rows = run_once(trees[side], args.python, run_args, Path(tmp))
                for key, row in rows.items():
                    labels.setdefault(key, (str(row["label"]), str(row["unit"])))
                    median = row["median"]
                    if isinstance(median, (int, float)):
                        samples[side].setdefault(key, []).append(float(median))
    print(f"old  {trees['old']}\nnew  {trees['new']}")
    print(
        f"run.py {' '.join(run_args)}; {args.rounds} round(s), alternating; medians of run medians"
    )
    print()
    print(table(labels, samples["old"], samples["new"]))
    if args.json:
        out = {"trees": {k: str(v) for k, v in trees.items()}, "run_args": run_args}
        out |= {"labels": labels, "medians": samples}
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
