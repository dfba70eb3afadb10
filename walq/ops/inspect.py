"""The operator tools under the one name they had before they were split (walq.ops.*).

New code imports the module that does the job (scan, dump, follow, owner,
replay, stats, dead, admin, repair); this keeps `walq.ops.inspect.X` working.
"""

from __future__ import annotations

from walq.core import events as ev
from walq.directory.queue import LOCK_FILE, STATUS_FILE
from walq.ops.admin import Compacted, Enqueued, compact, enqueue, purge, requeue
from walq.ops.dead import DeadInfo, dead_jobs
from walq.ops.dump import (
    PREVIEW,
    ROW_TYPES,
    Dumper,
    DumpFilter,
    LogEnd,
    Position,
    damage_row,
    describe,
    dump,
    notice_row,
    parse_position,
    payload_fields,
    spooled_rows,
)
from walq.ops.follow import follow
from walq.ops.owner import STATUS_FRESH, Owner, owner, worker_status
from walq.ops.repair import FsckReport, account, fsck, repair
from walq.ops.replay import STATES, Replayed, replay
from walq.ops.scan import (
    RACE_RETRIES,
    SNIPPET,
    Loader,
    Progress,
    SegmentScan,
    check_queue_dir,
    iter_scans,
    missing,
    read_record,
    scan_dir,
    segment_seqs,
)
from walq.ops.stats import directory_stats as stats

__all__ = [
    "LOCK_FILE",
    "PREVIEW",
    "RACE_RETRIES",
    "ROW_TYPES",
    "SNIPPET",
    "STATES",
    "STATUS_FILE",
    "STATUS_FRESH",
    "Compacted",
    "DeadInfo",
    "DumpFilter",
    "Dumper",
    "Enqueued",
    "FsckReport",
    "Loader",
    "LogEnd",
    "Owner",
    "Position",
    "Progress",
    "Replayed",
    "SegmentScan",
    "account",
    "check_queue_dir",
    "compact",
    "damage_row",
    "dead_jobs",
    "describe",
    "dump",
    "enqueue",
    "ev",
    "follow",
    "fsck",
    "iter_scans",
    "missing",
    "notice_row",
    "owner",
    "parse_position",
    "payload_fields",
    "purge",
    "read_record",
    "repair",
    "replay",
    "requeue",
    "scan_dir",
    "segment_seqs",
    "spooled_rows",
    "stats",
    "worker_status",
]
