"""The clients of the matrix, each driven as a user drives it, at its default settings.

Every adapter says which transports and operations the client has, and which
options it is given beyond its defaults (`options`, shown in docs/CLIENTS.md):
only what a user must set to trust a self-signed certificate, to use FTPS at
all, to script it, or to stop it from silently retrying a failed transfer (a
retry would hide the very failures the matrix counts).
"""

from __future__ import annotations

import html
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .servers import Endpoint

__all__ = ["CLIENTS", "Client", "Outcome", "configure"]

TIMEOUT = 45.0      # one client run, small transfers
BIG_TIMEOUT = 150.0  # one 64 MiB transfer on a busy 2-core machine
_ERROR_REPLY = re.compile(r"^[45]\d\d[ -].*", re.M)  # tnftp -v prints the server's replies
_LFTP_TRANSIENT = re.compile(r"^<--- 4\d\d[ -].*", re.M)  # lftp -d: a 4xx reply, even if a retry then worked
_ENV: dict[str, str] = {}


def configure(home: Path) -> None:
    """Run every client with an empty HOME (no ~/.lftprc, ~/.curlrc, ~/.netrc, rclone.conf: the
    defaults are the package's own) and no proxy variables."""
    home.mkdir(exist_ok=True)
    (home / "rclone.conf").write_text("")
    _ENV.clear()
    _ENV.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=str(home), LANG="C.UTF-8",
                TMPDIR=str(home), RCLONE_CONFIG=str(home / "rclone.conf"))


@dataclass(frozen=True)
class Outcome:
    ok: bool       # the client reported success
    output: str    # what it printed (for listings: the listing)
    seconds: float


def _run(argv: list[str], *, cwd: Path | None = None,
         stdin: str | None = None, timeout: float = TIMEOUT, bad_reply: re.Pattern[str] | None = None) -> Outcome:
    """Run one client; ok = exit status 0 and no line of its output matches bad_reply."""
    start = time.monotonic()
    try:
        r = subprocess.run(argv, cwd=cwd, env=_ENV or None, input=stdin, capture_output=True, text=True,
                           errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as e:  # run() has killed it
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (e.stdout, e.stderr) if x)
        return Outcome(False, f"{out}\n[killed after {timeout:.0f} s]", time.monotonic() - start)
    text = r.stdout + r.stderr
    ok = r.returncode == 0 and not (bad_reply and bad_reply.search(text))
    bad = bad_reply.findall(text) if bad_reply else []
    why = f"[exit status {r.returncode}]" if r.returncode else f"[exit status 0, but {len(bad)} failure replies]"
    return Outcome(ok, text if ok else "\n".join([*bad, text, why]), time.monotonic() - start)


class Client:
    name = ""
    package = ""           # Debian package, for the version
    tls_library = ""
    transports: tuple[str, ...] = ("plain",)
    listings: tuple[str, ...] = ("list",)   # of list (LIST), nlst (NLST), mlsd (MLSD)
    can_upload = True
    can_resume_download = True
    can_resume_upload = True
    options: dict[str, str] = {}
    defects: dict[str, str] = {}  # case -> a defect of the client (seen with vsftpd too): not run

    def version(self) -> str:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", self.package], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() or "not installed"

    def download(self, ep: Endpoint, remote: str, local: Path, big: bool = False) -> Outcome:
        raise NotImplementedError

    def upload(self, ep: Endpoint, local: Path, remote: str, big: bool = False) -> Outcome:
        raise NotImplementedError

    def listing(self, ep: Endpoint, kind: str, remote_dir: str) -> Outcome:
        raise NotImplementedError

    def resume_download(self, ep: Endpoint, remote: str, local: Path) -> Outcome:
        raise NotImplementedError

    def resume_upload(self, ep: Endpoint, local: Path, remote: str, offset: int) -> Outcome:
        raise NotImplementedError


def _url(ep: Endpoint, path: str, scheme: str | None = None, creds: bool = False) -> str:
    scheme = scheme or ("ftps" if ep.transport == "implicit" else "ftp")
    who = f"{quote(ep.user)}:{quote(ep.password)}@" if creds else ""
    return f"{scheme}://{who}{ep.host}:{ep.port}{quote(path)}"


class Curl(Client):
    name, package, tls_library = "curl", "curl", "OpenSSL"
    transports = ("plain", "explicit", "implicit")
    listings = ("list", "nlst")
    options = {"explicit": "--ssl-reqd -k", "implicit": "ftps:// URL, -k"}

    def _curl(self, ep: Endpoint, *args: str, big: bool = False) -> Outcome:
        tls = {"plain": [], "explicit": ["--ssl-reqd", "-k"], "implicit": ["-k"]}[ep.transport]
        return _run(["curl", "-sS", *tls, "-u", f"{ep.user}:{ep.password}", *args],
                    timeout=BIG_TIMEOUT if big else TIMEOUT)

    def download(self, ep, remote, local, big=False):
        return self._curl(ep, "-o", str(local), _url(ep, remote), big=big)

    def upload(self, ep, local, remote, big=False):
        return self._curl(ep, "-T", str(local), _url(ep, remote), big=big)

    def listing(self, ep, kind, remote_dir):
        return self._curl(ep, *(["--list-only"] if kind == "nlst" else []), _url(ep, remote_dir + "/"))

    def resume_download(self, ep, remote, local):
        return self._curl(ep, "-C", "-", "-o", str(local), _url(ep, remote))

    def resume_upload(self, ep, local, remote, offset):
        return self._curl(ep, "-C", "-", "-T", str(local), _url(ep, remote))


class Lftp(Client):
    name, package, tls_library = "lftp", "lftp", "GnuTLS"
    transports = ("plain", "explicit", "implicit")
    listings = ("list", "nlst", "mlsd")
    options = {"all": "-d (to see replies); set cmd:fail-exit yes; set net:max-retries 1; "
                      "set net:reconnect-interval-base 1 (lftp still retries a transfer that made progress: "
                      "any 4xx reply fails the case)",
               "explicit": "set ssl:verify-certificate no (AUTH TLS and PROT P are lftp's defaults)",
               "implicit": "ftps:// URL, set ssl:verify-certificate no"}

    def _lftp(self, ep: Endpoint, commands: str, big: bool = False) -> Outcome:
        pre = "set cmd:fail-exit yes; set net:max-retries 1; set net:reconnect-interval-base 1; "
        if ep.transport != "plain":
            pre += "set ssl:verify-certificate no; "
        site = f"ftps://{ep.host}" if ep.transport == "implicit" else ep.host
        return _run(["lftp", "-d", "-u", f"{ep.user},{ep.password}", "-p", str(ep.port), "-e",
                     f"{pre}{commands}; bye", site], timeout=BIG_TIMEOUT if big else TIMEOUT,
                    bad_reply=_LFTP_TRANSIENT)

    def download(self, ep, remote, local, big=False):
        return self._lftp(ep, f"get {shlex.quote(remote)} -o {shlex.quote(str(local))}", big)

    def upload(self, ep, local, remote, big=False):
        return self._lftp(ep, f"put {shlex.quote(str(local))} -o {shlex.quote(remote)}", big)

    def listing(self, ep, kind, remote_dir):
        verb = {"list": "ls", "nlst": "nlist", "mlsd": "cls -1"}[kind]  # cls reads MLSD when offered
        return self._lftp(ep, f"{verb} {shlex.quote(remote_dir)}")

    def resume_download(self, ep, remote, local):
        return self._lftp(ep, f"get -c {shlex.quote(remote)} -o {shlex.quote(str(local))}")

    def resume_upload(self, ep, local, remote, offset):
        return self._lftp(ep, f"put -c {shlex.quote(str(local))} -o {shlex.quote(remote)}")


class Wget(Client):
    name, package, tls_library = "wget", "wget", "GnuTLS"
    transports = ("plain", "explicit", "implicit")
    can_upload = can_resume_upload = False
    options = {"all": "-nv (less output); --tries=1 (no silent retries)",
               "explicit": "ftps:// URL, --no-check-certificate",
               "implicit": "ftps:// URL, --ftps-implicit --no-check-certificate"}

    def _wget(self, ep: Endpoint, *args: str, cwd: Path | None = None, big: bool = False) -> Outcome:
        tls = {"plain": [], "explicit": ["--no-check-certificate"],
               "implicit": ["--ftps-implicit", "--no-check-certificate"]}[ep.transport]
        return _run(["wget", "-nv", "--tries=1", *tls, *args], cwd=cwd, timeout=BIG_TIMEOUT if big else TIMEOUT)

    def _u(self, ep: Endpoint, path: str) -> str:
        return _url(ep, path, "ftp" if ep.transport == "plain" else "ftps", creds=True)

    def download(self, ep, remote, local, big=False):
        return self._wget(ep, "-O", str(local), self._u(ep, remote), big=big)

    def listing(self, ep, kind, remote_dir):
        """wget turns LIST into an HTML index."""
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "index.html"
            r = self._wget(ep, "-O", str(out), self._u(ep, remote_dir + "/"))
            text = html.unescape(out.read_text(errors="replace")) if out.exists() else ""
        return Outcome(r.ok, text if r.ok else r.output, r.seconds)

    def resume_download(self, ep, remote, local):
        assert local.name == Path(remote).name  # wget -c continues the file named as the remote one
        return self._wget(ep, "-c", self._u(ep, remote), cwd=local.parent)


class Tnftp(Client):
    name, package, tls_library = "tnftp", "tnftp", "(no FTPS)"
    listings = ("list", "nlst", "mlsd")
    options = {"plain": "URLs on the command line (auto-fetch, -u to upload); a command script on stdin "
                        "for listings and resumes (-n -v: log in from the script, print the replies)"}

    def _script(self, ep: Endpoint, commands: list[str]) -> Outcome:
        lines = [f"open {ep.host} {ep.port}", f"user {ep.user} {ep.password}", *commands, "quit", ""]
        return _run(["tnftp", "-n", "-v"], stdin="\n".join(lines), bad_reply=_ERROR_REPLY)

    def download(self, ep, remote, local, big=False):
        return _run(["tnftp", "-o", str(local), _url(ep, remote, creds=True)],
                    timeout=BIG_TIMEOUT if big else TIMEOUT)

    def upload(self, ep, local, remote, big=False):
        return _run(["tnftp", "-u", _url(ep, remote, creds=True), str(local)],
                    timeout=BIG_TIMEOUT if big else TIMEOUT)

    def listing(self, ep, kind, remote_dir):
        verb = {"list": "ls", "nlst": "nlist", "mlsd": "mlsd"}[kind]
        return self._script(ep, [f"{verb} {remote_dir}"])

    def resume_download(self, ep, remote, local):
        return self._script(ep, [f"reget {remote} {local}"])

    def resume_upload(self, ep, local, remote, offset):
        return self._script(ep, [f"restart {offset}", f"put {local} {remote}"])


class Ncftp(Client):
    name, package, tls_library = "ncftp", "ncftp", "(no FTPS)"
    listings = ("list", "nlst", "mlsd")
    defects = {"resume-upload": "ncftpput -z sends REST 307200, then the whole file from its first byte "
                                "(sendfile), so the server's copy is 300 KiB too long; the same with "
                                "vsftpd 3.0.3 and pyftpdlib"}
    options = {"plain": "ncftpget/ncftpput/ncftpls with -u -p -P, -d /dev/stderr (to see replies); ncftpput -z "
                        "to resume (ncftpget resumes by default); ncftpls -l (LIST), -1 (NLST), -m (MLSD)"}

    def _login(self, ep: Endpoint) -> list[str]:
        return ["-u", ep.user, "-p", ep.password, "-P", str(ep.port), "-d", "/dev/stderr"]

    def download(self, ep, remote, local, big=False):
        assert local.name == Path(remote).name  # ncftpget names the file as the remote one
        return _run(["ncftpget", *self._login(ep), ep.host, str(local.parent), remote],
                    timeout=BIG_TIMEOUT if big else TIMEOUT)

    def upload(self, ep, local, remote, big=False):
        assert local.name == Path(remote).name
        return _run(["ncftpput", *self._login(ep), ep.host, str(Path(remote).parent), str(local)],
                    timeout=BIG_TIMEOUT if big else TIMEOUT)

    def listing(self, ep, kind, remote_dir):
        flag = {"list": "-l", "nlst": "-1", "mlsd": "-m"}[kind]
        return _run(["ncftpls", *self._login(ep), flag, f"ftp://{ep.host}{quote(remote_dir)}/"])

    def resume_download(self, ep, remote, local):
        assert local.name == Path(remote).name
        return _run(["ncftpget", *self._login(ep), ep.host, str(local.parent), remote])

    def resume_upload(self, ep, local, remote, offset):
        assert local.name == Path(remote).name
        return _run(["ncftpput", *self._login(ep), "-z", ep.host, str(Path(remote).parent), str(local)])


class Rclone(Client):
    name, package, tls_library = "rclone", "rclone", "Go crypto/tls"
    transports = ("plain", "explicit", "implicit")
    listings = ("mlsd",)  # rclone lists with MLSD when the server offers it
    can_resume_download = can_resume_upload = False  # rclone's FTP backend restarts, never resumes
    options = {"all": "an on-the-fly remote `:ftp,host=,port=,user=,pass=$(rclone obscure ...)` (no config "
                      "file), --retries 1 --low-level-retries 1 (no silent retries)",
               "explicit": "explicit_tls=true,no_check_certificate=true",
               "implicit": "tls=true,no_check_certificate=true"}
    _obscured: dict[str, str] = {}

    def _remote(self, ep: Endpoint, path: str) -> str:
        if ep.password not in self._obscured:
            r = subprocess.run(["rclone", "obscure", ep.password], env=_ENV or None, capture_output=True, text=True,
                               timeout=30)
            self._obscured[ep.password] = r.stdout.strip()
        tls = {"plain": "", "explicit": ",explicit_tls=true,no_check_certificate=true",
               "implicit": ",tls=true,no_check_certificate=true"}[ep.transport]
        return f":ftp,host={ep.host},port={ep.port},user={ep.user},pass={self._obscured[ep.password]}{tls}:{path}"

    def _rclone(self, *args: str, big: bool = False) -> Outcome:
        return _run(["rclone", "--retries", "1", "--low-level-retries", "1", *args],
                    timeout=BIG_TIMEOUT if big else TIMEOUT)

    def download(self, ep, remote, local, big=False):
        return self._rclone("copyto", self._remote(ep, remote), str(local), big=big)

    def upload(self, ep, local, remote, big=False):
        return self._rclone("copyto", str(local), self._remote(ep, remote), big=big)

    def listing(self, ep, kind, remote_dir):
        return self._rclone("lsf", self._remote(ep, remote_dir))


class Ftplib(Client):
    name, package, tls_library = "ftplib", "python3.11", ssl.OPENSSL_VERSION
    transports = ("plain", "explicit")
    listings = ("list", "nlst", "mlsd")
    options = {"explicit": "FTP_TLS subclass passing session= to resume the control TLS session on data "
                           "connections (the stock class gets 522, as from vsftpd); CERT_NONE context"}
    _script = str(Path(__file__).with_name("ftplib_client.py"))

    def version(self) -> str:
        return sys.version.split()[0]

    def _ftplib(self, op: str, ep: Endpoint, remote: str, local: Path | None = None, big: bool = False) -> Outcome:
        return _run([sys.executable, self._script, op, ep.transport, ep.host, str(ep.port), ep.user, ep.password,
                     remote, *([str(local)] if local else [])], timeout=BIG_TIMEOUT if big else TIMEOUT)

    def download(self, ep, remote, local, big=False):
        return self._ftplib("download", ep, remote, local, big)

    def upload(self, ep, local, remote, big=False):
        return self._ftplib("upload", ep, remote, local, big)

    def listing(self, ep, kind, remote_dir):
        return self._ftplib(kind, ep, remote_dir)

    def resume_download(self, ep, remote, local):
        return self._ftplib("resume-download", ep, remote, local)

    def resume_upload(self, ep, local, remote, offset):
        return self._ftplib("resume-upload", ep, remote, local)

    def stock_tls(self, ep: Endpoint, remote: str) -> Outcome:
        return self._ftplib("stock-tls", ep, remote)


CLIENTS: dict[str, Client] = {c.name: c for c in (Curl(), Lftp(), Wget(), Tnftp(), Ncftp(), Rclone(), Ftplib())}
