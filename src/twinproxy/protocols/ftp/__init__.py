"""The FTP control channel (RFC 959, with RFC 2389, 2428 and 3659 commands): the codec
registered as ``ftp``, and its public names.

The modules, each named for what it holds:

* :mod:`.codec`: :data:`CODEC`, the parsed view for ordering and the comparison form;
* :mod:`.syntax`: one line's syntax, and builders (``encode_request``, ``encode_reply``);
* :mod:`.readers`: the two readers, and how replies pair with requests;
* :mod:`.states` and :mod:`.session`: the session state tables, and replaying a session on
  another server connection;
* :mod:`.address`: PASV/EPSV replies and PORT/EPRT arguments, for rewriting data addresses;
* :mod:`.channels`: which messages open a data connection, how they are rewritten so that it
  goes through the proxy, and the bounce and ``AUTH`` refusals.

Only the control channel goes through this codec; data connections carry raw bytes, relayed by
:mod:`twinproxy.relay.pipes` (during an update, by :mod:`twinproxy.relay.mirror`, for both
versions, compared by :mod:`twinproxy.engine.transfers`).
"""

from __future__ import annotations

from twinproxy.protocols.ftp.address import (
    AddressError,
    format_eprt,
    format_epsv,
    format_pasv,
    format_port,
    parse_eprt,
    parse_epsv,
    parse_pasv,
    parse_port,
)
from twinproxy.protocols.ftp.channels import FtpDataChannels
from twinproxy.protocols.ftp.codec import CODEC, FtpCodec
from twinproxy.protocols.ftp.readers import FtpReplyReader, FtpRequestReader
from twinproxy.protocols.ftp.session import FtpSession, ReplayStep
from twinproxy.protocols.ftp.states import SessionError
from twinproxy.protocols.ftp.syntax import (
    SESSION_COMMANDS,
    TRANSFER_COMMANDS,
    encode_reply,
    encode_request,
    parse_quoted_path,
)

__all__ = [
    "CODEC",
    "SESSION_COMMANDS",
    "TRANSFER_COMMANDS",
    "AddressError",
    "FtpCodec",
    "FtpDataChannels",
    "FtpReplyReader",
    "FtpRequestReader",
    "FtpSession",
    "ReplayStep",
    "SessionError",
    "encode_reply",
    "encode_request",
    "format_eprt",
    "format_epsv",
    "format_pasv",
    "format_port",
    "parse_eprt",
    "parse_epsv",
    "parse_pasv",
    "parse_port",
    "parse_quoted_path",
]
