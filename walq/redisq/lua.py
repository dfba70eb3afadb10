"""The Lua scripts of the Redis backend: scripts/*.lua, assembled and registered.

Every state change is one script, so it is one atomic step on the server. A
script is the shared prelude (scripts/prelude.lua: keys, the server's time,
counts and the helpers every step uses), then any libraries it names, then its
own body inside `main()`, so that whichever `return` it takes, the counts it
changed are written (flush) before the script ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from walq.core.text import excerpt
from walq.errors import ArgumentError

PRELUDE: Final = "prelude"


@dataclass(frozen=True)
class Spec:
    """How a script is called: its ARGV entries (the prefix P first) and libraries.

    `argc` fixed entries, then, if `group` > 0, any number of groups of `group`
    entries (one per job or item).
    """

    argc: int
    group: int = 0
    libs: tuple[str, ...] = ()

    def fits(self, n: int) -> bool:
        """Whether `n` ARGV entries are what the script reads."""
        if self.group == 0:
            return n == self.argc
        return n >= self.argc and (n - self.argc) % self.group == 0


SCRIPTS: Final[Mapping[str, Spec]] = {
    "claim": Spec(6, libs=("claim_common",)),
    "reserve": Spec(6),
    "commit": Spec(8, libs=("claim_common",)),
    "enqueue": Spec(5, group=8),
    "after": Spec(13, group=1),
    "finish": Spec(7, group=8),
    "result": Spec(1, group=1),
    "tick": Spec(11, group=2),
    "schedules": Spec(1),
    "ack": Spec(2, group=3),
    "fail": Spec(12),
    "release": Spec(4),
    "extend": Spec(5),
    "extend_many": Spec(2, group=3),
    "cancel": Spec(3),
    "requeue": Spec(2),
    "purge": Spec(3, group=1),
    "status": Spec(2),
    "stats": Spec(1),
    "next_due": Spec(1),
    "pause": Spec(3),
    "paused": Spec(1),
    "find": Spec(2),
    "detail": Spec(2),
    "jobs": Spec(5),
    "gate_admit": Spec(13, libs=("gates_lib",)),
    "gate_breaker": Spec(5, libs=("gates_lib",)),
    "gate_budget": Spec(5, libs=("gates_lib",)),
    "gate_release": Spec(4),
}


def part(name: str) -> str:
    """The text of scripts/NAME.lua (shipped as package data)."""
    return (resources.files("walq.redisq") / "scripts" / f"{name}.lua").read_text("utf-8")


@cache
def source(name: str) -> str:
    """Script `name` as the server runs it: prelude, libraries, then its body in main()."""
    spec = SCRIPTS[name]
    inner = "".join(part(lib) for lib in spec.libs) + part(name)
    return (
        part(PRELUDE)
        + "local function main()\n"
        + inner
        + "end\nlocal reply = main()\nflush()\nreturn reply\n"
    )


def register(client: Any) -> dict[str, Any]:
    """Every script registered on `client` (redis-py loads each on its first call)."""
    return {name: client.register_script(source(name)) for name in SCRIPTS}


def ms(seconds: float) -> int:
    """Seconds as a script's milliseconds argument (rounded up, never negative)."""
    return max(0, math.ceil(seconds * 1000))


def check_job_id(value: object) -> int:
    """A job id argument, checked."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"a job id is an int, not {excerpt(value)}")
    return value
