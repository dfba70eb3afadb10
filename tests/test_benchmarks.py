"""The benchmark harness runs end to end in its quick profile (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def test_quick_run_measures_every_walq_disk_and_sqlite3_row(tmp_path: Path) -> None:
    """`run.py --quick` on the rows that need no peer package: every row gets a figure."""
    out = tmp_path / "rows.json"
    only = ["--only", "disk", "walq", "sqlite3"]
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", *only, "--dir", str(tmp_path), "--json", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]}
    measured = [k for k in rows if k.startswith(("disk.", "walq.", "peer.sqlite3.", "pool.walq"))]
    expected = {
        "disk.fdatasync_prealloc",
        "disk.frame_group_commit",
        "disk.handoff",
        "disk.park_wake",
        "disk.read_loop",
        "walq.enqueue_1t",
        "walq.enqueue_16t",
        "walq.enqueue_16t_never",
        "walq.enqueue_async",
        "walq.batch",
        "walq.claim_many",
        "walq.replay_rate",
        "walq.replay_rss_per_job",
        "peer.sqlite3.enqueue_16t",
        "pool.walq_1",
        "pool.walq_2",
        "pool.walq_async_1",
        "pool.walq_async_2",
        "pool.walq_async_sleep_2",
        "peer.sqlite3.claim_many",
    }
    assert expected <= set(measured)
    for key in measured:
        if rows[key]["note"] == "no batch API":
            continue
        assert rows[key]["median"] is not None and rows[key]["median"] > 0, rows[key]
    # Every target whose baseline ran has a ratio, marked met or missed.
    targets = [r for k, r in rows.items() if k.startswith("target.") and "huey" not in r["label"]]
    assert len(targets) == 14
    for row in targets:
        assert row["median"] is not None, row
        assert row["note"].endswith((": MET", ": missed")), row
    assert "enqueue, 16 threads" in proc.stdout


def test_restart_quick_opens_from_a_checkpoint_and_by_full_replay(tmp_path: Path) -> None:
    """`restart.py --quick`: both opens measured, and the checkpoint's was really used."""
    script = RUN.parent / "restart.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--dir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "full replay: open" in proc.stdout
    assert "checkpoint : open" in proc.stdout
    assert "first claim <= 100 ms" in proc.stdout


def test_operate_quick_measures_every_row(tmp_path: Path) -> None:
    """`benchmarks/operate.py --quick`: every command, offline and beside an owner, gets a time."""
    out = tmp_path / "operate.json"
    proc = subprocess.run(
        [sys.executable, str(RUN.parent / "operate.py"), "--quick", "--dir", str(tmp_path),
         "--json", str(out)],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    where = {(r["where"], r["what"]) for r in rows}
    for what in ("walq status DIR ID", "walq dump DIR --job ID", "walq dead list DIR",
                 "walq stats DIR"):  # fmt: skip
        assert ("no owner", what) in where and ("owner", what) in where
    assert all(r["seconds"] > 0 for r in rows)
