"""The compiled parts: SINGLE mode's request counts, one ``_scan.c`` per protocol
(src/twinproxy/protocols/<protocol>/_scan.c; see twinproxy/protocols/compiled.py).

Each is optional: where it cannot be built (no C compiler), twinproxy uses the pure-Python path it
replaces, which gives the same answers, slower.
"""

from pathlib import Path

from setuptools import Extension, setup

SOURCES = sorted(Path("src/twinproxy/protocols").glob("*/_scan.c"))

setup(ext_modules=[Extension(f"twinproxy.protocols.{source.parent.name}._scan",
                             [source.as_posix()], optional=True)
                   for source in SOURCES])
