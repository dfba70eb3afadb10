"""The disk's and the interpreter's own limits: bare loops with no queue logic.

Records are framed the way walq frames them (docs/FORMAT.md): a 16-byte header
crc32c(u32) length(u32) type(u8) flags(u8) reserved(u16) synced(u32), whose
CRC32C covers header bytes 4.. and the body. The code is written here
independently of walq, so these rows run whether or not walq works.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from benchutil import KIB, MIB, PAYLOAD, Settings, rate_until
from crc32c import crc32c

HEADER = struct.Struct("<IIBBHI")
TAIL = struct.Struct("<IBBHI")  # the header without its CRC
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size
ENQUEUE_TYPE = 1
FRAMES_PER_SYNC = 512
READ_CHUNK = 4 * MIB


def frame_into(buf: bytearray, payload: bytes, seq: int) -> None:
    """Append one framed record to `buf`."""
    tail = TAIL.pack(len(payload), ENQUEUE_TYPE, 0, 0, seq & 0xFFFFFFFF)
    buf += CRC.pack(crc32c(payload, crc32c(tail)))
    buf += tail
    buf += payload


def frame_batch(count: int, start_seq: int, payload: bytes = PAYLOAD) -> bytearray:
    buf = bytearray()
    for seq in range(start_seq, start_seq + count):
        frame_into(buf, payload, seq)
    return buf


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def fdatasync_append(path: Path, s: Settings) -> float:
    """1 KiB os.write + os.fdatasync per record, appending (the file grows): records/s."""
    fd = _open_append(path)

    def op() -> int:
        os.write(fd, PAYLOAD)
        os.fdatasync(fd)
        return 1

    try:
        return rate_until(s.duration, op)
    finally:
        os.close(fd)


def fdatasync_prealloc(path: Path, s: Settings) -> float:
    """1 KiB os.pwrite + os.fdatasync per record into a zero-filled, fsynced file."""
    size = 16 * MIB
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        zeros = bytes(MIB)
        for _ in range(size // MIB):
            os.write(fd, zeros)
        os.fsync(fd)
        offset = 0

        def op() -> int:
            nonlocal offset
            os.pwrite(fd, PAYLOAD, offset)
            os.fdatasync(fd)
            offset = (offset + KIB) % size
            return 1

        return rate_until(s.duration, op)
    finally:
        os.close(fd)


def sequential_bandwidth(path: Path, s: Settings) -> float:
    """Write `seq_bytes` in 1 MiB writes, then one fsync: MB/s (10^6 bytes)."""
    chunk = os.urandom(MIB)
    fd = _open_append(path)
    try:
        start = time.perf_counter()
        for _ in range(s.seq_bytes // MIB):
            os.write(fd, chunk)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return s.seq_bytes / elapsed / 1e6


def framing_floor(path: Path, s: Settings) -> float:
    """Frame (pack header, CRC32C) 1 KiB records in batches of 512, no IO: records/s."""
    seq = 0

    def op() -> int:
        nonlocal seq
        frame_batch(FRAMES_PER_SYNC, seq)
        seq += FRAMES_PER_SYNC
        return FRAMES_PER_SYNC

    return rate_until(s.duration, op)


def framed_group_commit(path: Path, s: Settings) -> float:
    """Frame 512 records, one os.write, one os.fdatasync, repeat: records/s."""
    fd = _open_append(path)
    seq = 0

    def op() -> int:
        nonlocal seq
        os.write(fd, frame_batch(FRAMES_PER_SYNC, seq))
        os.fdatasync(fd)
        seq += FRAMES_PER_SYNC
        return FRAMES_PER_SYNC

    try:
        return rate_until(s.duration, op)
    finally:
        os.close(fd)


def thread_handoff(path: Path, s: Settings) -> float:
    """Two threads pass a lock back and forth, no IO: hand-offs/s.

    Each hand-off parks one thread and wakes the other, the least that a caller
    waiting for a shared fsync costs: a ceiling for any queue that many threads
    call and that returns only when the caller's record is durable.
    """
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    stop = False
    count = 0

    def other() -> None:
        while True:
            ping.acquire()
            if stop:
                return
            pong.release()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    start = time.perf_counter()
    while True:
        ping.release()
        pong.acquire()
        count += 2
        elapsed = time.perf_counter() - start
        if elapsed >= s.duration:
            break
    stop = True
    ping.release()
    t.join()
    return count / elapsed


def park_wake_committer(path: Path, s: Settings) -> float:
    """`s.threads` threads each append a framed 1 KiB record and park until it is durable.

    The thread model of a durable queue with no queue logic: a caller frames
    its record into a shared buffer, then parks on a private lock; one
    committer thread takes the whole buffer, pwrites it into a preallocated,
    fsynced file (wrapping around), fdatasyncs once and releases every caller
    that batch covered. Records/s, from the common start to the end.
    """
    size = 16 * MIB
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    zeros = bytes(MIB)
    for _ in range(size // MIB):
        os.write(fd, zeros)
    os.fsync(fd)
    mu = threading.Lock()
    more = threading.Condition(mu)
    buf = bytearray()
    parked: list[threading.Lock] = []
    done = False
    counts = [0] * s.threads
    deadline = 0.0

    def committer() -> None:
        nonlocal buf, parked
        offset = 0
        while True:
            with mu:
                while not parked and not done:
                    more.wait()
                if done and not parked:
                    return
                data, gates = buf, parked
                buf, parked = bytearray(), []
            if offset + len(data) > size:
                offset = 0
            os.pwrite(fd, data, offset)
            os.fdatasync(fd)
            offset += len(data)
            for gate in gates:
                gate.release()

    def producer(i: int) -> None:
        seq, n = i << 40, 0
        gate = threading.Lock()
        while time.perf_counter() < deadline:
            gate.acquire()
            with mu:
                frame_into(buf, PAYLOAD, seq + n)
                parked.append(gate)
                more.notify()
            gate.acquire()  # released by the committer once the record is durable
            gate.release()
            n += 1
        counts[i] = n

    c = threading.Thread(target=committer, daemon=True)
    c.start()
    threads = [threading.Thread(target=producer, args=(i,)) for i in range(s.threads)]
    start = time.perf_counter()
    deadline = start + s.duration
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    finally:
        with mu:
            done = True
            more.notify()
        c.join()
        os.close(fd)
    return sum(counts) / elapsed


def write_framed_file(path: Path, count: int) -> None:
    """A file of `count` framed 1 KiB records (the read loop's input)."""
    with open(path, "wb") as f:
        for start in range(0, count, 4096):
            f.write(frame_batch(min(4096, count - start), start))
        f.flush()
        os.fsync(f.fileno())


def read_loop(path: Path) -> int:
    """Read a framed file in 4 MiB chunks, unpack every header, check every CRC.

    Returns the number of valid records; stops at the first bad one.
    """
    count = 0
    carry = b""
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            buf = carry + chunk if carry else chunk
            view = memoryview(buf)
            offset, end = 0, len(buf)
            while offset + HEADER_SIZE <= end:
                crc, length = HEADER.unpack_from(buf, offset)[:2]
                stop = offset + HEADER_SIZE + length
                if stop > end:
                    break
                if crc32c(view[offset + 4 : stop]) != crc:
                    return count
                count += 1
                offset = stop
            carry = bytes(view[offset:])
    return count


def read_rate(path: Path, expected: int) -> float:
    """records/s of read_loop over a file written by write_framed_file."""
    start = time.perf_counter()
    count = read_loop(path)
    elapsed = time.perf_counter() - start
    if count != expected:
        raise RuntimeError(f"read {count} records, expected {expected}")
    return count / elapsed
