"""Showing text that came from users: escaped for a terminal, and short in messages."""

from __future__ import annotations

import json

EXCERPT = 40  # characters of a long value an error message shows


def quoted(text: str) -> str:
    """`text` as a JSON string: quoted, every control and non-ASCII character escaped."""
    return json.dumps(text)


def shown(text: str) -> str:
    """`text` as printed in a table or a line: as is if printable, else quoted().

    A task name, key or error holding an escape sequence or a newline must
    never reach the terminal raw (it could retitle the window or split a row).
    """
    return text if text.isprintable() else quoted(text)


def shown_lines(text: str) -> str:
    """Multi-line text (an error with its traceback): each line through shown()."""
    return "\n".join(shown(line) for line in text.split("\n"))


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """`value` for an error message: repr() if short, else its size and a short prefix."""
    if isinstance(value, str) and len(value) > limit:
        size = len(value.encode(errors="surrogatepass"))
        return f"a string of {size} bytes starting {value[:limit]!r}"
    if isinstance(value, bytes | bytearray) and len(value) > limit:
        return f"{len(value)} bytes starting {bytes(value[:limit])!r}"
    text = repr(value)
    if len(text) > 2 * limit:
        return f"a {type(value).__name__} starting {text[:limit]}... ({len(text)} characters)"
    return text
