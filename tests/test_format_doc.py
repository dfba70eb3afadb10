"""docs/FORMAT.md's worked example matches the code's bytes."""

from __future__ import annotations

import re
from pathlib import Path

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def example_bytes() -> bytes:
    """The hex bytes listed in the worked example, in order."""
    text = DOC.read_text().split("## Worked example", 1)[1]
    block = text.split("```", 2)[1]
    out = bytearray()
    for line in block.splitlines():
        m = re.match(r"^((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:\s{2,}|$)", line)
        if m:
            out += bytes.fromhex(m.group(1))
    return bytes(out)


def test_worked_example_is_what_the_code_writes() -> None:
    """Header, enqueue and ack records in the doc are byte-for-byte the encoder's output."""
    header = fmt.SegmentHeader(1, 1).encode()
    body = ev.Enqueue(id=1, task="mail", payload=b'{"to":"a@b"}', created=1700000000.0).encode()
    enqueue = framing.encode(fmt.ENQUEUE, body, 40)
    ack = framing.encode(fmt.ACK, ev.Ack(ids=(1,)).encode(), 40 + len(enqueue))
    assert example_bytes() == header + enqueue + ack
