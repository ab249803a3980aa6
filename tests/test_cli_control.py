"""The control commands as an operator runs them: ``python -m twinproxy.cli ...`` subprocesses
against ``twinproxy serve`` (also a subprocess), their output and exit statuses.

Exit statuses (src/twinproxy/cli.py): 0 done, 1 refused now (409) or failed, 2 usage, config,
bad request (400: an unknown version) or token, 3 the proxy cannot be reached. Interpreter
start-up is most of a command's cost, so the commands against one proxy run in parallel, once
per module.
"""

from __future__ import annotations

import json
import socket
import subprocess
from functools import partial
from pathlib import Path

import pytest

from tests.cli import run_all, serve_process, twinproxy
from tests.proxyrun import MEMCACHED, write_config
from tests.servers import free_port
from twinproxy.cli import Progress, format_divergence, format_status

TOKEN = "cli-token-123"


def one_error_line(result: subprocess.CompletedProcess[str], says: str) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("twinproxy: error: ") and says in lines[0], result.stderr


@pytest.fixture(scope="module")
def unix_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    config = write_config(folder / "p.toml", "memcache", {"v1": MEMCACHED, "v2": MEMCACHED})
    c = str(config)
    sock = str(folder / "p.sock")
    missing = str(folder / "missing.sock")
    with serve_process(config):
        data_port = next(line for line in config.read_text().splitlines()
                         if line.startswith("listen")).split(":")[-1].strip('"')
        yield run_all({
            "status": partial(twinproxy, "status", "-c", c),
            "status-json": partial(twinproxy, "status", "--json", "-c", c),
            "status-env": partial(twinproxy, "status", env={"TWINPROXY_CONFIG": c}),
            "status-control": partial(twinproxy, "status", "--control", sock),
            "promote": partial(twinproxy, "promote", "-c", c),
            "rollback": partial(twinproxy, "rollback", "-c", c),
            "update-unknown": partial(twinproxy, "update", "--to", "v9", "-c", c),
            "update-serving": partial(twinproxy, "update", "--to", "v1", "-c", c),
            "update-no-to": partial(twinproxy, "update", "-c", c),
            "divergences": partial(twinproxy, "divergences", "-c", c),
            "divergences-json": partial(twinproxy, "divergences", "--json", "-c", c),
            "no-proxy": partial(twinproxy, "status"),
            "bad-control": partial(twinproxy, "status", "--control", "localhost"),
            "bad-config": partial(twinproxy, "status", "-c", str(folder / "nope.toml")),
            "nothing-listens": partial(twinproxy, "status", "--control", missing),
            "port-closed": partial(twinproxy, "status", "--control", f"127.0.0.1:{free_port()}"),
            "data-port": partial(twinproxy, "status", "--control", f"127.0.0.1:{data_port}"),
        })


def test_status_text(unix_results) -> None:
    r = unix_results["status"]
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert lines["state"] == "single"
    version, pid, address, up = lines["leader"].split("  ")
    assert (version, up) == ("v1", "up")
    assert pid.startswith("pid ") and address.startswith("127.0.0.1:")
    assert lines["listen"].endswith("(memcache)")
    assert {"uptime", "connections", "compared", "divergences"} <= lines.keys()


def test_status_json(unix_results) -> None:
    r = unix_results["status-json"]
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "single" and doc["leader"]["version"] == "v1"


@pytest.mark.parametrize("case", ["status-env", "status-control"])
def test_finding_the_proxy(unix_results, case) -> None:
    r = unix_results[case]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("state")


@pytest.mark.parametrize(("case", "says"), [
    ("promote", "no update in progress"),
    ("rollback", "no update in progress"),
])
def test_refused_in_single_exits_1(unix_results, case, says) -> None:
    r = unix_results[case]
    assert r.returncode == 1
    one_error_line(r, says)


@pytest.mark.parametrize(("case", "says"), [
    ("update-unknown", "no version 'v9'"),
    ("update-serving", "v1 is the version serving now"),
    ("no-proxy", "give -c CONFIG or --control ADDR"),
    ("bad-control", "--control: expected a unix socket path"),
    ("bad-config", "nope.toml: cannot read"),
])
def test_usage_and_config_errors_exit_2(unix_results, case, says) -> None:
    r = unix_results[case]
    assert r.returncode == 2
    one_error_line(r, says)


def test_missing_option_is_clicks_usage_error(unix_results) -> None:
    r = unix_results["update-no-to"]
    assert r.returncode == 2 and "Missing option '--to'" in r.stderr


@pytest.mark.parametrize(("case", "says"), [
    ("nothing-listens", "no such socket (is the proxy running?)"),
    ("port-closed", "Connection refused"),
    # the proxy's data port answers an HTTP request line as memcached does: a close, no word
    ("data-port", "closed the connection before a complete response"),
])
def test_unreachable_exits_3(unix_results, case, says) -> None:
    r = unix_results[case]
    assert r.returncode == 3
    one_error_line(r, f"cannot reach the proxy: {''}")
    assert says in r.stderr


def test_divergences_none_yet(unix_results) -> None:
    for case in ("divergences", "divergences-json"):
        r = unix_results[case]
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


# ---- TCP and tokens -------------------------------------------------------------------------


def tcp_config(folder: Path, control: str, token: str | None) -> Path:
    config = write_config(folder / "t.toml", "memcache", {"v1": MEMCACHED},
                          proxy=f'control_token = "{token}"' if token else "")
    text = "\n".join(f'control = "{control}"' if line.startswith("control = ") else line
                     for line in config.read_text().splitlines())
    config.write_text(text + "\n")
    return config


def test_tcp_control_and_tokens(tmp_path) -> None:
    port = free_port()
    config = tcp_config(tmp_path, f"127.0.0.1:{port}", TOKEN)
    # The same proxy, without the token in its config: what a client sees without -c.
    address = f"127.0.0.1:{port}"
    with serve_process(config):
        results = run_all({
            "no-token": partial(twinproxy, "status", "--control", address),
            "wrong-token": partial(twinproxy, "status", "--control", address, "--token", "nope"),
            "right-token": partial(twinproxy, "status", "--control", address, "--token", TOKEN),
            "env-token": partial(twinproxy, "status", "--control", address,
                                 env={"TWINPROXY_TOKEN": TOKEN}),
            "config-token": partial(twinproxy, "status", "-c", str(config)),
            "flag-beats-env": partial(twinproxy, "status", "--control", address, "--token", TOKEN,
                                      env={"TWINPROXY_TOKEN": "stale"}),
            "promote": partial(twinproxy, "promote", "-c", str(config)),
        })
    assert results["no-token"].returncode == 2
    one_error_line(results["no-token"], "it needs a token (--token or TWINPROXY_TOKEN)")
    assert results["wrong-token"].returncode == 2
    one_error_line(results["wrong-token"], "the token given was refused")
    for case in ("right-token", "env-token", "config-token", "flag-beats-env"):
        assert results[case].returncode == 0, (case, results[case].stderr)
        assert results[case].stdout.startswith("state")
    assert results["promote"].returncode == 1


def test_serve_refuses_a_public_control_address_without_a_token(tmp_path) -> None:
    config = tcp_config(tmp_path, f"0.0.0.0:{free_port()}", None)
    r = twinproxy("serve", str(config), timeout=30)
    assert r.returncode == 2
    one_error_line(r, "is not a loopback address and there is no token")
    r = twinproxy("serve", str(config), env={"TWINPROXY_TOKEN": ""}, timeout=30)
    assert r.returncode == 2


def test_serve_with_a_live_control_socket_fails_in_one_line(tmp_path) -> None:
    config = write_config(tmp_path / "a.toml", "memcache", {"v1": MEMCACHED})
    sock = str(tmp_path / "a.sock")
    other = tmp_path / "b"
    other.mkdir()
    second = tcp_config(other, sock, None)
    with serve_process(config) as first:
        r = twinproxy("serve", str(second), timeout=30)
        assert r.returncode == 1
        assert r.stderr.splitlines()[-1].endswith(
            f"ERROR   control socket {sock}: another process is listening on it (is a proxy "
            "already running?)")
        assert "Traceback" not in r.stderr
        assert first.poll() is None
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)  # still the first proxy's


# ---- formatting, in-process -----------------------------------------------------------------


def test_format_status_during_an_update() -> None:
    text = format_status({
        "state": "mve", "protocol": "redis", "listen": "0.0.0.0:6379", "uptime": 3725.2,
        "connections": 12, "compared": 1520, "divergences": 1,
        "leader": {"version": "v6", "pid": 100, "address": "127.0.0.1:7001", "up": True},
        "follower": {"version": "v7", "pid": 200, "address": "127.0.0.1:7002", "up": False},
        "warmup": {"seconds_left": 12.04, "requests_left": 340},
        "last_update": {"to": "v7", "outcome": "in-progress", "reason": None},
    })
    assert text.splitlines() == [
        "state        mve (update to v7)",
        "leader       v6  pid 100  127.0.0.1:7001  up",
        "follower     v7  pid 200  127.0.0.1:7002  DOWN",
        "listen       0.0.0.0:6379 (redis)",
        "uptime       1h02m05s",
        "connections  12",
        "compared     1520 replies",
        "divergences  1",
        "warm-up      12.0s and 340 requests left",
        "last update  to v7: in-progress",
    ]


def test_format_divergence_shows_request_and_a_diff() -> None:
    text = format_divergence({
        "id": 7, "time": 0, "update": 1, "connection": "c3", "expected": False, "rule": None,
        "rules_tried": ["version-string"], "reason": "replies differ",
        "request": ["HGETALL", "h\x00"],
        "leader": "*2\r\n$1\r\na\r\n$1\r\n1\r\n", "follower": "*2\r\n$1\r\na\r\n$1\r\n2\r\n",
    })
    lines = text.splitlines()
    assert lines[0] == ("#7  1970-01-01 00:00:00Z  update 1  connection c3  UNEXPECTED: "
                        "replies differ")
    assert lines[1] == "  request: HGETALL h\\x00"
    assert "  --- leader" in lines and "  +++ follower" in lines
    assert "  -1" in lines and "  +2" in lines
    assert lines[-1] == "  rules tried: version-string"


def test_progress_without_a_terminal_prints_changes(capsys) -> None:
    progress = Progress(tty=False)
    progress.show({"state": "syncing", "sync": {"done": 0, "total": 10}})
    progress.show({"state": "syncing", "sync": {"done": 0, "total": 10}})
    progress.show({"state": "mve", "warmup": {"seconds_left": 30, "requests_left": 100}})
    progress.show({"state": "cutover"})
    progress.close()
    assert capsys.readouterr().out.splitlines() == [
        "sync: 0/10 (0%)",
        "warm-up: 30.0s and 100 requests left",
        "state: cutover",
    ]
