"""ScratchFormat: ome-writers 0.3.2's in-memory arrays, in the caller's process."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from ome_writers_service import (AcquisitionSettings, OMEStream, Position, ScratchFormat,
                                 create_stream, dims_from_standard_axes)
from ome_writers_service.client import ServiceStream


def scratch(**kw) -> AcquisitionSettings:
    kw.setdefault("dimensions", dims_from_standard_axes({"t": 3, "c": 2, "y": 8, "x": 8}))
    kw.setdefault("dtype", "uint16")
    return AcquisitionSettings(**kw)


@pytest.mark.parametrize("fmt", ["scratch", "memory", {"name": "scratch"}, ScratchFormat()])
def test_scratch_format_spellings(fmt):
    assert scratch(format=fmt).format == ScratchFormat()


def test_no_root_path_means_scratch_as_in_0_3_2():
    assert scratch().format == ScratchFormat()
    assert scratch().output_path == ""


def test_in_memory_arrays_in_acquisition_order_never_through_a_daemon():
    dims = dims_from_standard_axes({"t": 2, "p": [Position(name="A"), Position(name="B")],
                                    "z": 3, "c": 2, "y": 4, "x": 5})
    s = scratch(dimensions=dims)
    stream = create_stream(s)  # the default (daemon-backed) call: scratch stays here
    assert isinstance(stream, OMEStream) and not isinstance(stream, ServiceStream)
    arrays = stream._backend.get_arrays()
    with stream:
        for i in range(2 * 2 * 3 * 2):
            stream.append(np.full((4, 5), i, "uint16"))
    assert [a.shape for a in arrays] == [(2, 3, 2, 4, 5)] * 2  # t, z, c: acquisition order
    for i in range(24):
        t, p, z, c = np.unravel_index(i, (2, 2, 3, 2))
        assert arrays[p][t, z, c, 0, 0] == i
    assert stream.view()[1, 1, 2, 1, 0, 0] == 23
    view = arrays[0][0]
    with pytest.raises(ValueError):
        view[0, 0, 0, 0] = 1  # read-only


def test_unbounded_axis_grows_and_skips_stay_zero():
    s = scratch(dimensions=dims_from_standard_axes({"t": None, "c": 2, "y": 4, "x": 4}))
    with create_stream(s) as stream:
        (arr,) = stream._backend.get_arrays()
        assert arr.shape == (1, 2, 4, 4)
        for i in range(7):
            stream.append(np.full((4, 4), i + 1, "uint16"))
        stream.skip(frames=3)
        assert arr.shape == (5, 2, 4, 4)
    assert [arr[i // 2, i % 2, 0, 0] for i in range(10)] == [1, 2, 3, 4, 5, 6, 7, 0, 0, 0]


def test_disk_backed_layout_is_ome_writers(tmp_path):
    root = tmp_path / "scratchdir"
    s = scratch(root_path=str(root), format="scratch",
                dimensions=dims_from_standard_axes({"t": None, "c": 2, "y": 4, "x": 4}))
    with create_stream(s) as stream:
        stream.set_global_metadata("lab", {"who": "me"})
        for i in range(6):
            stream.append(np.full((4, 4), i, "uint16"), frame_metadata={"delta_t": i * 0.5})
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["position_shapes"] == [[3, 2, 4, 4]]
    assert manifest["dtype"] == "uint16" and manifest["global_metadata"] == {"lab": {"who": "me"}}
    assert [d["name"] for d in manifest["dimensions"]] == ["t", "c", "y", "x"]
    data = np.fromfile(root / "pos_0.dat", "uint16")[:3 * 2 * 16].reshape(3, 2, 4, 4)
    assert [data[i // 2, i % 2, 0, 0] for i in range(6)] == list(range(6))
    rows = [json.loads(line) for line in (root / "frame_metadata.jsonl").read_text().splitlines()]
    assert [r["_idx"] for r in rows] == [[i // 2, i % 2] for i in range(6)]
    assert rows[5]["delta_t"] == 2.5
    # an existing scratch dataset is kept unless overwrite=True; other data never replaced
    with pytest.raises(FileExistsError):
        create_stream(s)
    (other := tmp_path / "photos").mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a scratch dataset"):
        create_stream(s.model_copy(update={"root_path": str(other), "overwrite": True}))
    assert (other / "holiday.jpg").exists()


def test_memory_limit_spills_or_raises():
    big = dict(dimensions=dims_from_standard_axes({"t": 4, "y": 64, "x": 64}))
    with pytest.warns(UserWarning, match="disk-backed storage"):
        stream = create_stream(scratch(format=ScratchFormat(max_memory_bytes=1000), **big))
    with stream:
        for i in range(4):
            stream.append(np.full((64, 64), i, "uint16"))
    (path,) = stream.paths
    assert path.endswith("pos_0.dat")
    assert stream.view()[3, 0, 0] == 3
    with pytest.raises(MemoryError, match="max_memory_bytes"):
        create_stream(scratch(format=ScratchFormat(max_memory_bytes=1000, spill_to_disk=False),
                              **big))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_stream(scratch(format=ScratchFormat(max_memory_bytes=4 * 64 * 64 * 2),
                              **big)).close()  # exactly at the limit: in memory


def test_root_path_assignment_the_format_follows(tmp_path):
    s = scratch(root_path=str(tmp_path / "a.ome.zarr"))
    s.root_path = str(tmp_path / "b.ome.tiff")
    assert s.format.name == "ome-tiff" and s.output_path.endswith("b.ome.tiff")
    s.root_path = str(tmp_path / "c.tif")
    assert s.format.name == "ome-tiff" and s.output_path.endswith("c.tif")
    # a scratch format the user chose stays: a scratch directory may have any name
    t = scratch(format="scratch")
    t.root_path = str(tmp_path / "d.ome.zarr")
    assert t.format == ScratchFormat()


def test_mapping_format_takes_the_root_suffix(tmp_path):
    s = scratch(root_path=str(tmp_path / "out.zarr"), format={"name": "ome-zarr"})
    assert s.output_path == str(tmp_path / "out.zarr")
