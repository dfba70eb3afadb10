"""Test support: a simulated file system that crashes, tears writes and fails fsync."""

from __future__ import annotations

from walq.testing.faultfs import (
    OP_KINDS,
    Choices,
    CrashMode,
    Fault,
    SimFile,
    SimFileSystem,
    SimulatedCrash,
    draw_crash,
)

__all__ = [
    "OP_KINDS",
    "Choices",
    "CrashMode",
    "Fault",
    "SimFile",
    "SimFileSystem",
    "SimulatedCrash",
    "draw_crash",
]
