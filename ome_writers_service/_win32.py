"""The Win32 calls `platform` needs that the standard library does not wrap (ctypes).

Imported on Windows only, and only by `platform`: user SIDs and private security
descriptors (the runtime directory and the token file must not be readable by other users),
the checks of an existing directory's owner and DACL, named events (how `ome-writers-service`
asks a daemon to stop where there are no signals), console control events (Ctrl+C, Ctrl+Break,
the console window closed, log-off, shutdown) and the memory figures.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
from ctypes import wintypes as wt

_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_adv = ctypes.WinDLL("advapi32", use_last_error=True)
_ntdll = ctypes.WinDLL("ntdll")

_k32.GetCurrentProcess.restype = wt.HANDLE
_k32.CreateFileW.restype = wt.HANDLE
_k32.CreateFileW.argtypes = [wt.LPCWSTR, wt.DWORD, wt.DWORD, ctypes.c_void_p, wt.DWORD, wt.DWORD,
                             wt.HANDLE]
_k32.CreateDirectoryW.argtypes = [wt.LPCWSTR, ctypes.c_void_p]
_k32.CreateEventW.restype = wt.HANDLE
_k32.CreateEventW.argtypes = [ctypes.c_void_p, wt.BOOL, wt.BOOL, wt.LPCWSTR]
_k32.OpenEventW.restype = wt.HANDLE
_k32.OpenEventW.argtypes = [wt.DWORD, wt.BOOL, wt.LPCWSTR]
_k32.SetEvent.argtypes = [wt.HANDLE]
_k32.WaitForSingleObject.argtypes = [wt.HANDLE, wt.DWORD]
_k32.WaitForSingleObject.restype = wt.DWORD
_k32.CloseHandle.argtypes = [wt.HANDLE]
_k32.LocalFree.argtypes = [ctypes.c_void_p]
_k32.LocalFree.restype = ctypes.c_void_p
_adv.OpenProcessToken.argtypes = [wt.HANDLE, wt.DWORD, ctypes.POINTER(wt.HANDLE)]
_adv.GetTokenInformation.argtypes = [wt.HANDLE, ctypes.c_int, ctypes.c_void_p, wt.DWORD,
                                     ctypes.POINTER(wt.DWORD)]
_adv.ConvertSidToStringSidW.argtypes = [ctypes.c_void_p, ctypes.POINTER(wt.LPWSTR)]
_adv.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = [
    wt.LPCWSTR, wt.DWORD, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
_adv.GetNamedSecurityInfoW.argtypes = [
    wt.LPCWSTR, ctypes.c_int, wt.DWORD, ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]
_adv.GetNamedSecurityInfoW.restype = wt.DWORD
_adv.GetAce.argtypes = [ctypes.c_void_p, wt.DWORD, ctypes.POINTER(ctypes.c_void_p)]

_TOKEN_QUERY = 0x0008
_TOKEN_USER = 1
_SE_FILE_OBJECT = 1
_OWNER_SECURITY_INFORMATION = 0x1
_DACL_SECURITY_INFORMATION = 0x4
_GENERIC_READ, _GENERIC_WRITE = 0x80000000, 0x40000000
_CREATE_NEW = 1
_FILE_ATTRIBUTE_NORMAL = 0x80
_FILE_SHARE_ALL = 0x1 | 0x2 | 0x4
_INVALID_HANDLE = wt.HANDLE(-1).value
_EVENT_MODIFY_STATE = 0x0002
_SYNCHRONIZE = 0x00100000
_WAIT_OBJECT_0, _INFINITE = 0, 0xFFFFFFFF
_ACCESS_ALLOWED_ACE_TYPE = 0
_ERROR_FILE_EXISTS, _ERROR_ALREADY_EXISTS = 80, 183

#: SIDs that may hold an ACE on a private directory besides its user: LocalSystem and the
#: Administrators group (they can read every file anyway), CREATOR OWNER and OWNER RIGHTS.
TRUSTED_SIDS = frozenset({"S-1-5-18", "S-1-5-32-544", "S-1-3-0", "S-1-3-4"})
ADMINISTRATORS = "S-1-5-32-544"


def _sid_string(psid: int) -> str:
    out = wt.LPWSTR()
    if not _adv.ConvertSidToStringSidW(ctypes.c_void_p(psid), ctypes.byref(out)):
        raise ctypes.WinError(ctypes.get_last_error())
    try:
        return out.value
    finally:
        _k32.LocalFree(out)


_user_sid: str | None = None


def user_sid() -> str:
    """This process's user, as a string SID ("S-1-5-21-...")."""
    global _user_sid
    if _user_sid is None:
        token = wt.HANDLE()
        if not _adv.OpenProcessToken(_k32.GetCurrentProcess(), _TOKEN_QUERY, ctypes.byref(token)):
            raise ctypes.WinError(ctypes.get_last_error())
        try:
            n = wt.DWORD()
            _adv.GetTokenInformation(token, _TOKEN_USER, None, 0, ctypes.byref(n))
            buf = ctypes.create_string_buffer(n.value)
            if not _adv.GetTokenInformation(token, _TOKEN_USER, buf, n, ctypes.byref(n)):
                raise ctypes.WinError(ctypes.get_last_error())
            _user_sid = _sid_string(ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0])
        finally:
            _k32.CloseHandle(token)
    return _user_sid


class _SecurityAttributes(ctypes.Structure):
    _fields_ = [("nLength", wt.DWORD), ("lpSecurityDescriptor", ctypes.c_void_p),
                ("bInheritHandle", wt.BOOL)]


class _PrivateSecurity:
    """SECURITY_ATTRIBUTES whose DACL grants this user alone full access (protected: nothing
    is inherited from the parent), for the object it creates and, in a directory, everything
    made in it."""

    def __init__(self, inherit: bool) -> None:
        flags = "OICI" if inherit else ""
        sddl = f"D:P(A;{flags};FA;;;{user_sid()})"
        self._sd = ctypes.c_void_p()
        if not _adv.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl, 1, ctypes.byref(self._sd), None):
            raise ctypes.WinError(ctypes.get_last_error())
        self.attributes = _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), self._sd, False)

    def __enter__(self):
        return ctypes.byref(self.attributes)

    def __exit__(self, *exc) -> None:
        _k32.LocalFree(self._sd)


def make_private_dir(path: str) -> None:
    """Create ``path`` with a DACL for this user only (FileExistsError if it exists)."""
    with _PrivateSecurity(inherit=True) as sa:
        if not _k32.CreateDirectoryW(path, sa):
            err = ctypes.get_last_error()
            if err in (_ERROR_ALREADY_EXISTS, _ERROR_FILE_EXISTS):
                raise FileExistsError(17, "File exists", path)
            raise ctypes.WinError(err)


def create_private_file(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file of unpredictable name in ``directory`` that only this user can open (its
    own DACL: it does not rely on the directory's being inherited), as (fd, path)."""
    import msvcrt

    with _PrivateSecurity(inherit=False) as sa:
        for _ in range(100):
            path = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
            h = _k32.CreateFileW(path, _GENERIC_READ | _GENERIC_WRITE, _FILE_SHARE_ALL, sa,
                                 _CREATE_NEW, _FILE_ATTRIBUTE_NORMAL, None)
            if h != _INVALID_HANDLE and h is not None:
                return msvcrt.open_osfhandle(h, os.O_RDWR | os.O_BINARY), path
            err = ctypes.get_last_error()
            if err not in (_ERROR_ALREADY_EXISTS, _ERROR_FILE_EXISTS):
                raise ctypes.WinError(err)
    raise FileExistsError(f"no unused temporary name in {directory}")


def owner_and_access(path: str) -> tuple[str, list[str] | None]:
    """The owner of ``path`` and the SIDs its DACL allows any access (None: a NULL DACL,
    which allows everyone everything)."""
    owner, dacl, sd = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    err = _adv.GetNamedSecurityInfoW(path, _SE_FILE_OBJECT,
                                     _OWNER_SECURITY_INFORMATION | _DACL_SECURITY_INFORMATION,
                                     ctypes.byref(owner), None, ctypes.byref(dacl), None,
                                     ctypes.byref(sd))
    if err:
        raise ctypes.WinError(err)
    try:
        who = _sid_string(owner.value)
        if not dacl.value:
            return who, None
        count = ctypes.cast(dacl.value + 4, ctypes.POINTER(wt.WORD))[0]  # ACL.AceCount
        allowed = []
        for i in range(count):
            ace = ctypes.c_void_p()
            if not _adv.GetAce(dacl, i, ctypes.byref(ace)):
                raise ctypes.WinError(ctypes.get_last_error())
            ace_type = ctypes.cast(ace.value, ctypes.POINTER(ctypes.c_ubyte))[0]
            mask = ctypes.cast(ace.value + 4, ctypes.POINTER(wt.DWORD))[0]
            if ace_type == _ACCESS_ALLOWED_ACE_TYPE and mask:
                allowed.append(_sid_string(ace.value + 8))  # ACCESS_ALLOWED_ACE.SidStart
        return who, allowed
    finally:
        _k32.LocalFree(sd)


# ---- stopping a daemon: a named event, and the console's control events ----

def _stop_event_name(pid: int) -> str:
    return f"Local\\ome-writers-service-stop-{pid}"


class StopEvent:
    """A named event ``stop`` waits on, in this process: `request_stop(pid)` sets it from
    another one (a command-line ``stop``, a test, an installer), as SIGTERM does on POSIX."""

    def __init__(self, on_stop) -> None:
        self._handle = _k32.CreateEventW(None, True, False, _stop_event_name(os.getpid()))
        if not self._handle:
            raise ctypes.WinError(ctypes.get_last_error())
        self._thread = threading.Thread(target=self._wait, args=(on_stop,),
                                        name="ows-stop-event", daemon=True)
        self._thread.start()

    def _wait(self, on_stop) -> None:
        if _k32.WaitForSingleObject(self._handle, _INFINITE) == _WAIT_OBJECT_0:
            on_stop()


def request_stop(pid: int) -> bool:
    """Set the stop event of daemon ``pid``; False if it has none (not a daemon, gone)."""
    h = _k32.OpenEventW(_EVENT_MODIFY_STATE, False, _stop_event_name(pid))
    if not h:
        return False
    try:
        return bool(_k32.SetEvent(h))
    finally:
        _k32.CloseHandle(h)


_HANDLER = ctypes.WINFUNCTYPE(wt.BOOL, wt.DWORD)
_CTRL_C, _CTRL_BREAK, _CTRL_CLOSE = 0, 1, 2
_handlers: list = []  # the ctypes callbacks must outlive the registration


def on_console_control(on_stop, finished: threading.Event, grace: float = 4.5) -> None:
    """Call ``on_stop`` on Ctrl+C, Ctrl+Break, the console closed, log-off or shutdown.
    After the last three, Windows ends the process once the handler returns (or after ~5 s):
    the handler waits up to ``grace`` seconds for ``finished`` (the streams finalized)."""

    def handler(event: int) -> bool:
        on_stop()
        if event not in (_CTRL_C, _CTRL_BREAK):
            finished.wait(grace)
        return True

    callback = _HANDLER(handler)
    _handlers.append(callback)
    _k32.SetConsoleCtrlHandler(callback, True)


# ---- memory ----

class _MemoryStatus(ctypes.Structure):
    _fields_ = [("dwLength", wt.DWORD), ("dwMemoryLoad", wt.DWORD),
                ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]


def memory_status() -> _MemoryStatus:
    status = _MemoryStatus()
    status.dwLength = ctypes.sizeof(_MemoryStatus)
    if not _k32.GlobalMemoryStatusEx(ctypes.byref(status)):
        raise ctypes.WinError(ctypes.get_last_error())
    return status


# ---- processes (tests: a hung daemon) ----

def suspend_process(handle: int, resume: bool = False) -> None:
    """Stop (or go on with) every thread of a process, as SIGSTOP / SIGCONT."""
    fn = _ntdll.NtResumeProcess if resume else _ntdll.NtSuspendProcess
    fn.argtypes = [wt.HANDLE]
    status = fn(handle)
    if status:
        raise OSError(f"{fn.__name__} failed: NTSTATUS {status & 0xFFFFFFFF:#x}")
