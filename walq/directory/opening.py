"""Opening a directory queue: its options checked, its directory made or vetted, its lock taken."""

from __future__ import annotations

import posixpath

from walq.core import format as fmt
from walq.core.checkpoint import FILE_NAME as CHECKPOINT
from walq.core.jobspec import MAX_PAYLOAD_LIMIT
from walq.directory.fs import FileSystem, Lock, queue_dir_owner
from walq.directory.recovery import CUT_DIR
from walq.directory.segment import SPARE_SUFFIX, TMP_SUFFIX
from walq.errors import ArgumentError, NotAQueueError
from walq.producers.spool import SPOOL_DIR
from walq.producers.wire import SOCKET_NAME

LOCK_FILE = "LOCK"
STATUS_FILE = "worker-status.json"  # the worker's advisory status (walq stats)
# Names walq makes in a queue directory besides its segments (and their .tmp and
# .spare forms); "lost+found" is there when the directory is a file system's root.
OWN_NAMES = frozenset(
    {LOCK_FILE, SPOOL_DIR, CUT_DIR, SOCKET_NAME, "worker-status.json",
     "worker-status.json.part", "lost+found", CHECKPOINT, CHECKPOINT + ".tmp"}
)  # fmt: skip
RECOVERY_MODES = ("strict", "skip")


def check_options(
    recovery: str, max_pending: int | None, max_bytes: int | None, max_payload: int
) -> None:
    """ArgumentError for an option Queue.open cannot take (the Log checks its own)."""
    if recovery not in RECOVERY_MODES:
        raise ArgumentError(f"recovery must be 'strict' or 'skip', not {recovery!r}")
    for name, cap in (("max_pending", max_pending), ("max_bytes", max_bytes)):
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ArgumentError(f"{name} must be a positive integer or None")
    if not 1 <= max_payload <= MAX_PAYLOAD_LIMIT:
        raise ArgumentError(f"max_payload must be 1..{MAX_PAYLOAD_LIMIT} bytes")


def take_directory(
    fs: FileSystem, path: str, *, create: bool, trust_dir: bool, lock_timeout: float
) -> tuple[int | None, Lock]:
    """Make or vet the queue directory `path` and take its lock: (its owner's uid, the lock).

    The uid is None under trust_dir=True (walq.directory.fs.queue_dir_owner).
    """
    if not fs.is_dir(path):
        if not create:
            raise NotAQueueError(f"{path}: no such queue directory (create=True makes one)")
        fs.makedirs(path, 0o700)
    owner_uid = queue_dir_owner(fs, path, trust=trust_dir)
    check_queue_names(path, fs.listdir(path))
    # The directory's entry lives in its parent: make it durable -- on every
    # open, since a creator that died before doing so leaves it undurable.
    fs.sync_dir(posixpath.dirname(posixpath.normpath(path)) or ".")
    return owner_uid, fs.lock(posixpath.join(path, LOCK_FILE), lock_timeout)


def check_queue_names(path: str, names: list[str]) -> None:
    """NotAQueueError if directory `path` holds entries but none that walq makes.

    A queue is never made beside someone else's files: a directory is a queue,
    or empty (a queue to be).
    """
    if not names:
        return
    for name in names:
        if name in OWN_NAMES or name.endswith(".sock.tmp"):
            return
        stem = name.removesuffix(TMP_SUFFIX).removesuffix(SPARE_SUFFIX)
        if fmt.parse_segment_name(stem) is not None:
            return
    raise NotAQueueError(
        f"{path}: holds {len(names)} entries (e.g. {names[0]!r}) but no walq files; "
        "a queue is made only in a new or empty directory"
    )
