"""ftpwarden serve | check-config | tunables | user."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
    s.add_argument("--port", help=f"control port, as -o listen_port (quick mode default {QUICK_PORT})")
    s.add_argument("--bind", help="address(es) to listen on, comma separated (quick mode default 127.0.0.1,::1)")
    s.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="quick mode: add a virtual user with write access to the directory")
    s.add_argument("--write", action="store_true",
                   help="quick mode: let anonymous users upload, make directories, delete")
    s.add_argument("--workers", help="pooled mode's processes, as -o worker_processes (0 = one per core)")
    s.add_argument("-v", "--verbose", action="store_true",
                   help="log sessions to stderr (connects, logins, transfers, deletes: vsftpd's log lines)")

    c = sub.add_parser("check-config", help="validate a config file without starting")
    c.add_argument("file")
    c.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    t = sub.add_parser("tunables", help="list every option with its default and meaning")
    t.add_argument("names", nargs="*")

    sub.add_parser("user", help="manage virtual users: a user_db_file or user_db_url (ftpwarden user --help)",
                   add_help=False)

    d = sub.add_parser("db", help="PostgreSQL for user_db_url and state_db_url")
    dsub = d.add_subparsers(dest="db_command", required=True)
    init = dsub.add_parser("init", help="create the tables (users, shared state) if missing; safe to run again")
    init.add_argument("--db", required=True, metavar="URL", help="postgresql://[user[:password]@]host[:port]/db")

    w = sub.add_parser("who", help="list the running server's sessions (control socket: root or admin_group)")
    w.add_argument("--config", metavar="FILE", help="the server's config file (its control_socket); "
                   "default /run/ftpwarden/control.sock")
    w.add_argument("--json", action="store_true", help="print the sessions as JSON")

    k = sub.add_parser("kick", help="end sessions: the client gets 421 (control socket: root or admin_group)")
    k.add_argument("--config", metavar="FILE", help="the server's config file (its control_socket)")
    k.add_argument("id", nargs="?", help="the session id (as `who` shows it)")
    k.add_argument("--user", help="every session of this user")
    k.add_argument("--ip", help="every session from this client address")
    k.add_argument("--json", action="store_true", help="print the answer as JSON")

    q = sub.add_parser("quota", help="a user's quota usage: show it, or recompute it from the files on disk")
    q.add_argument("action", choices=("show", "recompute"))
    q.add_argument("user", help="the login name (\"anonymous\" for every anonymous login)")
    q.add_argument("--config", metavar="FILE", help="the server's config file (quota_state_dir, the user's root)")
    q.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--root", metavar="DIR", help="the user's root directory (default: from the config)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "user":
        from .usercmd import main as user_main
        return user_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help/--version (0), already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.command == "tunables":
            return _tunables(args.names)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "quota":
            from .ops.quotacmd import main as quota_main
            return quota_main(args)
        if args.command == "db":
            return _db_init(args.db)
        if args.command in ("who", "kick"):
            from .ops.admin import who_or_kick
            return who_or_kick(args)
        return _serve(args)
    except (ConfigError, StartupError) as e:
        for line in str(e).splitlines():  # a ConfigError may carry several problems
            print(f"ftpwarden: {line}", file=sys.stderr)
            if _die_syslog is not None:  # log_die: where the file said, once it was read
                from .logs.sinks import syslog_once
                syslog_once(_die_syslog, line)
        return 2


_die_syslog: str | None = None  # log_die=YES: the syslog socket fatal errors also go to


def _log_die(cfg: Any) -> None:
    """log_die=YES: start-up errors (main) and every error logged by the server's own
    processes (the broker, pooled workers) also go to syslog, facility ftp, as vsftpd's die()."""
    global _die_syslog
    if not cfg.log_die:
        return
    from .logs.sinks import FatalToSyslog
    _die_syslog = str(cfg.syslog_socket or "/dev/log")
    logging.getLogger().addHandler(FatalToSyslog(_die_syslog))


def _tunables(names: list[str]) -> int:
    """`ftpwarden tunables [NAME...]`; names match whatever their case."""
    import difflib

    from .policy.tunables import TUNABLES, format_tunables
    lower = {n.lower(): n for n in TUNABLES}
    unknown = [n for n in names if n.lower() not in lower]
    if unknown:
        close = difflib.get_close_matches(unknown[0].lower(), list(lower), n=1, cutoff=0.7)
        hint = f" (did you mean {lower[close[0]]!r}?)" if close else ""
        raise StartupError(f"tunables: unknown option {unknown[0]!r}{hint}")
    print(format_tunables([lower[n.lower()] for n in names] if names else None))
    return 0


def _db_init(url: str) -> int:
    """`ftpwarden db init --db URL`: the users table and the shared-state tables, idempotent."""
    import psycopg

    from .ops.statedb import STATE_SCHEMA
    from .policy.auth.pgusers import PgUserStore, describe, reason
    where = describe(url)
    try:
        with PgUserStore(url) as store:
            store.init(STATE_SCHEMA)
    except ValueError as e:
        raise StartupError(f"--db {where}: {e}") from None
    except psycopg.Error as e:
        print(f"ftpwarden: db init: {where}: {reason(e)}", file=sys.stderr)
        return 1
    print(f"{where}: tables ready (ftpwarden_users and the shared state's)")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """serve's own checks (preflight.py), all reported at once; nothing is started."""
    from .policy.config import load_config
    from .preflight import check_site, isolated_mode
    cfg, warnings = load_config(args.file, args.overrides)
    from .policy.hostsaccess import problems
    for w in warnings + problems(cfg):
        print(f"warning: {w}", file=sys.stderr)
    from .net.data import resolved_pasv_address
    resolved_pasv_address(cfg)  # a pasv_address that does not resolve: at its line
    isolated = isolated_mode(cfg)
    report = check_site(cfg, args.file, isolated=isolated)
    if report.errors:
        raise ConfigError.several(report.errors)
    mode = "isolated mode (root, pooled=NO)" if isolated else "pooled mode"
    print(f"{args.file}: OK ({len(cfg.explicit)} options set; serve would run {mode})")
    for note in report.notes:
        print(f"  {note}")
    return 0


def _flags(args: argparse.Namespace) -> list[tuple[str, str]]:
    """serve's flags that are options too, as (what was typed, "name=value")."""
    def decimal(text: str) -> str:  # a flag is decimal: --port 021 is 21, not octal as in the file
        return str(int(text, 10)) if text.isascii() and text.isdigit() else text

    flags = []
    if args.port is not None:
        flags.append((f"--port {args.port}", f"listen_port={decimal(args.port)}"))
    if args.workers is not None:
        flags.append((f"--workers {args.workers}", f"worker_processes={decimal(args.workers)}"))
    return flags


def _check_bind(args: argparse.Namespace, cfg: Any) -> None:
    """--bind names the addresses; -o listen_address too: both at once must not disagree."""
    if not args.bind:
        return
    for name in ("listen_address", "listen_address6"):
        where = cfg.where.get(name, "")
        if where.startswith("-o ") and getattr(cfg, name) != args.bind:
            raise StartupError(f"--bind {args.bind}: {where} says otherwise; give one of them")


def _quick_config(args: argparse.Namespace) -> Any:
    from .policy.config import load_config
    root = os.path.abspath(args.directory or ".")
    if not os.path.isdir(root):
        raise StartupError(f"{args.directory or root}: not a directory")
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
    cfg, warnings = load_config(None, args.overrides, base=[("quick mode", line) for line in base],
                                flags=_flags(args))
    return cfg, warnings, root


def _addresses(cfg: Any, bind: str | None, quick: bool) -> list[tuple[str, bool | None]]:
    if bind:
        hosts = [h.strip().strip("[]") for h in bind.split(",") if h.strip()]
        if not hosts:
            raise StartupError(f"--bind {bind!r}: no address given")
    elif quick and not (cfg.listen_address or cfg.listen_address6):
        hosts = ["127.0.0.1"] + (["::1"] if socket.has_ipv6 and _has_ipv6_loopback() else [])
    elif quick:  # -o listen_address / listen_address6
        hosts = [h for h in (cfg.listen_address, cfg.listen_address6) if h]
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


def _authenticator(cfg: Any, quick_root: str | None, quick_users: list[tuple[str, str]],
                   extra: Sequence[Any] = (), *, pooled: bool = True) -> Any:
    """The login chain: anonymous, --user, user_db_file, `extra` (local users), and
    last user_db_url (`pooled`: a connection pool per process, else a connection per check)."""
    from .policy.auth.anonymous import AnonymousAuthenticator
    from .policy.auth.base import chain
    from .policy.auth.userfile import MemoryUserAuthenticator, UserFileAuthenticator, UserRecord
    from .policy.passwords import hash_password
    from .preflight import anon_root_of, user_root_of

    anon_root = anon_root_of(cfg, quick_root)
    user_root = user_root_of(cfg, quick_root)
    auths: list[Any] = []
    if quick_users:
        assert user_root, "--user comes with quick mode, which serves a directory"
        records = {}
        for name, password in quick_users:
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
    last: list[Any] = []
    if cfg.user_db_url:  # never connects here: the database may be down now (its logins get 421)
        from .policy.auth.pgusers import PgUserAuthenticator
        try:
            last.append(PgUserAuthenticator(cfg, cfg.user_db_url, user_root or "", pooled=pooled))
        except ValueError as e:
            raise StartupError(f"user_db_url: {e}") from None
    return chain(*auths, *extra, *last)


def _quick_users(specs: list[str]) -> list[tuple[str, str]]:
    """--user NAME:PASSWORD values, checked: a valid name, not an anonymous one, given once."""
    from .policy.auth.anonymous import ANONYMOUS_NAMES
    from .policy.auth.userfile import valid_user_name
    users: dict[str, str] = {}
    for spec in specs:
        name, sep, password = spec.partition(":")
        if not sep or not name or not password:
            raise StartupError(f"--user {name or spec!r}: expected NAME:PASSWORD")
        if name.lower() in ANONYMOUS_NAMES:
            raise StartupError(f"--user {name}: {name!r} is reserved: it always logs in as anonymous; "
                               "pick another name")
        if not valid_user_name(name):
            raise StartupError(f"--user {name!r}: use 1-128 of A-Z a-z 0-9 . _ @ -, "
                               "starting with a letter, digit or _")
        if name in users:
            raise StartupError(f"--user {name}: given twice")
        users[name] = password
    return list(users.items())


def _banner(cfg: Any) -> str | None:
    if not cfg.banner_file:
        return None
    try:
        with open(cfg.banner_file, encoding="utf-8", errors="replace") as f:
            return f.read(8192)
    except OSError as e:
        raise StartupError(f"banner_file: cannot read {cfg.banner_file}: {e.strerror}") from None


def _events(cfg: Any, verbose: bool = False, ops: Any = None) -> Any:
    """The log sinks, with their files open before any session or jail exists
    (and `ops`' OpsSink beside them: metrics_listen, control_socket)."""
    from .logs.configured import LogFileError, build_event_log
    try:
        return build_event_log(cfg, verbose=verbose, ops=ops.sink if ops is not None else None)
    except LogFileError as e:
        raise StartupError(str(e)) from None


def _start_ops(cfg: Any, mode: str) -> Any:
    """metrics_listen / control_socket: the session table and counters (ops/), the metrics
    listener bound now; None when both are off."""
    from .ops.runtime import start
    try:
        return start(cfg, mode)
    except ValueError as e:
        raise StartupError(f"metrics_listen: {e}") from None
    except OSError as e:
        raise StartupError(f"metrics_listen: cannot listen on {e.filename}: {e.strerror}") from None


def _tls_context(cfg: Any) -> Any:
    if not cfg.ssl_enable:
        return None
    from .net.tls import Contexts, TlsSetupError
    try:
        return Contexts.fresh(cfg)  # an SSLContext per control connection (require_ssl_reuse)
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
    from .net.context import ServerContext
    from .net.server import serve_pooled
    from .policy.config import load_config
    from .preflight import check_site, isolated_mode

    _tune_malloc()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ftpwarden[%(process)d] %(levelname)s %(message)s")
    quick = args.config is None
    if quick:
        cfg, warnings, root = _quick_config(args)
    else:
        if args.directory or args.user or args.write:
            raise StartupError("DIR, --user and --write are for quick mode; use the config file")
        cfg, warnings = load_config(args.config, args.overrides, flags=_flags(args))
        root = None
    _log_die(cfg)
    from .policy.hostsaccess import problems
    for w in warnings + problems(cfg):
        print(f"warning: {w}", file=sys.stderr)
    from .net.data import resolved_pasv_address
    cfg = resolved_pasv_address(cfg)  # pasv_addr_resolve: the name, resolved once
    _check_bind(args, cfg)
    quick_users = _quick_users(args.user)
    isolated = isolated_mode(cfg)
    if isolated and quick:  # as root: every session runs as nopriv_user, jailed in the directory
        cfg = _quick_as_nopriv(cfg)
    # the same checks as check-config: every problem at once, at its line
    if isolated:  # the check reads the user DB: in a child, so no hash stays in the listener
        errors = _site_errors_apart(cfg, args.config or "quick mode", quick_root=root)
    else:
        errors = check_site(cfg, args.config or "serve", isolated=isolated, quick_root=root).errors
    if errors:
        raise ConfigError.several(errors)
    if isolated:  # upload_hook's settings (pooled mode checks them with the quota store, below)
        from .ops.brokered import BrokerUploads
        try:
            BrokerUploads(cfg)
        except ValueError as e:
            raise StartupError(str(e)) from None
        if not cfg.listen and (cfg.upload_hook or cfg.quota_bytes or cfg.quota_files):
            print("warning: upload_hook and quotas are not supported with listen=NO (inetd mode) yet: "
                  "ignored", file=sys.stderr)
        if not cfg.listen and not cfg.listen_ipv6 and cfg.state_db_url:  # one session per process
            print("warning: state_db_url is not used with listen=NO (inetd mode): bans are not shared",
                  file=sys.stderr)
    if isolated and quick:
        if args.workers is not None:
            print(f"warning: --workers {args.workers}: isolated mode (quick mode as root) has no worker "
                  "processes; ignored", file=sys.stderr)
        return _serve_isolated(args, cfg, lambda: _quick_as_nopriv(_quick_config(args)[0]),
                               quick_root=root, quick_users=quick_users)
    if isolated:
        return _serve_isolated(args, cfg, lambda: load_config(args.config, args.overrides, flags=_flags(args))[0])
    if cfg.local_enable and "local_enable" in cfg.explicit:
        print("warning: local_enable: system users log in only in isolated mode (started as root "
              "without pooled=YES); pooled mode serves anonymous, user_db_file and user_db_url users", file=sys.stderr)
    if cfg.session_support:  # it has no PAM login to keep a session or a utmp record for
        print("warning: session_support=YES: PAM sessions and utmp/wtmp records are kept only in isolated "
              "mode, for PAM logins; pooled mode has no system users: ignored", file=sys.stderr)
    if os.geteuid() == 0 and cfg.run_as_launching_user:
        print("warning: run_as_launching_user=YES as root: pooled mode, every session runs as root "
              "(vsftpd too, without a chroot); leave it NO for isolated mode", file=sys.stderr)
    elif os.geteuid() == 0 and quick:
        print("warning: quick mode with pooled=YES as root runs every session as root; without "
              "pooled=YES they run as nopriv_user", file=sys.stderr)
    auth = _authenticator(cfg, root, quick_users)
    banner = _banner(cfg)
    workers = int(cfg.worker_processes) or os.cpu_count() or 1
    addresses = _addresses(cfg, args.bind, quick)
    listeners = _listen(addresses, cfg, workers)
    ops = _start_ops(cfg, "pooled")
    ctx = ServerContext(cfg, auth, banner=banner, events=_events(cfg, args.verbose, ops))
    if ops is not None:
        ctx.ops = ops  # type: ignore[attr-defined]
        if workers > 1 and ops.listen_sock is not None:  # the supervisor sums the workers' numbers
            from .ops.multiproc import SupervisorHttp, WorkerDump, make_dir
            directory = make_dir()
            ctx.ops_http = WorkerDump(directory, ops, ops.listen_sock)  # type: ignore[attr-defined]
            ctx.ops_supervisor = SupervisorHttp(directory, ops.listen_sock,  # type: ignore[attr-defined]
                                                getattr(cfg, "admin_group", None))
        else:
            from .ops.runtime import http_server
            ctx.ops_http = http_server(ops, cfg)  # type: ignore[attr-defined]
    ctx.tls_contexts = _tls_context(cfg)
    from .net.proxyproto import trusted_from
    ctx.proxy_trusted = trusted_from(cfg)  # proxy_protocol_from (checked with the site, above)
    ctx.account_rates = _account_rates(cfg)  # before the workers are forked: they share it
    ctx.bans = _ban_list(cfg, [])  # likewise
    from .ops import uploads
    try:
        uploads.setup(ctx, cfg)  # upload_hook, quotas
    except ValueError as e:
        raise StartupError(str(e)) from None
    ctx.ops_control = _control_socket(cfg)  # who/kick: served by the single worker or the supervisor
    ctx.notifier = _notifier()
    if cfg.max_clients or cfg.max_per_ip:
        from .net.limits import SessionLimits
        ctx.limits = SessionLimits(int(cfg.max_clients or 0), int(cfg.max_per_ip or 0), len(listeners))
    socks = listeners[0]
    host, bound_port = socks[0].getsockname()[:2]
    if cfg.state_db_url:  # each worker process starts its own sync thread (ops/statedb.py)
        from .ops.statedb import node_name
        ctx.state_db = (str(cfg.state_db_url), node_name(cfg, bound_port))  # type: ignore[attr-defined]
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host == "0.0.0.0" else host)
    what = _quick_what(args, root, quick_users) if quick else args.config
    _say_serving(what, socks, f"{workers} worker process(es)")
    print(f"  connect: curl ftp://{url_host}:{bound_port}/   or   lftp -p {bound_port} {url_host.strip('[]')}")
    sys.stdout.flush()
    from .priv import seccomp
    try:
        return serve_pooled(ctx, listeners, sandbox=seccomp.installer("pooled", bool(cfg.seccomp_sandbox)))
    finally:
        from .ops.control import control_path, unlink_control
        unlink_control(control_path(cfg))


def _quick_what(args: argparse.Namespace, root: str | None, quick_users: list[tuple[str, str]]) -> str:
    """Quick mode's served directory and who may do what: anonymous, then each --user (always writable)."""
    who = [f"anonymous {'writable' if args.write else 'read-only'}"]
    who += [f"{name} writable" for name, _ in quick_users]
    return f"{root} ({', '.join(who)})"


def _quick_as_nopriv(cfg: Any) -> Any:
    """Quick mode as root: anonymous and --user sessions run as nopriv_user (ftp_username
    and guest_username follow it unless -o names them); a --user may write the top of
    the jail (allow_writeable_chroot; anonymous never may, see _check_quick_root)."""
    changes: dict[str, Any] = {"allow_writeable_chroot": True}
    for name in ("ftp_username", "guest_username"):
        if name not in cfg.where:
            changes[name] = cfg.nopriv_user
    return cfg.replace(**changes)


def _nopriv_access(root: str, user: str) -> tuple[bool, bool]:
    """(can list, can write) `root` as `user` would inside its jail: tried in a child
    chrooted there that runs as the user, so ownership, mode bits and ACLs all count."""
    import pwd
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            os.chroot(root)
            os.chdir("/")
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                os.listdir("/")
                code = 1
            except OSError:
                code = 0
            code |= 2 if os.access("/", os.W_OK) else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in range(4):
        raise StartupError(f"{root}: cannot check what {user} may do there")
    return bool(code & 1), bool(code & 2)


def _check_quick_root(cfg: Any, root: str) -> None:
    """Quick mode as root: the jail must be readable by nopriv_user and, as anonymous
    sessions run in it, not writable by it (vsftpd's rule for a chroot's top)."""
    user = cfg.nopriv_user
    readable, writable = _nopriv_access(root, user)
    if not readable:
        raise StartupError(f"{root}: {user} cannot read it, and the sessions run as {user} jailed there; "
                           f"make it readable and searchable by {user} (e.g. chmod o+rx), or use -o nopriv_user=USER")
    if writable and cfg.anonymous_enable:
        raise StartupError(f"{root}: {user} can write it, and anonymous sessions never run in a jail whose top "
                           f"they can write (vsftpd's rule); serve a directory {user} cannot write and give it "
                           f"a subdirectory to upload into, or add -o anonymous_enable=NO")


def _nopriv_who(cfg: Any) -> str:
    import grp
    import pwd
    pw = pwd.getpwnam(cfg.nopriv_user)
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    return f"{pw.pw_name}:{group} (uid {pw.pw_uid}, gid {pw.pw_gid})"


def _listen(addresses: list[tuple[str, bool | None]], cfg: Any, workers: int) -> list[Any]:
    """The listening sockets (control port, then implicit_ssl_port), bound once."""
    from .net.server import bind_listeners
    port = int(cfg.listen_port)
    try:
        listeners = bind_listeners(addresses, port, workers)
        if cfg.implicit_ssl_port:
            port = int(cfg.implicit_ssl_port)
            extra = bind_listeners(addresses, port, workers)
            listeners = [a + b for a, b in zip(listeners, extra, strict=True)]
    except OSError as e:
        where = e.filename or f"port {port}"
        raise StartupError(f"cannot listen on {where}: {e.strerror}") from None
    return listeners


def _control_socket(cfg: Any) -> tuple[socket.socket, int | None] | None:
    """control_socket: (the listening socket, admin_group's gid), or None when unset."""
    from .ops.control import admin_gid, bind_control, control_path
    path = control_path(cfg)
    if path is None:
        return None
    try:
        group = admin_gid(cfg)
    except KeyError:
        raise StartupError(f"admin_group={cfg.admin_group}: no such group") from None
    try:
        return bind_control(path, group), group
    except OSError as e:
        raise StartupError(f"control_socket={path}: {e.strerror or e}") from None


def _notifier() -> Any:
    """sd_notify (systemd Type=notify): NOTIFY_SOCKET, read once and removed from the environment."""
    from .ops.sdnotify import Notifier
    return Notifier()


def _say_serving(what: str, socks: Sequence[socket.socket], mode: str) -> None:
    """The line the tests and the user wait for: what is served, on which addresses."""
    where = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p, *_ in (s.getsockname() for s in socks))
    print(f"ftpwarden {__version__}: serving {what} on {where} ({mode})")


def _account_rates(cfg: Any) -> Any:
    """user_max_rate's shared table (None when 0); made once, before any fork, so every session shares it."""
    if not cfg.user_max_rate:
        return None
    from .net.limits import AccountRates
    return AccountRates(int(cfg.user_max_rate))


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


def _site_errors_apart(cfg: Any, source: str, quick_root: str | None = None) -> list[ConfigError]:
    """check_site (isolated mode) run in a child that exits: its reading of the
    user DB leaves no hash in the listener, which forks every session (issue 18.6)."""
    from .preflight import check_site
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            errors = check_site(cfg, source, isolated=True, quick_root=quick_root).errors
            with os.fdopen(w, "wb") as out:
                out.write("\x1e".join(f"{e.where}\x1f{e.message}" for e in errors).encode("utf-8", "surrogateescape"))
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as inp:
        data = inp.read().decode("utf-8", "surrogateescape")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise StartupError("the configuration check failed")
    return [ConfigError(*item.split("\x1f", 1)) for item in data.split("\x1e") if item]


def _isolated_login(cfg: Any, quick_root: str | None = None, quick_users: Sequence[tuple[str, str]] = ()) -> Any:
    """Isolated mode's password check, run only in the password checker (priv/checker.py):
    the one process that loads the user DB, hashes quick mode's --user passwords and runs PAM."""
    from .policy.auth.base import LoginRefused, LoginRequest, LoginUnavailable
    from .policy.auth.local import LocalAuthenticator
    from .policy.identity import isolated_identity

    auths = _authenticator(cfg, quick_root, list(quick_users),
                           extra=[LocalAuthenticator(cfg)] if cfg.local_enable else [], pooled=False)

    def authenticate(user: str, password: str, remote_ip: str) -> Any:
        try:
            return isolated_identity(cfg, auths.authenticate(LoginRequest(user, password, remote_ip)))
        except LoginUnavailable:
            raise  # the checker answers "unavailable": 421, not a failed login
        except LoginRefused:
            return None
    return authenticate


def _serve_isolated(args: argparse.Namespace, cfg: Any, reload: Callable[[], Any], *,
                    quick_root: str | None = None, quick_users: Sequence[tuple[str, str]] = ()) -> int:
    """Started as root: the broker, the zygote and unprivileged session processes (priv/).
    `reload()` builds the config again (at start and on SIGHUP): from the file, or quick
    mode's in memory (`quick_root`, `quick_users`)."""
    from .preflight import prepare_secure_dir, secure_dir
    from .priv import worker  # imported before fork so sessions start fast
    from .priv.broker import Broker
    from .priv.checker import Checker, refused
    from .priv.monitor import run_one_session

    prepare_secure_dir(cfg)  # our default jail, made now if missing (checked by check_site)
    kept_bans: list[Any] | None = []  # the listener's one BanList, kept across SIGHUP

    account_rates = _account_rates(cfg)

    def config() -> Any:
        from .net.data import resolved_pasv_address
        fresh = resolved_pasv_address(reload())  # pasv_addr_resolve: again at each reading
        # the pre-login jail actually used (ours unless the file names one)
        return fresh.replace(secure_chroot_dir=secure_dir(fresh))

    def login() -> Any:  # in the password checker only: it loads the user DB
        return _isolated_login(config(), quick_root, quick_users)

    def load() -> Any:  # the listener's: no user DB (checks go to the checker)
        fresh = config()
        return worker.Site(fresh, refused, banner=_banner(fresh),
                           events=_events(fresh, args.verbose, ops),
                           bans=_ban_list(fresh, kept_bans), account_rates=account_rates)

    inetd = not cfg.listen and not cfg.listen_ipv6
    ops = None if inetd else _start_ops(cfg, "isolated")  # inetd: one session per process, nothing to show
    if inetd:  # inetd / systemd Accept=yes: the client is on stdin
        conn = socket.socket(fileno=os.dup(0))
        kept_bans = None  # inetd: one connection per process, no bans to share
        # this session's own checker, forked before anything loads the user DB; the
        # session keeps only its channel (the checker ends with the session)
        def leave_client() -> None:  # the checker never holds the client's connection
            conn.close()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(devnull, fd)
            os.close(devnull)
        try:
            checker = Checker(login, leave_client)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
        client = checker.connect()
        checker.close()
        return run_one_session(load(), conn, checker=client)
    quick = quick_root is not None
    (socks,) = _listen(_addresses(cfg, args.bind, quick), cfg, 1)
    if quick_root is not None:  # after the port: "Address already in use" comes first, as in pooled mode
        _check_quick_root(cfg, quick_root)
    notifier = _notifier()  # NOTIFY_SOCKET leaves the environment before the first fork
    try:
        listener = Broker(list(socks), load, login)
    except RuntimeError as e:
        raise StartupError(str(e)) from None
    if ops is not None and ops.listen_sock is not None:  # metrics_listen: served by an unprivileged process
        from .ops.process import fork_ops_process
        listener.ops_feed = fork_ops_process(ops.listen_sock, listener.site.cfg)
        ops.listen_sock.close()
    site_cfg = listener.site.cfg
    if site_cfg.state_db_url and (listener.site.bans is not None or listener.site.account_rates is not None):
        from .ops.statedb import node_name
        from .ops.stateproc import StateLink  # ftpwarden-state: it holds the URL, the broker never connects
        listener.state = StateLink(node_name(site_cfg, socks[0].getsockname()[1]))
        try:
            listener.state.start(listener.zygote.spawn_state)  # the zygote forks it: a heap free of passwords
        except OSError as e:  # the broker tries again
            print(f"ftpwarden: ftpwarden-state not started: {e}", file=sys.stderr)
    listener.notifier = notifier
    try:  # after the zygote and the checker were forked: neither ever holds it
        listener.control = _control_socket(cfg)
    except StartupError:
        listener.stop_asked = True  # the children end as on SIGTERM
        listener.serve()
        raise

    def ready() -> None:
        if not quick:
            _say_serving(args.config, socks, "isolated mode")
        else:  # say who the sessions run as, and how to connect
            _say_serving(_quick_what(args, quick_root, list(quick_users)), socks, "isolated mode")
            print(f"  sessions run as {_nopriv_who(cfg)}, jailed in {quick_root}")
            host, port = socks[0].getsockname()[:2]
            url_host = f"[{host}]" if ":" in host else host
            print(f"  connect: curl ftp://{url_host}:{port}/   or   lftp -p {port} {host}")
        sys.stdout.flush()

    from .ops.control import control_path, unlink_control
    try:
        if cfg.background:
            ready()
            _daemonize()
            return listener.serve()
        return listener.serve(ready)
    finally:
        unlink_control(control_path(cfg))


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
