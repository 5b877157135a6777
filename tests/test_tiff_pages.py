"""Pages appended by cloning tifffile's IFD (backends/tiff_pages.py): read back exactly by
tifffile and by libtiff (Debian's libtiff-tools), and a valid TIFF after every page."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

from ome_writers_service import AcquisitionSettings, Dimension, platform
from ome_writers_service.backends.tiff_pages import PageAppender

from service_util import ensure_debian_packages, frame_pixels

from test_formats import verify, write


def assert_same_tags(template, pages) -> None:
    """Every tag of an appended page reads as tifffile wrote it on the template page (the
    strip offset aside)."""
    want = {t.code: t.value for t in template.tags.values() if t.code != 273}
    for page in pages:
        assert {t.code: t.value for t in page.tags.values() if t.code != 273} == want


def libtiff_pages(path) -> int:
    """Directories libtiff finds, after it copied every strip of them (tiffcp)."""
    ensure_debian_packages(["libtiff-tools"], bool(shutil.which("tiffcp")))
    out = str(path) + ".copy.tif"
    res = subprocess.run(["tiffcp", str(path), out], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    info = subprocess.run(["tiffinfo", out], capture_output=True, text=True, check=True).stdout
    os.unlink(out)
    return info.count("TIFF Directory at offset")


@pytest.mark.parametrize("dtype,unbounded", [("uint16", False), ("uint8", False),
                                             ("int32", False), ("int16", True)],
                         ids=["uint16", "uint8", "int32", "bigtiff-unbounded"])
def test_appended_pages_are_read_by_tifffile_and_libtiff(tmp_path, dtype, unbounded):
    s = AcquisitionSettings(
        root_path=str(tmp_path / "p.ome.tiff"), dtype=dtype, overwrite=True, dimensions=[
            Dimension(name="t", count=None if unbounded else 4),
            Dimension(name="c", count=3), Dimension(name="y", count=19), Dimension(name="x", count=23)])
    frames = 12
    paths = write(s, 5, frames=frames, reuse_buffer=dtype == "uint16")
    verify(s, paths, 5, frames=frames)  # tifffile, ome-types (XSD), pixel-exact
    with tifffile.TiffFile(paths[0]) as tf:
        assert len(tf.pages) == frames and tf.is_bigtiff == unbounded
        assert_same_tags(tf.pages[1], tf.pages[2:])
    if not platform.WINDOWS:  # libtiff's tools are Debian's Linux programs: the Linux run
        assert libtiff_pages(paths[0]) == frames


def test_the_file_is_a_valid_tiff_after_every_page(tmp_path, monkeypatch):
    path = tmp_path / "grow.tif"
    frames = [frame_pixels(6, i, (31, 17), np.uint16) for i in range(8)]
    with tifffile.TiffWriter(path, ome=False) as w:  # as the backend starts a file
        for f in frames[:2]:
            w.write(f, photometric="minisblack", contiguous=False, metadata=None,
                    description=b"<OME/>   " if f is frames[0] else None, software=False)
    appender = PageAppender(path, template=1)
    for k in range(2, 8):
        appender.append(frames[k])
        snapshot = tmp_path / f"after{k}.tif"  # what a crash right now would leave
        shutil.copy(path, snapshot)
        with tifffile.TiffFile(snapshot) as tf:
            got = [p.asarray() for p in tf.pages]
            assert_same_tags(tf.pages[1], tf.pages[2:])
        assert len(got) == k + 1
        for a, b in zip(got, frames):
            np.testing.assert_array_equal(a, b)
    # a crash between writing a page and linking it: the file still holds the earlier pages
    monkeypatch.setattr(platform, "pwrite", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        appender.append(frames[0])
    appender.close()
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 8


def test_a_page_is_written_before_its_subifds_are_ready_and_linked_after(tmp_path):
    """`append(..., ready=)`: the page's own pixels go to disk first, the SubIFDs' pixels are
    read only once ``ready()`` returned, and until the link nothing new is reachable."""
    from ome_writers_service.backends.pyramid import cascade, level_shapes

    path = tmp_path / "pyramid.tif"
    shape = (40, 34)
    frames = [frame_pixels(7, i, shape, np.uint16) for i in range(4)]
    levels = [[np.empty(s, np.uint16) for s in level_shapes(shape, 3)[1:]] for _ in frames]
    with tifffile.TiffWriter(path, ome=False) as w:
        for f, lower in zip(frames[:2], levels):
            cascade(f, lower, "mean")
            w.write(f, photometric="minisblack", contiguous=False, metadata=None,
                    description=b"<OME/>   " if f is frames[0] else None, software=False,
                    subifds=len(lower))
            for level in lower:
                w.write(level, photometric="minisblack", contiguous=False, metadata=None,
                        software=False, subfiletype=1)
    appender = PageAppender(path, template=1)
    for k in range(2, len(frames)):
        f, lower, seen = frames[k], levels[k], []

        def ready(f=f, lower=lower, seen=seen):  # the levels are computed only now
            seen.append(os.path.getsize(path))
            with tifffile.TiffFile(path) as tf:
                seen.append(len(tf.pages))  # the page is not linked yet
            cascade(f, lower, "mean")

        before = os.path.getsize(path)
        appender.append(f, *lower, ready=ready)
        assert seen[0] >= before + f.nbytes  # the page's pixels were on disk first
        assert seen[1] == k
    appender.close()
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == len(frames)
        for k, (f, lower) in enumerate(zip(frames, levels)):
            np.testing.assert_array_equal(tf.pages[k].asarray(), f)
            subs = tf.series[0].levels
            for j, level in enumerate(lower, 1):
                np.testing.assert_array_equal(subs[j].asarray()[k], level)
