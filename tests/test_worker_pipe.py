"""The owner's reading of a worker's pipe: every message, in order, however they arrive."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

import pytest

from walq.worker.slots import READ_SIZE, Slot


def read_all(slot: Slot) -> list[Any]:
    got: list[Any] = []
    while slot.has_message():
        got += slot.messages()
    return got


def test_many_messages_are_read_in_order_and_one_cut_short_waits_for_its_end() -> None:
    owner, worker = multiprocessing.Pipe()
    slot = Slot(proc=None, conn=owner)
    small = [("ok", i, 1, None) for i in range(100)]
    big = ("error", 7, 2, {"traceback": "x" * (3 * READ_SIZE)})  # longer than one read
    sent = [*small, big, ("held", [1, 2, 3])]

    # From another thread: the big message fills the pipe until the owner reads.
    def send_all() -> None:
        for msg in sent:
            worker.send(msg)

    sender = threading.Thread(target=send_all)
    sender.start()
    got: list[Any] = []
    deadline = time.monotonic() + 60
    while len(got) < len(sent) and time.monotonic() < deadline:
        if slot.has_message():
            got += slot.messages()
    sender.join()
    assert got == sent
    # A message whose bytes arrive in two parts is handed out once whole
    # (the frame Connection.send writes, split by hand).
    frame = multiprocessing.reduction.ForkingPickler.dumps(("ok", 9, 1, None))
    data = len(frame).to_bytes(4, "big", signed=True) + bytes(frame)
    os.write(worker.fileno(), data[:6])
    assert read_all(slot) == []
    os.write(worker.fileno(), data[6:])
    assert read_all(slot) == [("ok", 9, 1, None)]
    worker.close()
    assert slot.has_message()  # the end of the pipe
    with pytest.raises(EOFError):
        slot.messages()
    owner.close()
