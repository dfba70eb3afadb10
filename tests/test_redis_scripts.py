"""The Redis backend's Lua scripts: every file is loaded, lints clean, and reads the
ARGV its caller passes (walq/redisq/lua.py's SCRIPTS table). No server needed;
tests/test_redis.py compiles each on the server."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from walq.redisq import lua

_ARGV = re.compile(r"\bARGV\[(\d+)\]")


def _files() -> set[str]:
    folder = resources.files("walq.redisq") / "scripts"
    return {p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua")}


def _libs() -> set[str]:
    return {lib for spec in lua.SCRIPTS.values() for lib in spec.libs}


def test_every_lua_file_is_the_prelude_a_library_or_a_registered_script() -> None:
    names = set(lua.SCRIPTS)
    libs = _libs()
    assert _files() == {lua.PRELUDE} | libs | names
    assert not (libs & names) and lua.PRELUDE not in names | libs


def test_the_prelude_and_libraries_are_one_source_not_copies() -> None:
    """A script's own file holds only its body: the shared parts are added by the loader."""
    shared = [lua.part(lua.PRELUDE), *(lua.part(lib) for lib in _libs())]
    for name in lua.SCRIPTS:
        body = lua.part(name)
        for text in shared:
            for line in text.splitlines():
                if line.startswith("local function "):
                    assert line not in body, (name, line)
        assert lua.source(name).count(lua.part(lua.PRELUDE)) == 1


@pytest.mark.parametrize("name", sorted(lua.SCRIPTS))
def test_a_script_reads_the_arguments_its_caller_passes(name: str) -> None:
    """The highest ARGV[n] a script names is its declared fixed count; only the prelude
    reads KEYS (KEYS[1], P).

    RedisQueue._run checks every call's count against the same table, so the
    contract suite checks each caller.
    """
    spec = lua.SCRIPTS[name]
    text = "".join(lua.part(p) for p in (*spec.libs, name))
    assert max(int(n) for n in [*_ARGV.findall(text), "1"]) == spec.argc
    assert "KEYS" not in text
    if spec.group:
        assert "#ARGV" in text or "* " + str(spec.group) in text


def test_the_prelude_reads_only_the_prefix() -> None:
    """P is the one declared key (a Cluster routes the script by it); ARGV[1] repeats it."""
    prelude = lua.part(lua.PRELUDE)
    assert not _ARGV.findall(prelude)
    assert set(re.findall(r"\bKEYS\[(\d+)\]", prelude)) == {"1"}


def test_an_argument_count_is_checked() -> None:
    fixed, grouped = lua.Spec(3), lua.Spec(2, group=3)
    assert fixed.fits(3) and not fixed.fits(2) and not fixed.fits(4)
    assert grouped.fits(2) and grouped.fits(5) and grouped.fits(8)
    assert not grouped.fits(1) and not grouped.fits(4)


@pytest.mark.skipif(shutil.which("luacheck") is None, reason="luacheck (Debian: lua-check) absent")
def test_luacheck_finds_nothing(tmp_path: Path) -> None:
    """luacheck on each script as the server runs it. The prelude's and libraries'
    helpers that a script does not call are not warnings: they are shared."""
    found = []
    for name, spec in lua.SCRIPTS.items():
        path = tmp_path / f"{name}.lua"
        source = lua.source(name)
        path.write_text(source)
        shared_lines = (
            sum(lua.part(p).count("\n") for p in (lua.PRELUDE, *spec.libs)) + 1
        )  # "local function main()"
        command = ["luacheck", "--no-color", "--codes", "--formatter", "plain", "--std", "lua51"]
        command += ["--globals", "redis", "cjson", "KEYS", "ARGV", "--", str(path)]
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            m = re.match(r".*?:(\d+):\d+: \((W\d+)\) (.*)", line)
            assert m, line
            lineno, code, message = int(m[1]), m[2], m[3]
            if code == "W211" and "unused function" in message and lineno <= shared_lines:
                continue
            found.append(f"{name}.lua (as run) line {lineno}: {code} {message}")
    assert found == []
