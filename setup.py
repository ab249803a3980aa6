"""The compiled parts: SINGLE mode's request counts, one ``_scan.c`` per protocol
(src/twinproxy/protocols/<protocol>/_scan.c; see twinproxy/protocols/compiled.py), and the
relay's pump of a read to its peer (src/twinproxy/relay/_pump.c, sharing relay/_io.h), and the
digest of large replies (src/twinproxy/_digest.c, see twinproxy/digests.py).

Each is optional: where it cannot be built (no C compiler), twinproxy uses the pure-Python path it
replaces, which gives the same answers, slower.
"""

from pathlib import Path

from setuptools import Extension, setup

SOURCES = sorted(Path("src/twinproxy/protocols").glob("*/_scan.c"))

setup(ext_modules=[*(Extension(f"twinproxy.protocols.{source.parent.name}._scan",
                               [source.as_posix()], depends=["src/twinproxy/relay/_io.h"],
                               optional=True)
                     for source in SOURCES),
                   Extension("twinproxy.relay._pump", ["src/twinproxy/relay/_pump.c"],
                             depends=["src/twinproxy/relay/_io.h"], optional=True),
                   Extension("twinproxy._digest", ["src/twinproxy/_digest.c"],
                             optional=True)])
