"""Known bugs to plant on purpose, so a torture tool can prove it would catch them.

Each name flips one flag in walq's own code; nothing here is reachable unless a
test or a torture tool calls `plant`. `WALQ_PLANT_BUG` (comma-separated names)
lets a tool plant them in an owner subprocess: call `plant_from_env()` there.
"""

from __future__ import annotations

import os

from walq import heartbeat, log, queue
from walq.core import format, framing

BUGS = {
    "skip-fsync": "the log never calls fdatasync (power loss then loses confirmed jobs)",
    "forget-ack": "ack returns without writing the ack record (acked jobs come back)",
    "accept-bad-crc": "the decoder accepts records whose checksum does not match",
    "ignore-missing-segments": "a removed segment goes unnoticed (its jobs vanish silently)",
    "heartbeat-off": "the Worker never renews its leases (long jobs run twice at once)",
}


def plant(name: str, on: bool = True) -> None:
    """Plant (or remove) the named bug in this process."""
    if name == "skip-fsync":
        log.PLANTED_SKIP_FSYNC = on
    elif name == "forget-ack":
        queue.PLANTED_FORGET_ACK = on
    elif name == "accept-bad-crc":
        framing.PLANTED_ACCEPT_BAD_CRC = on
    elif name == "ignore-missing-segments":
        format.PLANTED_IGNORE_MISSING = on
    elif name == "heartbeat-off":
        heartbeat.PLANTED_HEARTBEAT_OFF = on
    else:
        raise ValueError(f"unknown bug {name!r}; choose from {', '.join(BUGS)}")


def plant_from_env() -> list[str]:
    """Plant every bug named in WALQ_PLANT_BUG; return their names."""
    names = [n for n in os.environ.get("WALQ_PLANT_BUG", "").split(",") if n]
    for name in names:
        plant(name)
    return names


def clear() -> None:
    """Remove every planted bug."""
    for name in BUGS:
        plant(name, on=False)
