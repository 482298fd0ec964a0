"""TLS for FTPS (RFC 4217): one server context per site, and TLS on data connections.

The data connections must resume the control connection's TLS session when
require_ssl_reuse=YES (vsftpd's default): that proves the data connection
comes from the same client.  One SSLContext serves the control and the data
connections, so its session cache and TLS 1.3 tickets make resumption work.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

__all__ = ["make_context", "TlsSetupError", "wrap_data", "TlsData", "REUSE_REQUIRED"]

REUSE_REQUIRED = ("TLS session of the data connection must resume the control connection's "
                  "(require_ssl_reuse); enable session reuse in the client")

_VERSIONS = (  # vsftpd's ssl_* switches, oldest first
    ("ssl_tlsv1", ssl.TLSVersion.TLSv1), ("ssl_tlsv11", ssl.TLSVersion.TLSv1_1),
    ("ssl_tlsv12", ssl.TLSVersion.TLSv1_2), ("ssl_tlsv13", ssl.TLSVersion.TLSv1_3),
)


class TlsSetupError(Exception):
    """The TLS options cannot make a working context (message names the option)."""


def _versions(cfg: Any) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    enabled = [v for name, v in _VERSIONS if getattr(cfg, name, False)]
    if not enabled:
        raise TlsSetupError("ssl_tlsv12/ssl_tlsv13: every TLS version is switched off")
    return enabled[0], enabled[-1]


def make_context(cfg: Any) -> ssl.SSLContext:
    """The server context, or TlsSetupError naming the option at fault."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = _versions(cfg)
    cert = cfg.rsa_cert_file or cfg.dsa_cert_file
    key = cfg.rsa_private_key_file or (cfg.dsa_private_key_file if cfg.dsa_cert_file else None) or cert
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsSetupError(f"rsa_cert_file/rsa_private_key_file: cannot load {cert}: {e}") from None
    if cfg.ssl_ciphers:
        try:
            ctx.set_ciphers(cfg.ssl_ciphers)
        except ssl.SSLError:
            raise TlsSetupError(f"ssl_ciphers: no usable cipher in {cfg.ssl_ciphers!r}") from None
    if cfg.ca_certs_file:
        try:
            ctx.load_verify_locations(cfg.ca_certs_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"ca_certs_file: cannot load {cfg.ca_certs_file}: {e}") from None
    if cfg.require_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif cfg.ssl_request_cert and cfg.ca_certs_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    # "ftp" is the ALPN name of FTP; a client naming another protocol is refused
    ctx.set_alpn_protocols(["ftp"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


class TlsData:
    """A TLS data connection driven through asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def reused(self) -> bool:
        obj = self.writer.get_extra_info("ssl_object")
        return bool(obj is not None and obj.session_reused)

    async def close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


async def wrap_data(sock: socket.socket, ctx: ssl.SSLContext, timeout: float) -> TlsData:
    """Server-side TLS handshake on an established data socket."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await asyncio.wait_for(
        loop.connect_accepted_socket(lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=timeout), timeout)
    return TlsData(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
