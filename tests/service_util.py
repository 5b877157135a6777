"""Helpers for tests that run a real writer daemon process."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import tifffile

from ome_writers_service import platform
from ome_writers_service.connection import runtime_dir

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO.parent / "shared" / "conformance" / "omecheck.py"
CLIENT_SCRIPT = Path(__file__).with_name("stream_client.py")

# ---- processes, on POSIX and Windows ----

WINDOWS = platform.WINDOWS
#: a hard kill (SIGKILL; on Windows TerminateProcess, with this as the exit code)
SIGKILL = getattr(signal, "SIGKILL", 9)
#: the status of a process killed so (Popen.returncode)
KILLED = 9 if WINDOWS else -SIGKILL
#: the ask-to-stop request (SIGTERM; on Windows the daemon's stop event)
STOP = "stop"


#: root on POSIX (Windows has no euid)
IS_ROOT = not WINDOWS and os.geteuid() == 0
#: a small tmpfs (a full disk, a read-only file system), mounted for the test: root on Linux
needs_tmpfs = pytest.mark.skipif(
    WINDOWS or not IS_ROOT, reason="mounts a small tmpfs (a full or read-only disk): root on "
    "Linux; Windows has no tmpfs (and Wine no disk quota) to fill")


def assert_private(path: Path) -> None:
    """Only this user may read ``path``: mode 0700 (a directory) or 0600; on Windows no ACE
    of its DACL lets anyone in but the user, SYSTEM and the Administrators."""
    if not WINDOWS:
        want = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == want, f"{path}: mode {path.stat().st_mode:o}"
        return
    from ome_writers_service import _win32

    owner, allowed = _win32.owner_and_access(str(path))
    assert owner == _win32.user_sid(), (path, owner)
    assert allowed is not None and set(allowed) <= {owner, *_win32.TRUSTED_SIDS}, (path, allowed)


def kill_hard(pid: int) -> None:
    """SIGKILL, or on Windows TerminateProcess: no handler runs, nothing is flushed."""
    try:
        os.kill(pid, SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def pause_process(pid: int, resume: bool = False) -> None:
    """SIGSTOP / SIGCONT; on Windows every thread of the process suspended or resumed."""
    if not WINDOWS:
        os.kill(pid, signal.SIGCONT if resume else signal.SIGSTOP)
        return
    import _winapi

    from ome_writers_service import _win32

    h = _winapi.OpenProcess(0x0800, False, pid)  # PROCESS_SUSPEND_RESUME
    try:
        _win32.suspend_process(h, resume=resume)
    finally:
        _winapi.CloseHandle(h)


def continue_process(pid: int) -> None:
    pause_process(pid, resume=True)


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` is gone entirely within ``timeout`` s (POSIX: exited and
    reaped, no zombie either)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not platform.pid_alive(pid) and (WINDOWS or not os.path.exists(f"/proc/{pid}")):
            return True
        time.sleep(0.05)
    return False


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (None if it is gone); POSIX only: Windows has no zombies for a
    parent to reap."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Windows: its working set)."""
    if WINDOWS:
        import ctypes
        from ctypes import wintypes as wt

        import _winapi

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wt.DWORD), ("PageFaultCount", wt.DWORD)] + [
                (n, ctypes.c_size_t) for n in (
                    "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                    "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage",
                    "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")]

        h = _winapi.OpenProcess(0x1000 | 0x0010, False, pid)  # query limited | vm read
        try:
            c = Counters()
            c.cb = ctypes.sizeof(c)
            fn = ctypes.WinDLL("psapi").GetProcessMemoryInfo
            fn.argtypes = [wt.HANDLE, ctypes.c_void_p, wt.DWORD]
            assert fn(h, ctypes.byref(c), c.cb)
            return c.WorkingSetSize / 2**20
        finally:
            _winapi.CloseHandle(h)
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_handles(pid: int) -> int:
    """Open file descriptors of a process (Windows: its handles)."""
    if WINDOWS:
        import ctypes
        from ctypes import wintypes as wt

        import _winapi

        h = _winapi.OpenProcess(0x1000, False, pid)
        try:
            n = wt.DWORD()
            fn = ctypes.WinDLL("kernel32").GetProcessHandleCount
            fn.argtypes = [wt.HANDLE, ctypes.POINTER(wt.DWORD)]
            assert fn(h, ctypes.byref(n))
            return n.value
        finally:
            _winapi.CloseHandle(h)
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_gone(pid: int) -> bool:
    return not platform.pid_alive(pid)


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    rt: Path
    endpoint: str
    token: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int | str = STOP, timeout: float = 60) -> int:
        """Ask the daemon to stop (STOP: SIGTERM or its Windows stop event) or send ``sig``
        (SIGKILL: a hard kill on Windows too); its exit status."""
        if self.proc.poll() is None:
            if sig == STOP:
                platform.request_stop(self.proc.pid)
            elif sig == SIGKILL:
                kill_hard(self.proc.pid)
            else:
                os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(rt: Path, *extra: str) -> DaemonProcess:
    if WINDOWS and rt.is_dir() and not any(rt.iterdir()):
        rt.rmdir()  # pytest's mktemp: a DACL inherited from the temp dir, refused; made anew
    runtime_dir(rt)  # a runtime dir must be private (created so on Windows too)
    log = rt / "test-daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ome_writers_service", "serve", "--runtime-dir", str(rt), *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = json.loads((rt / "daemon.json").read_text())
            if info["pid"] == proc.pid:
                return DaemonProcess(proc, rt, info["endpoint"], info["token"], log)
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not start:\n" + log.read_text(errors="replace"))


def this_host_address() -> str | None:
    """This machine's own non-loopback IPv4 address (the source of its default route), or
    None: a daemon bound there is reached as a client on another machine reaches it, while
    no packet leaves the machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # UDP: nothing is sent, the route is looked up
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# ---- resolution levels, by their definition (independent of backends/pyramid.py) ----

def reference_level(plane: np.ndarray, method: str) -> np.ndarray:
    """One level below ``plane``, by the definition: odd extents padded by repeating the
    edge, each 2x2 block reduced; integer means rounded half up."""
    p = np.pad(plane, [(0, plane.shape[0] % 2), (0, plane.shape[1] % 2)], mode="edge")
    blocks = p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(*blocks.shape[:2], 4)
    if method == "stride":
        return blocks[..., 0]
    if method == "min":
        return blocks.min(axis=-1)
    if method == "max":
        return blocks.max(axis=-1)
    if plane.dtype.kind == "f":
        return (blocks.astype(np.float64).sum(axis=-1) / 4).astype(plane.dtype)
    sums = blocks.astype(object).sum(axis=-1)
    return np.vectorize(lambda s: (s + 2) // 4, otypes=[object])(sums).astype(plane.dtype)


def reference_levels(image: np.ndarray, levels: int, method: str) -> list[np.ndarray]:
    """Every level of an image (outer axes, y, x), each from the one above."""
    out = [image]
    for _ in range(levels - 1):
        above = out[-1]
        planes = [reference_level(above[i], method) for i in np.ndindex(*above.shape[:-2])]
        out.append(np.stack(planes).reshape(*above.shape[:-2], *planes[0].shape))
    return out


def frame_pixels(seed: int, i: int, shape, dtype) -> np.ndarray:
    rng = np.random.default_rng([seed, i])
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def expected_images(settings, seed: int, frames: int | None = None,
                    missing: set[int] = frozenset(), pixels=None) -> list[np.ndarray]:
    """Each position's array in storage order, as frame_pixels() frames (or ``pixels``')
    routed by hand."""
    pixels = pixels or frame_pixels
    outer = list(settings.dimensions[:-2])
    sizes = [d.count for d in outer]
    names = [d.name for d in outer]
    pos_axis = next((i for i, d in enumerate(outer) if d.type == "position"), None)
    if frames is not None and pos_axis != 0:
        # an unbounded or ended-early acquisition stores only the steps of its slowest axis
        # that frames reached
        steps = -(-frames // int(np.prod(sizes[1:], dtype=int)))
        sizes[0] = steps if sizes[0] is None else min(sizes[0], steps)
    storage = [d.name for d in settings.storage_dimensions[:-2]]
    perm = [names.index(n) for n in storage]
    npos = sizes[pos_axis] if pos_axis is not None else 1
    shape = [sizes[p] for p in perm]
    out = [np.zeros((*shape, *settings.frame_shape), settings.dtype) for _ in range(npos)]
    for n, acq in enumerate(np.ndindex(*sizes)):
        if frames is not None and n >= frames:
            break
        if n in missing:
            continue
        pos = acq[pos_axis] if pos_axis is not None else 0
        out[pos][tuple(acq[p] for p in perm)] = pixels(seed, n, settings.frame_shape,
                                                       settings.dtype)
    return out


def read_image(path: str) -> np.ndarray:
    """Pixels of one written image, with readers this project did not write. For a file of a
    multi-file OME-TIFF, the image whose pages that file holds (tifffile follows the UUID
    links; a BinaryOnly file is read with the OME-XML of the master or companion file it
    names)."""
    if path.lower().endswith((".tif", ".tiff")):
        from ome_types import from_xml

        with tifffile.TiffFile(path) as tf:
            ref = from_xml(tf.ome_metadata).binary_only if tf.is_ome else None
        opened, omexml = path, None
        if ref is not None:
            target = Path(path).parent / Path(ref.metadata_file).name
            if target.suffix.lower() in (".tif", ".tiff"):
                opened = str(target)
            else:  # a companion file: tifffile reads the TIFF with that OME-XML
                omexml = target.read_text(encoding="utf-8")
        with tifffile.TiffFile(opened, omexml=omexml) as tf:
            for series in tf.series:
                if series.pages[0].parent.filename == Path(path).name:
                    return series.asarray()
            return tf.series[0].asarray()
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path + "/0"}},
                   open=True).result().read().result()


def multi_file_role(path: str) -> str | None:
    """For an OME-TIFF file of a multi-file dataset: "full" (its OME-XML describes every
    image, linked by UUID) or "binary-only" (it names the file that does); None otherwise."""
    if not path.lower().endswith((".tif", ".tiff")):
        return None
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tf:
        ome = from_xml(tf.ome_metadata)
    if ome.binary_only is not None:
        return "binary-only"
    named = {td.uuid.file_name for i in ome.images for td in i.pixels.tiff_data_blocks
             if td.uuid is not None}
    return "full" if named - {Path(path).name} else None


_checker: subprocess.Popen | None = None


def _check_in_worker(args: list[str]) -> SimpleNamespace:
    """omecheck.py ARGS in this session's checker process (tests/checker_worker.py), started on
    first use and again if it died: its returncode and stdout (the checker reports on stdout)."""
    global _checker
    if _checker is None or _checker.poll() is not None:
        _checker = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("checker_worker.py")), str(CHECKER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        atexit.register(_stop_checker, _checker)
    _checker.stdin.write(json.dumps(args) + "\n")
    _checker.stdin.flush()
    line = _checker.stdout.readline()
    if not line:
        raise AssertionError(f"the checker process died on {args[0]} "
                             f"(exit status {_checker.wait(10)})")
    reply = json.loads(line)
    return SimpleNamespace(returncode=reply["code"], stdout=reply["stdout"])


def _stop_checker(proc: subprocess.Popen) -> None:
    proc.stdin.close()  # its loop ends at end of input
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_checker(path: str, shape=None, dtype=None) -> str:
    """The independent conformance checker; returns its output, asserts it passed.

    The checker takes one file to hold every image its OME-XML declares. A file of a
    multi-file OME-TIFF holds one of them, so there its "every plane has a page" line is
    replaced by the same check on this file's image (planes it references vs pages), and a
    BinaryOnly file's series (plain pages) is not compared with the image's shape."""
    if not CHECKER.is_file():  # a checkout without ../shared: say so, never pass silently
        import pytest

        pytest.skip(f"the independent checker {CHECKER} is missing (../shared beside the "
                    "checkout)")
    role = multi_file_role(path)
    if role == "binary-only":
        shape = None
    args = [path]
    if shape is not None:
        args += ["--shape", ",".join(map(str, shape))]
    if dtype is not None:
        args += ["--dtype", dtype]
    res = _check_in_worker(args)
    if role is None:
        assert res.returncode == 0, f"omecheck failed on {path}:\n{res.stdout}"
        return res.stdout
    failed = [ln for ln in res.stdout.splitlines() if ln.startswith("FAIL")
              and not ln.startswith("FAIL every plane has a page")]
    assert not failed and "passed" in res.stdout, \
        f"omecheck failed on {path}:\n{res.stdout}"
    if role == "full":
        from ome_types import from_xml

        with tifffile.TiffFile(path) as tf:
            ome, pages = from_xml(tf.ome_metadata), len(tf.pages)
        mine = [td for i in ome.images for td in i.pixels.tiff_data_blocks
                if td.uuid is not None and td.uuid.file_name == Path(path).name]
        assert mine and all(td.uuid.value == ome.uuid for td in mine), path
        assert max((td.ifd or 0) + (td.plane_count or 1) for td in mine) <= pages, path
    return res.stdout


def wait_finalized(settings, timeout: float = 30.0) -> None:
    """Wait until the dataset's writer has finalized it (its journal is gone)."""
    journal = Path(settings.output_path + ".ows-journal")
    deadline = time.monotonic() + timeout
    while journal.exists():
        assert time.monotonic() < deadline, f"{settings.output_path} was not finalized"
        time.sleep(0.02)


def frames_written_in_metadata(path: str) -> int:
    """The ``frames_written`` the dataset's metadata records (OME-Zarr: the image group's
    ``ome_writers.acquisition``; OME-TIFF: the ``ome_writers.acquisition`` MapAnnotation),
    read with ome-types / plain JSON."""
    if path.lower().endswith((".tif", ".tiff")):
        ome = tiff_document(path)
        return int(next(m.value for a in ome.structured_annotations.map_annotations
                        if a.namespace == "ome_writers.acquisition" for m in a.value.ms
                        if m.k == "frames_written"))
    attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]
    return int(attrs["ome_writers"]["acquisition"]["frames_written"])


def remove_daemon_shm(daemon_pid: int) -> None:
    """Remove what a SIGKILLed daemon left in /dev/shm (Windows: `platform.SHM_DIR`): its
    rings (their owner locks) and chunk-buffer arenas (`recover` would take the arenas; a
    test that does not recover removes them)."""
    for path in shm_files(daemon_pid):
        platform.remove(path)


def shm_files(daemon_pid: int, prefix: str = "ows") -> list[Path]:
    """Files daemon ``daemon_pid`` made in the shared-memory directory: rings ("ows"; on
    Windows their owner locks) and chunk-buffer arenas ("owsbuf"), or the one ``prefix``."""
    prefixes = ("ows", "owsbuf") if prefix == "ows" else (prefix,)
    return [p for name in prefixes for p in platform.SHM_DIR.glob(f"{name}-{daemon_pid}-*")]


@contextlib.contextmanager
def daemon_with_small_shm(rt_dir: Path, size: str = "16m"):
    """A daemon in a mount namespace of its own whose /dev/shm is a tmpfs of ``size`` (a
    container's, say): yields its endpoint and token; once the block ends it has been
    stopped (SIGTERM) and its output is in ``.log``. Needs root and ``unshare``."""
    script = (f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "
              f"{shlex.quote(sys.executable)} -m ome_writers_service serve --runtime-dir "
              f"{shlex.quote(str(rt_dir))}")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    d = SimpleNamespace(endpoint=None, token=None, log="")
    try:
        deadline = time.monotonic() + 30
        while not (rt_dir / "daemon.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        info = json.loads((rt_dir / "daemon.json").read_text())
        d.endpoint, d.token = info["endpoint"], info["token"]
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        d.log, _ = proc.communicate(timeout=30)


def running_daemon(rt_dir: Path):
    """A daemon for a fixture (``yield from``): at the end it must stop cleanly and leave
    no ring of its own behind."""
    d = start_daemon(rt_dir)
    yield d
    assert d.stop() == 0, d.log_text()
    assert not shm_rings(d.pid)


def shm_rings(daemon_pid: int) -> set[str]:
    """The rings that daemon ``daemon_pid`` created (never another program's: other daemons,
    other test runs may share /dev/shm), by the files in the shared-memory directory."""
    return {p.name for p in platform.SHM_DIR.glob(f"ows-{daemon_pid}-*")}


def ensure_debian_packages(packages: list[str], present: bool) -> None:
    """Install Debian packages a test needs (as root, with apt-get) unless ``present``;
    skip the test, saying why, where that cannot be done."""
    if present:
        return
    import shutil

    import pytest

    if WINDOWS:
        pytest.skip(f"uses Debian's {', '.join(packages)}: Linux programs, not run from the "
                    "Windows CPython (the Linux run covers it)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{', '.join(packages)} missing and cannot be installed here")
    import fcntl

    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # .ci/windows' apt-get may run at the same time (make test): take the lock it takes
    os.makedirs("/run/lock", exist_ok=True)
    with open("/run/lock/ows-apt.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env,
                       capture_output=True)


def tiff_document(path: str):
    """The OME document (ome-types) describing an OME-TIFF file: its own, or that of the
    master or companion file its BinaryOnly names."""
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tf:
        ome = from_xml(tf.ome_metadata)
    if ome.binary_only is not None:
        target = Path(path).parent / Path(ome.binary_only.metadata_file).name
        if target.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(target) as tf:
                ome = from_xml(tf.ome_metadata)
        else:
            ome = from_xml(target.read_text(encoding="utf-8"))
    return ome


def plane_metadata(path: str) -> dict[tuple[int, int, int], dict]:
    """Per-frame metadata of one written image, read with independent readers, keyed by
    (t, c, z): OME-TIFF Plane DeltaT/ExposureTime through ome-types (the document of this
    file, or of the master/companion file its BinaryOnly names); OME-Zarr rows of
    ``attributes.ome_writers.frame_metadata`` through plain JSON (storage axes named by the
    multiscales)."""
    if path.lower().endswith((".tif", ".tiff")):
        ome = tiff_document(path)
        name = Path(path).name
        image = next((i for i in ome.images if any(
            td.uuid is not None and td.uuid.file_name == name
            for td in i.pixels.tiff_data_blocks)), ome.images[0])
        return {(pl.the_t, pl.the_c, pl.the_z): {"delta_t": pl.delta_t,
                                                 "exposure_time": pl.exposure_time}
                for pl in image.pixels.planes}
    attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]
    axes = [a["name"] for a in attrs["ome"]["multiscales"][0]["axes"]][:-2]
    out = {}
    for row in attrs.get("ome_writers", {}).get("frame_metadata", []):
        where = dict(zip(axes, row["storage_index"]))
        out[(where.get("t", 0), where.get("c", 0), where.get("z", 0))] = row
    return out
