"""seccomp_sandbox: a syscall allow-list for every process that parses client bytes.

Installed last, after the privilege drop (and in pooled mode after the
listeners are bound), with SECCOMP_FILTER_FLAG_TSYNC so every thread of the
process has it.  A syscall not on the list kills the whole process
(SECCOMP_RET_KILL_PROCESS, SIGSYS): its session ends, and the broker logs it.

The BPF program is written here (no libseccomp): check the architecture is
x86_64 (anything else is killed), refuse x32 numbers, then a binary search on
the number over the rules.  A few rules also check an argument where that buys
real safety and stays simple (threads only, no executable mappings, socket
families, signals and rlimits to this process only, short ioctl, fcntl and
prctl lists).

One list per kind of process (`KINDS`); docs/SECCOMP.md says why each call is
there (a unit test keeps the two in step).  Not x86_64: `install` does nothing
(`SUPPORTED` is False; the broker and pooled mode say so once at start).
"""

from __future__ import annotations

# Loaded now, in the process that forks the sandboxed ones: thread pools are often made
# after the install, and no module can be mapped executable then (queue's C part, _queue,
# would be missed silently: queue falls back to Python)
import concurrent.futures.thread  # noqa: F401
import ctypes
import errno
import fcntl
import logging
import os
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Rule", "KINDS", "SUPPORTED", "SeccompError", "install", "installer", "program", "rules", "NUMBERS",
           "warn_unsupported", "exit_status", "report_sigsys"]

log = logging.getLogger("ftpwarden.seccomp")

SUPPORTED = os.uname().machine == "x86_64" and sys.maxsize > 1 << 32

# struct seccomp_data: nr, arch, instruction_pointer, args[6] (little-endian: low word first)
_NR, _ARCH = 0, 4
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000

KILL = 0x80000000  # SECCOMP_RET_KILL_PROCESS
ALLOW = 0x7FFF0000
LOG = 0x7FFC0000  # diagnosis only (FTPWARDEN_SECCOMP=log): allowed, and logged by the kernel


def errno_of(code: int) -> int:
    return 0x00050000 | code  # SECCOMP_RET_ERRNO


# classic BPF opcodes
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA: a 32-bit offset, where 8-bit jt/jf may not reach

_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_NR_SECCOMP = 317
_PR_SET_NO_NEW_PRIVS = 38

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl) of every call named below
NUMBERS: dict[str, int] = {
    "read": 0, "write": 1, "close": 3, "fstat": 5, "poll": 7, "lseek": 8, "mmap": 9, "mprotect": 10,
    "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16,
    "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "select": 23, "sched_yield": 24,
    "mremap": 25, "madvise": 28, "dup": 32, "dup2": 33, "nanosleep": 35, "getpid": 39, "sendfile": 40,
    "socket": 41, "connect": 42, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47,
    "shutdown": 48, "bind": 49, "listen": 50, "getsockname": 51, "getpeername": 52, "socketpair": 53,
    "setsockopt": 54, "getsockopt": 55, "clone": 56, "exit": 60, "uname": 63, "fcntl": 72,
    "flock": 73, "fsync": 74, "fdatasync": 75, "ftruncate": 77, "getcwd": 79, "chdir": 80,
    "fchdir": 81, "fchmod": 91, "fchown": 93, "umask": 95, "gettimeofday": 96, "getuid": 102,
    "getgid": 104, "geteuid": 107, "getegid": 108, "getppid": 110, "getgroups": 115,
    "getresuid": 118, "getresgid": 120, "sigaltstack": 131, "statfs": 137, "fstatfs": 138,
    "prctl": 157, "gettid": 186, "time": 201, "futex": 202, "sched_getaffinity": 204,
    "getdents64": 217, "set_tid_address": 218, "restart_syscall": 219, "clock_gettime": 228,
    "clock_getres": 229, "clock_nanosleep": 230, "exit_group": 231, "epoll_wait": 232,
    "epoll_ctl": 233, "tgkill": 234, "openat": 257, "mkdirat": 258, "fchownat": 260,
    "newfstatat": 262, "unlinkat": 263, "renameat": 264, "linkat": 265, "symlinkat": 266,
    "readlinkat": 267, "fchmodat": 268, "faccessat": 269, "pselect6": 270, "ppoll": 271,
    "set_robust_list": 273, "utimensat": 280, "epoll_pwait": 281, "fallocate": 285, "accept4": 288,
    "eventfd2": 290, "epoll_create1": 291, "dup3": 292, "pipe2": 293, "preadv": 295, "pwritev": 296,
    "prlimit64": 302, "renameat2": 316, "getrandom": 318, "statx": 332, "rseq": 334,
    "close_range": 436, "clone3": 435, "openat2": 437, "faccessat2": 439, "epoll_pwait2": 441,
    "fchmodat2": 452, "access": 21, "rename": 82, "mkdir": 83, "rmdir": 84, "unlink": 87, "readlink": 89,
    "chmod": 90, "sendmmsg": 307,
}

_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16
_CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: a thread stays in our namespaces
_CLONE_NEW_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK,
# F_OFD_SETLK, F_OFD_SETLKW, F_DUPFD_CLOEXEC: not F_SETOWN / F_SETSIG (SIGIO to another process)
_FCNTLS = (0, 1, 2, 3, 4, 5, 6, 7, 36, 37, 38, 1030)
_PROT_EXEC = 0x4
_PR_GET_DUMPABLE, _PR_SET_NAME, _PR_GET_NAME = 3, 15, 16
_PR_SET_VMA = 0x53564D41  # glibc names its anonymous mappings with it (where the kernel allows)
# FIONBIO (socket.setblocking), TCGETS (isatty: io.open asks), FIOCLEX / FIONCLEX,
# FIONREAD and TIOCOUTQ (= SIOCINQ / SIOCOUTQ: bytes queued on a socket)
_IOCTLS = (0x5421, 0x5401, 0x5451, 0x5450, 0x541B, 0x5411)
_SELF = -1  # in Rule.values: this process's pid, filled in at install


@dataclass(frozen=True)
class Rule:
    """One syscall: allowed (or `action`), or allowed only when argument `arg` passes its check;
    a call failing the check gets `otherwise`.  `why`: what in this process needs it."""

    name: str
    why: str
    arg: int | None = None
    values: tuple[int, ...] = ()  # the argument must be one of these
    required_bits: int = 0  # ... or must have these bits
    denied_bits: int = 0  # ... and none of these
    otherwise: int = KILL
    action: int = ALLOW


# Every process kind: an asyncio loop, threads, TLS, the channel to the broker.
_BASE: tuple[Rule, ...] = (
    Rule("epoll_wait", "the asyncio loop waits"),
    Rule("read", "sockets, files, the channel"),
    Rule("write", "sockets, files"),
    Rule("recvfrom", "socket.recv on the control and data connections"),
    Rule("sendto", "socket.send"),
    Rule("futex", "locks between threads (GIL, asyncio.to_thread)"),
    Rule("epoll_ctl", "the loop registers a socket"),
    Rule("recvmsg", "the channel: a message and its descriptors (SCM_RIGHTS)"),
    Rule("sendmsg", "the channel: a message and its descriptors (SCM_RIGHTS)"),
    Rule("getpid", "logs, asyncio"),
    Rule("close", "descriptors"),
    Rule("mmap", "memory; never executable (EPERM): no code is loaded after start", arg=2,
         denied_bits=_PROT_EXEC, otherwise=errno_of(errno.EPERM)),
    Rule("munmap", "memory"),
    Rule("mprotect", "thread stack guards, malloc; never executable (EPERM)", arg=2,
         denied_bits=_PROT_EXEC, otherwise=errno_of(errno.EPERM)),
    Rule("madvise", "malloc gives memory back"),
    Rule("mremap", "realloc of large buffers"),
    Rule("brk", "malloc"),
    Rule("fcntl", "O_NONBLOCK, FD_CLOEXEC, F_DUPFD_CLOEXEC, record locks (lock_upload_files); any other "
         "command fails with EINVAL (no F_SETOWN: SIGIO to another process)", arg=1, values=_FCNTLS,
         otherwise=errno_of(errno.EINVAL)),
    Rule("ioctl", "FIONBIO (setblocking), TCGETS (isatty), FIOCLEX, FIONREAD, TIOCOUTQ; any other "
         "request fails with ENOTTY (no TIOCSTI into a terminal on stderr)", arg=1, values=_IOCTLS,
         otherwise=errno_of(errno.ENOTTY)),
    Rule("getsockopt", "SO_ERROR after a connect, TLS"),
    Rule("setsockopt", "TCP_NODELAY, buffer sizes, SO_LINGER"),
    Rule("getsockname", "the local address of a connection"),
    Rule("getpeername", "the peer of a connection"),
    Rule("shutdown", "half-close a connection (TLS relay, end of a session)"),
    Rule("socketpair", "asyncio's self-pipe, TLS relay pairs (AF_UNIX only by nature)"),
    Rule("fstat", "files and sockets"),
    Rule("newfstatat", "stat, fstat (glibc)"),
    Rule("statx", "stat"),
    Rule("lseek", "files"),
    Rule("dup", "socket.dup"),
    Rule("dup2", "descriptors"),
    Rule("dup3", "descriptors"),
    Rule("poll", "waiting on one descriptor (channel to the TLS helper)"),
    Rule("ppoll", "poll (glibc)"),
    Rule("select", "select.select"),
    Rule("pselect6", "select (glibc)"),
    Rule("epoll_pwait", "epoll_wait (glibc)"),
    Rule("epoll_pwait2", "epoll_wait with a fine timeout"),
    Rule("epoll_create1", "a new event loop"),
    Rule("eventfd2", "asyncio and concurrent.futures wake-ups"),
    Rule("pipe2", "wake-up pipes"),
    Rule("openat", "files; in a jail only what it holds"),
    Rule("getrandom", "TLS keys and nonces, os.urandom, hash seeds"),
    Rule("clock_gettime", "time (the vDSO, else this)"),
    Rule("clock_getres", "time.get_clock_info"),
    Rule("gettimeofday", "time (the vDSO, else this)"),
    Rule("time", "time (the vDSO, else this)"),
    Rule("clock_nanosleep", "time.sleep"),
    Rule("nanosleep", "time.sleep"),
    Rule("sched_yield", "a thread lets another run"),
    Rule("clone", "threads only (CLONE_THREAD, no CLONE_NEW*): never a new process or namespace", arg=0,
         required_bits=_CLONE_THREAD, denied_bits=_CLONE_NEW_NAMESPACES),
    Rule("clone3", "ENOSYS: glibc then starts the thread with clone, whose flags can be checked",
         action=errno_of(errno.ENOSYS)),
    Rule("set_robust_list", "a new thread"),
    Rule("rseq", "a new thread"),
    Rule("set_tid_address", "a new thread"),
    Rule("sigaltstack", "a new thread (faulthandler)"),
    Rule("gettid", "threading"),
    Rule("exit", "a thread ends"),
    Rule("exit_group", "the process ends"),
    Rule("rt_sigaction", "signal handlers (asyncio)"),
    Rule("rt_sigprocmask", "signal masks of threads"),
    Rule("rt_sigreturn", "the end of a signal handler"),
    Rule("restart_syscall", "a call interrupted by a signal resumes"),
    Rule("tgkill", "signals to this process only (raise, abort)", arg=0, values=(_SELF,)),
    Rule("prlimit64", "getrlimit and setrlimit of this process only", arg=0, values=(0, _SELF)),
    Rule("prctl", "PR_SET_NAME / PR_GET_NAME (the process title), PR_GET_DUMPABLE, PR_SET_VMA; any "
         "other option fails with EPERM (dumpable, death signal and the rest stay as set)", arg=0,
         values=(_PR_SET_NAME, _PR_GET_NAME, _PR_GET_DUMPABLE, _PR_SET_VMA), otherwise=errno_of(errno.EPERM)),
    Rule("getppid", "the parent is checked"),
    Rule("getuid", "ids"),
    Rule("geteuid", "ids"),
    Rule("getgid", "ids"),
    Rule("getegid", "ids"),
    Rule("getresuid", "ids"),
    Rule("getresgid", "ids"),
    Rule("getgroups", "ids"),
    Rule("sched_getaffinity", "os.cpu_count, thread pools"),
    Rule("uname", "platform details (OpenSSL, Python)"),
    Rule("getcwd", "os.getcwd"),
    Rule("close_range", "closing many descriptors at once"),
)

# What a session's own process does with files and data connections
_FILES: tuple[Rule, ...] = (
    Rule("sendfile", "binary downloads on plain connections"),
    Rule("pread64", "downloads, HASH"),
    Rule("pwrite64", "uploads"),
    Rule("readv", "file reads"),
    Rule("writev", "file writes"),
    Rule("preadv", "file reads"),
    Rule("pwritev", "file writes"),
    Rule("openat2", "the jail: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS (net/jail.py)"),
    Rule("getdents64", "listings"),
    Rule("fsync", "an upload is on disk before 226"),
    Rule("fdatasync", "an upload is on disk before 226"),
    Rule("ftruncate", "STOR over a file, REST"),
    Rule("fallocate", "uploads"),
    Rule("flock", "lock_upload_files"),
    Rule("mkdirat", "MKD"),
    Rule("unlinkat", "DELE, RMD, failed uploads"),
    Rule("renameat", "RNFR/RNTO"),
    Rule("renameat2", "RNFR/RNTO, atomic uploads (RENAME_NOREPLACE)"),
    Rule("linkat", "atomic uploads without overwrite (STOU, better_stou)"),
    Rule("symlinkat", "never used by a command; glibc's tmpfile paths"),
    Rule("readlinkat", "listings show link targets"),
    Rule("fchmod", "SITE CHMOD, file_open_mode"),
    Rule("fchmodat", "SITE CHMOD"),
    Rule("umask", "SITE UMASK, local_umask"),
    Rule("utimensat", "MFMT, SITE UTIME"),
    Rule("faccessat", "os.access: may the user enter a directory"),
    Rule("faccessat2", "os.access (glibc)"),
    Rule("access", "os.access: glibc calls the old form where the kernel has it"),
    Rule("fchmodat2", "SITE CHMOD on an O_PATH descriptor (net/jail.py; Linux 6.6)"),
    # the old path forms: glibc calls them for mkdir(), unlink() ... without a directory fd
    Rule("mkdir", "MKD (glibc's mkdir)"),
    Rule("rmdir", "RMD (glibc's rmdir)"),
    Rule("unlink", "DELE (glibc's unlink)"),
    Rule("rename", "RNTO (glibc's rename)"),
    Rule("readlink", "listings (glibc's readlink)"),
    Rule("chmod", "SITE CHMOD (glibc's chmod)"),
    Rule("chdir", "the session's start directory"),
    Rule("fchdir", "directories"),
    Rule("statfs", "free space"),
    Rule("fstatfs", "free space"),
    Rule("accept4", "passive data connections"),
    Rule("bind", "passive data listeners"),
    Rule("listen", "passive data listeners"),
)

_UNIX_ONLY = (_AF_UNIX,)
_PRELOGIN = (*_BASE,
             Rule("socket", "AF_UNIX only: it never opens a network socket", arg=0, values=_UNIX_ONLY))
_IDENTITY = (*_BASE, *_FILES,
             Rule("socket", "AF_INET, AF_INET6 (passive listeners), AF_UNIX; active connections come "
                "from the broker already connected, so no connect", arg=0,
                values=(_AF_UNIX, _AF_INET, _AF_INET6)))
_POOLED = (*_BASE, *_FILES,
           Rule("socket", "AF_INET, AF_INET6, AF_UNIX, AF_NETLINK (getaddrinfo)", arg=0,
              values=(_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK)),
           Rule("connect", "active (PORT/EPRT) data connections; DNS (reverse_lookup_enable, tcp_wrappers)"),
           Rule("sendmmsg", "DNS: glibc's resolver sends the A and AAAA queries together"),
           Rule("fchown", "chown_uploads (pooled as root)"),
           Rule("fchownat", "chown_uploads (pooled as root)"))

# the pre-login process, later the session's TLS helper; an identity worker (and
# inetd mode's post-login process); a pooled-mode worker process
KINDS: dict[str, tuple[Rule, ...]] = {"prelogin": _PRELOGIN, "identity": _IDENTITY, "pooled": _POOLED}


class SeccompError(OSError):
    pass


def rules(kind: str) -> tuple[Rule, ...]:
    return KINDS[kind]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


_SELF_INSN = b"self"  # stands for `JEQ pid, 0, 1` until the pid is known


def _rule_code(rule: Rule) -> list[bytes]:
    """The rule's test and its returns.  The block ends in a return, so nothing falls
    through with the accumulator changed; a call of another number jumps over it."""
    nr = NUMBERS[rule.name]
    if rule.arg is None:
        return [_insn(_JEQ, nr, 0, 1), _insn(_RET, rule.action)]
    load = _insn(_LD_ABS, 16 + 8 * rule.arg)  # the argument's low 32 bits: all the kernel reads of these
    if rule.values:
        block = [load]
        for value in rule.values:
            block += [_SELF_INSN if value == _SELF else _insn(_JEQ, value, 0, 1), _insn(_RET, ALLOW)]
        block.append(_insn(_RET, rule.otherwise))
    else:
        block = [load]
        if rule.denied_bits:
            block += [_insn(_JSET, rule.denied_bits, 0, 1), _insn(_RET, rule.otherwise)]
        if rule.required_bits:
            block += [_insn(_JSET, rule.required_bits, 1, 0), _insn(_RET, rule.otherwise)]
        block.append(_insn(_RET, ALLOW))
    return [_insn(_JEQ, nr, 0, len(block)), *block]


def _tree(rules: list[Rule], default: int, selves: list[int], at: int) -> list[bytes]:
    """Rules sorted by number, as a binary search on nr (a few tests a call, and a
    quick install: the kernel runs the filter for every number to cache the always-allowed ones).
    `at`: this block's index in the program; the indices of `_SELF` values go to `selves`."""
    if len(rules) <= 4:
        code: list[bytes] = []
        for insn in (insn for rule in rules for insn in _rule_code(rule)):
            if insn is _SELF_INSN:
                selves.append(at + len(code))
                insn = _insn(_JEQ, 0, 0, 1)  # k: the pid, written in by program()
            code.append(insn)
        return [*code, _insn(_RET, default)]
    half = len(rules) // 2
    left = _tree(rules[:half], default, selves, at + 2)
    right = _tree(rules[half:], default, selves, at + 2 + len(left))
    return [_insn(_JGE, NUMBERS[rules[half].name], 0, 1), _insn(_JA, len(left)), *left, *right]


def _template(kind: str, default: int) -> tuple[bytes, tuple[int, ...]]:
    """The program, and the byte offsets where this process's pid goes."""
    head = [
        _insn(_LD_ABS, _ARCH),
        _insn(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _insn(_RET, KILL),  # another ABI (int 0x80: i386 numbers) is never allowed
        _insn(_LD_ABS, _NR),
        _insn(_JGE, _X32_SYSCALL_BIT, 0, 1),
        _insn(_RET, KILL),  # x32 numbers are the same calls under other numbers: refused
    ]
    selves: list[int] = []
    body = _tree(sorted(KINDS[kind], key=lambda r: NUMBERS[r.name]), default, selves, len(head))
    code = head + body
    if len(code) > 4096:
        raise ValueError("a BPF program is at most 4096 instructions")
    return b"".join(code), tuple(8 * i + 4 for i in selves)


_TEMPLATES = {(kind, action): _template(kind, action) for kind in KINDS for action in (KILL, LOG)}


def program(kind: str, *, pid: int | None = None, default: int = KILL) -> bytes:
    """The BPF program for `kind`, as the kernel takes it (8 bytes an instruction);
    `pid`: the one whose signals and rlimits it may touch (this process's)."""
    code, selves = _TEMPLATES[(kind, default)]
    out = bytearray(code)
    for offset in selves:
        struct.pack_into("<I", out, offset, os.getpid() if pid is None else pid)
    return bytes(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)


# FTPWARDEN_SECCOMP=log in the service's environment (read at start: session processes
# clear theirs): a call off the list is allowed and logged by the kernel instead of
# killing.  For finding what a new feature needs; never for production.
_DEFAULT = LOG if os.environ.get("FTPWARDEN_SECCOMP") == "log" else KILL


def install(kind: str) -> bool:
    """Install `kind`'s list in this process (every thread) for good.  False, doing
    nothing, when the platform is not x86_64; SeccompError when the kernel refuses
    (the caller's process must then end: fail closed, as vsftpd)."""
    if not SUPPORTED:
        return False
    code, selves = _TEMPLATES[(kind, _DEFAULT)]
    buf = ctypes.create_string_buffer(code, len(code))  # program(), without its copies
    for offset in selves:
        struct.pack_into("<I", buf, offset, os.getpid())
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    # seccomp needs no_new_privs without CAP_SYS_ADMIN (creds.drop_privileges set it already)
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) != 0:
        raise SeccompError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if _libc.syscall(ctypes.c_long(_NR_SECCOMP), ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
                     ctypes.c_ulong(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog)) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {os.strerror(err)}; "
                                "seccomp_sandbox=NO runs without the sandbox")
    return True


def warn_unsupported(enabled: bool) -> None:
    """Once, at start: say the allow-list is not there when asked for and the platform has none."""
    if enabled and not SUPPORTED:
        log.warning("seccomp_sandbox: this is not x86_64 Linux (%s): running without the syscall allow-list",
                    os.uname().machine)


def installer(kind: str, enabled: bool) -> Callable[[], object] | None:
    """What pooled mode calls in each worker once its listeners are ready (None: off)."""
    warn_unsupported(enabled)
    if not (enabled and SUPPORTED):
        return None
    return lambda: install(kind)


# ------------------------------------------------------------ how a process ended (the broker)

# PIDFD_GET_INFO (Linux 6.15): _IOWR(0xFF, 11, struct pidfd_info), its first 64 bytes
_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3
_EXIT_CODE_AT = 60  # offset of pidfd_info.exit_code


def _exit_info(pidfd: int) -> int | None:
    buf = bytearray(64)
    struct.pack_into("<Q", buf, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf, True)
    except OSError:  # an older kernel
        return None
    if not struct.unpack_from("<Q", buf, 0)[0] & _PIDFD_INFO_EXIT:
        return None  # not reaped yet (by its parent, the zygote)
    return int(struct.unpack_from("<i", buf, _EXIT_CODE_AT)[0])


def exit_status(pid: int, pidfd: int) -> int | None:
    """The wait status of an ended process that is not our child (the zygote's: only it
    can wait for it), from its pidfd; None when it cannot be known.  Reaped, the pidfd
    says it (Linux 6.15); still a zombie, /proc/PID/stat does (its last field), and a
    second look at the pidfd proves the pid was still the zombie's when it was read."""
    status = _exit_info(pidfd)
    if status is not None:
        return status
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            zombie = int(f.read().rsplit(b")", 1)[1].split()[-1])
    except (OSError, ValueError, IndexError):
        zombie = None
    again = _exit_info(pidfd)
    return again if again is not None else zombie


def report_sigsys(pid: int, pidfd: int) -> bool:
    """Log, for the operator to report, a session process the allow-list killed."""
    status = exit_status(pid, pidfd)
    if status is None or not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGSYS:
        return False
    log.warning("session process %d killed by the seccomp sandbox (SIGSYS); the kernel log "
                "(dmesg | grep syscall=) names the call", pid)
    return True
