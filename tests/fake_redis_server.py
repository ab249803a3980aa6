"""A fake Redis server for tests of twinproxy's process supervision, not of Redis.

It answers every request it reads with ``+PONG`` (enough for twinproxy's readiness probe and a
client's PING), and it can misbehave on purpose, which a real redis-server cannot be made to do:

    fake_redis_server.py PORT [--ignore-sigterm] [--fail-if FILE] [--starts FILE] [--marker M]
                              [--daemon-child]

``--ignore-sigterm``: SIGTERM does nothing (only SIGKILL stops it). ``--fail-if FILE``: exit at
once with status 3 while FILE exists (a start that fails). ``--starts FILE``: append the
``time.monotonic()`` of each start to FILE. ``--marker`` is ignored: a test puts a word of its own
there, to find its processes (and only its) in ``/proc``. ``--daemon-child``: leave a process
behind as a daemon does (fork, ``setsid``, fork again, the middle one exits) which, when run as
root, changes to user ``nobody`` and then sleeps for ever; it carries the same command line.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time


def serve_connection(conn: socket.socket) -> None:
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            # A request is a RESP array ("*1\r\n$4\r\nPING\r\n") or an inline line ("PING\r\n").
            count = data.count(b"*") or data.count(b"\n")
            conn.sendall(b"+PONG\r\n" * count)


def daemon_child() -> None:
    if os.fork() != 0:
        os.wait()  # the middle process exits at once
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    if os.getuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    while True:
        time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--fail-if")
    parser.add_argument("--starts")
    parser.add_argument("--marker")
    parser.add_argument("--daemon-child", action="store_true")
    args = parser.parse_args()
    if args.starts:
        with open(args.starts, "a") as f:
            f.write(f"{time.monotonic()}\n")
    if args.fail_if and os.path.exists(args.fail_if):
        raise SystemExit(3)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.daemon_child:
        daemon_child()
    listener = socket.create_server(("127.0.0.1", args.port))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
