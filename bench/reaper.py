"""reaper.py COMMAND...: run COMMAND under a child subreaper, so the whole server tree is ours.

vsftpd's session processes live in their own PID namespaces; when a session
ends, some of its processes are orphaned and would be reparented to PID 1 and
reaped there, taking their CPU time with them. Under this wrapper
(PR_SET_CHILD_SUBREAPER) every orphan of the tree comes back to us and is
reaped here, so the kernel adds its CPU time to our cutime/cstime: the tree's
CPU = our cutime+cstime + (utime+stime+cutime+cstime) of each live descendant.

SIGTERM/SIGINT are passed to COMMAND. When COMMAND exits, whatever is left of
its tree is killed (by PID) and reaped, and we exit with COMMAND's status.
We also get SIGTERM if the benchmark dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: reaper.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    parent = int(os.environ.get("BENCH_PARENT_PID", "0"))
    if parent and os.getppid() != parent:
        return 1  # the benchmark is already gone
    main_pid = os.fork()
    if main_pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(main_pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 1
    main_alive = True
    while True:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            break
        if pid == main_pid:
            main_alive = False
            status = os.waitstatus_to_exitcode(wstatus)
            status = status if status >= 0 else 128 - status
        if not main_alive:
            for child in _children(os.getpid()):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
