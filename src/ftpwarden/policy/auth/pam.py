"""PAM through ctypes: is (user, password) good for a PAM service?

The calls and items are vsftpd's (sysdeputil.c): pam_start, PAM_RHOST =
`remote_ip` as given (local.py passes the client's name under
reverse_lookup_enable, else its address), PAM_TTY = "ftp", PAM_RUSER = user, pam_authenticate,
pam_acct_mgmt, pam_end.  With session_support (vsftpd's default NO) a good
login's handle is kept (`hold_sessions`, `take_held`) for pam_setcred and
pam_open_session, and pam_close_session when the session ends: the check
child's session holder (priv/sessionrec.py) does that.  Only isolated mode's
checker calls this: as root, pam_unix reads /etc/shadow itself.

Two choices differ from plain PAM use, both for the rules in base.py:
- PAM's own failure delay is switched off (PAM_FAIL_DELAY, a no-op
  callback).  The monitor sleeps delay_failed_login after *every* failure;
  pam_unix's extra ~2 s would make "wrong password" slower than "unknown
  user" or "refused by policy after PAM", and so tell them apart.
- The conversation answers only echo-off prompts, with the password, as
  vsftpd does: a module asking an echoed question does not get the password.

The password never goes into a reason, a log or an exception.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["pam_check", "hold_sessions", "take_held", "PamSession"]

_PAM_SUCCESS = 0
_PAM_BUF_ERR = 5
_PAM_CONV_ERR = 19
_PAM_MAX_NUM_MSG = 32
# msg_style
_PAM_PROMPT_ECHO_OFF = 1
_PAM_ERROR_MSG = 3
_PAM_TEXT_INFO = 4
# pam_set_item / pam_get_item types (Linux-PAM's _pam_types.h)
_PAM_USER = 2
_PAM_TTY = 3
_PAM_RHOST = 4
_PAM_RUSER = 8
_PAM_FAIL_DELAY = 10
# pam_setcred flags
_PAM_ESTABLISH_CRED = 0x0002
_PAM_DELETE_CRED = 0x0004


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    # resp is a raw pointer: it holds strdup()'ed memory that PAM frees.
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


# int (*conv)(int num_msg, const struct pam_message **msg,
#             struct pam_response **resp, void *appdata_ptr)
_CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(_Message)),
                         ctypes.POINTER(ctypes.POINTER(_Response)), ctypes.c_void_p)
# void (*delay_fn)(int retval, unsigned usec_delay, void *appdata_ptr)
_DELAY = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV), ("appdata_ptr", ctypes.c_void_p)]


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libpam, libc), loaded on first use; OSError if libpam is missing."""
    pam = ctypes.CDLL("libpam.so.0")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    handle = ctypes.c_void_p
    pam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv), ctypes.POINTER(handle)]
    pam.pam_set_item.argtypes = [handle, ctypes.c_int, ctypes.c_void_p]
    pam.pam_get_item.argtypes = [handle, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    pam.pam_authenticate.argtypes = [handle, ctypes.c_int]
    pam.pam_acct_mgmt.argtypes = [handle, ctypes.c_int]
    pam.pam_end.argtypes = [handle, ctypes.c_int]
    for name in ("pam_setcred", "pam_open_session", "pam_close_session"):
        getattr(pam, name).argtypes = [handle, ctypes.c_int]
    pam.pam_strerror.argtypes = [handle, ctypes.c_int]
    pam.pam_strerror.restype = ctypes.c_char_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.calloc.restype = ctypes.c_void_p  # c_char_p would turn the pointer into bytes
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.strdup.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    return pam, libc


def _conversation(num_msg: int, msgs: Any, resp: Any, appdata: int | None) -> int:  # ctypes pointers
    """Answer echo-off prompts with the password at `appdata` (a C string)."""
    try:
        _, libc = _libs()
        if not 0 < num_msg <= _PAM_MAX_NUM_MSG or not appdata:
            return _PAM_CONV_ERR
        answers = libc.calloc(num_msg, ctypes.sizeof(_Response))
        if not answers:
            return _PAM_BUF_ERR
        out = ctypes.cast(answers, ctypes.POINTER(_Response))
        for i in range(num_msg):  # Linux-PAM: msgs is an array of pointers
            style = msgs[i].contents.msg_style
            if style == _PAM_PROMPT_ECHO_OFF:
                out[i].resp = libc.strdup(ctypes.c_char_p(appdata))
                if not out[i].resp:
                    break
            elif style not in (_PAM_ERROR_MSG, _PAM_TEXT_INFO):
                break  # echo-on or unknown prompt: refuse, as vsftpd
        else:
            resp[0] = out
            return _PAM_SUCCESS
        for j in range(i + 1):
            if out[j].resp:
                ctypes.memset(out[j].resp, 0, len(ctypes.string_at(out[j].resp)))
                libc.free(out[j].resp)
        libc.free(answers)
        return _PAM_CONV_ERR
    except BaseException:
        return _PAM_CONV_ERR


def _no_delay(retval: int, usec: int, appdata: int | None) -> None:
    """PAM_FAIL_DELAY callback: the monitor owns the failure delay."""


# Module-level: PAM calls these through raw pointers, so they must outlive every handle.
_CONV_FN = _CONV(_conversation)
_DELAY_FN = _DELAY(_no_delay)


def pam_check(service: str, user: str, password: str, remote_ip: str) -> tuple[bool, str]:
    """(True, "") if PAM `service` authenticates `user` and accepts the account,
    else (False, reason).  The reason is PAM's error text, never the password."""
    global _held
    try:
        c_service, c_user, c_ip = (s.encode("utf-8", "surrogateescape") for s in (service, user, remote_ip))
        c_password = password.encode("utf-8", "surrogateescape")
    except (AttributeError, UnicodeError):
        return False, "user name or password not encodable"
    if any(b"\0" in s for s in (c_service, c_user, c_ip, c_password)):
        return False, "NUL byte in user name or password"  # C would cut "pw\0rest" to "pw"
    try:
        pam, _ = _libs()
    except OSError:
        return False, "libpam.so.0 not available"
    if _held is not None:  # an earlier login's handle nobody took
        _held.end()
        _held = None
    secret = ctypes.create_string_buffer(c_password)
    conv = _Conv(_CONV_FN, ctypes.cast(secret, ctypes.c_void_p))
    handle = ctypes.c_void_p()
    rc = pam.pam_start(c_service, c_user, ctypes.byref(conv), ctypes.byref(handle))
    if rc != _PAM_SUCCESS:
        ctypes.memset(secret, 0, len(secret))
        return False, f"pam_start({service}) failed ({rc})"
    try:
        for item, value in ((_PAM_RHOST, c_ip), (_PAM_TTY, b"ftp"), (_PAM_RUSER, c_user),
                            (_PAM_FAIL_DELAY, ctypes.cast(_DELAY_FN, ctypes.c_void_p).value)):
            rc = pam.pam_set_item(handle, item, value)
            if rc != _PAM_SUCCESS:
                return False, f"pam_set_item: {_strerror(pam, handle, rc)}"
        rc = pam.pam_authenticate(handle, 0)
        if rc != _PAM_SUCCESS:
            return False, f"pam_authenticate: {_strerror(pam, handle, rc)}"
        # A module may rewrite PAM_USER; never grant `user` on the strength of another name.
        pam_user = ctypes.c_void_p()
        rc = pam.pam_get_item(handle, _PAM_USER, ctypes.byref(pam_user))
        if rc != _PAM_SUCCESS or not pam_user.value or ctypes.string_at(pam_user.value) != c_user:
            return False, "PAM changed the user name"
        rc = pam.pam_acct_mgmt(handle, 0)
        if rc != _PAM_SUCCESS:
            return False, f"pam_acct_mgmt: {_strerror(pam, handle, rc)}"
        if _hold:  # the conversation keeps pointing at `secret`: it goes with the handle (zeroed)
            _held = PamSession(handle, secret)
        return True, ""
    finally:
        if _held is None or _held.handle is not handle:
            pam.pam_end(handle, rc)
        ctypes.memset(secret, 0, len(secret))  # best effort: Python's own copies remain


class PamSession:
    """A good login's PAM handle, kept for its session (session_support)."""

    def __init__(self, handle: ctypes.c_void_p, conv_data: Any) -> None:
        self.handle = handle
        self._conv_data = conv_data  # what the conversation's pointer points at, alive as long as the handle
        self._opened = False

    def open(self) -> str:
        """pam_setcred(ESTABLISH) and pam_open_session, as vsftpd; "" or why it failed."""
        pam, _ = _libs()
        for name, call, flag in (("pam_setcred", pam.pam_setcred, _PAM_ESTABLISH_CRED),
                                 ("pam_open_session", pam.pam_open_session, 0)):
            rc = call(self.handle, flag)
            if rc != _PAM_SUCCESS:
                if name == "pam_open_session":
                    pam.pam_setcred(self.handle, _PAM_DELETE_CRED)
                return f"{name}: {_strerror(pam, self.handle, rc)}"
        self._opened = True
        return ""

    def close(self) -> None:
        """pam_close_session, pam_setcred(DELETE), pam_end (once)."""
        pam, _ = _libs()
        if self._opened:
            self._opened = False
            pam.pam_close_session(self.handle, 0)
            pam.pam_setcred(self.handle, _PAM_DELETE_CRED)
        self.end()

    def end(self) -> None:
        if self.handle.value:
            pam, _ = _libs()
            pam.pam_end(self.handle, _PAM_SUCCESS)
            self.handle.value = None


_hold = False  # hold_sessions: keep a good login's handle
_held: PamSession | None = None


def hold_sessions(on: bool) -> None:
    """session_support: pam_check keeps a good login's handle for `take_held`."""
    global _hold
    _hold = on


def take_held() -> PamSession | None:
    """The handle of the last good login (hold_sessions on), now the caller's."""
    global _held
    held, _held = _held, None
    return held


def _strerror(pam: ctypes.CDLL, handle: ctypes.c_void_p, rc: int) -> str:
    text = pam.pam_strerror(handle, rc)
    return f"{text.decode('utf-8', 'replace') if text else 'error'} ({rc})"
