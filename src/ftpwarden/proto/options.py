"""The options the session reads, typed and frozen.

Built once from the configuration by `policy.options.session_options`; the
defaults live in policy/tunables.py only, so no field here has one.  Names
are the vsftpd.conf tunables they come from.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SessionOptions"]


@dataclass(frozen=True, slots=True)
class SessionOptions:
    # greeting and messages
    ftpd_banner: str | None
    dirmessage_enable: bool
    message_file: str | None
    # what may be seen and run
    deny_file: str | None
    hide_file: str | None
    download_file: str | None   # only names matching may be downloaded (deny_file wins)
    upload_file: str | None     # only names matching may be uploaded (deny_file wins)
    cmds_allowed: str | None
    cmds_denied: str | None
    force_dot_files: bool
    ls_recurse_enable: bool     # LIST -R / NLST -R walk the tree (bounded)
    hide_ids: bool
    use_localtime: bool
    # login
    anonymous_enable: bool
    no_anon_password: bool
    max_login_fails: int        # >= 1
    delay_failed_login: int     # seconds from PASS to a refusal
    idle_session_timeout: int   # seconds; 0: none
    # FTPS
    ssl_enable: bool
    allow_anon_ssl: bool
    force_anon_logins_ssl: bool
    force_local_logins_ssl: bool
    force_anon_data_ssl: bool
    force_local_data_ssl: bool
    require_ssl_reuse: bool
    # data channel
    pasv_enable: bool
    port_enable: bool
    port_promiscuous: bool
    # transfers
    ascii_download_enable: bool
    ascii_upload_enable: bool
    anon_world_readable_only: bool
    file_open_mode: int
    anon_max_rate: int          # bytes/s; 0: none
    local_max_rate: int
    atomic_uploads: bool
    chown_uploads: bool
    delete_failed_uploads: bool  # a failed upload leaves nothing it wrote behind
    lock_upload_files: bool      # fcntl (OFD) write lock while uploading, read lock while downloading
    better_stou: bool            # STOU picks random suffixes, not .1 .2
    # extensions
    mdtm_write: bool
    hash_enable: bool
    mlsd_enable: bool
    utf8_enable: bool
    utf8_filesystem: bool       # Debian: FEAT lists UTF8
