"""twinproxy: a TCP proxy that updates stateful servers live, with multi-version execution."""

__version__ = "0.1.0"
