"""A log line for something that can happen thousands of times a second: once per period, with
a count.

A proxy at its connection limit refuses every new client, and one that ran out of file
descriptors fails every accept; a line for each would flood the log (and the disk) exactly when
the operator needs to read it. :class:`RateLimitedLog` writes the first occurrence at once, then
counts, and writes at most one line per ``period`` saying how many happened since the last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """One condition's log line, written at most once per ``period`` seconds.

    Args:
        logger: where the line goes.
        level: its level (``logging.WARNING`` ...).
        message: the sentence, without the count, which is appended as ``(N in the last Xs)``.
        period: the least number of seconds between two lines.
        clock: monotonic seconds; a test may give its own.

    The count of a burst that ends before ``period`` has passed is written by the next
    :meth:`note` or :meth:`flush` after the period, so an owner with a timer of its own (the
    relay's housekeeping) calls :meth:`flush` from it; nothing here runs by itself.
    """

    def __init__(self, logger: logging.Logger, level: int, message: str, *,
                 period: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.level = level
        self.message = message
        self.period = period
        self.clock = clock
        self.total = 0  # every occurrence, over the owner's life
        self._pending = 0  # occurrences not yet in a line
        self._last_line: float | None = None

    def note(self, detail: str = "") -> None:
        """Count one occurrence; write the line if none was written in the last ``period``.
        ``detail`` (the error's text, say) is added to the line written now, if one is."""
        self.total += 1
        self._pending += 1
        now = self.clock()
        if self._last_line is None or now - self._last_line >= self.period:
            self._write(now, detail)

    def flush(self) -> None:
        """Write the count of occurrences not yet logged, if the period since the last line
        has passed."""
        if self._pending:
            now = self.clock()
            if self._last_line is None or now - self._last_line >= self.period:
                self._write(now, "")

    def _write(self, now: float, detail: str) -> None:
        text = f"{self.message}: {detail}" if detail else self.message
        if self._last_line is None:
            self.logger.log(self.level, "%s (further ones are counted and logged at most once "
                                        "every %gs)", text, self.period)
        else:
            self.logger.log(self.level, "%s (%d in the last %.0fs)", text,
                            self._pending, now - self._last_line)
        self._pending = 0
        self._last_line = now
