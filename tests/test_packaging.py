"""Every third-party module the package imports is a runtime dependency in pyproject.toml.

A module listed only under an extra (as hiredis once was, under ``test``) installs fine in the
test environment and then fails on the first Redis client of a plain ``pip install twinproxy``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

from twinproxy import digests
from twinproxy.protocols import compiled
from twinproxy.relay import single

ROOT = Path(__file__).resolve().parent.parent
# Import names that differ from their distribution's name.
DISTRIBUTION = {"prometheus_client": "prometheus-client"}


def imported_modules() -> set[str]:
    """Top-level names of absolute imports anywhere under src/twinproxy (lazy ones too)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "twinproxy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_third_party_imports_are_runtime_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {normalized(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0])
               for d in project["dependencies"]}
    third_party = imported_modules() - set(sys.stdlib_module_names) - {"twinproxy"}
    assert "hiredis" in third_party  # the check sees the import it was written for
    missing = {m for m in third_party if normalized(DISTRIBUTION.get(m, m)) not in runtime}
    assert not missing, f"imported but not runtime dependencies: {sorted(missing)}"


@pytest.mark.parametrize("protocol", compiled.PROTOCOLS)
def test_the_c_counts_are_built_by_the_install(protocol: str) -> None:
    """setup.sh's install compiles each protocol's request count (setup.py builds every
    protocols/<name>/_scan.c, optional where there is no compiler): without it SINGLE mode falls
    back to Python, which gives the same answers at a fraction of the speed, silently. The
    machines setup.sh prepares have gcc."""
    assert (ROOT / "src/twinproxy/protocols" / protocol / "_scan.c").is_file()
    assert compiled.load(protocol) is not None, \
        f"twinproxy/protocols/{protocol}/_scan.c was not built"


def test_every_scan_in_the_tree_is_a_listed_protocol() -> None:
    sources = {p.parent.name for p in (ROOT / "src/twinproxy/protocols").glob("*/_scan.c")}
    assert sources == set(compiled.PROTOCOLS)


def test_the_relay_pump_is_built_by_the_install() -> None:
    """The same for the relay's pump (relay/_pump.c): without it SINGLE mode reads and sends in
    Python, slower."""
    assert single.pump is not None, "twinproxy/relay/_pump.c was not built"


def test_the_digest_of_large_replies_is_built_by_the_install() -> None:
    """And for the digest of large replies (_digest.c): without it they are digested
    with blake2b, about eight times slower."""
    assert digests.NAME == "xxh64x2", "twinproxy/_digest.c was not built"
