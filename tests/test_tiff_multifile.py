"""Multi-file OME-TIFF: ome-writers 0.3.2's layout (a directory of ``<name>_p000.ome.tiff``
files) and its three ways to place the OME-XML, read back by tifffile (which follows the UUID
links across files) and ome-types (XSD validation), pixel-exact."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ome_types import from_xml

import ome_writers_service as ows
from ome_writers_service.metadata import dataset_info, read_frame_metadata
from ome_writers_service.recover import recover
from ome_writers_service.validate import validate_all

from service_util import expected_images, frame_pixels, read_image, run_checker

REPO = Path(__file__).resolve().parents[1]


def settings(root: Path, mode: str = "redundant", positions=("A", "B", "C"), plate=False,
             **fmt) -> ows.AcquisitionSettings:
    pos = [ows.Position(name=n, plate_row="A", plate_column=str(1 + i // 2))
           if plate else ows.Position(name=n) for i, n in enumerate(positions)]
    return ows.AcquisitionSettings(
        root_path=str(root), dtype="uint16",
        dimensions=[ows.Dimension(name="t", count=2), ows.PositionDimension(coords=pos),
                    ows.Dimension(name="c", count=2, coords=["DAPI", "GFP"]),
                    ows.Dimension(name="y", count=24), ows.Dimension(name="x", count=20)],
        format={"name": "ome-tiff", "multi_file_metadata": mode, **fmt},
        plate=ows.Plate(row_names=["A"], column_names=["1", "2"]) if plate else None,
    )


def write(s: ows.AcquisitionSettings, *, in_process: bool, seed: int = 7, **kw):
    stream = ows.create_stream(s, in_process=in_process, **kw)
    for i in range(s.num_frames):
        stream.append(frame_pixels(seed, i, s.frame_shape, s.dtype),
                      frame_metadata={"exposure_time": 0.01 * (i + 1), "frame": i})
    stream.close()
    return stream


def root_uuid(path: Path) -> str:
    with tifffile.TiffFile(path) as tf:
        return from_xml(tf.ome_metadata).uuid


def documents(directory: Path) -> dict[str, object]:
    out = {}
    for f in sorted(directory.iterdir()):
        if f.suffix == ".tiff":
            with tifffile.TiffFile(f) as tf:
                out[f.name] = from_xml(tf.ome_metadata, validate=True)
        else:
            out[f.name] = from_xml(f.read_text(), validate=True)
    return out


def assert_linked(full, directory: Path, n: int) -> None:
    """Every image's TiffData names an existing file by name and by that file's UUID."""
    assert [i.name for i in full.images] == ["A", "B", "C"][:n]
    for i, image in enumerate(full.images):
        (td,) = image.pixels.tiff_data_blocks
        assert td.uuid.file_name == f"{directory.name}_p{i:03d}.ome.tiff"
        assert td.uuid.value == root_uuid(directory / td.uuid.file_name)
        assert td.plane_count == 4


@pytest.mark.parametrize("mode", ["redundant", "master-tiff", "companion-file"])
def test_each_metadata_mode_is_linked_valid_and_pixel_exact(tmp_path, mode):
    s = settings(tmp_path / "run.ome.tiff", mode)
    assert s.output_path == str(tmp_path / "run")  # a directory, as ome-writers 0.3.2
    write(s, in_process=True)
    directory = tmp_path / "run"
    names = [f"run_p00{i}.ome.tiff" for i in range(3)]
    extra = ["run.companion.ome"] if mode == "companion-file" else []
    assert sorted(os.listdir(directory)) == sorted(names + extra)

    docs = documents(directory)  # every document valid against the OME XSD
    full_in = {"redundant": names, "master-tiff": names[:1], "companion-file": extra}[mode]
    for name, ome in docs.items():
        if name in full_in:
            assert ome.binary_only is None
            assert_linked(ome, directory, 3)
            # no acquisition_date in the settings: the stream's start, as ome-writers
            assert all(i.acquisition_date is not None for i in ome.images)
        else:
            ref = ome.binary_only
            holder = full_in[0]
            assert ref is not None and ref.metadata_file == holder
            assert ref.uuid == docs[holder].uuid
        assert ome.uuid == (root_uuid(directory / name) if name.endswith(".tiff")
                            else docs[name].uuid)
    assert len({ome.uuid for ome in docs.values()}) == len(docs)  # one UUID per file

    expected = expected_images(s, 7)
    for pos, name in enumerate(names):
        np.testing.assert_array_equal(read_image(str(directory / name)), expected[pos])
        run_checker(str(directory / name), dtype="uint16")
        rows = read_frame_metadata(directory / name)
        # frame i is (t, p, c) = divmod order 6t + 2p + c; rows come in storage order (t, c)
        assert [r["frame"] for r in rows] == [6 * t + 2 * pos + c
                                              for t in range(2) for c in range(2)]
    if mode != "companion-file":  # tifffile opens the dataset from a file with the full XML
        with tifffile.TiffFile(directory / full_in[0]) as tf:
            assert len(tf.series) == 3
            for pos, series in enumerate(tf.series):
                np.testing.assert_array_equal(series.asarray(), expected[pos])

    reports = validate_all(tmp_path / "run.ome.tiff")  # the root_path finds the directory
    assert len(reports) == len(docs) and all(r.ok for r in reports), \
        "\n".join(map(str, reports))
    info = dataset_info(directory)
    assert [Path(i["file"]).name for i in info["images"]] == names
    assert info["pages"] == 12


def test_plate_is_one_plate_with_every_well_sample(tmp_path):
    s = settings(tmp_path / "plate.ome.tiff", plate=True)
    write(s, in_process=True)
    for name, ome in documents(tmp_path / "plate").items():
        (plate,) = ome.plates
        samples = {ws.index: (w.column, ws.image_ref.id) for w in plate.wells
                   for ws in w.well_samples}
        assert samples == {0: (0, "Image:0"), 1: (0, "Image:1"), 2: (1, "Image:2")}, name


def test_through_the_daemon_with_metadata_updated_after_close(tmp_path):
    """Documents taken before close keep the files linked when written back after it."""
    s = settings(tmp_path / "svc.ome.tiff", "companion-file")
    stream = ows.create_stream(s)
    before = stream.get_metadata()
    assert sorted(before) == [-1, 0, 1, 2]
    for i in range(s.num_frames):
        stream.append(frame_pixels(3, i, s.frame_shape, s.dtype))
    stream.close()
    directory = tmp_path / "svc"
    expected = expected_images(s, 3)
    view = stream.view()  # after close: read from the files, through the companion's XML
    for pos in range(3):
        np.testing.assert_array_equal(read_image(str(directory / f"svc_p00{pos}.ome.tiff")),
                                      expected[pos])
        np.testing.assert_array_equal(view[:, pos], expected[pos])  # view: t, p, c
    before[-1].images[1].name = "renamed"
    stream.update_metadata({-1: before[-1]})
    companion = from_xml((directory / "svc.companion.ome").read_text(), validate=True)
    assert companion.images[1].name == "renamed"
    assert_linked_names = [td.uuid.value for i in companion.images
                           for td in i.pixels.tiff_data_blocks]
    assert assert_linked_names == [root_uuid(directory / f"svc_p00{p}.ome.tiff")
                                   for p in range(3)]
    assert all(r.ok for r in validate_all(directory))
    with pytest.raises(KeyError, match="Unknown position index: 3"):
        stream.update_metadata({3: before[0]})


def test_single_position_layouts(tmp_path):
    one = settings(tmp_path / "one.ome.tiff", positions=("A",))
    assert one.output_path == str(tmp_path / "one.ome.tiff")
    never = settings(tmp_path / "never.ome.tiff", positions=("A",), prefer_single_file=False)
    assert never.format.prefer_single_file == "never"
    assert never.output_path == str(tmp_path / "never")
    write(never, in_process=True)
    assert os.listdir(tmp_path / "never") == ["never_p000.ome.tiff"]
    assert all(r.ok for r in validate_all(tmp_path / "never"))
    with pytest.raises(ValueError, match="prefer_single_file='always': 3 positions"):
        settings(tmp_path / "x.ome.tiff", prefer_single_file="always")
    with pytest.raises(ValueError, match="companion_file"):
        settings(tmp_path / "x.ome.tiff", "companion-file", companion_file="../up.ome")


def test_output_paths_match_ome_writers(tmp_path):
    """root_path → where the data goes, as ome-writers 0.3.2 computes it (read off the
    released package)."""
    dims = [ows.Dimension(name="y", count=4), ows.Dimension(name="x", count=4)]
    pos = [ows.PositionDimension(coords=["a", "b"])]
    cases = [
        ("d/data.tif", "auto", dims, "d/data.tif"),
        ("d/data", "tiff", dims, "d/data.ome.tiff"),
        ("d/data", "zarr", dims, "d/data.ome.zarr"),
        ("d/data.zarr", "auto", dims, "d/data.zarr"),
        ("d/data.ome.tiff", "auto", pos + dims, "d/data"),
        ("d/data.tiff", "auto", pos + dims, "d/data"),
        ("d/data.ome.zarr", "auto", pos + dims, "d/data.ome.zarr"),
    ]
    for root, fmt, d, want in cases:
        s = ows.AcquisitionSettings(root_path=str(tmp_path / root), dimensions=d,
                                    dtype="uint8", format=fmt)
        assert s.output_path == str(tmp_path / want), (root, fmt)
    with pytest.warns(UserWarning, match="could not be inferred"):
        s = ows.AcquisitionSettings(root_path=str(tmp_path / "d/data.h5"), dimensions=dims,
                                    dtype="uint8")
    assert s.output_path == str(tmp_path / "d/data.h5.ome.zarr")
    with pytest.raises(ValueError, match="contradicts root_path"):
        ows.AcquisitionSettings(root_path="d/data.zarr", dimensions=dims, dtype="uint8",
                                format="tiff")


CRASH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import ome_writers_service as ows
    from service_util import frame_pixels
    from test_tiff_multifile import settings
    s = settings({root!r}, {mode!r})
    stream = ows.create_stream(s, in_process=True)
    for i in range(9):   # of 12: position C misses t=1 entirely, A and B have it partly
        stream.append(frame_pixels(5, i, s.frame_shape, s.dtype))
    os._exit(0)          # a writer that dies: no finalize
""")


@pytest.mark.parametrize("mode", ["redundant", "companion-file"])
def test_recover_rebuilds_every_document(tmp_path, mode):
    root = tmp_path / "crash.ome.tiff"
    subprocess.run([sys.executable, "-c", CRASH.format(tests=str(REPO / "tests"),
                                                       root=str(root), mode=mode)],
                   check=True, timeout=120)
    summary = recover(str(root))  # the root_path finds the journal beside the directory
    assert summary["frames_recovered"] == 9
    directory = tmp_path / "crash"
    reports = validate_all(directory)
    assert all(r.ok for r in reports), "\n".join(map(str, reports))
    s = settings(root, mode)
    expected = expected_images(s, 5, frames=9)
    for pos in range(3):
        got = read_image(str(directory / f"crash_p00{pos}.ome.tiff"))
        np.testing.assert_array_equal(got, expected[pos])


@pytest.mark.parametrize("mode", ["redundant", "master-tiff"])
def test_daemon_backed_view_after_close_reads_every_file(tmp_path, mode):
    s = settings(tmp_path / "v.ome.tiff", mode)
    stream = write(s, in_process=False, seed=9)
    view = stream.view()
    for pos, want in enumerate(expected_images(s, 9)):
        np.testing.assert_array_equal(view[:, pos], want)  # view axes: t, p, c, y, x


def test_overwrite_replaces_an_earlier_multi_file_dataset_and_nothing_else(tmp_path):
    write(settings(tmp_path / "d.ome.tiff", "companion-file", positions=("A", "B", "C", "D")),
          in_process=True)
    (tmp_path / "d" / "notes.txt").write_text("mine")
    (tmp_path / "d" / "d_p7.ome.tiff").write_text("not a TIFF: not the dataset's")
    again = settings(tmp_path / "d.ome.tiff", "redundant", positions=("A", "B"))
    with pytest.raises(FileExistsError, match="already holds an OME-TIFF dataset"):
        ows.create_stream(again, in_process=True)
    write(again.model_copy(update={"overwrite": True}), in_process=True)
    assert sorted(os.listdir(tmp_path / "d")) == ["d_p000.ome.tiff", "d_p001.ome.tiff",
                                                   "d_p7.ome.tiff", "notes.txt"]
    (tmp_path / "d" / "d_p7.ome.tiff").unlink()
    reports = validate_all(tmp_path / "d")
    assert all(r.ok for r in reports), "\n".join(map(str, reports))
    assert len(dataset_info(tmp_path / "d")["images"]) == 2


def test_recover_finds_the_journal_from_a_root_path_without_suffix(tmp_path):
    script = textwrap.dedent(f"""
        import os, numpy as np, ome_writers_service as ows
        s = ows.AcquisitionSettings(root_path={str(tmp_path / "run1")!r}, format="zarr",
            dtype="uint16", dimensions=[ows.Dimension(name="t", count=4, chunk_size=1),
                                        ows.Dimension(name="y", count=8),
                                        ows.Dimension(name="x", count=8)])
        stream = ows.create_stream(s, in_process=True)
        for i in range(2):
            stream.append(np.full((8, 8), i + 1, np.uint16))
        stream._backend.wait_for_writes()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (tmp_path / "run1.ome.zarr.ows-journal").is_file()
    summary = recover(str(tmp_path / "run1"))  # the root_path as the script gave it
    assert summary["extent"] == 2
    assert all(r.ok for r in validate_all(tmp_path / "run1.ome.zarr"))
    with pytest.raises(FileNotFoundError, match="no journal"):
        recover(str(tmp_path / "run1"))  # recovered: the journal is gone


CRASH_SKIP = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import ome_writers_service as ows
    from service_util import frame_pixels
    from test_tiff_multifile import settings
    s = settings({root!r}, "master-tiff")
    stream = ows.create_stream(s, in_process=True)
    stream.skip(frames=2)  # position A at t=0: the master file never gets a page
    for i in range(2, 6):
        stream.append(frame_pixels(6, i, s.frame_shape, s.dtype))
    os._exit(0)
""")


def test_recover_master_tiff_whose_master_has_no_page(tmp_path):
    root = tmp_path / "m.ome.tiff"
    subprocess.run([sys.executable, "-c", CRASH_SKIP.format(tests=str(REPO / "tests"),
                                                            root=str(root))],
                   check=True, timeout=120)
    recover(str(root))
    directory = tmp_path / "m"
    # the master got no page: written anew with the fill value, the document in it again
    reports = validate_all(directory)
    assert all(r.ok for r in reports), "\n".join(map(str, reports))
    with tifffile.TiffFile(directory / "m_p000.ome.tiff") as tf:
        assert len(from_xml(tf.ome_metadata, validate=True).images) == 3
    s = settings(root, "master-tiff")
    expected = expected_images(s, 6, frames=6, missing={0, 1})
    for pos in (0, 1, 2):  # one time point: tifffile squeezes T
        got = read_image(str(directory / f"m_p00{pos}.ome.tiff"))
        np.testing.assert_array_equal(got, expected[pos].reshape(got.shape))


def test_info_and_validate_of_a_directory_ignore_what_is_not_the_dataset(tmp_path):
    write(settings(tmp_path / "r.ome.tiff"), in_process=True)
    directory = tmp_path / "r"
    (directory / "notes.xml").write_text("<notes>not OME</notes>")
    assert len(dataset_info(directory)["images"]) == 3
    assert all(r.ok for r in validate_all(directory))
    (directory / "r_p000.ome.tiff").write_bytes(b"")  # cut off at 0 bytes by a crash
    info = dataset_info(directory)  # the document is read from another file
    assert len(info["images"]) == 3
    assert any("r_p000.ome.tiff" in u for u in info["unreadable"])
    reports = validate_all(directory)
    failed = [r for r in reports if not r.ok]
    assert [Path(r.path).name for r in failed] == ["r_p000.ome.tiff", "r_p001.ome.tiff",
                                                   "r_p002.ome.tiff"]  # all link to it
    assert "r_p000.ome.tiff" in str(failed[1])


def test_a_format_object_contradicting_the_root_suffix_is_refused():
    dims = [ows.Dimension(name="y", count=4), ows.Dimension(name="x", count=4)]
    with pytest.raises(ValueError, match="contradicts root_path"):
        ows.AcquisitionSettings(root_path="d/a.ome.zarr", dimensions=dims, dtype="uint8",
                                format={"name": "ome-tiff"})


def test_a_companion_named_file_that_is_not_ome_is_never_deleted(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "companion.ome").write_text("my own notes")
    write(settings(tmp_path / "c.ome.tiff").model_copy(update={"overwrite": True}),
          in_process=True)
    assert all(r.ok for r in validate_all(tmp_path / "c"))
    assert (tmp_path / "c" / "companion.ome").read_text() == "my own notes"
    # where the dataset's own companion would go: refused rather than deleted
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "k.companion.ome").write_text("my own notes")
    with pytest.raises(FileExistsError, match="is not an OME file"):
        ows.create_stream(settings(tmp_path / "k.ome.tiff", "companion-file")
                          .model_copy(update={"overwrite": True}), in_process=True)
    assert (tmp_path / "k" / "k.companion.ome").read_text() == "my own notes"


def test_the_companion_file_is_named_as_bio_formats_recognises_it(tmp_path):
    """`<stem>.companion.ome` (the OME-TIFF specification's suffix): a bare `companion.ome`
    (ome-writers 0.3.2's default) is read by Bio-Formats as an image of zeros."""
    s = settings(tmp_path / "exp.ome.tiff", "companion-file")
    assert s.format.companion_file == "exp.companion.ome"  # the settings name it, as 0.3.2
    write(s, in_process=True)
    assert (tmp_path / "exp" / "exp.companion.ome").is_file()
    with tifffile.TiffFile(tmp_path / "exp" / "exp_p001.ome.tiff") as tf:
        assert from_xml(tf.ome_metadata).binary_only.metadata_file == "exp.companion.ome"
    # a name of one's own with the suffix: taken as it is, without a warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = settings(tmp_path / "m.ome.tiff", "companion-file",
                        companion_file="all.companion.ome")
    write(mine, in_process=True)
    assert (tmp_path / "m" / "all.companion.ome").is_file()
    # one without it works, with a warning that says why it is a bad idea
    with pytest.warns(UserWarning, match="Bio-Formats .* recognises a companion file only by "
                      "a name ending in '.companion.ome'"):
        bare = settings(tmp_path / "b.ome.tiff", "companion-file", companion_file="companion.ome")
    write(bare, in_process=True)
    assert (tmp_path / "b" / "companion.ome").is_file()
    # an earlier dataset's companion under 0.3.2's name is replaced with overwrite
    again = settings(tmp_path / "b.ome.tiff", "companion-file").model_copy(
        update={"overwrite": True})
    write(again, in_process=True)
    assert sorted(os.listdir(tmp_path / "b")) == ["b.companion.ome", "b_p000.ome.tiff",
                                                  "b_p001.ome.tiff", "b_p002.ome.tiff"]


def test_validate_catches_pages_that_contradict_the_declared_pixels(tmp_path):
    # tifffile only warns when pages do not match the OME-XML; validate says so
    s = settings(tmp_path / "t.ome.tiff", positions=("A",))
    write(s, in_process=True)
    path = Path(s.output_path)
    assert all(r.ok for r in validate_all(path))
    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata
    tifffile.tiffcomment(path, comment=xml.replace('SizeX="20"', 'SizeX="21"').encode())
    (report,) = validate_all(path)
    assert not report.ok and "the OME-XML declares (24, 21) uint16" in str(report)
