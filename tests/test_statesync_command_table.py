"""redis-fork's command table, read with hiredis off the proxy's loop, is the server's own: the
same entries as the codec's reading of COMMAND gives, on Redis 6.2 and 7.0, and the COMMAND is
counted once among the proxy's own requests (which INFO commandstats leaves out)."""

from __future__ import annotations

import pytest
import trio

from tests.servers import redis_server
from twinproxy.protocols.redis import CommandTable
from twinproxy.statesync.redis_fork import RedisControl, command_table


def _entries(table: CommandTable) -> dict:
    return {name: (i.arity, i.flags, i.first, i.last, i.step, i.key_specs,
                   {sub: (s.flags, s.first, s.last, s.step) for sub, s in i.subcommands.items()})
            for name, i in table.commands.items()}


@pytest.mark.parametrize("version", ["6", "7"])
def test_the_table_is_the_servers_own_and_its_command_counted_once(version: str) -> None:
    with redis_server(version) as server:
        address = ("127.0.0.1", server.port)

        async def main() -> tuple[CommandTable | None, CommandTable, dict]:
            own: dict = {}
            table = await command_table(address, own=own)
            control = await RedisControl.open(address)
            try:
                return table, CommandTable.from_command_reply(await control.call("COMMAND")), own
            finally:
                await control.aclose()

        table, codecs, own = trio.run(main)
    assert table is not None and len(table) > 200
    assert _entries(table) == _entries(codecs)
    assert own[b"command"][0] == 1
