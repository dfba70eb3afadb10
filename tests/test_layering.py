"""The layers of walq, read from its imports: a forbidden edge fails, naming file and line.

Every `import` and `from ... import` in every module of walq/ counts, at module
level or inside a function (a lazy import is still a dependency), relative ones
resolved. The rules are the table below; docs/ARCHITECTURE.md draws them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

import walq

# Concrete backends: only walq.backends (the registry), walq.ops and the
# backends themselves may import them; everyone else codes against walq.backend.
CONCRETE_BACKENDS = ("walq.directory.queue", "walq.directory.compactor", "walq.redisq")

# Standard-library modules that do I/O, keep time or draw randomness: the core
# gets all of these as arguments (a clock, a random source, bytes), never itself.
IO_MODULES = frozenset(
    {"os", "io", "socket", "threading", "time", "random", "subprocess", "asyncio"}
)


@attrs.frozen
class Rule:
    """Modules under `importers` may not import modules under `forbidden`.

    Each name covers itself and everything below it ("walq.core" covers
    walq.core.state). `allowed` carves exceptions out of `forbidden`;
    `exempt` carves importers out of `importers`.
    """

    why: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()

    def applies_to(self, importer: str) -> bool:
        """Whether the rule governs what `importer` imports."""
        return under(importer, self.importers) and not under(importer, self.exempt)

    def forbids(self, imported: str) -> bool:
        """Whether importing `imported` breaks the rule."""
        return under(imported, self.forbidden) and not under(imported, self.allowed)


RULES: tuple[Rule, ...] = (
    Rule(
        "the core imports nothing from walq outside the core but walq.errors",
        importers=("walq.core",),
        forbidden=("walq",),
        allowed=("walq.core", "walq.errors"),
    ),
    Rule(
        "storage does not import the queue or the compactor built on it",
        importers=(
            "walq.directory.fs",
            "walq.directory.lock",
            "walq.directory.segment",
            "walq.directory.log",
            "walq.directory.spare",
            "walq.directory.recovery",
        ),
        forbidden=("walq.directory.queue", "walq.directory.compactor"),
    ),
    Rule(
        "the worker, the CLI, metrics and the producer server use walq.backend(s), "
        "no concrete backend",
        importers=(
            "walq.worker",
            "walq.cli",
            "walq.metrics",
            "walq.producers.server",
            "walq.producers.ingest",
        ),
        forbidden=CONCRETE_BACKENDS,
    ),
    Rule(
        "nothing imports the CLI but `python -m walq`",
        importers=("walq",),
        forbidden=("walq.cli",),
        exempt=("walq.cli", "walq.__main__"),
    ),
    Rule(
        "operator tools read the backends but import neither the CLI nor the worker",
        importers=("walq.ops",),
        forbidden=("walq.cli", "walq.worker"),
    ),
    Rule(
        "the dashboard reads and acts through walq.ops and walq.backend(s): no backend's "
        "modules, no CLI, no worker",
        importers=("walq.ui",),
        forbidden=("walq.directory", "walq.redisq", "walq.cli", "walq.worker"),
    ),
    Rule(
        "the backends serve the tools above them and import none of them: "
        "they return plain data, walq.ops shapes it",
        importers=("walq.directory", "walq.redisq"),
        forbidden=("walq.ops", "walq.cli", "walq.worker"),
    ),
    Rule(
        "test support (planted bugs, simulated file system) stays out of production code",
        importers=("walq",),
        forbidden=("walq.testing",),
        exempt=("walq.testing",),
    ),
)

# Outside walq: what each layer may import besides the standard library, and
# which standard-library modules it may not.
THIRD_PARTY: dict[str, frozenset[str]] = {"walq.core": frozenset({"attrs", "crc32c"})}
NO_STDLIB: dict[str, frozenset[str]] = {"walq.core": IO_MODULES}


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted `name` is one of `prefixes` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@attrs.frozen
class Edge:
    """`importer` imports `imported` at `path:line`."""

    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.path}:{self.line})"


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at `root` by dotted name (packages by their __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def edges(root: Path) -> Iterator[Edge]:
    """Every import in the package at `root`, resolved to the module it names.

    `from a.b import c` names a.b.c when that is a module of the package,
    else a.b (c is an attribute). Outside the package the name is kept as written.
    """
    known = modules(root)
    for importer, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Edge(importer, alias.name, path, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = importer.split(".")
                    if not is_package:
                        package = package[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                if base == "__future__":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    yield Edge(importer, full if full in known else base, path, node.lineno)


def violations(root: Path) -> list[tuple[str, Edge]]:
    """Each forbidden edge in the package at `root`, with the rule it breaks."""
    found = []
    package = root.name
    for edge in edges(root):
        top = edge.imported.split(".")[0]
        if top == package:
            found += [
                (r.why, edge)
                for r in RULES
                if r.applies_to(edge.importer) and r.forbids(edge.imported)
            ]
            continue
        for layer, allowed in THIRD_PARTY.items():
            outside = top not in sys.stdlib_module_names
            if under(edge.importer, (layer,)) and outside and top not in allowed:
                found.append(
                    (f"{layer} may import only {sorted(allowed)} outside the stdlib", edge)
                )
        for layer, banned in NO_STDLIB.items():
            if under(edge.importer, (layer,)) and top in banned:
                found.append((f"{layer} does no I/O: it may not import {top}", edge))
    return found


def report(found: list[tuple[str, Edge]]) -> str:
    """One line per forbidden edge: the rule, then importer -> imported (file:line)."""
    return "\n".join(f"{why}: {edge}" for why, edge in found)


WALQ = Path(walq.__file__).parent


class TestWalqLayers:
    """walq's own modules keep to the table."""

    @pytest.mark.parametrize("rule", RULES, ids=[r.why for r in RULES])
    def test_rule(self, rule: Rule) -> None:
        """No module breaks `rule`."""
        found = [(why, edge) for why, edge in violations(WALQ) if why == rule.why]
        assert not found, "forbidden imports:\n" + report(found)

    def test_core_imports_only_attrs_crc32c_and_stdlib_without_io(self) -> None:
        """walq.core's outside imports: attrs, crc32c, the stdlib minus the I/O modules."""
        why = {r.why for r in RULES}
        found = [(w, edge) for w, edge in violations(WALQ) if w not in why]
        assert not found, "forbidden imports:\n" + report(found)

    def test_the_table_names_modules_that_exist(self) -> None:
        """A rule about a module that was renamed away would silently pass: refuse it."""
        known = modules(WALQ)
        for rule in RULES:
            for name in (*rule.importers, *rule.forbidden, *rule.allowed, *rule.exempt):
                assert name in known, f"{rule.why}: no module {name}"


def write(root: Path, files: dict[str, str]) -> Path:
    """A fake package `walq` under `root` from {relative path: source}."""
    for rel, text in files.items():
        path = root / "walq" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "walq"


def fake_tree(root: Path, **extra: str) -> Path:
    """A small clean package shaped like walq, plus `extra` files (name__sub -> a/sub.py)."""
    files = {
        "__init__.py": "from walq.directory.queue import Queue\n",
        "__main__.py": "from walq.cli.app import main\n",
        "errors.py": "",
        "backend.py": "",
        "core/__init__.py": "",
        "core/state.py": "import attrs\nfrom . import framing\nfrom walq.errors import E\n",
        "core/framing.py": "import struct\nfrom crc32c import crc32c\n",
        "directory/__init__.py": "",
        "directory/log.py": "from walq.core import framing\nfrom .fs import FS\n",
        "directory/fs.py": "import os\n",
        "directory/queue.py": "from walq.directory.log import Log\n",
        "redisq/__init__.py": "",
        "redisq/queue.py": "import redis\n",
        "worker/__init__.py": "",
        "worker/pool.py": "from walq.backend import QueueBackend\n",
        "cli/__init__.py": "from .app import main\n",
        "cli/app.py": "def main() -> None:\n    from walq import backends\n",
        "backends.py": "",
        "ops/__init__.py": "",
        "ops/dead.py": "from walq.directory import queue\n",
        "testing/__init__.py": "from walq.testing import faultfs\n",
        "testing/faultfs.py": "from walq.directory.fs import FS\n",
    }
    files.update({k.replace("__", "/") + ".py": v for k, v in extra.items()})
    return write(root, files)


class TestChecker:
    """The checker itself, on fake package trees: a forbidden edge is found and named."""

    def test_a_clean_tree_passes(self, tmp_path: Path) -> None:
        """The fake tree obeys every rule (so each next test fails only for its edge)."""
        assert violations(fake_tree(tmp_path)) == []

    @pytest.mark.parametrize(
        ("module", "source", "edge"),
        [
            (
                "core__state",
                "from walq.directory import fs\n",
                "walq.core.state -> walq.directory.fs",
            ),
            ("core__state", "from ..directory import fs\n", "walq.core.state -> walq.directory.fs"),
            ("core__state", "import walq\n", "walq.core.state -> walq"),
            ("core__state", "import os\n", "walq.core.state -> os"),
            ("core__state", "import redis\n", "walq.core.state -> redis"),
            (
                "core__state",
                "def f() -> None:\n    from time import monotonic\n",
                "walq.core.state -> time",
            ),
            (
                "directory__log",
                "from .queue import Queue\n",
                "walq.directory.log -> walq.directory.queue",
            ),
            ("worker__pool", "import walq.redisq.queue\n", "walq.worker.pool -> walq.redisq.queue"),
            (
                "cli__app",
                "def main() -> None:\n    from walq.directory.queue import Queue\n",
                "walq.cli.app -> walq.directory.queue",
            ),
            ("ops__dead", "from walq.worker import pool\n", "walq.ops.dead -> walq.worker.pool"),
            (
                "redisq__admin",
                "def f() -> None:\n    from walq.ops.dead import DeadInfo\n",
                "walq.redisq.admin -> walq.ops.dead",
            ),
            (
                "directory__log",
                "from walq.worker.pool import Worker\n",
                "walq.directory.log -> walq.worker.pool",
            ),
            ("backend", "from walq.cli import main\n", "walq.backend -> walq.cli"),
            (
                "directory__queue",
                "from walq.testing import faultfs\n",
                "walq.directory.queue -> walq.testing.faultfs",
            ),
        ],
    )
    def test_a_forbidden_edge_fails_naming_it(
        self, tmp_path: Path, module: str, source: str, edge: str
    ) -> None:
        """Each kind of forbidden edge is reported as importer -> imported (file:line)."""
        root = fake_tree(tmp_path, **{module: source})
        found = violations(root)
        assert [str(e).split(" (")[0] for _, e in found] == [edge]
        path = root / (module.replace("__", "/") + ".py")
        assert f"({path}:{source.count(chr(10))})" in report(found)

    def test_the_real_test_fails_on_a_forbidden_edge(self, tmp_path: Path) -> None:
        """The assertion the walq tests make is the one that fails on a bad tree."""
        root = fake_tree(tmp_path, worker__pool="from walq.directory.queue import Queue\n")
        with pytest.raises(AssertionError, match=r"walq.worker.pool -> walq.directory.queue"):
            found = violations(root)
            assert not found, "forbidden imports:\n" + report(found)

    def test_from_package_import_module_resolves_to_the_module(self, tmp_path: Path) -> None:
        """`from walq.core import framing` names walq.core.framing; `from m import attr`, m."""
        root = fake_tree(tmp_path)
        imported = {(e.importer, e.imported) for e in edges(root)}
        assert ("walq.directory.log", "walq.core.framing") in imported
        assert ("walq.core.state", "walq.core.framing") in imported
        assert ("walq.cli", "walq.cli.app") in imported  # relative, from a package's __init__
        assert ("walq.core.state", "walq.errors") in imported
