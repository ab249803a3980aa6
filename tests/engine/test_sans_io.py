"""The engine is sans-IO: no module it runs imports trio, socket, select or time.

Checked on the source, transitively through every twinproxy module the engine imports when it
runs (imports under ``if TYPE_CHECKING:`` are for type hints only and do not count), so that a
helper that starts reading a clock or a socket is caught where it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import twinproxy

SRC = Path(twinproxy.__file__).resolve().parent
FORBIDDEN = {"trio", "socket", "select", "time", "selectors", "asyncio", "threading"}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    path = SRC.joinpath(*parts)
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _runtime_imports(path: Path, package: str) -> set[str]:
    """Modules imported by ``path`` when it runs (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                found.add(module)
                for alias in node.names:  # ``from twinproxy.engine import events``
                    found.add(f"{module}.{alias.name}")
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return found


def _closure(start: str) -> dict[str, set[str]]:
    """Every twinproxy module reached from ``start`` at run time, with what each imports."""
    seen: dict[str, set[str]] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        seen[name] = imports = _runtime_imports(path, package)
        todo.extend(m for m in imports if m.startswith("twinproxy.") and m not in seen)
    return seen


def test_the_engine_imports_no_io_and_no_clock():
    modules = _closure("twinproxy.engine")
    assert "twinproxy.engine.leader" in modules and "twinproxy.protocols.messages" in modules
    offenders = {name: sorted(m for m in imports if m.split(".")[0] in FORBIDDEN)
                 for name, imports in modules.items()}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_engine_does_not_reach_the_relay_or_the_lifecycle():
    modules = _closure("twinproxy.engine")
    assert not any(m.startswith(("twinproxy.relay", "twinproxy.lifecycle", "twinproxy.service",
                                 "twinproxy.backends", "twinproxy.divergences"))
                   for m in modules), sorted(modules)
