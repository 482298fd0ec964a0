"""THE table of tunables: every vsftpd.conf option we read, and our own.

One row drives the parser (`config.py`), the default, `-o name=value`,
`ftpwarden tunables` and the docs.  The vsftpd rows were generated once from
vsftpd-options.tsv; their defaults are vsftpd's real code defaults, which
differ from its man page in places (listen, max_clients, pasv_min_port, ...).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Kind", "Tunable", "Value", "TUNABLES", "format_value", "format_tunables"]

Value = bool | int | str | None


class Kind(enum.Enum):
    BOOL = "bool"
    INT = "numeric"
    STR = "string"


@dataclass(frozen=True, slots=True)
class Tunable:
    name: str
    kind: Kind
    default: Value
    doc: str
    origin: str        # "vsftpd" or "ftpwarden"
    implemented: bool  # False: a non-default value yields a start-up warning
    octal: bool = False  # shown in octal (umask/mode options)
    group: str = ""      # heading in `ftpwarden tunables`
    refused: str = ""    # why a non-default value is refused on purpose, and what to use instead

    @property
    def status(self) -> str:
        """The IMPL column: yes, refused (on purpose, with a reason) or no (not yet)."""
        return "refused" if self.refused else "yes" if self.implemented else "no"


# Honoured today; the rest are accepted (vsftpd.conf files must load) but
# have no effect yet.  Flip a name here when its feature lands.
_IMPLEMENTED = frozenset("""
    local_enable userlist_enable userlist_deny userlist_file check_shell chroot_local_user
    chroot_list_enable chroot_list_file passwd_chroot_enable local_root user_sub_token
    guest_enable guest_username user_config_dir
    anonymous_enable anon_root anon_upload_enable anon_mkdir_write_enable
    anon_other_write_enable no_anon_password anon_world_readable_only anon_umask
    write_enable download_enable dirlist_enable cmds_allowed cmds_denied
    deny_file hide_file local_umask file_open_mode ftpd_banner banner_file
    dirmessage_enable message_file pasv_enable pasv_min_port pasv_max_port
    pasv_address port_enable listen listen_address listen_address6 listen_port
    listen_ipv6 port_promiscuous pasv_promiscuous ascii_upload_enable
    ascii_download_enable idle_session_timeout data_connection_timeout
    accept_timeout connect_timeout use_localtime hide_ids chmod_enable
    mdtm_write force_dot_files ftp_username nopriv_user
    secure_chroot_dir pam_service_name virtual_use_local_privs
    tilde_user_enable text_userdb_names delay_failed_login max_login_fails
    xferlog_enable xferlog_file xferlog_std_format vsftpd_log_file dual_log_enable
    log_ftp_protocol syslog_enable
    connect_from_port_20 ftp_data_port max_clients max_per_ip background
    chown_uploads chown_username chown_upload_mode
    ssl_enable rsa_cert_file rsa_private_key_file dsa_cert_file dsa_private_key_file
    allow_anon_ssl force_local_logins_ssl force_local_data_ssl force_anon_logins_ssl
    force_anon_data_ssl implicit_ssl require_ssl_reuse ssl_ciphers ca_certs_file require_cert
    ssl_request_cert ssl_tlsv1 ssl_tlsv11 ssl_tlsv12 ssl_tlsv13 strict_ssl_read_eof strict_ssl_write_shutdown
    anon_max_rate local_max_rate allow_writeable_chroot
    validate_cert ssl_sni_hostname dh_param_file ecdh_param_file debug_ssl
    ssl_tlsv1_1 ssl_tlsv1_2 ssl_tlsv1_3 no_log_lock log_die wc_logs_enable
    ftp_enable run_as_launching_user
    setproctitle_enable session_support
    deny_email_enable banned_email_file secure_email_list_enable email_password_file userlist_log
    delay_successful_login reverse_lookup_enable tcp_wrappers
    download_file upload_file ls_recurse_enable delete_failed_uploads lock_upload_files better_stou
    utf8_filesystem use_sendfile trans_chunk_size async_abor_enable
    isolate isolate_network bind_retries pasv_addr_resolve seccomp_sandbox
""".split())  # noqa: SIM905 - a word list is easier to edit than a literal

# Refused on purpose: a non-default value is ignored with this reason (one line, saying
# what to use instead) at check-config and start-up.  Rare and argued; README lists them.
_REFUSED: dict[str, str] = {
    "ssl_sslv2": "SSLv2 is broken (RFC 6176) and OpenSSL 3 cannot speak it; leave it NO, "
                 "TLS 1.2 and 1.3 (ssl_tlsv12, ssl_tlsv13) are what clients use",
    "ssl_sslv3": "SSLv3 is broken (POODLE, RFC 7568) and OpenSSL 3 cannot speak it; leave it NO, "
                 "TLS 1.2 and 1.3 (ssl_tlsv12, ssl_tlsv13) are what clients use",
    "ptrace_sandbox": "vsftpd builds it for 32-bit x86 only and for one_process_model; "
                      "seccomp_sandbox (default YES) is the sandbox here",
    "http_enable": "vsftpd's experimental HTTP GET needs one_process_model (no privilege separation); "
                   "serve the files over HTTP with a web server (nginx, Apache) on the same directory",
    "one_process_model": "speed without privilege separation: as root the identity workers "
                         "(session_isolation=identity, the default) already share one process per "
                         "identity, and without root ftpwarden runs one process model (pooled mode)",
}

_OCTAL = frozenset({"anon_umask", "local_umask", "file_open_mode", "chown_upload_mode"})

_B, _I, _S = Kind.BOOL, Kind.INT, Kind.STR

# group -> rows of (name, kind, default, doc), in vsftpd-options.tsv order.
_VSFTPD: dict[str, tuple[tuple[str, Kind, Value, str], ...]] = {
    "listen/process-model": (
        ("background", _B, False,
         "Standalone mode: fork the listener into the background and return to the shell."),
        ("ftp_enable", _B, True, "Undocumented: serve the FTP protocol (default YES)."),
        ("http_enable", _B, False,
         "Undocumented/experimental: answer a bare HTTP GET by streaming the file (requires one_process_model)."),
        ("listen", _B, True,
         "Run as a standalone IPv4 daemon (own accept loop) instead of being spawned per connection by inetd/xinetd/systemd socket."),
        ("listen_address", _S, None,
         "Numeric IPv4 address the standalone listener binds (default all interfaces)."),
        ("listen_address6", _S, None, "Numeric IPv6 address the standalone IPv6 listener binds."),
        ("listen_ipv6", _B, False,
         "Standalone mode on an IPv6 socket (the :: socket also takes IPv4 on Linux); mutually exclusive with listen."),
        ("listen_port", _I, 21, "TCP port of the standalone control listener."),
        ("max_clients", _I, 2000,
         "Standalone mode: maximum concurrent sessions; extra clients get 421 and are dropped (0 = unlimited)."),
        ("max_per_ip", _I, 50,
         "Standalone mode: maximum concurrent sessions per source IP (421 when exceeded; 0 = unlimited)."),
        ("one_process_model", _B, False,
         "Use one process per session instead of the privilege-separated pair; anonymous-only, needs Linux capabilities; faster but weaker isolation."),
        ("run_as_launching_user", _B, False,
         "Run as whoever started vsftpd (no root needed); forces one_process_model and disables chroot - dangerous."),
        ("session_support", _B, False,
         "Keep a privileged parent for the whole session to maintain utmp/wtmp and a PAM session (costs privilege)."),
        ("setproctitle_enable", _B, False,
         "Show per-session status (IP/user/command) in the process title."),
    ),
    "access-control/user-classes": (
        ("anonymous_enable", _B, True,
         "Accept anonymous logins; usernames \"ftp\" and \"anonymous\" (any case) are the anonymous user."),
        ("cmds_allowed", _S, None,
         "Comma list of the only post-login FTP verbs accepted; others get 550."),
        ("cmds_denied", _S, None,
         "Comma list of post-login FTP verbs refused with 550 (wins over cmds_allowed)."),
        ("delay_failed_login", _I, 1, "Seconds to sleep before answering a failed login."),
        ("delay_successful_login", _I, 0,
         "Seconds to sleep before completing a successful login."),
        ("deny_file", _S, None,
         "Pattern (* ? {a,b}) of names that may not be accessed at all (not hidden); weak, not a substitute for permissions."),
        ("local_enable", _B, False,
         "Accept non-anonymous logins (real /etc/passwd or PAM users); required for guest/virtual users too."),
        ("max_login_fails", _I, 3, "Close the session after this many failed logins."),
        ("tcp_wrappers", _B, False,
         "Check connections with libwrap (hosts.allow/deny); a VSFTPD_LOAD_CONF variable set there loads an extra per-IP config file."),
        ("user_config_dir", _S, None,
         "Directory of per-user override files named after the login; applied after authentication."),
        ("userlist_deny", _B, True,
         "YES: names in userlist_file are refused; NO: only listed names may log in."),
        ("userlist_enable", _B, False,
         "Load userlist_file and check the name at USER time, before any password is sent."),
        ("userlist_file", _S, "/etc/vsftpd.user_list",
         "Path of the user list used by userlist_enable."),
        ("download_file", _S, None,
         "Only names matching this pattern may be downloaded (deny_file wins)."),
        ("reverse_lookup_enable", _B, True,
         "Resolve client IP to a hostname for PAM (pam_access by hostname)."),
        ("upload_file", _S, None,
         "Only names matching this pattern may be uploaded (deny_file wins)."),
    ),
    "anonymous": (
        ("anon_mkdir_write_enable", _B, False,
         "Let anonymous users create directories (needs write_enable)."),
        ("anon_other_write_enable", _B, False,
         "Let anonymous users delete, rename, APPE, overwrite and set MDTM (needs write_enable)."),
        ("anon_root", _S, None,
         "Directory to use as the anonymous root instead of ftp_username's home."),
        ("anon_upload_enable", _B, False,
         "Let anonymous (and non-privileged virtual) users upload (needs write_enable and a writable dir)."),
        ("anon_world_readable_only", _B, True,
         "Anonymous users may only download files (and list dirs) that are world-readable."),
        ("banned_email_file", _S, "/etc/vsftpd.banned_emails",
         "File of banned anonymous passwords used by deny_email_enable."),
        ("chown_uploads", _B, False,
         "Give anonymous uploads to chown_username (done by the privileged parent via CAP_CHOWN)."),
        ("chown_username", _S, "root",
         "Owner given to anonymous uploads when chown_uploads is on."),
        ("deny_email_enable", _B, False,
         "Refuse anonymous logins whose password (e-mail) is listed in banned_email_file."),
        ("email_password_file", _S, "/etc/vsftpd.email_passwords",
         "File of accepted anonymous passwords used by secure_email_list_enable."),
        ("ftp_username", _S, "ftp",
         "Real account that anonymous sessions run as; its home is the anonymous root."),
        ("no_anon_password", _B, False,
         "Log anonymous users in right after USER without asking for a password."),
        ("secure_email_list_enable", _B, False,
         "Accept anonymous logins only with a password listed in email_password_file (cheap shared-secret access)."),
    ),
    "local-users": (
        ("check_shell", _B, True,
         "Non-PAM builds only: require the user's shell to be listed in /etc/shells."),
        ("local_root", _S, None,
         "Directory to change (or chroot) into after a non-anonymous login; user_sub_token is expanded."),
        ("pam_service_name", _S, "ftp", "PAM service used for non-anonymous authentication."),
        ("tilde_user_enable", _B, False,
         "Resolve ~user paths (only works if /etc/passwd is visible inside the jail); ~ and ~/x always resolve to the login dir."),
    ),
    "guest/virtual-users": (
        ("guest_enable", _B, False,
         "Map every non-anonymous login to the single real account guest_username (vsftpd's virtual-user mechanism)."),
        ("guest_username", _S, "ftp", "Real account that guest/virtual logins are mapped to."),
        ("user_sub_token", _S, None,
         "Token (e.g. $USER) replaced by the login name in the guest home and local_root to build per-virtual-user dirs."),
        ("virtual_use_local_privs", _B, False,
         "Give virtual users local-user rights (umask, write rules, no forced chroot) instead of anonymous-like rights."),
    ),
    "chroot": (
        ("allow_writeable_chroot", _B, False,
         "Undocumented in the man page: allow a jail root that the user can write to (vsftpd otherwise refuses with 500 OOPS); not honoured for anonymous."),
        ("chroot_list_enable", _B, False,
         "Use chroot_list_file as a list of users to jail (or, with chroot_local_user, users NOT to jail)."),
        ("chroot_list_file", _S, "/etc/vsftpd.chroot_list", "File used by chroot_list_enable."),
        ("chroot_local_user", _B, False,
         "Jail local users in their home (or local_root) after login."),
        ("passwd_chroot_enable", _B, False,
         "With chroot: a \"/./\" in the passwd home splits jail root from starting directory."),
        ("secure_chroot_dir", _S, "/usr/share/empty",
         "Empty, non-writable directory used as the jail of unprivileged helper processes (unset: ftpwarden makes and uses /run/ftpwarden/empty)."),
    ),
    "permissions/umask": (
        ("anon_umask", _I, 0o077,
         "umask applied to files created by anonymous users (leading 0 = octal)."),
        ("chmod_enable", _B, True, "Allow SITE CHMOD for local users (never for anonymous)."),
        ("chown_upload_mode", _I, 0o600, "File mode forced on chowned anonymous uploads."),
        ("file_open_mode", _I, 0o666,
         "Mode uploaded files are created with before umask (0666; 0777 for executable uploads)."),
        ("local_umask", _I, 0o077,
         "umask applied to files created by local users (leading 0 = octal)."),
        ("mdtm_write", _B, True,
         "Allow the two-argument \"MDTM YYYYMMDDHHMMSS file\" form to set modification times."),
        ("write_enable", _B, False,
         "Master switch for commands that change the filesystem (STOR, DELE, RNFR/RNTO, MKD, RMD, APPE, SITE CHMOD, MDTM-set)."),
    ),
    "transfers/rate-limits": (
        ("anon_max_rate", _I, 0,
         "Per-session transfer cap for anonymous users, bytes/second (0 = unlimited)."),
        ("ascii_download_enable", _B, False,
         "Honour TYPE A on downloads (LF->CRLF); otherwise files are sent byte-for-byte."),
        ("ascii_upload_enable", _B, False,
         "Honour TYPE A on uploads (CRLF->LF conversion); otherwise data is stored as sent."),
        ("async_abor_enable", _B, False,
         "Handle ABOR sent as TCP urgent data (SIGURG) during a transfer; not used with TLS control channels."),
        ("delete_failed_uploads", _B, False,
         "Remove the partial file when an upload fails or is aborted."),
        ("download_enable", _B, True, "NO turns every RETR into 550 Permission denied."),
        ("local_max_rate", _I, 0,
         "Per-session transfer cap for local users, bytes/second (0 = unlimited)."),
        ("lock_upload_files", _B, True,
         "Take a write lock on files being uploaded and a read lock on files being downloaded."),
        ("trans_chunk_size", _I, 0,
         "Bytes per I/O chunk; small values (e.g. 8192) make the rate limiter smoother (0 = automatic)."),
        ("use_sendfile", _B, True, "Use sendfile(2) for plain binary downloads (testing switch)."),
        ("better_stou", _B, False,
         "Race-free random-suffix STOU name generation instead of wu-ftpd style .1 .2 suffixes."),
    ),
    "timeouts": (
        ("accept_timeout", _I, 60,
         "Seconds to wait for the client to connect to a PASV/EPSV data port."),
        ("connect_timeout", _I, 60,
         "Seconds to wait for an active-mode (PORT/EPRT) data connect to succeed."),
        ("data_connection_timeout", _I, 300,
         "Seconds a data transfer may stall with no progress before the session is dropped."),
        ("idle_session_timeout", _I, 300,
         "Seconds allowed between commands before the session is dropped (421 Timeout)."),
    ),
    "pasv/port": (
        ("connect_from_port_20", _B, False,
         "Active connections originate from ftp_data_port (needs CAP_NET_BIND_SERVICE kept in the privileged parent)."),
        ("ftp_data_port", _I, 20,
         "Source port for active data connections when connect_from_port_20 is on."),
        ("pasv_addr_resolve", _B, False,
         "Treat pasv_address as a hostname and resolve it once at startup."),
        ("pasv_address", _S, None,
         "IPv4 address advertised in the 227 PASV reply (for NAT); EPSV replies carry no address."),
        ("pasv_enable", _B, True, "Allow PASV/EPSV data connections."),
        ("pasv_max_port", _I, 0, "Highest port used for passive listeners (0 = 65535)."),
        ("pasv_min_port", _I, 5001,
         "Lowest port used for passive listeners (values <=1024 ignored)."),
        ("pasv_promiscuous", _B, False,
         "Disable the check that the passive data connection comes from the control-connection IP (allows FXP/tunnels)."),
        ("port_enable", _B, True, "Allow PORT/EPRT (active) data connections."),
        ("port_promiscuous", _B, False,
         "Disable the PORT/EPRT checks (target must be client IP, port >1024); allows FXP and bounce attacks."),
        ("bind_retries", _I, 9, "How many random ports PASV tries before failing."),
    ),
    "logging": (
        ("debug_ssl", _B, False, "Dump OpenSSL diagnostics into the vsftpd log."),
        ("dual_log_enable", _B, False, "Write both the xferlog and the vsftpd-format log."),
        ("log_ftp_protocol", _B, False,
         "Log every command and reply (PASS argument masked) in the vsftpd-format log."),
        ("no_log_lock", _B, False,
         "Do not lock log files while writing (workaround for filesystems that hang on locks)."),
        ("syslog_enable", _B, False,
         "Send the vsftpd-format log to syslog (FTP facility) instead of vsftpd_log_file."),
        ("vsftpd_log_file", _S, "/var/log/vsftpd.log",
         "Path of vsftpd's own log (login/transfer/command lines)."),
        ("xferlog_enable", _B, False,
         "Write a transfer log (vsftpd format to vsftpd_log_file, or xferlog format with xferlog_std_format)."),
        ("xferlog_file", _S, "/var/log/xferlog", "Path of the wu-ftpd style xferlog."),
        ("xferlog_std_format", _B, False,
         "Write the transfer log in wu-ftpd xferlog format to xferlog_file."),
        ("log_die", _B, False, "Send fatal die()/bug() messages to syslog."),
        ("userlist_log", _B, False, "Log each login refused by the user list."),
        ("wc_logs_enable", _B, False,
         "Treat log strings as wide characters when replacing unprintables (UTF-8 names)."),
    ),
    "tls/ssl": (
        ("allow_anon_ssl", _B, False, "Allow anonymous users to use TLS sessions."),
        ("ca_certs_file", _S, None,
         "CA bundle used to validate client certificates (also advertised to clients)."),
        ("dsa_cert_file", _S, None, "DSA certificate for TLS."),
        ("dsa_private_key_file", _S, None, "DSA private key; if unset read from dsa_cert_file."),
        ("force_anon_data_ssl", _B, False,
         "Require TLS on data connections for anonymous sessions."),
        ("force_anon_logins_ssl", _B, False,
         "Require TLS on the control channel for anonymous logins."),
        ("force_local_data_ssl", _B, True,
         "Require TLS on data connections for non-anonymous sessions (only when ssl_enable)."),
        ("force_local_logins_ssl", _B, True,
         "Require TLS on the control channel before a non-anonymous password is sent (only when ssl_enable)."),
        ("implicit_ssl", _B, False,
         "Start every connection with a TLS handshake (implicit FTPS); run a second instance for explicit/plain."),
        ("require_cert", _B, False, "Refuse TLS clients that present no certificate."),
        ("require_ssl_reuse", _B, True,
         "Data-channel TLS sessions must resume the control-channel session (proves same client; breaks some clients with 522)."),
        ("rsa_cert_file", _S, "/usr/share/ssl/certs/vsftpd.pem", "RSA certificate (PEM) for TLS."),
        ("rsa_private_key_file", _S, None,
         "RSA private key; if unset the key is read from rsa_cert_file."),
        ("ssl_ciphers", _S, "ECDHE-RSA-AES256-GCM-SHA384", "OpenSSL cipher list for TLS <=1.2."),
        ("ssl_enable", _B, False,
         "Enable explicit FTPS (AUTH TLS/SSL, PBSZ, PROT) - requires an OpenSSL build."),
        ("ssl_request_cert", _B, True, "Ask clients for a certificate during the handshake."),
        ("ssl_sni_hostname", _S, None,
         "Reject TLS handshakes whose SNI name differs from this value (ALPACA mitigation; 3.0.4+)."),
        ("ssl_sslv2", _B, False, "Permit SSLv2 connections."),
        ("ssl_sslv3", _B, False, "Permit SSLv3 connections."),
        ("ssl_tlsv1", _B, False,
         "Permit TLS 1.0 connections; in 3.0.5 code FEAT only advertises \"AUTH TLS\" when this is YES."),
        ("ssl_tlsv11", _B, False,
         "Permit TLS 1.1 (parser name in 3.0.5; the man page calls it ssl_tlsv1_1)."),
        ("ssl_tlsv12", _B, True,
         "Permit TLS 1.2 (parser name in 3.0.5; the man page calls it ssl_tlsv1_2)."),
        ("ssl_tlsv13", _B, True,
         "Permit TLS 1.3 (parser name in 3.0.5; the man page calls it ssl_tlsv1_3)."),
        ("strict_ssl_read_eof", _B, True,
         "TLS uploads must end with a TLS close_notify, not a bare TCP FIN (detects truncation)."),
        ("strict_ssl_write_shutdown", _B, False,
         "TLS downloads must be closed by the client with close_notify."),
        ("validate_cert", _B, False,
         "Client certificates must verify against ca_certs_file (self-signed fails); ftpwarden asks for "
         "one only when it checks it (validate_cert or require_cert), never taking one unchecked."),
        ("dh_param_file", _S, None,
         "PEM DH parameters for DHE cipher suites (checked at start-up; without it DHE is not offered)."),
        ("ecdh_param_file", _S, None,
         "The one ECDHE group: an `openssl ecparam -name CURVE` file, or (ftpwarden) a curve name such as secp384r1."),
        ("ssl_tlsv1_1", _B, False,
         "The 3.0.5 man page's (and Red Hat's) name for ssl_tlsv11: an alias; set both differently is an error."),
        ("ssl_tlsv1_2", _B, True,
         "The 3.0.5 man page's (and Red Hat's) name for ssl_tlsv12: an alias; set both differently is an error."),
        ("ssl_tlsv1_3", _B, True,
         "The 3.0.5 man page's (and Red Hat's) name for ssl_tlsv13: an alias; set both differently is an error."),
    ),
    "messages/banners": (
        ("banner_file", _S, None,
         "File whose contents form the 220 greeting (overrides ftpd_banner)."),
        ("dirmessage_enable", _B, False,
         "Show the contents of message_file when a client enters a directory (and at login)."),
        ("ftpd_banner", _S, None, "Text of the 220 greeting instead of \"(vsFTPd x.y.z)\"."),
        ("message_file", _S, ".message", "Name of the per-directory message file."),
    ),
    "directory-listing": (
        ("dirlist_enable", _B, True,
         "NO turns LIST/NLST/STAT-with-argument into 550 Permission denied."),
        ("force_dot_files", _B, False, "List dot-files even without -a (still hides . and ..)."),
        ("hide_file", _S, None,
         "Pattern of names omitted from listings but still accessible by name."),
        ("hide_ids", _B, False, "Show every owner and group as \"ftp\" in listings."),
        ("ls_recurse_enable", _B, False, "Allow \"LIST -R\" recursive listings (resource cost)."),
        ("text_userdb_names", _B, False,
         "Show user/group names instead of numeric ids in listings (costs lookups)."),
        ("use_localtime", _B, False,
         "Show local time instead of GMT in listings and MDTM (also interprets MDTM-set times as local)."),
        # default unknown (Debian patch, binary strings only): NO assumed
        ("utf8_filesystem", _B, False,
         "Present as a string in the Debian 12 vsftpd binary; not in its man page (distro patch)."),
    ),
    "sandbox/hardening": (
        ("isolate", _B, True,
         "Each session process (isolated mode) in new PID and IPC namespaces (falls back, logged once, if the kernel refuses)."),
        ("isolate_network", _B, True,
         "Session processes (isolated mode) in an empty network namespace; every socket they use is made by the root side and passed in (with port_promiscuous too, unlike vsftpd)."),
        ("nopriv_user", _S, "nobody",
         "Account used by the unprivileged pre-login and helper processes (should be dedicated, not nobody)."),
        ("ptrace_sandbox", _B, False,
         "Undocumented/experimental: ptrace-based syscall policy for one_process_model (32-bit builds only)."),
        ("seccomp_sandbox", _B, True,
         "Kill a session process that makes a system call off its allow-list (docs/SECCOMP.md); x86_64 Linux; both modes."),
    ),
}

_FTPWARDEN: dict[str, tuple[tuple[str, Kind, Value, str], ...]] = {
    "ftpwarden": (
        ("worker_processes", _I, 0,
         "Pooled mode: processes accepting on the one listening socket (0 = one per CPU core)."),
        ("user_db_file", _S, None, "Virtual user file, one `name:hash[:options]` per line."),
        ("tcp_wrappers_dir", _S, "/etc",
         "Directory of hosts.allow and hosts.deny read when tcp_wrappers=YES."),
        ("pooled", _B, False, "Use pooled mode even when started as root."),
        ("atomic_uploads", _B, False,
         "Write uploads to a hidden temporary name and rename it into place on success."),
        ("json_log_file", _S, None, "JSON-lines event log: a path, or \"-\" for stdout."),
        ("metrics_listen", _S, None,
         "ADDR:PORT of the HTTP listener serving /metrics (Prometheus) and /status (root or admin_group "
         "on loopback); unset = off."),
        ("control_socket", _S, None,
         "Path of the control socket that `ftpwarden who` and `ftpwarden kick` use (AF_UNIX, mode 0660 "
         "root:admin_group; root, admin_group and the server's own user may connect); unset = off. "
         "The packaged configuration sets /run/ftpwarden/control.sock."),
        ("admin_group", _S, None,
         "Group whose members may use the control socket (who, kick) and /status besides root; unset = root only."),
        ("upload_hook", _S, None,
         "Program run after each completed upload (after the atomic rename), the real path as its argument and "
         "FTPW_USER, FTPW_CLASS, FTPW_PATH, FTPW_VPATH, FTPW_SIZE, FTPW_CLIENT in its environment; unset = off."),
        ("upload_hook_sync", _B, False,
         "Run upload_hook before the final reply: exit 0 gives 226, anything else 550 and the file is removed "
         "(or moved to upload_quarantine_dir)."),
        ("upload_hook_timeout", _I, 60, "Seconds an upload_hook may run; then it is killed (sync: a refusal)."),
        ("upload_hook_user", _S, None,
         "Account upload_hook runs as; required when the server starts as root (a uid-0 account only if named "
         "here); not root, the hook runs as the server's user."),
        ("upload_hook_queue", _I, 64, "Hooks waiting to run at most (per runner); further ones are dropped "
         "(async) or refused (sync)."),
        ("upload_hook_concurrency", _I, 2, "Hooks running at once (per runner)."),
        ("upload_quarantine_dir", _S, None,
         "Where a file refused by a sync upload_hook is moved (same file system as the users' roots); "
         "unset = removed."),
        ("quota_bytes", _I, 0, "Default per-user byte quota (user-file option quota_bytes overrides); 0 = none."),
        ("quota_files", _I, 0, "Default per-user file-count quota (user-file option quota_files overrides); "
         "0 = none."),
        ("quota_state_dir", _S, "/var/lib/ftpwarden/quota",
         "Directory of the per-user usage files kept by the server (`ftpwarden quota recompute USER` repairs one)."),
        ("syslog_socket", _S, "/dev/log",
         "Local syslog socket (AF_UNIX datagram) that syslog_enable writes to; connected at start-up."),
        ("hash_enable", _B, True, "Offer the HASH command (draft-bryan-ftpext-hash)."),
        ("utf8_enable", _B, True, "Advertise UTF8 and treat paths as UTF-8 (RFC 2640)."),
        ("mlsd_enable", _B, True, "Offer the MLST and MLSD commands (RFC 3659)."),
        ("control_line_max", _I, 4096,
         "Longest control line accepted, in bytes; a longer line is refused."),
        ("login_timeout", _I, 60,
         "Seconds from connecting to a successful login; then 421 and close, whatever was sent."),
        ("user_max_rate", _I, 0,
         "Bytes/second for all sessions of one account together, across processes (0 = unlimited)."),
        ("implicit_ssl_port", _I, 0,
         "Also listen on this port with implicit TLS (FTPS on 990), beside explicit AUTH TLS (0 = off)."),
        ("ban_threshold", _I, 10,
         "Failed logins from one address within ban_window seconds that ban it for ban_seconds (0 = off)."),
        ("ban_seconds", _I, 600, "How long a banned address is refused (421 at connect), in seconds."),
        ("ban_window", _I, 600, "Failed logins older than this many seconds no longer count towards a ban."),
        ("session_isolation", _S, "identity",
         "Isolated mode: `identity` = one user process per identity hosts its sessions; "
         "`process` = one user process per session (vsftpd's model)."),
        ("identity_sessions_max", _I, 256,
         "Isolated mode: sessions one identity process hosts at most (>= 1); more open another process."),
        ("proxy_protocol_enable", _B, False,
         "Control connections start with a PROXY protocol v1/v2 header (HAProxy send-proxy[-v2]) whose client "
         "address becomes the session's; only from proxy_protocol_from, else closed before any reply."),
        ("proxy_protocol_from", _S, None,
         "Addresses or CIDR ranges (comma-separated) of the balancers allowed to send PROXY headers; required "
         "with proxy_protocol_enable.  Passive data connections from them must carry a header too."),
        ("user_db_url", _S, None,
         "postgresql://... of a user store beside user_db_file (same hashes and per-user options); schema by "
         "`ftpwarden db init`; unreachable: its logins get 421."),
        ("state_db_url", _S, None,
         "postgresql://... shared by every node: failed logins and bans (a ban holds on all nodes within a "
         "second) and user_max_rate budgets; unset = each node keeps its own."),
        ("node_name", _S, None,
         "This node's name in state_db_url's tables (default: host name and listen port)."),
    ),
}


def _build() -> dict[str, Tunable]:
    table: dict[str, Tunable] = {}
    for origin, groups in (("vsftpd", _VSFTPD), ("ftpwarden", _FTPWARDEN)):
        for group, rows in groups.items():
            for name, kind, default, doc in rows:
                if name in table:
                    raise AssertionError(f"tunable {name!r} listed twice")
                implemented = origin == "ftpwarden" or name in _IMPLEMENTED
                table[name] = Tunable(name, kind, default, doc, origin, implemented,
                                      octal=name in _OCTAL, group=group,
                                      refused=_REFUSED.get(name, ""))
    for names, label in ((_IMPLEMENTED, "_IMPLEMENTED"), (_REFUSED.keys(), "_REFUSED")):
        if not set(names).issubset(table.keys()):
            raise AssertionError(f"unknown in {label}: {sorted(set(names) - table.keys())}")
    if both := _IMPLEMENTED & _REFUSED.keys():
        raise AssertionError(f"both implemented and refused: {sorted(both)}")
    return table


TUNABLES: dict[str, Tunable] = _build()


def format_value(t: Tunable, value: Value) -> str:
    """`value` as written in vsftpd.conf: YES/NO, 077 for octal, "" for unset."""
    if value is None:
        return ""
    if t.kind is Kind.BOOL:
        return "YES" if value else "NO"
    if t.octal:
        return f"0{value:o}"  # vsftpd reads a leading 0 as octal
    return str(value)


def format_tunables(names: Iterable[str] | None = None) -> str:
    """Listing for `ftpwarden tunables`, in table order under group headings.

    An unknown name raises KeyError.
    """
    rows = list(TUNABLES.values()) if names is None else [TUNABLES[n] for n in names]
    cells = [(t.name, t.kind.value, format_value(t, t.default) or "(none)",
              t.status, t.doc + (f" REFUSED: {t.refused}" if t.refused else "")) for t in rows]
    head = ("NAME", "TYPE", "DEFAULT", "IMPL", "DESCRIPTION")
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]

    def line(c: tuple[str, ...]) -> str:
        return "  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4]

    out, group = [line(head)], None
    for t, c in zip(rows, cells, strict=True):
        if t.group != group:
            group = t.group
            out.append(f"\n[{group}]")
        out.append(line(c))
    out.append("\nIMPL=refused: a non-default value is ignored on purpose, for the reason given.")
    if any(t.status == "no" for t in rows):
        out.append("IMPL=no: accepted so vsftpd.conf files load, but it has no effect yet.")
    return "\n".join(out) + "\n"
