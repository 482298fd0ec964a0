"""The benchmark's shared fixture: one data directory, one test user, one certificate.

Every server serves the same directory to the same user (benchuser/benchpass):

    <tmp>/data/big.bin      the big file (--size-big), random bytes, sha256 known
    <tmp>/data/c10m.bin     10 MiB, for `concurrent`
    <tmp>/data/small/       N files of 8 KiB, for `retr_small`
    <tmp>/data/list/        10,000 empty files, for `list_big`
    <tmp>/data/up/          where uploads land (checked, then deleted)

As root (and only if vsftpd is wanted), benchuser also becomes a system user with
that password, and /etc/pam.d/ftpwarden-bench is written for vsftpd; benchcheap
becomes one too, with a cheap SHA-512 hash (vsftpd's login cost beyond the check).
As root, for the local-users workload (idle_local), ten system users ftpwb_0..9 are
made with the same password (cheap SHA-512 hashes: their logins are not what is
measured). At the end the users and the PAM file are removed (those this run made, and
what earlier runs left), unless another run is going on: the last one to end removes them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["USER", "PASSWORD", "CHEAP_USER", "LOCAL_USERS", "Sizes", "Fixture", "SRC", "REPO", "BENCH",
           "SECURE_CHROOT_DIR", "sha256_file", "first_line"]

USER, PASSWORD = "benchuser", "benchpass"
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SRC = REPO / "src"
PAM_SERVICE = "ftpwarden-bench"
PAM_FILE = Path("/etc/pam.d") / PAM_SERVICE
PAM_TEXT = "auth required pam_unix.so\naccount required pam_unix.so\n"
SECURE_CHROOT_DIR = Path("/var/run/vsftpd/empty")  # Debian's; both vsftpd and isolated ftpwarden use it
RUN_PID = "run.pid"  # in the temp dir: the pid of the run that made it
SMALL_SIZE = 8 * 1024
CONC_SIZE = 10 * 1024 * 1024


@dataclass
class Sizes:
    big: int = 1 << 30          # retr_big / stor_big (and TLS variants), ceiling streams
    small_files: int = 2000     # retr_small
    list_entries: int = 10000   # list_big
    login_clients: int = 16     # login_rate
    login_seconds: float = 5.0
    concurrent: int = 200       # concurrent
    concurrent_seconds: float = 8.0
    idle_sessions: int = 3000   # idle_sessions (anonymous)
    idle_local: int = 1000      # idle_local (sessions of the 10 local users LOCAL_USERS)
    idle_tls: int = 1000        # idle_tls (explicit FTPS sessions of benchuser)
    failed_logins: int = 200    # failed_logins (parallel clients, each one wrong PASS)


CHEAP_USER = "benchcheap"  # same password, hashed as cheaply as each server allows
LOCAL_USERS = [f"ftpwb_{i}" for i in range(10)]  # system users of idle_local
CHEAP_ROUNDS = "1000"  # SHA-512 crypt's fewest rounds: a check costs well under a millisecond


def cheap_hash(password: str) -> str:
    """ftpwarden's scrypt format at ln=1, r=1, p=1: a check costs microseconds, so a login
    as this user measures the server's own work per login without subtracting a hash."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii").rstrip("=")  # noqa: E731
    return f"$scrypt$ln=1,r=1,p=1${b64(salt)}${b64(digest)}"


@dataclass
class Fixture:
    sizes: Sizes
    want_system_user: bool
    keep: bool = False
    want_local_users: bool = False
    tmp: Path = field(init=False)
    data: Path = field(init=False)
    big_sha256: str = ""
    userdb: Path | None = None
    userdb_error: str | None = None
    cert: Path | None = None
    key: Path | None = None
    cert_error: str | None = None
    system_user: bool = False
    system_user_error: str | None = None
    local_users: bool = False
    local_users_error: str | None = None
    _created_users: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ftpwarden-bench-"))
        os.chmod(self.tmp, 0o755)  # vsftpd's benchuser must traverse it
        (self.tmp / RUN_PID).write_text(str(os.getpid()))  # this run is going on (see _other_runs)
        self.data = self.tmp / "data"

    # -- building ------------------------------------------------------------------
    def build(self, log=print) -> None:
        self.data.mkdir()
        (self.data / "up").mkdir()
        os.chmod(self.data / "up", 0o1777)  # whatever uid a server's session runs as may upload
        log(f"  data: {self.data} (big file {self.sizes.big / 2**20:.0f} MiB)")
        self.big_sha256 = _random_file(self.data / "big.bin", self.sizes.big)
        _random_file(self.data / "c10m.bin", CONC_SIZE)
        small = self.data / "small"
        small.mkdir()
        blob = os.urandom(SMALL_SIZE)
        for i in range(self.sizes.small_files):
            (small / f"f{i:05d}.bin").write_bytes(blob)
        lst = self.data / "list"
        lst.mkdir()
        for i in range(self.sizes.list_entries):
            (lst / f"entry-{i:05d}.dat").touch()
        self._make_cert()
        self._make_userdb()
        if os.geteuid() == 0:
            SECURE_CHROOT_DIR.mkdir(parents=True, exist_ok=True)
        if self.want_system_user:
            self._make_system_user()
        if self.want_local_users and os.geteuid() == 0:
            self._make_local_users()

    def _make_cert(self) -> None:
        cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                            "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            self.cert, self.key = cert, key
        else:
            self.cert_error = f"openssl req failed: {first_line(r.stderr)}"

    def _make_userdb(self) -> None:
        db = self.tmp / "users.db"
        env = dict(os.environ, PYTHONPATH=str(SRC))
        try:
            r = subprocess.run([sys.executable, "-m", "ftpwarden", "user", "add", "--db", str(db), USER,
                                "--root", str(self.data), "--write"],
                               input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.userdb_error = f"ftpwarden user add: {e}"
            return
        if r.returncode == 0 and db.exists():
            self.userdb = db
            with open(db, "a") as f:  # login_rate's second user: what a login costs beyond the hash
                f.write(f"{CHEAP_USER}:{cheap_hash(PASSWORD)}:root={self.data},write=yes\n")
        else:
            self.userdb_error = f"ftpwarden user add failed: {first_line(r.stderr or r.stdout)}"

    def userdb_hash(self) -> str | None:
        if self.userdb is None:
            return None
        for line in self.userdb.read_text().splitlines():
            if line.startswith(USER + ":"):
                return line.split(":")[1]
        return None

    def _add_user(self, name: str) -> None:
        """A system user `name` with DATA as home, unless it exists (kept as it is: another
        run going on now may be using it; its password is set again, to the same)."""
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-d", str(self.data), "-s", "/bin/bash", name],
                           check=True, capture_output=True, timeout=60)
            self._created_users.append(name)

    def _set_passwords(self, names: list[str], cheap: bool) -> None:
        argv = ["chpasswd"] + (["-c", "SHA512", "-s", CHEAP_ROUNDS] if cheap else [])
        subprocess.run(argv, input="".join(f"{n}:{PASSWORD}\n" for n in names), text=True,
                       check=True, capture_output=True, timeout=60)

    def _make_system_user(self) -> None:
        try:
            self._add_user(USER)
            self._set_passwords([USER], cheap=False)  # Debian's default: yescrypt
            self._add_user(CHEAP_USER)
            self._set_passwords([CHEAP_USER], cheap=True)
            if not PAM_FILE.exists():
                PAM_FILE.write_text(PAM_TEXT)
            elif PAM_FILE.read_text() != PAM_TEXT:
                raise RuntimeError(f"{PAM_FILE} exists with other content; not touching it")
            uid, gid = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid
            for dirpath, _dirnames, filenames in os.walk(self.data):
                os.chown(dirpath, uid, gid)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), uid, gid)
            self.system_user = True
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            err = getattr(e, "stderr", None)
            self.system_user_error = f"system user setup failed: {first_line(err) if err else e}"

    def _make_local_users(self) -> None:
        try:
            for name in LOCAL_USERS:
                self._add_user(name)
            self._set_passwords(LOCAL_USERS, cheap=True)
            if not PAM_FILE.exists():
                PAM_FILE.write_text(PAM_TEXT)
            self.local_users = True
        except (OSError, subprocess.SubprocessError) as e:
            err = getattr(e, "stderr", None)
            self.local_users_error = f"local users setup failed: {first_line(err) if err else e}"

    def shadow_hash(self, user: str = USER) -> str | None:
        try:
            with open("/etc/shadow") as f:
                for line in f:
                    if line.startswith(user + ":"):
                        return line.split(":")[1]
        except OSError:
            pass
        return None

    # -- teardown -------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove the users and the PAM file this run made, and those a bench run left (home in a
        bench temp dir that is gone), unless another run is going on now: the last one removes them."""
        if not self._other_runs():
            for name in [USER, CHEAP_USER, *LOCAL_USERS]:
                if name in self._created_users or self._leftover(name):
                    subprocess.run(["userdel", name], capture_output=True, timeout=60)
            try:
                if PAM_FILE.read_text() == PAM_TEXT:  # ours by its content, whichever run wrote it
                    PAM_FILE.unlink()
            except OSError:
                pass
        self._created_users.clear()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _leftover(self, name: str) -> bool:
        """`name`'s home is this run's data or a bench temp dir that is gone."""
        try:
            home = pwd.getpwnam(name).pw_dir
        except KeyError:
            return False
        if home.startswith(str(self.tmp) + "/"):
            return True
        return home.startswith(tempfile.gettempdir() + "/ftpwarden-bench-") and not os.path.exists(home)

    def _other_runs(self) -> bool:
        """Another run is going on now: its temp dir names a live pid, or a process works in
        it (each server runs there). It may be using the users and the PAM file."""
        dirs = [d for d in Path(tempfile.gettempdir()).glob("ftpwarden-bench-*") if d != self.tmp]
        for d in dirs:
            try:
                pid = int((d / RUN_PID).read_text())
            except (OSError, ValueError):
                continue
            if pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
                return True
        if not dirs:
            return False
        for name in os.listdir("/proc"):
            try:
                cwd = os.readlink(f"/proc/{name}/cwd") if name.isdigit() else ""
            except OSError:
                continue
            if any(cwd == str(d) or cwd.startswith(f"{d}/") for d in dirs):
                return True
        return False


def _random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256."""
    h = hashlib.sha256()
    chunk = 16 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            block = os.urandom(min(chunk, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                return h.hexdigest()
            h.update(view[:n])


def first_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return "(no output)"
