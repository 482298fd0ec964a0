"""pyftpdlib's default server (FTPServer: one process, one asyncio-style IOLoop) for the benchmark.

    python3 bench/pyftpdlib_server.py --port P --root DIR --pasv MIN-MAX [--tls CERT KEY] [--anonymous]

The test user benchuser/benchpass gets full rights on DIR. Two departures from
the library's defaults, both to match the other servers' configuration
(--anonymous adds read-only anonymous logins on DIR):
max_cons/max_cons_per_ip are 5000 (like max_clients/max_per_ip=5000 elsewhere),
and the log level is WARNING (pyftpdlib logs every command and transfer at INFO
by default; the others run with xferlog_enable=NO).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.log import config_logging
from pyftpdlib.servers import FTPServer

USER, PASSWORD = "benchuser", "benchpass"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--pasv", required=True, help="MIN-MAX")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--anonymous", action="store_true", help="read-only anonymous logins on --root")
    args = p.parse_args()

    if args.tls:
        try:
            from pyftpdlib.handlers import TLS_FTPHandler as Handler  # needs pyOpenSSL
        except ImportError:
            print("pyftpdlib TLS needs pyOpenSSL, which is not installed", file=sys.stderr)
            return 3
        Handler.certfile, Handler.keyfile = args.tls
        Handler.tls_control_required = True
        Handler.tls_data_required = True
    else:
        from pyftpdlib.handlers import FTPHandler as Handler

    auth = DummyAuthorizer()
    auth.add_user(USER, PASSWORD, args.root, perm="elradfmwMT")
    if args.anonymous:
        auth.add_anonymous(args.root)
    lo, hi = (int(x) for x in args.pasv.split("-"))
    Handler.authorizer = auth
    Handler.passive_ports = list(range(lo, hi + 1))
    Handler.banner = "pyftpdlib ready."
    config_logging(level=logging.WARNING)
    server = FTPServer(("127.0.0.1", args.port), Handler)
    server.max_cons = 5000
    server.max_cons_per_ip = 5000
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
