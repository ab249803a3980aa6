"""The one compiled part: SINGLE mode's Redis request count (src/twinproxy/protocols/redis/_scan.c).

Optional: where it cannot be built (no C compiler), twinproxy uses the pure-Python path it
replaces (protocols/redis/fast.py), which gives the same answers, slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("twinproxy.protocols.redis._scan",
                             ["src/twinproxy/protocols/redis/_scan.c"], optional=True)])
