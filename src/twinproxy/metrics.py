"""Prometheus metrics, read from the service when scraped.

The proxy's hot path increments plain Python numbers (or nothing at all: a gauge such as the
number of connections is read off the data structures); :class:`ServiceCollector` turns
``Service.counters()`` and ``Service.status()`` into metric families only when ``/metrics`` is
asked for. Nothing here runs per request.

Counters are monotonic over the process's life, as Prometheus requires: what an update's engine
counted (requests, replies compared, divergences) is added to the service's totals when the
update ends and lets its engine go (``Service.retire``). Requests are counted by the MVE
engine, which frames every request anyway; in SINGLE mode the relay forwards whole reads
without counting requests (that would be work per read on the path that must cost nothing), so
``twinproxy_requests_total`` grows only during updates. Bytes are counted always, one addition
per read or send.

Adding a counter. ``Service.counters()`` returns a flat dict of numbers. Each key is matched
against :data:`FAMILIES`, in order, with ``re.fullmatch``; the first match names the metric, its
type and help text, and the pattern's named groups become its labels. So a new key either fits a
pattern already here (``requests_follower`` -> ``twinproxy_requests_total{role="follower"}``) or
needs one new line in :data:`FAMILIES`. A key that matches nothing is still exported, as an
untyped ``twinproxy_<key>`` whose help text says it is undescribed, so nothing is silently lost
(and a test can list such keys: :func:`undescribed`).

The mapping (counter names get ``_total`` in the exposition):

==================================  =======================================  =========
counters() key                      metric                                   type
==================================  =======================================  =========
connections                         twinproxy_connections                    gauge
connections_accepted                twinproxy_connections_accepted_total     counter
requests_<role>                     twinproxy_requests_total{role}           counter
bytes_<direction>_<role>            twinproxy_backend_bytes_total{direction, counter
                                    role}  (direction: sent, received)
client_bytes_<direction>            twinproxy_client_bytes_total{direction}  counter
follower_backlog_requests           twinproxy_follower_backlog_requests      gauge
follower_backlog_bytes              twinproxy_follower_backlog_bytes         gauge
replies_compared                    twinproxy_replies_compared_total         counter
divergences_<outcome>               twinproxy_divergences_total{outcome}     counter
                                    (outcome: expected, unexpected)
updates_started                     twinproxy_updates_started_total          counter
updates_<outcome>                   twinproxy_updates_total{outcome}         counter
                                    (outcome: cutover, rolled_back)
update_<phase>_seconds              twinproxy_update_phase_seconds{phase}    gauge
                                    (the last update's phases: sync, mve,
                                    cutover, rollback)
backend_restarts_<role>             twinproxy_backend_restarts_total{role}   counter
==================================  =======================================  =========

From ``status()``: ``twinproxy_info{version, protocol}`` (twinproxy's own version),
``twinproxy_state{state}`` (1 for the current state, 0 for the others),
``twinproxy_version_up{role, version}``, ``twinproxy_uptime_seconds`` and
``twinproxy_start_time_seconds``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from twinproxy import __version__

__all__ = ["FAMILIES", "STATES", "Counted", "Family", "ServiceCollector", "undescribed"]

log = logging.getLogger("twinproxy.metrics")

STATES = ("single", "syncing", "mve", "cutover", "rollback")


@dataclass(frozen=True)
class Family:
    """One metric and the ``counters()`` keys that feed it (named groups become labels)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    pattern: re.Pattern[str]

    @property
    def labels(self) -> list[str]:
        return list(self.pattern.groupindex)


def _family(name: str, kind: str, help: str, pattern: str) -> Family:
    return Family(name, kind, help, re.compile(pattern))


FAMILIES: tuple[Family, ...] = (
    _family("twinproxy_connections", "gauge",
            "Client connections open now.", r"connections"),
    _family("twinproxy_connections_accepted", "counter",
            "Client connections accepted since the proxy started.", r"connections_accepted"),
    _family("twinproxy_requests", "counter",
            "Requests sent to a version during updates (MVE), by the version's role.",
            r"requests_(?P<role>leader|follower)"),
    _family("twinproxy_backend_bytes", "counter",
            "Bytes sent to and received from a version, by the version's role.",
            r"bytes_(?P<direction>sent|received)_(?P<role>leader|follower)"),
    _family("twinproxy_client_bytes", "counter",
            "Bytes received from and sent to clients.",
            r"client_bytes_(?P<direction>sent|received)"),
    _family("twinproxy_follower_backlog_requests", "gauge",
            "Requests the follower has yet to be sent or to answer.",
            r"follower_backlog_requests"),
    _family("twinproxy_follower_backlog_bytes", "gauge",
            "Bytes of requests the follower has yet to be sent or to answer.",
            r"follower_backlog_bytes"),
    _family("twinproxy_replies_compared", "counter",
            "Follower replies compared with the leader's.", r"replies_compared"),
    _family("twinproxy_divergences", "counter",
            "Replies that differed: expected (a rule explained it) or unexpected.",
            r"divergences_(?P<outcome>expected|unexpected)"),
    _family("twinproxy_updates_started", "counter",
            "Updates started.", r"updates_started"),
    _family("twinproxy_updates", "counter",
            "Updates that ended, by outcome.", r"updates_(?P<outcome>cutover|rolled_back)"),
    _family("twinproxy_update_phase_seconds", "gauge",
            "How long each phase of the last update took (so far, for the current phase).",
            r"update_(?P<phase>sync|mve|cutover|rollback)_seconds"),
    _family("twinproxy_backend_restarts", "counter",
            "Times a managed version's server was restarted after it died, by role.",
            r"backend_restarts_(?P<role>leader|follower)"),
)


def _match(key: str) -> tuple[Family, list[str]] | None:
    for family in FAMILIES:
        m = family.pattern.fullmatch(key)
        if m:
            return family, [m[label] for label in family.labels]
    return None


def undescribed(counters: dict[str, Any]) -> list[str]:
    """The keys of ``counters`` that no :data:`FAMILIES` entry describes."""
    return [key for key in counters if _match(key) is None]


def _metric_name(key: str) -> str:
    return "twinproxy_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class Counted(Protocol):
    """What the collector reads: :class:`twinproxy.service.Service` is one. Declared here so
    that metrics imports nothing of the service it describes."""

    def status(self) -> dict[str, Any]:
        """The ``/status`` document (state, versions, uptime)."""

    def counters(self) -> dict[str, float]:
        """Flat counters, keyed as the table at the top of this module says."""


class ServiceCollector(Collector):
    """Reads one service's numbers at scrape time; register it in a registry of its own."""

    def __init__(self, service: Counted):
        self.service = service
        self._warned: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        status = self.service.status()
        yield from self._from_status(status)
        yield from self._from_counters(self.service.counters())

    def _from_status(self, status: dict[str, Any]) -> Iterator[Metric]:
        yield InfoMetricFamily("twinproxy", "twinproxy's version and the protocol it proxies.",
                               value={"version": __version__,
                                      "protocol": str(status.get("protocol", ""))})
        state = str(status.get("state", ""))
        states = GaugeMetricFamily("twinproxy_state", "The update state: 1 for the current one.",
                                   labels=["state"])
        for name in (*STATES, *([state] if state not in STATES else [])):
            states.add_metric([name], 1.0 if name == state else 0.0)
        yield states
        up = GaugeMetricFamily("twinproxy_version_up",
                               "Whether a version's server answers (1) or not (0), by role.",
                               labels=["role", "version"])
        for role in ("leader", "follower"):
            version = status.get(role)
            if isinstance(version, dict):
                up.add_metric([role, str(version.get("version"))],
                              1.0 if version.get("up") else 0.0)
        yield up
        uptime = status.get("uptime")
        if isinstance(uptime, int | float):
            yield GaugeMetricFamily("twinproxy_uptime_seconds",
                                    "Seconds since the proxy started.", value=uptime)
            yield GaugeMetricFamily("twinproxy_start_time_seconds",
                                    "When the proxy started, in seconds since the Unix epoch.",
                                    value=round(time.time() - uptime, 3))

    def _from_counters(self, counters: dict[str, Any]) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for key, value in counters.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                self._warn_once(key, f"counters()[{key!r}] is not a number ({value!r}): skipped")
                continue
            found = _match(key)
            if found is None:
                self._warn_once(key, f"counters()[{key!r}] is not described in "
                                     "twinproxy.metrics.FAMILIES: exported untyped")
                name = _metric_name(key)
                families[name] = UnknownMetricFamily(
                    name, f"counters()[{key!r}], not yet described in twinproxy.metrics.",
                    value=value)
                continue
            family, labels = found
            metric = families.get(family.name)
            if metric is None:
                cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
                metric = families[family.name] = cls(family.name, family.help,
                                                     labels=family.labels)
            metric.add_metric(labels, value)  # type: ignore[attr-defined]
        yield from families.values()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
