"""A hostile second local user: names planted in the shared temp directory (runtime dir) and
in a shared acquisition folder (temporary, journal and data files) never redirect the
service's writes. The user is created by the test (root only)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension, OmeTiffFormat, create_stream
from ome_writers_service.connection import runtime_dir

from service_util import frame_pixels, read_image

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd"),
    reason="needs root (and useradd) to create a second local user")


@pytest.fixture(scope="module")
def other_user():
    """A second local user (uid, gid), removed again at the end."""
    name = f"owsx{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def public_tmp():
    """A directory the other user can reach (pytest's own tmp dirs are private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ows-access-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user, *argv: str) -> None:
    """Run a command as the other user (what they can do, they do)."""
    uid, gid = user
    subprocess.run(argv, check=True, user=uid, group=gid, extra_groups=[], capture_output=True)


def shared_dir(path: Path, mode: int) -> Path:
    path.mkdir()
    os.chmod(path, mode)
    return path


def victim_files(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of ours with a socket-like file, and a file of ours: what a planted link
    points at."""
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    (mine / "daemon.sock").write_text("not yours to delete")
    precious = tmp_path / "precious.txt"
    precious.write_text("years of work")
    return mine, precious


def serve(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ome_writers_service", "serve",
                           "--idle-exit", "0.5"], env=env, capture_output=True, text=True,
                          timeout=60)


@needs_root
@pytest.mark.parametrize("sticky", [False, True])
def test_a_planted_runtime_directory_is_refused(other_user, public_tmp, tmp_path, sticky):
    tmp = shared_dir(public_tmp / "tmp", 0o1777 if sticky else 0o777)  # the shared temp dir
    mine, _ = victim_files(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_RUNTIME_DIR", "OME_WRITERS_SERVICE_RUNTIME_DIR")}
    env["TMPDIR"] = str(tmp)
    default = tmp / f"ome-writers-service-{os.getuid()}"

    # a symlink to a directory of the victim's
    as_user(other_user, "ln", "-s", str(mine), str(default))
    res = serve(env)
    assert res.returncode != 0 and "is a symlink" in res.stderr and str(default) in res.stderr
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755  # never chmod-ed through the link
    assert (mine / "daemon.sock").read_text() == "not yours to delete"
    with pytest.raises(PermissionError, match="is a symlink"):
        runtime_dir(default)  # what the client side (create_stream) uses too

    # a directory the other user made: theirs, refused
    as_user(other_user, "rm", str(default))
    as_user(other_user, "mkdir", "-m", "0700", str(default))
    res = serve(env)
    assert res.returncode != 0 and f"belongs to uid {other_user[0]}" in res.stderr
    shutil.rmtree(default)

    # our own, but open to others: refused, never silently repaired
    default.mkdir()
    os.chmod(default, 0o755)
    res = serve(env)
    assert res.returncode != 0 and "mode 0755" in res.stderr
    assert stat.S_IMODE(default.stat().st_mode) == 0o755
    default.rmdir()

    # none there: created private, and the daemon runs (and exits when idle)
    res = serve(env)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(default.stat().st_mode) == 0o700 and not default.is_symlink()


@needs_root
@pytest.mark.parametrize("suffix", [".ome.tiff", ".ome.zarr"])
def test_names_planted_in_a_shared_acquisition_folder_never_redirect_a_write(
        other_user, public_tmp, tmp_path, suffix):
    """The other user plants a symlink to a file of ours at every name the writer may use
    (temporary companion file, journal, data files); the dataset is written, and the file
    they point at is untouched."""
    lab = shared_dir(public_tmp / "lab", 0o777)  # a shared acquisition folder, not sticky
    _, precious = victim_files(tmp_path)
    if suffix == ".ome.tiff":  # several positions, OME-XML in a companion file
        dims = [Dimension(name="t", count=3), Dimension(name="p", type="position",
                                                       coords=["a", "b"]),
                Dimension(name="y", count=16), Dimension(name="x", count=16)]
        fmt = OmeTiffFormat(multi_file_metadata="companion-file")
        run = lab / "run"
        as_user(other_user, "mkdir", "-m", "0777", str(run))  # they made it first
        planted = [run / name for name in (".companion.ome.tmp", "companion.ome.tmp",
                                           "companion.ome", "run.companion.ome",
                                           ".run.companion.ome.tmp", "run_p000.ome.tiff",
                                           "run_p001.ome.tiff")]
        planted.append(lab / "run.ows-journal")
    else:
        dims = [Dimension(name="t", count=3), Dimension(name="y", count=16),
                Dimension(name="x", count=16)]
        fmt = "ome-zarr"
        planted = [lab / "run.ome.zarr.ows-journal", lab / "run.ome.zarr"]
    for link in planted:
        as_user(other_user, "ln", "-s", str(precious), str(link))
    settings = AcquisitionSettings(root_path=str(lab / f"run{suffix}"), dimensions=dims,
                                   dtype="uint16", format=fmt, overwrite=True)
    with create_stream(settings, in_process=True) as stream:
        for i in range(settings.num_frames):
            stream.append(frame_pixels(3, i, (16, 16), np.uint16))
    assert precious.read_text() == "years of work"
    # the names the writer uses are its own files now (the journal is gone after close);
    # fixed temporary names are not used at all any more
    used = [Path(p) for p in stream.paths]
    if suffix == ".ome.tiff":
        used.append(run / settings.format.companion_file)
    assert all(p.exists() and not p.is_symlink() for p in used), used
    assert not (lab / f"run{suffix}.ows-journal").is_symlink()
    for pos, path in enumerate(stream.paths):
        got = read_image(path)
        want = np.stack([frame_pixels(3, i, (16, 16), np.uint16)
                         for i in range(settings.num_frames)])
        if suffix == ".ome.tiff":
            want = want[pos::2]
        np.testing.assert_array_equal(got.reshape(want.shape), want)
