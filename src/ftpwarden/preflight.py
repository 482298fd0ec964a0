"""Everything `serve` checks before it listens, in one place: `check-config` runs the same.

Each check looks at one concern (a directory, a file, an account, the TLS
files) and reports what is wrong as a ConfigError located at the line that
set the option ("FILE:LINE", "-o NAME=VALUE", "--port"), or at the file when
the value is a default.  All problems are gathered, so one run shows them all.
Nothing here creates or changes anything, except `secure_chroot_dir`'s own
default directory when serve asks (`prepare_secure_dir`).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .policy.config import ConfigError

__all__ = ["Report", "check_site", "isolated_mode", "secure_dir", "prepare_secure_dir", "SECURE_DIR"]

# secure_chroot_dir when the file does not set it.  vsftpd's compiled-in
# default, /usr/share/empty, does not exist on Debian (its package uses
# /var/run/vsftpd/empty); ours is made at start, root's, empty and 0755.
SECURE_DIR = "/run/ftpwarden/empty"
MAX_WORKERS = 256  # pooled-mode processes: more is a typo, not a plan

Problem = tuple[tuple[str, ...], str]  # (the options at fault, most relevant first; the message)


@dataclass
class Report:
    errors: list[ConfigError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was used, for check-config


def isolated_mode(cfg: Any) -> bool:
    """serve's choice: root without pooled=YES -> isolated mode (quick mode too: its
    sessions then run as nopriv_user, jailed in the served directory).
    run_as_launching_user=YES is vsftpd's "run as whoever started it, no privilege
    separation": pooled mode, which is what a start without root gives anyway."""
    return os.geteuid() == 0 and not cfg.pooled and not cfg.run_as_launching_user


def _at(cfg: Any, source: str, *names: str) -> str:
    """Where the first of `names` (most to least relevant) was set, else `source` (the file)."""
    return next((cfg.where[n] for n in names if n in cfg.where), source)


def home_of(user: str | None) -> str | None:
    try:
        return pwd.getpwnam(user).pw_dir if user else None
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


def anon_root_of(cfg: Any, quick_root: str | None) -> str | None:
    return cfg.anon_root or quick_root or home_of(cfg.ftp_username)


def user_root_of(cfg: Any, quick_root: str | None) -> str | None:
    return cfg.local_root or quick_root or anon_root_of(cfg, quick_root)


# ---------------------------------------------------------------- the checks

def _listen(cfg: Any, isolated: bool) -> list[Problem]:
    out: list[Problem] = []
    if not isolated and not cfg.listen and not cfg.listen_ipv6:
        out.append((("listen", "listen_ipv6", "pooled"),
                    "listen=NO (inetd mode) needs isolated mode: start as root without pooled=YES"))
    if cfg.worker_processes > MAX_WORKERS:
        out.append((("worker_processes",), f"worker_processes={cfg.worker_processes}: at most {MAX_WORKERS}"))
    if cfg.implicit_ssl_port and not cfg.ssl_enable:
        out.append((("implicit_ssl_port", "ssl_enable"), "implicit_ssl_port: needs ssl_enable=YES"))
    return out


def _proxy(cfg: Any) -> list[Problem]:
    """proxy_protocol_enable: proxy_protocol_from names the balancers; inetd mode has no listener for it."""
    if not cfg.proxy_protocol_enable:
        return []
    if not cfg.listen and not cfg.listen_ipv6:
        return [(("proxy_protocol_enable", "listen"), "proxy_protocol_enable=YES: not supported with listen=NO "
                 "(inetd mode: the connection comes from inetd, not from the balancer's listener); "
                 "use listen=YES")]
    from .net.proxyproto import trusted_from
    try:
        trusted_from(cfg)
    except ValueError as e:
        return [(("proxy_protocol_from", "proxy_protocol_enable"), f"{e} (needed by proxy_protocol_enable=YES)")]
    return []


def _anonymous(cfg: Any, quick_root: str | None) -> list[Problem]:
    if not cfg.anonymous_enable:
        return []
    root = anon_root_of(cfg, quick_root)
    if root and os.path.isdir(root):
        return []
    return [(("anon_root", "anonymous_enable", "ftp_username"),
             f"anon_root: {root or '(unset)'} is not a directory")]


def _user_db(cfg: Any, quick_root: str | None) -> list[Problem]:
    if not cfg.user_db_file:
        return []
    from .policy.auth.userfile import UserFileAuthenticator
    if not user_root_of(cfg, quick_root):
        return [(("local_root", "user_db_file"), "user_db_file: set local_root (the default root of virtual users)")]
    try:
        UserFileAuthenticator(cfg, cfg.user_db_file, "/")
    except OSError as e:
        return [(("user_db_file",), f"user_db_file: cannot read {cfg.user_db_file}: {e.strerror or e}")]
    except ValueError as e:
        return [(("user_db_file",), f"user_db_file: {e}")]
    return []


def _user_db_url(cfg: Any) -> list[Problem]:
    """The URL's form only: a database down now is a runtime condition (421), not a config error."""
    if not cfg.user_db_url:
        return []
    from .policy.auth.pgusers import check_url
    try:
        check_url(cfg.user_db_url)
    except ValueError as e:
        return [(("user_db_url",), f"user_db_url: {e}")]
    return []


def _banner(cfg: Any) -> list[Problem]:
    if not cfg.banner_file:
        return []
    try:
        with open(cfg.banner_file, "rb"):
            pass
    except OSError as e:
        return [(("banner_file",), f"banner_file: cannot read {cfg.banner_file}: {e.strerror}")]
    except ValueError:  # a NUL in the name
        return [(("banner_file",), f"banner_file: {cfg.banner_file!r} is not a file name")]
    return []


def _control(cfg: Any) -> list[Problem]:
    """control_socket, admin_group (ops/control.py: who and kick)."""
    from .ops.control import problems
    return problems(cfg)


def _logs(cfg: Any) -> list[Problem]:
    from .logs.configured import check_log_file, log_files
    out: list[Problem] = []
    for option, path in log_files(cfg):
        why = check_log_file(option, path)
        if why:
            out.append(((option, "xferlog_enable", "dual_log_enable", "xferlog_std_format"), why))
    return out


def _tls(cfg: Any) -> list[Problem]:
    if not cfg.ssl_enable:
        return []
    why = tls_problem(cfg)
    if not why:
        return []
    named = why.split(":", 1)[0].split("/")  # "rsa_cert_file/rsa_private_key_file: cannot load ..."
    return [((*named, "ssl_enable"), why)]


def tls_problem(cfg: Any) -> str | None:
    """Load the TLS files in a short-lived child: this process never holds the
    private key, so no session process forked from it can (isolated mode)."""
    from .net.tls import TlsSetupError, make_context
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            make_context(cfg)
            code = 0
        except TlsSetupError as e:
            os.write(w, str(e).encode()[:4000])
        except BaseException as e:  # reported to the parent
            os.write(w, f"TLS set-up failed: {e}".encode()[:4000])
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return message or "TLS set-up failed"
    return None


def _isolated(cfg: Any, report: Report) -> list[Problem]:
    out: list[Problem] = []
    if home_of(cfg.nopriv_user) is None:
        out.append((("nopriv_user",), f"nopriv_user: no such system user {cfg.nopriv_user!r}"))
    path = secure_dir(cfg)
    why = secure_dir_problem(cfg)
    if why:
        out.append((("secure_chroot_dir",), why))
    elif "secure_chroot_dir" in cfg.explicit:
        report.notes.append(f"secure_chroot_dir: {path}")
    else:
        made = "" if os.path.isdir(path) else "; serve creates it"
        report.notes.append(f"secure_chroot_dir: {path} (the default: root's, empty, 0755{made})")
    return out


def secure_dir(cfg: Any) -> str:
    """The pre-login jail: the file's secure_chroot_dir, else ours."""
    return str(cfg.secure_chroot_dir) if "secure_chroot_dir" in cfg.explicit else SECURE_DIR


def _unsafe(path: str, st: os.stat_result, *, jail: bool = True) -> str | None:
    """Why `path` (the jail, or with jail=False its parent) cannot be trusted."""
    if not stat.S_ISDIR(st.st_mode):
        return f"secure_chroot_dir: {path} must be an existing {'empty ' if jail else ''}directory"
    if st.st_uid != 0 or st.st_mode & 0o022:
        what = "must be empty, owned by root" if jail else "(its parent) must be owned by root"
        return f"secure_chroot_dir: {path} {what} and not writable by others"
    return None


def secure_dir_problem(cfg: Any) -> str | None:
    """Why the pre-login jail is unfit; None also when it is our default, still to be made."""
    path = secure_dir(cfg)
    if "\0" in path or not path.startswith("/"):
        return f"secure_chroot_dir: {path!r} must be an absolute path"
    ours = "secure_chroot_dir" not in cfg.explicit
    if ours:  # whoever owns the parent could swap the directory itself
        parent = os.path.dirname(path)
        try:
            why = _unsafe(parent, os.lstat(parent), jail=False)
        except FileNotFoundError:
            return None  # to be made
        if why:
            return why
    try:
        st = os.lstat(path) if ours else os.stat(path)
    except FileNotFoundError:
        return None if ours else f"secure_chroot_dir: {path} must be an existing empty directory"
    except OSError as e:
        return f"secure_chroot_dir: {path}: {e.strerror}"
    why = _unsafe(path, st)
    if why is None and os.listdir(path):
        why = f"secure_chroot_dir: {path} must be empty, owned by root and not writable by others"
    return why


def prepare_secure_dir(cfg: Any) -> None:
    """Make our default jail (root only): each level created 0755 and checked
    with lstat, so a symlink or a directory someone else made is refused."""
    path = secure_dir(cfg)
    if "secure_chroot_dir" in cfg.explicit or os.path.lexists(path):
        return
    old = os.umask(0o022)
    try:
        for level, jail in ((os.path.dirname(path), False), (path, True)):
            try:
                os.mkdir(level, 0o755)
            except FileExistsError:
                pass
            why = _unsafe(level, os.lstat(level), jail=jail)
            if why:
                raise ConfigError("secure_chroot_dir", why.removeprefix("secure_chroot_dir: "))
    finally:
        os.umask(old)


def check_site(cfg: Any, source: str, *, isolated: bool, quick_root: str | None = None) -> Report:
    """Every problem that stops `serve` with this config, each at its line."""
    report = Report()
    checks: list[Callable[[], list[Problem]]] = [
        lambda: _listen(cfg, isolated),
        lambda: _proxy(cfg),
        lambda: _anonymous(cfg, quick_root),
        lambda: _user_db(cfg, quick_root),
        lambda: _user_db_url(cfg),
        lambda: _banner(cfg),
        lambda: _logs(cfg),
        lambda: _tls(cfg),
        lambda: _control(cfg),
    ]
    if isolated:
        checks.append(lambda: _isolated(cfg, report))
    for check in checks:
        for names, message in check():
            report.errors.append(ConfigError(_at(cfg, source, *names), message))
    return report
