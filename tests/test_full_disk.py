"""A full disk at 20 points (a small tmpfs per stream, each filling at its own moment), both
formats, through a real daemon: the error names the file and says "no space left", and
the metadata's frame count equals the frames read back (tensorstore / tifffile), every time;
nothing beyond them is presented as data, and no per-frame metadata describes a frame that
is not there. Half of the streams write a pyramid (levels=3): its lower levels hold each
frame's downsampled plane or the fill value, never anything else, and level 0 is what
counts."""

from __future__ import annotations

import os
import random
import re
import subprocess

import numpy as np
import pytest

from ome_writers_service import (AcquisitionSettings, Dimension, OmeTiffFormat, OmeZarrFormat,
                                 create_stream)
from ome_writers_service.client import ServiceError

from service_util import (frame_pixels, frames_written_in_metadata, plane_metadata, read_image,
                          start_daemon)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
FRAMES = 400  # more than any of the disks holds


@needs_root
def test_a_full_disk_at_20_points_leaves_metadata_that_counts_exactly_the_frames_on_disk(
        tmp_path):
    rng = random.Random("full-disk")
    d = start_daemon(tmp_path / "rt")
    mounts = []
    try:
        cases = []
        for k in range(20):
            mnt = tmp_path / f"disk{k}"
            mnt.mkdir()
            size = rng.randrange(96, 512) * 1024
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           check=True)
            mounts.append(mnt)
            suffix = (".ome.zarr", ".ome.tiff")[k % 2]
            chunk = rng.choice([1, 1, 2, 4]) if suffix == ".ome.zarr" else 1
            levels = 3 if k % 4 >= 2 else 1
            cases.append((k, mnt / f"run{suffix}", chunk, size, levels))
        counted = []
        named_lost: set[tuple[int, int]] = set()
        for k, root, chunk, size, levels in cases:
            fmt = (OmeTiffFormat if root.suffix == ".tiff" else OmeZarrFormat)(levels=levels)
            settings = AcquisitionSettings(
                root_path=str(root), dtype="uint16", overwrite=True, ring_slots=16, format=fmt,
                dimensions=[Dimension(name="t", count=FRAMES // 2, chunk_size=chunk),
                            Dimension(name="c", count=2, type="channel"),
                            Dimension(name="y", count=32), Dimension(name="x", count=32)])
            stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
            # the in-process stream's error types (issue 13): OSError for a file that could
            # not be written, a ServiceError for the daemon's own reports
            with pytest.raises((ServiceError, OSError)) as err:
                for n in range(FRAMES):
                    stream.append(frame_pixels(k, n, (32, 32), np.uint16),
                                  frame_metadata={"delta_t": 0.5 * n, "exposure_time": 0.01})
                stream.close()
            message = str(err.value)
            assert "no space left" in message.lower() and str(root.parent) in message, message
            if not stream.closed:
                with pytest.raises((ServiceError, OSError), match="(?i)no space left"):
                    stream.close()
            path = stream.paths[0]
            got = read_image(path).reshape(-1, 32, 32)
            readable = {n for n in range(min(len(got), FRAMES))
                        if np.array_equal(got[n], frame_pixels(k, n, (32, 32), np.uint16))}
            for n in range(len(got)):  # whatever is not a frame sent reads as the fill value
                assert n in readable or not got[n].any(), (root, n)
            if settings.format_name == "ome-tiff":  # pages past the described planes count
                import tifffile                      # too: they are frames on disk
                with tifffile.TiffFile(path) as tf:
                    pages = [p.asarray() for p in tf.pages]
                readable = {n for n, page in enumerate(pages)
                            if np.array_equal(page, frame_pixels(k, n, (32, 32), np.uint16))}
            written = frames_written_in_metadata(path)
            assert written == len(readable), (root, size, written, len(readable))
            for (t, c, _), row in plane_metadata(path).items():  # described frames exist
                n = 2 * t + c
                if settings.format_name == "ome-zarr" or row["delta_t"] is not None:
                    assert n in readable, (root, n, "metadata without its frame")
                    assert row["delta_t"] == 0.5 * n
            assert 0 < len(readable) < FRAMES, (root, len(readable))
            if levels > 1:
                check_lower_levels(path, k, readable, levels)
            for named in re.findall(r"frames? ([\d, -]+) (?:are|is) not on disk",
                                    " ".join(stream.report["errors"])):
                for run in named.split(", "):  # the frames an error names are not there
                    first, _, last = run.partition("-")
                    lost = set(range(int(first), int(last or first) + 1))
                    assert not lost & readable, (root, run)
                    named_lost.update((k, n) for n in lost)
            counted.append(len(readable))
        print(f"20 full disks: frames on disk {sorted(counted)}, metadata counts equal; "
              f"{len(named_lost)} frames named in errors as not on disk")
    finally:
        d.stop()
        for mnt in mounts:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _mean_halved(a: np.ndarray) -> np.ndarray:
    """A 2x2 mean, rounded half up (even extents), computed here, not by the service."""
    y, x = a.shape
    s = a.astype(np.uint32).reshape(y // 2, 2, x // 2, 2).sum(axis=(1, 3))
    return ((s + 2) >> 2).astype(a.dtype)


def check_lower_levels(path: str, k: int, readable: set[int], levels: int) -> None:
    """Each plane of each lower level is the downsampled frame or the fill value."""
    if path.endswith(".tiff"):
        import tifffile

        def subifds(tf, n, page):
            for i, offset in enumerate(page.subifds or ()):
                tf.filehandle.seek(offset)
                yield tifffile.TiffPage(tf, index=(n, i)).asarray()

        with tifffile.TiffFile(path) as tf:
            planes = [list(subifds(tf, n, page)) for n, page in enumerate(tf.pages)]
        by_level = [[p[lv - 1] if len(p) >= lv else None for p in planes]
                    for lv in range(1, levels)]
    else:
        import tensorstore as ts
        by_level = [ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                              "path": f"{path}/{lv}"}}
                            ).result().read().result().reshape(-1, *(32 >> lv,) * 2)
                    for lv in range(1, levels)]
    for lv, got in enumerate(by_level, 1):
        for n, plane in enumerate(got):
            expected = frame_pixels(k, n, (32, 32), np.uint16)
            for _ in range(lv):
                expected = _mean_halved(expected)
            filled = plane is None or not plane.any()
            assert filled or np.array_equal(plane, expected), (path, lv, n)
