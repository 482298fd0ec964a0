"""Config -> SessionOptions: the one place the session's options are read.

Defaults are the tunables table's (policy/tunables.py): `Config` already
holds every tunable, so nothing here repeats a default.
"""

from __future__ import annotations

import functools

from ..proto.options import SessionOptions
from .config import Config, flag, number, text
from .tunables import TUNABLES

__all__ = ["session_options"]


def _positive(cfg: Config, name: str) -> int:
    """0 means the table default (a count that must be at least 1)."""
    default = TUNABLES[name].default
    assert isinstance(default, int)
    return max(1, number(cfg, name) or default)


@functools.lru_cache(maxsize=16)  # a Config is immutable and hashable: built once per config
def session_options(cfg: Config) -> SessionOptions:
    return SessionOptions(
        ftpd_banner=text(cfg, "ftpd_banner"),
        dirmessage_enable=flag(cfg, "dirmessage_enable"),
        message_file=text(cfg, "message_file"),
        deny_file=text(cfg, "deny_file"),
        hide_file=text(cfg, "hide_file"),
        download_file=text(cfg, "download_file"),
        upload_file=text(cfg, "upload_file"),
        ls_recurse_enable=flag(cfg, "ls_recurse_enable"),
        delete_failed_uploads=flag(cfg, "delete_failed_uploads"),
        lock_upload_files=flag(cfg, "lock_upload_files"),
        better_stou=flag(cfg, "better_stou"),
        utf8_filesystem=flag(cfg, "utf8_filesystem"),
        cmds_allowed=text(cfg, "cmds_allowed"),
        cmds_denied=text(cfg, "cmds_denied"),
        force_dot_files=flag(cfg, "force_dot_files"),
        hide_ids=flag(cfg, "hide_ids"),
        use_localtime=flag(cfg, "use_localtime"),
        anonymous_enable=flag(cfg, "anonymous_enable"),
        no_anon_password=flag(cfg, "no_anon_password"),
        max_login_fails=_positive(cfg, "max_login_fails"),
        delay_failed_login=number(cfg, "delay_failed_login"),
        idle_session_timeout=number(cfg, "idle_session_timeout"),
        ssl_enable=flag(cfg, "ssl_enable"),
        allow_anon_ssl=flag(cfg, "allow_anon_ssl"),
        force_anon_logins_ssl=flag(cfg, "force_anon_logins_ssl"),
        force_local_logins_ssl=flag(cfg, "force_local_logins_ssl"),
        force_anon_data_ssl=flag(cfg, "force_anon_data_ssl"),
        force_local_data_ssl=flag(cfg, "force_local_data_ssl"),
        require_ssl_reuse=flag(cfg, "require_ssl_reuse"),
        pasv_enable=flag(cfg, "pasv_enable"),
        port_enable=flag(cfg, "port_enable"),
        port_promiscuous=flag(cfg, "port_promiscuous"),
        ascii_download_enable=flag(cfg, "ascii_download_enable"),
        ascii_upload_enable=flag(cfg, "ascii_upload_enable"),
        anon_world_readable_only=flag(cfg, "anon_world_readable_only"),
        file_open_mode=number(cfg, "file_open_mode"),
        anon_max_rate=number(cfg, "anon_max_rate"),
        local_max_rate=number(cfg, "local_max_rate"),
        atomic_uploads=flag(cfg, "atomic_uploads"),
        chown_uploads=flag(cfg, "chown_uploads"),
        mdtm_write=flag(cfg, "mdtm_write"),
        hash_enable=flag(cfg, "hash_enable"),
        mlsd_enable=flag(cfg, "mlsd_enable"),
        utf8_enable=flag(cfg, "utf8_enable"),
    )
