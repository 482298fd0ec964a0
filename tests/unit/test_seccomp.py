"""seccomp_sandbox's BPF program (priv/seccomp.py): its structure, run through a small
classic-BPF interpreter here, and the real list installed in forked children."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import resource
import select
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from ftpwarden.priv import seccomp

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SECCOMP.md"
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
ENOSYS = seccomp.errno_of(errno.ENOSYS)
EPERM = seccomp.errno_of(errno.EPERM)
ENOTTY = seccomp.errno_of(errno.ENOTTY)
NEVER = ("execve", "execveat", "ptrace", "fork", "vfork", "kill", "mount", "unshare", "setns", "chroot",
         "setuid", "setresuid", "process_vm_writev", "bpf", "init_module", "pkey_mprotect", "seccomp")
NR = {"execve": 59, "ptrace": 101, "fork": 57, "kill": 62, "connect": 42, "unshare": 272}
PID = 4242
CLONE_THREAD = 0x10000


def run(code: bytes, nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """Evaluate a classic BPF seccomp program on one call (what the kernel would return)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("<HBBI", code, i) for i in range(0, len(code), 8)]
    acc, pc = 0, 0
    for _ in range(len(insns)):  # only forward jumps: at most one pass
        op, jt, jf, k = insns[pc]
        if op == 0x20:  # LD W ABS
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif op == 0x06:  # RET K
            return k
        elif op == 0x05:  # JA
            pc += 1 + k
        elif op in (0x15, 0x35, 0x45):  # JEQ, JGE, JSET
            hit = acc == k if op == 0x15 else acc >= k if op == 0x35 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        assert pc < len(insns), "jumped past the end"
    raise AssertionError("no return")


def passing_args(rule: seccomp.Rule) -> tuple[int, ...]:
    """Arguments with which `rule`'s call is allowed."""
    if rule.arg is None:
        return ()
    value = rule.values[0] if rule.values else rule.required_bits
    if value == seccomp._SELF:
        value = PID
    args = [0] * 6
    args[rule.arg] = value
    return tuple(args)


@pytest.mark.parametrize("kind", sorted(seccomp.KINDS))
def test_every_listed_call_is_allowed_and_every_other_kills(kind):
    code = seccomp.program(kind, pid=PID)
    assert len(code) % 8 == 0 and len(code) // 8 <= 4096
    listed = {seccomp.NUMBERS[r.name]: r for r in seccomp.rules(kind)}
    assert len(listed) == len(seccomp.rules(kind)), "a call listed twice"
    for nr in range(0, 500):
        rule = listed.get(nr)
        expected = seccomp.KILL if rule is None else rule.action
        assert run(code, nr, passing_args(rule) if rule else ()) == expected, (kind, nr)


@pytest.mark.parametrize("kind", sorted(seccomp.KINDS))
def test_never_listed(kind):
    names = {r.name for r in seccomp.rules(kind)}
    assert not names & set(NEVER)


@pytest.mark.parametrize("kind", sorted(seccomp.KINDS))
def test_another_abi_or_x32_numbers_kill(kind):
    code = seccomp.program(kind, pid=PID)
    assert run(code, 0, arch=AUDIT_ARCH_I386) == seccomp.KILL  # read, as int 0x80 would number it
    assert run(code, 0x40000000 | 0) == seccomp.KILL  # x32's read
    assert run(code, 0) == seccomp.ALLOW


@pytest.mark.parametrize("kind", sorted(seccomp.KINDS))
def test_argument_checks(kind):
    code = seccomp.program(kind, pid=PID)
    clone, clone3, mmap, mprotect, socket_nr, tgkill, prlimit, ioctl, prctl = (
        seccomp.NUMBERS[n] for n in ("clone", "clone3", "mmap", "mprotect", "socket", "tgkill", "prlimit64",
                                     "ioctl", "prctl"))
    assert run(code, clone, (0x3D0F00,)) == seccomp.ALLOW  # glibc's pthread_create flags
    assert run(code, clone, (0x01200011,)) == seccomp.KILL  # glibc's fork(): no CLONE_THREAD
    assert run(code, clone, (0x3D0F00 | 0x40000000,)) == seccomp.KILL  # a thread in a new netns
    fcntl_nr = seccomp.NUMBERS["fcntl"]
    assert run(code, fcntl_nr, (3, 37)) == seccomp.ALLOW  # F_OFD_SETLK
    assert run(code, fcntl_nr, (3, 4)) == seccomp.ALLOW  # F_SETFL
    assert run(code, fcntl_nr, (3, 8)) == seccomp.errno_of(errno.EINVAL)  # F_SETOWN
    assert run(code, clone3, (0,)) == ENOSYS
    assert run(code, mmap, (0, 4096, 3)) == seccomp.ALLOW
    assert run(code, mmap, (0, 4096, 5)) == EPERM  # PROT_READ | PROT_EXEC
    assert run(code, mprotect, (0, 4096, 7)) == EPERM
    assert run(code, tgkill, (PID, PID, signal.SIGABRT)) == seccomp.ALLOW
    assert run(code, tgkill, (PID + 1, PID + 1, signal.SIGTERM)) == seccomp.KILL
    assert run(code, prlimit, (0, 7, 0, 1)) == seccomp.ALLOW
    assert run(code, prlimit, (1, 7, 1, 0)) == seccomp.KILL
    assert run(code, ioctl, (0, 0x5421)) == seccomp.ALLOW  # FIONBIO
    assert run(code, ioctl, (2, 0x5412)) == ENOTTY  # TIOCSTI
    assert run(code, prctl, (15,)) == seccomp.ALLOW  # PR_SET_NAME
    assert run(code, prctl, (4, 1)) == EPERM  # PR_SET_DUMPABLE
    unix, inet, netlink = run(code, socket_nr, (1,)), run(code, socket_nr, (2,)), run(code, socket_nr, (16,))
    assert unix == seccomp.ALLOW
    assert inet == (seccomp.KILL if kind == "prelogin" else seccomp.ALLOW)
    assert netlink == (seccomp.ALLOW if kind == "pooled" else seccomp.KILL)
    assert run(code, NR["connect"]) == (seccomp.ALLOW if kind == "pooled" else seccomp.KILL)


def test_the_pid_is_this_processes():
    code = seccomp.program("prelogin")
    assert run(code, seccomp.NUMBERS["tgkill"], (os.getpid(), os.getpid(), 6)) == seccomp.ALLOW
    assert run(code, seccomp.NUMBERS["tgkill"], (os.getpid() + 1, 1, 6)) == seccomp.KILL


def test_docs_name_every_call():
    text = DOCS.read_text()
    missing = sorted({r.name for kind in seccomp.KINDS for r in seccomp.rules(kind)
                      if f"`{r.name}`" not in text})
    assert not missing, f"docs/SECCOMP.md does not explain: {missing}"


# ---------------------------------------------------------------- the real thing, in a forked child

needs_x86_64 = pytest.mark.skipif(not seccomp.SUPPORTED, reason="the allow-list is for x86_64 only")
CHILD_WAIT = 20.0


def in_child(kind: str, body) -> int:
    """Fork; the child installs `kind`'s list, runs `body()` and exits 0.  Its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(int(CHILD_WAIT))  # never outlive the test
            assert seccomp.install(kind)
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + CHILD_WAIT + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not end")


def sigsys(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def allowed_work() -> None:
    """What every kind needs: threads, socketpairs, reads and writes, time, randomness."""
    got: list[bytes] = []
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: got.append(b.recv(10)))
    t.start()
    a.sendall(b"hello")
    t.join(5)
    assert got == [b"hello"]
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    os.urandom(16)
    time.sleep(0.001)
    select.select([a], [], [], 0)
    a.setblocking(False)
    assert ctypes.CDLL(None).prctl(4, 1, 0, 0, 0) == -1  # PR_SET_DUMPABLE: refused, not fatal
    with pytest.raises(OSError) as e:
        fcntl.fcntl(a.fileno(), fcntl.F_SETOWN, os.getppid())  # SIGIO to another process: refused
    assert e.value.errno == errno.EINVAL
    signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.raise_signal(signal.SIGUSR1)  # tgkill to this process: its pid is in the program
    resource.getrlimit(resource.RLIMIT_NOFILE)  # prlimit64 on itself


def file_work(where: str) -> None:
    """A session's file calls: a directory, a locked upload made durable, a rename, a listing, deletes."""
    d = os.path.join(where, "d")
    os.mkdir(d)
    with open(os.path.join(d, "f"), "wb") as f:
        fcntl.fcntl(f.fileno(), fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        f.write(b"data")
        f.flush()
        os.fsync(f.fileno())
    os.rename(os.path.join(d, "f"), os.path.join(d, "g"))
    assert os.listdir(d) == ["g"] and os.access(d, os.X_OK)
    os.unlink(os.path.join(d, "g"))
    os.rmdir(d)


@needs_x86_64
@pytest.mark.parametrize("kind", sorted(seccomp.KINDS))
def test_allowed_calls_work(kind):
    assert in_child(kind, allowed_work) == 0


@needs_x86_64
@pytest.mark.parametrize("kind", ["identity", "pooled"])
def test_file_calls_work(kind, tmp_path):
    assert in_child(kind, lambda: file_work(str(tmp_path))) == 0


@needs_x86_64
@pytest.mark.parametrize("kind", sorted(seccomp.KINDS))
@pytest.mark.parametrize("call", ["execve", "ptrace", "fork", "kill_other", "unshare"])
def test_a_forbidden_call_kills_the_process(kind, call):
    parent = os.getpid()
    bodies = {
        "execve": lambda: os.execv("/bin/true", ["true"]),
        "ptrace": lambda: ctypes.CDLL(None).ptrace(16, parent, 0, 0),  # PTRACE_ATTACH
        "fork": os.fork,
        "kill_other": lambda: os.kill(parent, 0),
        "unshare": lambda: os.unshare(os.CLONE_NEWUSER) if hasattr(os, "unshare") else
        ctypes.CDLL(None).syscall(NR["unshare"], 0x10000000),
    }
    assert sigsys(in_child(kind, bodies[call]))


@needs_x86_64
def test_network_socket_kills_a_prelogin_process_only():
    inet = lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()  # noqa: E731
    assert sigsys(in_child("prelogin", inet))
    assert in_child("identity", inet) == 0
    assert in_child("pooled", inet) == 0


@needs_x86_64
def test_code_cannot_be_loaded_after_install():
    """No executable mapping (EPERM): no code is loaded after install, and the process lives."""
    def body() -> None:
        with pytest.raises(PermissionError):
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        with pytest.raises(ImportError):  # a C extension imported late: refused, not fatal
            import _lsprof  # noqa: F401  (not imported by anything here)
    assert in_child("identity", body) == 0


@needs_x86_64
def test_exit_status_of_a_process_we_did_not_fork():
    """The broker's view: a grandchild killed by SIGSYS, known through its pidfd alone."""
    pid_r, pid_w = os.pipe()  # the middle process tells us the pid
    go_r, go_w = os.pipe()  # we tell the grandchild our pidfd is open
    middle = os.fork()
    if middle == 0:  # the zygote's part: forks the session process and reaps it
        code = 1
        try:
            signal.alarm(20)
            child = os.fork()
            if child == 0:
                os.read(go_r, 1)
                os.kill(os.getpid(), signal.SIGSYS)
                os._exit(0)
            os.write(pid_w, struct.pack("<i", child))
            os.waitpid(child, 0)
            time.sleep(0.5)
            code = 0
        finally:
            os._exit(code)
    try:
        child = struct.unpack("<i", os.read(pid_r, 4))[0]
        pidfd = os.pidfd_open(child)
        os.write(go_w, b"x")
        assert select.select([pidfd], [], [], 10)[0]
        status = seccomp.exit_status(child, pidfd)
        assert status is not None and sigsys(status)
        assert seccomp.report_sigsys(child, pidfd)
        os.close(pidfd)
    finally:
        os.waitpid(middle, 0)
        for fd in (pid_r, pid_w, go_r, go_w):
            os.close(fd)
