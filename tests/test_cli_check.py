"""``twinproxy check`` and ``serve`` as an operator runs them: a subprocess, its exit status, and
one line on stderr that names the file, the key and the reason.

Every bad config of ``test_config.ERROR_CASES`` goes through the command in-process (click's
runner: the same code, exit status and stderr line); one case of each kind of error also goes
through a real ``python -m twinproxy.cli`` subprocess. Those run in parallel, once per module,
since interpreter start-up is most of their cost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.cli import invoke, run_all, twinproxy
from tests.test_config import BASE, CONFIGS, ERROR_CASES, SHIPPED, Case, edit
from twinproxy import __version__

# One case for each kind of error, run as real subprocesses.
SUBPROCESS_CASES = [c for c in ERROR_CASES if c.id in {
    "listen-no-port", "listen-integer", "listen-missing", "protocol-unknown", "start-unknown",
    "proxy-unknown-key", "max-connections-zero", "no-versions", "version-both",
    "command-no-port", "command-unknown-placeholder", "command-not-strings",
    "external-managed-key", "sync-wrong-protocol", "rule-two-actions", "rule-duplicate-name",
    "rule-from-unknown", "rule-args-regex", "rule-rewrite-bad-ref", "rule-index-counts-from-zero",
}]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, subprocess.CompletedProcess[str]]:
    """``twinproxy check <case>.toml`` as a subprocess for each of ``SUBPROCESS_CASES``, run from
    the file's directory so the message must show the path exactly as it was given."""
    folder = tmp_path_factory.mktemp("cases")
    for case in SUBPROCESS_CASES:
        (folder / f"{case.id}.toml").write_text(case.toml)
    return run_all({c.id: partial(twinproxy, "check", f"{c.id}.toml", cwd=folder)
                    for c in SUBPROCESS_CASES})


def assert_refused(case: Case, status: int, stdout: str, stderr: str) -> None:
    assert status == 2, stderr
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    prefix = f"twinproxy: error: {case.id}.toml: {case.key}: "
    assert lines[0].startswith(prefix)
    assert case.reason in lines[0][len(prefix):]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_check_subprocess_refuses_with_file_key_and_reason(
        checked: dict[str, subprocess.CompletedProcess[str]], case: Case) -> None:
    result = checked[case.id]
    assert_refused(case, result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_check_refuses_with_file_key_and_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    (tmp_path / f"{case.id}.toml").write_text(case.toml)
    monkeypatch.chdir(tmp_path)
    result = invoke("check", f"{case.id}.toml")
    assert_refused(case, result.exit_code, result.stdout, result.stderr)


def test_every_kind_of_error_has_a_subprocess_case() -> None:
    assert len(SUBPROCESS_CASES) == 20


def test_check_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BASE.replace('start = "v6"', 'start = "v6'))
    result = twinproxy("check", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("twinproxy: error: bad.toml:5:")
    assert "invalid TOML" in result.stderr
    assert result.stderr.count("\n") == 1


def test_check_missing_file(tmp_path: Path) -> None:
    result = twinproxy("check", "nope.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("twinproxy: error: nope.toml: cannot read: "
                             "No such file or directory\n")


def test_check_missing_program(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(edit('"redis-server"', '"/opt/none/redis-server"'))
    result = twinproxy("check", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("twinproxy: error: c.toml: versions.v6.command[0]: "
                             "/opt/none/redis-server: no such file\n")


def test_check_prints_warnings_and_passes(tmp_path: Path) -> None:
    text = edit('control = "/tmp/twinproxy-test.sock"', 'control = "0.0.0.0:7000"')
    (tmp_path / "c.toml").write_text(edit('"redis-server"', '"sh"', text))
    result = twinproxy("check", "c.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("twinproxy: warning: c.toml: proxy.control: 0.0.0.0:7000 is "
                                    "not a loopback address")


def test_check_tells_an_update_its_sync_method_would_refuse(tmp_path: Path) -> None:
    """memcache-copy refuses two memory limits; check says so before anyone asks for the
    update, and the config itself stays valid."""
    text = (CONFIGS / "memcached.toml").read_text()
    text = text.replace('"-m", "64", "-c", "1024", "-t", "2"', '"-m", "128", "-c", "1024"')
    (tmp_path / "c.toml").write_text(text)
    result = twinproxy("check", "c.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(
        "twinproxy: warning: c.toml: update.sync: an update from v1 to v2 would be refused: "
        "v2's memory limit (-m 128) differs from v1's (-m 64)")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_check_shipped_config(path: Path) -> None:
    result = twinproxy("check", str(path.relative_to(CONFIGS.parent)), cwd=CONFIGS.parent)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"configs/{path.name}: OK"
    assert lines[1].split()[0] == "listen"
    kind = "external" if path.name == "kvstore.toml" else "managed"  # a service that forks
    assert any(line.split()[:1] == ["versions"] and kind in line for line in lines)
    assert lines[-1].split()[0] == "rules"


def test_summary_of_forked_versions() -> None:
    result = twinproxy("check", "configs/kvstore.toml", cwd=CONFIGS.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[4:7] == [
        "  versions   v1        external  127.0.0.1:7379",
        "             v2        forked    by the running service at an update",
        "             v2-lossy  forked    by the running service at an update",
    ]


def test_summary_of_external_and_managed(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(edit('"redis-server"', '"sh"'))
    result = twinproxy("check", "c.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "c.toml: OK",
        "  listen     127.0.0.1:6380 (redis)",
        "  control    /tmp/twinproxy-test.sock",
        "  start      v6",
        "  versions   v6  managed   sh --port {port} --dir {dir}",
        "             v7  external  127.0.0.1:6379",
        "  update     sync redis-fork, warm-up 30s / 1000 requests, on divergence rollback, "
        "after cutover stop-old",
        "  rules      0",
    ]


def test_console_script() -> None:
    exe = shutil.which("twinproxy", path=os.path.dirname(sys.executable)) or shutil.which(
        "twinproxy")
    assert exe is not None, "the twinproxy console script is not installed"
    result = twinproxy("--version", program=[exe])
    assert (result.returncode, result.stdout) == (0, f"twinproxy, version {__version__}\n")
    result = twinproxy("check", str(CONFIGS / "redis.toml"), program=[exe])
    assert result.returncode == 0, result.stderr


def test_check_without_argument_is_a_usage_error() -> None:
    result = invoke("check")
    assert result.exit_code == 2
    assert "Missing argument 'CONFIG'" in result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(edit('protocol = "redis"', 'protocol = "http"'))
    result = twinproxy("serve", "c.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("twinproxy: error: c.toml: proxy.protocol: expected one of")
