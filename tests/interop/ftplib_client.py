"""Python's ftplib as a command-line client, so the matrix runs it like the others:

    python ftplib_client.py OP TRANSPORT HOST PORT USER PASSWORD REMOTE [LOCAL]

OP: download, upload, list, nlst, mlsd, resume-download, resume-upload, stock-tls.
TRANSPORT: plain (FTP) or explicit (FTP_TLS: AUTH TLS, PROT P).  ftplib has no
implicit FTPS.  ftplib's FTP_TLS does not resume the control connection's TLS
session on data connections, which servers refuse by default (vsftpd's
require_ssl_reuse=YES); users subclass it as below, and `stock-tls` checks that
the stock class gets a clear 522 and a session that goes on.
Exit status 0 when every reply was a success; the listing goes to stdout.
"""

from __future__ import annotations

import ftplib
import os
import ssl
import sys


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that resumes the control connection's TLS session on data connections."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


def _connect(transport: str, host: str, port: int, user: str, password: str, cls: type = SessionReusingFTP_TLS):
    if transport == "plain":
        ftp = ftplib.FTP(timeout=30)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False  # trust the test's self-signed certificate
        ctx.verify_mode = ssl.CERT_NONE
        ftp = cls(context=ctx, timeout=30)
    ftp.connect(host, port)
    ftp.login(user, password)  # FTP_TLS.login sends AUTH TLS first
    if transport != "plain":
        ftp.prot_p()
    return ftp


def main(op: str, transport: str, host: str, port: str, user: str, password: str, remote: str,
         local: str = "") -> int:
    if op == "stock-tls":
        ftp = _connect(transport, host, int(port), user, password, ftplib.FTP_TLS)
        try:
            ftp.retrbinary(f"RETR {remote}", lambda b: None)
        except ftplib.error_perm as e:
            print(e)
            return 0 if str(e).startswith("522") and ftp.voidcmd("NOOP").startswith("200") else 1
        print("the data connection was accepted without session reuse")
        return 1
    ftp = _connect(transport, host, int(port), user, password)
    if op in ("download", "resume-download"):
        rest = os.path.getsize(local) if op == "resume-download" else None
        with open(local, "ab" if rest else "wb") as f:
            ftp.retrbinary(f"RETR {remote}", f.write, rest=rest)
    elif op in ("upload", "resume-upload"):
        if op == "resume-upload":
            ftp.voidcmd("TYPE I")  # SIZE is only meaningful in binary mode
        rest = ftp.size(remote) if op == "resume-upload" else None
        with open(local, "rb") as f:
            f.seek(rest or 0)
            ftp.storbinary(f"STOR {remote}", f, rest=rest)
    elif op == "list":
        ftp.retrlines(f"LIST {remote}")
    elif op == "nlst":
        print("\n".join(ftp.nlst(remote)))
    elif op == "mlsd":
        print("\n".join(name for name, _facts in ftp.mlsd(remote)))
    else:
        raise SystemExit(f"unknown op {op}")
    ftp.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
