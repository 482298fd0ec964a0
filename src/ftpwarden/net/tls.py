"""TLS for FTPS (RFC 4217): contexts, and TLS on data connections.

The data connections must resume the control connection's TLS session when
require_ssl_reuse=YES (vsftpd's default): that proves the data connection
comes from the same client.  So every control connection gets its own
SSLContext (`Contexts.new`), shared only with its own data connections: its
session cache and ticket keys belong to one client, and a session of another
connection cannot be resumed on this one's data port.

Data connections are driven by hand (`ssl.SSLObject` over memory buffers,
`TlsConn`), so the way a stream ends is known exactly: the peer's
close_notify is the clean end; a FIN or a reset before it is a truncation.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["make_context", "TlsSetupError", "Contexts", "control_done", "handshake_deadline", "accept_data", "TlsConn",
           "Truncated", "REUSE_REQUIRED", "refuse_unresumed", "set_note", "describe", "ecdh_curve"]

log = logging.getLogger("ftpwarden.tls")

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
    _client_certs(ctx, cfg)
    _key_exchange(ctx, cfg)
    debug = bool(cfg.debug_ssl)
    if cfg.ssl_sni_hostname or debug:
        ctx.sni_callback = _sni_check(cfg.ssl_sni_hostname, debug)
    ctx.ftpwarden_debug = debug  # type: ignore[attr-defined]  # read by _debugging
    # "ftp" is the ALPN name of FTP; a client naming another protocol is refused
    ctx.set_alpn_protocols(["ftp"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _client_certs(ctx: ssl.SSLContext, cfg: Any) -> None:
    """vsftpd asks for a certificate (ssl_request_cert) and, with validate_cert=NO, takes
    any, unchecked.  Python's ssl cannot take a certificate it does not verify, and one it
    does not verify proves nothing: so one is asked for only when it is checked against
    ca_certs_file, that is with validate_cert=YES or require_cert=YES."""
    if cfg.ca_certs_file:
        try:
            ctx.load_verify_locations(cfg.ca_certs_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"ca_certs_file: cannot load {cfg.ca_certs_file}: {e}") from None
    if cfg.require_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif cfg.validate_cert and cfg.ssl_request_cert:
        ctx.verify_mode = ssl.CERT_OPTIONAL  # none is fine; one that does not verify is refused
    if ctx.verify_mode != ssl.CERT_NONE and not cfg.ca_certs_file:
        named = "require_cert" if cfg.require_cert else "validate_cert"
        raise TlsSetupError(f"{named}: client certificates are verified against ca_certs_file, "
                            "which is not set (a certificate that is not checked proves nothing)")


def _key_exchange(ctx: ssl.SSLContext, cfg: Any) -> None:
    """dh_param_file (DHE cipher suites need it: OpenSSL 3 has no default DH group for
    TLS 1.2 here) and ecdh_param_file (the one ECDHE group, TLS 1.3 included)."""
    path = cfg.dh_param_file
    if path:
        try:
            ctx.load_dh_params(path)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise TlsSetupError(f"dh_param_file: cannot load {path}: "
                                f"{getattr(e, 'strerror', None) or e} (PEM DH PARAMETERS, e.g. "
                                "openssl genpkey -genparam -algorithm DH -pkeyopt dh_param:ffdhe2048)") from None
    value = cfg.ecdh_param_file
    if value:
        curve = ecdh_curve(value)
        try:
            ctx.set_ecdh_curve(curve)
        except (ValueError, ssl.SSLError):
            raise TlsSetupError(f"ecdh_param_file: OpenSSL cannot use the curve {curve!r} "
                                "(e.g. prime256v1, secp384r1, X25519)") from None


# Named curves an "EC PARAMETERS" file may name (its DER is the curve's OID), and their OpenSSL names.
_CURVE_OIDS = {
    "1.2.840.10045.3.1.7": "prime256v1", "1.3.132.0.34": "secp384r1", "1.3.132.0.35": "secp521r1",
    "1.3.132.0.10": "secp256k1", "1.3.36.3.3.2.8.1.1.7": "brainpoolP256r1",
    "1.3.36.3.3.2.8.1.1.11": "brainpoolP384r1", "1.3.36.3.3.2.8.1.1.13": "brainpoolP512r1",
}


def ecdh_curve(value: str) -> str:
    """ecdh_param_file's curve: the file's (Red Hat's vsftpd reads `openssl ecparam -name
    NAME` output and keeps its curve name), or, when no such file exists and the value has
    no "/", the value itself as a curve name (X25519, secp384r1 ...).  TlsSetupError if neither."""
    if "/" not in value and not os.path.exists(value):
        return value
    try:
        with open(value, "rb") as f:
            text = f.read(65536).decode("ascii", "replace")
    except OSError as e:
        raise TlsSetupError(f"ecdh_param_file: cannot read {value}: {e.strerror or e}") from None
    begin, end = "-----BEGIN EC PARAMETERS-----", "-----END EC PARAMETERS-----"
    if begin not in text or end not in text:
        raise TlsSetupError(f"ecdh_param_file: {value} holds no EC PARAMETERS block "
                            "(make one with openssl ecparam -name secp384r1)")
    try:
        der = base64.b64decode(text.split(begin, 1)[1].split(end, 1)[0], validate=False)
    except (binascii.Error, ValueError):
        der = b""
    oid = _der_oid(der)
    if oid is None:
        raise TlsSetupError(f"ecdh_param_file: {value}: only a named curve is supported, not explicit "
                            "parameters (openssl ecparam -name secp384r1, without -param_enc explicit)")
    if oid not in _CURVE_OIDS:
        raise TlsSetupError(f"ecdh_param_file: {value}: unsupported curve {oid}")
    return _CURVE_OIDS[oid]


def _der_oid(der: bytes) -> str | None:
    """The dotted OID of a DER OBJECT IDENTIFIER (tag 6, short length); None otherwise."""
    if len(der) < 3 or der[0] != 6 or der[1] != len(der) - 2 or der[1] > 127:
        return None
    body, parts, n = der[2:], [], 0
    for byte in body:
        n = (n << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(n)
            n = 0
    if not parts or body[-1] & 0x80:
        return None
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in (first, parts[0] - 40 * first, *parts[1:]))


# ---------------------------------------------------------------- SNI and debug_ssl

Note = Callable[[str], None]


def set_note(ctx: ssl.SSLContext, note: Note | None) -> None:
    """Where this context's TLS diagnostics go: the session's vsftpd log (a DEBUG line).
    Each control connection has its own context, so the note names its session."""
    ctx.ftpwarden_note = note  # type: ignore[attr-defined]


def _note(ctx: Any, text: str) -> None:
    note = getattr(ctx, "ftpwarden_note", None)
    if note is not None:
        try:
            note(text)
        except Exception:  # a diagnostic never breaks a handshake
            log.exception("TLS diagnostic failed")
    else:  # before a session knows this connection (implicit TLS): the server's own log
        log.info("%s", text)


def _debugging(ctx: Any) -> bool:
    return bool(getattr(ctx, "ftpwarden_debug", False))


def _sni_check(expected: str | None, debug: bool) -> Callable[[Any, str | None, ssl.SSLContext], int | None]:
    """ssl_sni_hostname (ALPACA): a handshake naming another host, or none, is refused
    with an unrecognized_name alert, as vsftpd 3.0.4+ does; names compare as DNS names
    do (case and a final dot aside).  OpenSSL calls this for every ClientHello, with or
    without the extension."""
    want = expected.lower().rstrip(".") if expected else None

    def check(_obj: Any, name: str | None, ctx: ssl.SSLContext) -> int | None:
        ok = want is None or (name is not None and name.lower().rstrip(".") == want)
        if not ok:
            _note(ctx, f"SNI rejection: the client asked for {name!r}, not {expected!r} (ssl_sni_hostname)"
                  if name is not None else f"SNI rejection: no server name sent; {expected!r} is required "
                  "(ssl_sni_hostname: clients must connect by that name)")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if debug:
            _note(ctx, f"SNI hostname: {name or '(none)'}")
        return None

    return check


def describe(obj: Any) -> str:
    """vsftpd's debug_ssl line for an established connection (no secret in it)."""
    cipher = obj.cipher()
    cert = obj.getpeercert(binary_form=True) if obj.context.verify_mode != ssl.CERT_NONE else None
    return (f"SSL version: {obj.version()}, SSL cipher: {cipher[0] if cipher else '?'}, "
            f"{'reused' if obj.session_reused else 'not reused'}, "
            f"{'CERT PRESENTED' if cert else 'no cert'}")


def handshake_failed(ctx: Any, what: str, error: BaseException) -> None:
    """debug_ssl: why a handshake failed (OpenSSL's reason; never key material)."""
    if _debugging(ctx):
        reason = getattr(error, "reason", None) or str(error) or error.__class__.__name__
        _note(ctx, f"SSL_accept failed ({what}): {reason}")


class Contexts:
    """Where each TLS control connection gets its SSLContext.

    Pooled mode: a fresh context per connection (load_cert_chain reads the
    files again: 0.6-1.2 ms and about 20 KiB per connection, measured here).
    Isolated mode: the pre-login process serves one session and made its one
    context before its jail (`fixed`).  asyncio's implicit-TLS server calls `wrap_bio` once per
    connection, so an instance stands in for an SSLContext there.
    """

    def __init__(self, make: Callable[[], ssl.SSLContext]) -> None:
        self._make = make

    @classmethod
    def fresh(cls, cfg: Any) -> Contexts:
        make_context(cfg)  # a bad option stops start-up, not the first client
        return cls(lambda: make_context(cfg))

    @classmethod
    def fixed(cls, ctx: ssl.SSLContext) -> Contexts:
        return cls(lambda: ctx)

    def new(self) -> ssl.SSLContext:
        return self._make()

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.new().wrap_bio(incoming, outgoing, server_side=server_side,
                                   server_hostname=server_hostname, session=session)


async def refuse_unresumed(conn: TlsConn, required: bool) -> str | None:
    """require_ssl_reuse, as the core decided it: a data connection that did not
    resume the control connection's TLS session is closed cleanly (no data was
    promised) and the reason returned; None when it may carry the transfer."""
    if not required or conn.reused:
        return None
    await conn.close()
    return REUSE_REQUIRED


def control_done(ctx: ssl.SSLContext, obj: Any = None) -> None:
    """The control connection's handshake is over (its TLS 1.3 session tickets
    are sent): this context's data connections issue none.  They only resume
    the control's session, so a new ticket is never needed; and a client that
    leaves one unread resets the connection when it closes, which destroys
    whatever of its upload was still in its send queue (curl before 8.9,
    curl/curl#13904, and lftp/GnuTLS do this on large uploads).

    `obj` (the connection's SSLObject) is described in the log with debug_ssl."""
    ctx.num_tickets = 0
    if obj is not None and _debugging(ctx):
        _note(ctx, "control connection: " + describe(obj))


HANDSHAKE_MAX = 30.0  # seconds for a TLS handshake on the control connection, at most


def handshake_deadline(cfg: Any) -> float:
    """A handshake must finish within HANDSHAKE_MAX and within login_timeout (which
    counts from the connection whatever happens meanwhile)."""
    return min(HANDSHAKE_MAX, float(cfg.login_timeout or HANDSHAKE_MAX))


class Truncated(ConnectionError):
    """The TLS stream ended without the peer's close_notify (a FIN or a reset)."""


TLS_RECV = 256 * 1024  # ciphertext read from the socket at a time


class TlsConn:
    """One TLS data connection over a non-blocking socket.

    `recv_into` and `send` never wait: they raise BlockingIOError when the
    socket must become readable or writable first, like a plain socket.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, strict_eof: bool) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.strict_eof = strict_eof  # strict_ssl_read_eof: a bare FIN is a truncation
        self.peer_closed = False  # the peer's close_notify arrived
        self._unsent = bytearray()  # ciphertext the socket has not taken yet
        self._send_failed: OSError | None = None  # a reset seen while sending
        self._sent_data = False  # application data went out (a download)

    @property
    def reused(self) -> bool:
        return self.obj.session_reused

    def buffered(self) -> bool:
        """Input is waiting in memory: read on without waiting for the socket."""
        return bool(self._in.pending or self.obj.pending())

    def _feed(self) -> None:
        """Move one read of ciphertext from the socket into the TLS object."""
        try:
            data = self.sock.recv(TLS_RECV)
        except ConnectionResetError:
            raise Truncated("connection reset before TLS close_notify") from None
        if not data:
            if _was_reset(self.sock):  # its ECONNRESET went to a send; the end is a reset
                raise Truncated("connection reset before TLS close_notify")
            if self.strict_eof:
                raise Truncated("connection closed before TLS close_notify (strict_ssl_read_eof)")
            self._in.write_eof()  # strict_ssl_read_eof=NO: a FIN ends the stream (SSLEOFError below)
            return
        self._in.write(data)

    def recv_into(self, view: memoryview) -> int:
        """Plaintext into `view`: the count, 0 at the clean end; BlockingIOError
        when nothing can be decrypted yet; Truncated when the stream was cut.
        Every byte decrypted before a reset is returned before the Truncated."""
        got = 0
        while got < len(view):
            try:
                n = self.obj.read(len(view) - got, view[got:])
                assert isinstance(n, int)  # with a buffer, read() says how much it put there
                if n == 0:  # the peer's close_notify (SSLObject returns 0, it does not raise)
                    self.peer_closed = True
                    return got
                got += n
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                return got
            except ssl.SSLEOFError:  # a FIN with strict_ssl_read_eof=NO
                return got
            self.flush()  # a post-handshake message may have asked for an answer
            try:
                self._feed()
            except (BlockingIOError, Truncated):
                if got:
                    return got  # hand these over first; the socket says the rest next time
                raise
        return got

    def flush(self) -> bool:
        """Send pending ciphertext; True when none is left.

        A peer that resets the connection may have sent all its data and
        close_notify first (clients that leave our TLS 1.3 session tickets
        unread do): so a failed send is remembered, not raised, and what the
        kernel still holds for us is read before the stream is judged.
        Sending application data (`send`) raises it."""
        if self._out.pending:
            self._unsent += self._out.read()
        while self._unsent and self._send_failed is None:
            try:
                n = self.sock.send(self._unsent)
            except BlockingIOError:
                return False
            except (BrokenPipeError, ConnectionResetError) as e:
                self._send_failed = e
                break
            del self._unsent[:n]
        if self._send_failed is not None:
            self._unsent.clear()
        return True

    def send(self, data: Any) -> int:
        """Encrypt all of `data` (its length is returned), or raise BlockingIOError
        while earlier ciphertext still waits for the socket."""
        if not self.flush():
            raise BlockingIOError
        if self._send_failed is not None:
            raise self._send_failed
        self._sent_data = True
        n = self.obj.write(data)
        self.flush()
        return n

    async def _flush_all(self) -> None:
        while not self.flush():
            await wait_socket(self.sock, writing=True)

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush_all()
                await wait_socket(self.sock, writing=False)
                try:
                    self._feed()
                except BlockingIOError:
                    continue
                if self._in.eof:
                    raise ConnectionResetError("closed during the TLS handshake") from None
        await self._flush_all()  # our Finished (and TLS 1.3 session tickets)

    async def close(self, *, confirm: float = 0.0) -> bool:
        """Send close_notify, then close.  False when data we sent may not have
        reached the peer, or (`confirm` > 0, strict_ssl_write_shutdown) when the
        peer's close_notify did not come within `confirm` seconds."""
        ok = True
        try:
            await asyncio.wait_for(self._flush_all(), 5)
            ok = not (self._sent_data and self._send_failed is not None)
            try:
                self.obj.unwrap()
            except ssl.SSLWantReadError:
                pass  # ours is out; the peer's has not come (yet)
            await asyncio.wait_for(self._flush_all(), 5)
            if confirm and ok:
                ok = await self._await_close_notify(confirm)
            self.sock.shutdown(socket.SHUT_WR)
        except (TimeoutError, OSError, ssl.SSLError):
            ok = ok and not self._sent_data and (self.peer_closed or not confirm)
        finally:
            self.sock.close()
        return ok

    def abort(self) -> None:
        """Close without close_notify: the peer must not take a cut stream for a whole one."""
        self.sock.close()

    async def _await_close_notify(self, timeout: float) -> bool:
        scratch = memoryview(bytearray(16 * 1024))
        try:
            async with asyncio.timeout(timeout):
                while not self.peer_closed:
                    try:
                        if self.recv_into(scratch) == 0 and not self.peer_closed:
                            return False  # a FIN, not a close_notify
                    except BlockingIOError:
                        await wait_socket(self.sock, writing=False)
        except (Truncated, OSError, ssl.SSLError, TimeoutError):
            return False
        return self.peer_closed


_TCP_CLOSE = 7  # tcpi_state after a reset (a FIN leaves TCP_CLOSE_WAIT)


def _was_reset(sock: socket.socket) -> bool:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
    except OSError:
        return False


async def wait_socket(sock: socket.socket, *, writing: bool) -> None:
    """Wait until `sock` is readable (or writable)."""
    await wait_fd(sock.fileno(), writing=writing)


async def wait_fd(fd: int, *, writing: bool) -> None:
    """Wait until `fd` can be read (or written) without blocking; no thread left behind."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writing else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(fd)


async def accept_data(sock: socket.socket, ctx: ssl.SSLContext, timeout: float, *, strict_eof: bool) -> TlsConn:
    """Server-side TLS handshake on an established, non-blocking data socket."""
    conn = TlsConn(sock, ctx, strict_eof=strict_eof)
    try:
        async with asyncio.timeout(timeout):
            await conn.handshake()
    except (TimeoutError, OSError, ssl.SSLError) as e:
        handshake_failed(ctx, "data connection", e)
        raise
    if _debugging(ctx):
        _note(ctx, "data connection: " + describe(conn.obj))
    return conn
