"""ftpwarden serve | check-config | tunables | user."""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import socket
import sys
from typing import Any, Sequence

from . import __version__
from .policy.config import ConfigError

__all__ = ["main"]

QUICK_PORT = 2121


class StartupError(Exception):
    """Something outside the config file's lines stops start-up (a path, a port, a user)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftpwarden", description="A security-first FTP server that reads vsftpd.conf.")
    p.add_argument("--version", action="version", version=f"ftpwarden {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server (quick mode without --config)")
    s.add_argument("directory", nargs="?", help="quick mode: directory to serve (default: the current one)")
    s.add_argument("--config", metavar="FILE", help="a vsftpd.conf-style file")
    s.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set one option, after the file (repeatable)")
    s.add_argument("--port", type=int, help=f"control port (quick mode default {QUICK_PORT})")
    s.add_argument("--bind", help="address(es) to listen on, comma separated (quick mode default 127.0.0.1,::1)")
    s.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="quick mode: add a virtual user with write access to the directory")
    s.add_argument("--write", action="store_true", help="quick mode: let anonymous users upload, make directories, delete")
    s.add_argument("--workers", type=int, help="worker processes (worker_processes; 0 = one per core)")
    s.add_argument("-v", "--verbose", action="store_true", help="log sessions to stderr")

    c = sub.add_parser("check-config", help="validate a config file without starting")
    c.add_argument("file")
    c.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    t = sub.add_parser("tunables", help="list every option with its default and meaning")
    t.add_argument("names", nargs="*")

    sub.add_parser("user", help="manage a user_db_file (ftpwarden user --help)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "user":
        from .usercmd import main as user_main
        return user_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "tunables":
            from .policy.tunables import format_tunables
            print(format_tunables(args.names or None))
            return 0
        if args.command == "check-config":
            return _check_config(args)
        return _serve(args)
    except (ConfigError, StartupError) as e:
        print(f"ftpwarden: {e}", file=sys.stderr)
        return 2


def _check_config(args: argparse.Namespace) -> int:
    from .policy.config import load_config
    cfg, warnings = load_config(args.file, args.overrides)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.file}: OK ({len(cfg.explicit)} options set)")
    return 0


def _quick_config(args: argparse.Namespace) -> Any:
    from .policy.config import load_config
    root = os.path.abspath(args.directory or ".")
    if not os.path.isdir(root):
        raise StartupError(f"{args.directory}: not a directory")
    base = [
        f"listen_port={QUICK_PORT}", "anonymous_enable=YES", "no_anon_password=YES",
        f"anon_root={root}", f"local_root={root}", "anon_world_readable_only=NO",
        "ascii_upload_enable=YES", "ascii_download_enable=YES", "delay_failed_login=1",
        "ftpd_banner=ftpwarden ready.", "anon_umask=022", "local_umask=022", "text_userdb_names=YES",
    ]
    if args.write:
        base += ["write_enable=YES", "anon_upload_enable=YES", "anon_mkdir_write_enable=YES",
                 "anon_other_write_enable=YES"]
    elif args.user:
        base += ["write_enable=YES"]
    cfg, warnings = load_config(None, base + list(args.overrides))
    return cfg, warnings, root


def _addresses(cfg: Any, bind: str | None, quick: bool) -> list[tuple[str, bool | None]]:
    if bind:
        hosts = [h.strip().strip("[]") for h in bind.split(",") if h.strip()]
    elif quick:
        hosts = ["127.0.0.1"] + (["::1"] if socket.has_ipv6 and _has_ipv6_loopback() else [])
    elif cfg.listen_ipv6:
        return [(cfg.listen_address6 or "::", None if cfg.listen_address6 else False)]
    else:
        hosts = [cfg.listen_address or "0.0.0.0"]
    return [(h, True if ":" in h else None) for h in hosts]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _home_of(user: str | None) -> str | None:
    try:
        return pwd.getpwnam(user).pw_dir if user else None
    except KeyError:
        return None


def _authenticator(cfg: Any, quick_root: str | None, quick_users: list[str], extra: list[Any] = ()) -> Any:
    from .policy.auth.anonymous import AnonymousAuthenticator
    from .policy.auth.base import chain
    from .policy.auth.userfile import MemoryUserAuthenticator, UserFileAuthenticator, UserRecord
    from .policy.passwords import hash_password

    anon_root = cfg.anon_root or quick_root or _home_of(cfg.ftp_username)
    user_root = cfg.local_root or quick_root or anon_root
    auths: list[Any] = []
    if quick_users:
        records = {}
        for spec in quick_users:
            name, sep, password = spec.partition(":")
            if not sep or not name or not password:
                raise StartupError(f"--user {name or spec!r}: expected NAME:PASSWORD")
            records[name] = UserRecord(name, hash_password(password), None, True, None)
        auths.append(MemoryUserAuthenticator(cfg, records, user_root))
    if cfg.user_db_file:
        if not user_root:
            raise StartupError("user_db_file: set local_root (the default root of virtual users)")
        try:
            auths.append(UserFileAuthenticator(cfg, cfg.user_db_file, user_root))
        except (OSError, ValueError) as e:
            raise StartupError(f"{cfg.user_db_file}: {e}") from None
    if cfg.anonymous_enable:
        if not anon_root or not os.path.isdir(anon_root):
            raise StartupError(f"anon_root: {anon_root or '(unset)'} is not a directory")
        auths.insert(0, AnonymousAuthenticator(cfg, anon_root))
    return chain(*auths, *extra)


def _banner(cfg: Any) -> str | None:
    if not cfg.banner_file:
        return None
    try:
        with open(cfg.banner_file, encoding="utf-8", errors="replace") as f:
            return f.read(8192)
    except OSError as e:
        raise StartupError(f"banner_file: cannot read {cfg.banner_file}: {e.strerror}") from None


def _events(cfg: Any) -> Any:
    """The log sinks, with their files open before any session or jail exists."""
    from .logs.configured import LogFileError, build_event_log
    try:
        return build_event_log(cfg)
    except LogFileError as e:
        raise StartupError(str(e)) from None


def _tls_context(cfg: Any) -> Any:
    if not cfg.ssl_enable:
        return None
    from .net.tls import TlsSetupError, make_context
    try:
        return make_context(cfg)
    except TlsSetupError as e:
        raise StartupError(str(e)) from None


def _tune_malloc() -> None:
    """Give big buffers back to the kernel when freed.

    Each scrypt check allocates 16 MiB; glibc would give every thread that
    ever ran one an arena keeping that much.  Few arenas (and password checks
    on one thread, see net/control.py) keep it to one such block per process.
    """
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _serve(args: argparse.Namespace) -> int:
    from .net.control import ServerContext
    from .net.server import bind_listeners, serve_pooled
    from .policy.config import load_config

    _tune_malloc()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ftpwarden[%(process)d] %(levelname)s %(message)s")
    quick = args.config is None
    if quick:
        cfg, warnings, root = _quick_config(args)
    else:
        if args.directory or args.user or args.write:
            raise StartupError("DIR, --user and --write are for quick mode; use the config file")
        cfg, warnings = load_config(args.config, args.overrides)
        root = None
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if os.geteuid() == 0 and not cfg.pooled and not quick:
        return _serve_isolated(args, cfg)
    if not quick and not cfg.listen and not cfg.listen_ipv6:
        raise StartupError(f"{args.config}: listen=NO (inetd mode) needs isolated mode: start as root without pooled=YES")
    if cfg.local_enable and "local_enable" in cfg.explicit:
        print("warning: local_enable: system users log in only in isolated mode (started as root "
              "without pooled=YES); pooled mode serves anonymous and user_db_file users", file=sys.stderr)
    if os.geteuid() == 0 and quick:
        print("warning: quick mode as root runs pooled mode as root; prefer a normal user, "
              "or a config file for isolated mode", file=sys.stderr)
    auth = _authenticator(cfg, root, args.user)
    banner = _banner(cfg)
    port = args.port if args.port is not None else cfg.listen_port
    workers = args.workers if args.workers is not None else cfg.worker_processes
    workers = workers or os.cpu_count() or 1
    addresses = _addresses(cfg, args.bind, quick)
    try:
        listeners = bind_listeners(addresses, port, workers)
        if cfg.implicit_ssl_port:
            if not cfg.ssl_enable:
                raise StartupError("implicit_ssl_port: needs ssl_enable=YES")
            extra = bind_listeners(addresses, cfg.implicit_ssl_port, workers)
            listeners = [a + b for a, b in zip(listeners, extra)]
    except OSError as e:
        raise StartupError(f"cannot listen on port {port}: {e.strerror}") from None
    ctx = ServerContext(cfg, auth, banner=banner, events=_events(cfg))
    ctx.tls = _tls_context(cfg)
    if cfg.user_max_rate:
        from .net.limits import AccountRates
        ctx.account_rates = AccountRates(int(cfg.user_max_rate))
    ctx.bans = _ban_list(cfg, [])  # before the workers are forked: they share it
    if cfg.max_clients or cfg.max_per_ip:
        from .net.limits import SessionLimits
        ctx.limits = SessionLimits(int(cfg.max_clients or 0), int(cfg.max_per_ip or 0), len(listeners))
    socks = listeners[0]
    shown = [s.getsockname() for s in socks]
    where = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p, *_ in shown)
    host, bound_port = shown[0][0], shown[0][1]
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    what = f"{root} ({'writable' if args.write else 'read-only'}, anonymous)" if quick else args.config
    print(f"ftpwarden {__version__}: serving {what} on {where} ({workers} worker process(es))")
    print(f"  connect: curl ftp://{url_host}:{bound_port}/   or   lftp -p {bound_port} {url_host.strip('[]')}")
    sys.stdout.flush()
    return serve_pooled(ctx, listeners)


def _ban_list(cfg: Any, kept: list[Any] | None) -> Any:
    """ban_threshold's shared table (None when 0), made once in `kept` and
    re-configured on later calls (SIGHUP) so the bans in force survive."""
    if not cfg.ban_threshold or kept is None:
        return None
    from .net.bans import BanList
    limits = (int(cfg.ban_threshold), int(cfg.ban_seconds), int(cfg.ban_window))
    if kept:
        kept[0].configure(*limits)
    else:
        kept.append(BanList(*limits))
    return kept[0]


def _isolated_login(cfg: Any) -> Any:
    """Isolated mode's password check, run by each session's monitor (root)."""
    from .policy.auth.base import LoginRefused, LoginRequest
    from .policy.auth.local import LocalAuthenticator
    from .policy.identity import isolated_identity

    auths = _authenticator(cfg, None, [], extra=[LocalAuthenticator(cfg)] if cfg.local_enable else [])

    def authenticate(user: str, password: str, remote_ip: str) -> Any:
        try:
            return isolated_identity(cfg, auths.authenticate(LoginRequest(user, password, remote_ip)))
        except LoginRefused:
            return None
    return authenticate


def _serve_isolated(args: argparse.Namespace, cfg: Any) -> int:
    """Started as root: one monitor and unprivileged workers per session (priv/)."""
    from .net.server import bind_listeners
    from .policy.config import load_config
    from .priv import worker  # noqa: F401 - imported before fork so sessions start fast
    from .priv.listener import Listener, run_one_session

    secure = cfg.secure_chroot_dir
    if not secure or not os.path.isdir(secure):
        raise StartupError(f"secure_chroot_dir: {secure} must be an existing empty directory")
    st = os.stat(secure)
    if st.st_uid != 0 or st.st_mode & 0o022 or os.listdir(secure):
        raise StartupError(f"secure_chroot_dir: {secure} must be empty, owned by root and not writable by others")
    _home_of(cfg.nopriv_user) is not None or _no_user("nopriv_user", cfg.nopriv_user)

    kept_bans: list[Any] | None = []  # the listener's one BanList, kept across SIGHUP

    account_rates = None
    if cfg.user_max_rate:  # made once, before any fork: every session shares it
        from .net.limits import AccountRates
        account_rates = AccountRates(int(cfg.user_max_rate))

    def load() -> Any:
        fresh, _warnings = load_config(args.config, args.overrides)
        return worker.Site(fresh, _isolated_login(fresh), banner=_banner(fresh), events=_events(fresh),
                           bans=_ban_list(fresh, kept_bans), account_rates=account_rates)

    if not cfg.listen and not cfg.listen_ipv6:  # inetd / systemd Accept=yes: the client is on stdin
        conn = socket.socket(fileno=os.dup(0))
        kept_bans = None  # inetd: one connection per process, no bans to share  # noqa: F841
        return run_one_session(load(), conn)
    if cfg.ssl_enable:
        _check_tls_apart(cfg)
    port = args.port if args.port is not None else cfg.listen_port
    try:
        (socks,) = bind_listeners(_addresses(cfg, args.bind, False), port, 1)
        if cfg.implicit_ssl_port:
            if not cfg.ssl_enable:
                raise StartupError("implicit_ssl_port: needs ssl_enable=YES")
            (extra,) = bind_listeners(_addresses(cfg, args.bind, False), cfg.implicit_ssl_port, 1)
            socks = socks + extra
    except OSError as e:
        raise StartupError(f"cannot listen on port {port}: {e.strerror}") from None
    listener = Listener(list(socks), load)
    shown = ", ".join(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p, *_ in (s.getsockname() for s in socks))

    def ready() -> None:
        print(f"ftpwarden {__version__}: serving {args.config} on {shown} (isolated mode)")
        sys.stdout.flush()

    if cfg.background:
        ready()
        _daemonize()
        return listener.serve()
    return listener.serve(ready)


def _check_tls_apart(cfg: Any) -> None:
    """Load the TLS key in a short-lived child: the listener itself never holds
    it, so no session process forked from it can (only each TLS helper loads it)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _tls_context(cfg)
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, str(e).encode()[:4000])
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise StartupError(message or "TLS set-up failed")


def _no_user(option: str, name: str) -> None:
    raise StartupError(f"{option}: no such system user {name!r}")


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
