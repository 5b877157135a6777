"""useq-schema MDASequence -> settings, compared with what ome-writers 0.3.2 returns for the
same sequences (expected values below were read off ome_writers.useq_to_acquisition_settings)."""

from __future__ import annotations

import numpy as np
import pytest

from ome_writers_service import (
    AcquisitionSettings,
    Plate,
    PositionDimension,
    create_stream,
    dataset_info,
    useq_to_acquisition_settings,
)
from ome_writers_service.validate import validate

useq = pytest.importorskip("useq")

CH = [{"config": "DAPI", "exposure": 10}, {"config": "FITC", "exposure": 50}]


def convert(seq, **kw):
    return useq_to_acquisition_settings(seq, 64, 32, **kw)


def summary(dims):
    return [(d.name, d.type, d.count, d.unit, d.scale) for d in dims]


def positions(result):
    pd = next(d for d in result["dimensions"] if d.type == "position")
    assert isinstance(pd, PositionDimension)
    return [(p.name, p.plate_row, p.plate_column, p.grid_row, p.grid_column, p.x_coord,
             p.y_coord, p.z_coord) for p in pd.coords]


def test_dimensions_units_and_scales_as_ome_writers():
    r = convert(useq.MDASequence(time_plan={"interval": 2, "loops": 3}, channels=CH,
                                 z_plan={"range": 4, "step": 1}))
    assert r["plate"] is None
    assert summary(r["dimensions"]) == [
        ("t", "time", 3, "second", 2.0), ("c", "channel", 2, None, 1.0),
        ("z", "space", 5, "micrometer", 1.0), ("y", "space", 32, "micrometer", None),
        ("x", "space", 64, "micrometer", None)]
    assert [c.name for c in r["dimensions"][1].coords] == ["DAPI", "FITC"]
    r = convert(useq.MDASequence(axis_order="czt", time_plan={"interval": 1, "loops": 2},
                                 channels=CH, z_plan={"absolute": [0, 1.5]}),
                pixel_size_um=0.65, chunk_shapes={"c": 2, "y": 16}, shard_shapes={"y": 2})
    assert summary(r["dimensions"]) == [
        ("c", "channel", 2, None, 1.0), ("z", "space", 2, "micrometer", 1.0),
        ("t", "time", 2, "second", 1.0), ("y", "space", 32, "micrometer", 0.65),
        ("x", "space", 64, "micrometer", 0.65)]
    assert r["dimensions"][0].chunk_size == 2 and r["dimensions"][3].shard_size_chunks == 2


def test_units_are_scale_unit_tuples_as_in_ome_writers():
    r = convert(useq.MDASequence(time_plan={"interval": 2, "loops": 3},
                                 z_plan={"range": 2, "step": 1}),
                units={"t": (0.5, "millisecond"), "z": (0.3, "um")})
    assert summary(r["dimensions"])[:2] == [("t", "time", 3, "millisecond", 0.5),
                                            ("z", "space", 3, "micrometer", 0.3)]


@pytest.mark.parametrize("seq,message", [
    (lambda: useq.MDASequence(channels=[{"config": "DAPI", "do_stack": False}, "FITC"],
                              z_plan={"range": 2, "step": 1}), "do_stack=False"),
    (lambda: useq.MDASequence(channels=[{"config": "DAPI", "acquire_every": 2}, "FITC"],
                              time_plan={"interval": 1, "loops": 4}), "acquire_every > 1"),
    (lambda: useq.MDASequence(stage_positions=[{"x": 0, "y": 0, "sequence": {
        "z_plan": {"range": 2, "step": 1}}}], channels=CH), "may only contain grid_plan"),
    (lambda: useq.MDASequence(axis_order="pcgz", stage_positions=[(0, 0, 0)],
                              grid_plan={"rows": 1, "columns": 2}, channels=CH),
     "non-adjacent position and grid"),
    (lambda: useq.MDASequence(stage_positions=useq.WellPlatePlan(
        plate=96, a1_center_xy=(0, 0), selected_wells=([0], [0])),
        grid_plan={"rows": 1, "columns": 2}), "WellPlatePlan with grid_plan"),
])
def test_ragged_sequences_raise_not_implemented_as_ome_writers(seq, message):
    with pytest.raises(NotImplementedError, match=message):
        convert(seq())


def test_duration_time_plan_with_interval_zero_is_an_unbounded_t():
    r = convert(useq.MDASequence(time_plan={"interval": 0, "duration": 10}, channels=CH))
    t = r["dimensions"][0]
    assert (t.name, t.type, t.count, t.unit) == ("t", "time", None, "second")
    assert t.scale is None  # ome-writers writes 0, which is no usable scale
    s = AcquisitionSettings(root_path="u.ome.zarr", dtype="uint16", **r)
    assert s.is_unbounded and s.num_frames is None


def test_well_plate_plan_gives_the_plate_and_its_wells():
    seq = useq.MDASequence(stage_positions=useq.WellPlatePlan(
        plate=96, a1_center_xy=(0, 0), selected_wells=([0, 1], [0, 2]),
        well_points_plan=useq.GridRowsColumns(rows=1, columns=2)), channels=CH)
    r = convert(seq)
    assert r["plate"] == Plate(row_names=list("ABCDEFGH"),
                               column_names=[str(i) for i in range(1, 13)], name="96-well")
    assert positions(r) == [
        ("fov0", "A", "1", 0, 0, -0.5, 0.0, None), ("fov1", "A", "1", 0, 1, 0.5, 0.0, None),
        ("fov0", "B", "3", 0, 0, 17999.5, -9000.0, None),
        ("fov1", "B", "3", 0, 1, 18000.5, -9000.0, None)]


def test_stage_positions_with_plate_coordinates_name_wells_like_ome_writers():
    r = convert(useq.MDASequence(stage_positions=[
        {"x": 0, "y": 0, "plate_row": 0, "plate_col": 1},
        {"x": 5, "y": 5, "plate_row": 1, "plate_col": 0}]))
    assert r["plate"] == Plate(row_names=["A", "B"], column_names=["1", "2"])
    assert positions(r) == [("0", "A", "2", None, None, 0.0, 0.0, None),
                            ("1", "B", "1", None, None, 5.0, 5.0, None)]


def test_grids_keep_their_coordinates_and_sub_sequence_grids_are_supported():
    r = convert(useq.MDASequence(grid_plan={"rows": 2, "columns": 2}, channels=CH))
    assert positions(r) == [("0000", None, None, 0, 0, -0.5, 0.5, 0.0),
                            ("0001", None, None, 0, 1, 0.5, 0.5, 0.0),
                            ("0002", None, None, 1, 1, 0.5, -0.5, 0.0),
                            ("0003", None, None, 1, 0, -0.5, -0.5, 0.0)]
    r = convert(useq.MDASequence(axis_order="gpcz", stage_positions=[(0, 0, 0), (100, 100, 0)],
                                 grid_plan={"rows": 1, "columns": 2}, channels=CH))
    assert positions(r) == [("0", None, None, 0, 0, -0.5, 0.0, 0.0),
                            ("1", None, None, 0, 0, 99.5, 100.0, 0.0),
                            ("0", None, None, 0, 1, 0.5, 0.0, 0.0),
                            ("1", None, None, 0, 1, 100.5, 100.0, 0.0)]
    r = convert(useq.MDASequence(stage_positions=[
        {"x": 0, "y": 0, "sequence": {"grid_plan": {"rows": 1, "columns": 2}}}, {"x": 5, "y": 5}],
        channels=CH))
    assert positions(r) == [("0", None, None, 0, 0, -0.5, 0.0, None),
                            ("0", None, None, 0, 1, 0.5, 0.0, None),
                            ("1", None, None, None, None, 5.0, 5.0, None)]
    AcquisitionSettings(root_path="g.ome.zarr", dtype="uint16", **r)  # names unique per cell


def test_plate_sequence_is_written_and_valid(tmp_path):
    seq = useq.MDASequence(stage_positions=useq.WellPlatePlan(
        plate=24, a1_center_xy=(0, 0), selected_wells=([0, 1], [0, 2]),
        well_points_plan=useq.GridRowsColumns(rows=1, columns=2)), channels=["DAPI"])
    kw = useq_to_acquisition_settings(seq, image_width=8, image_height=8)
    s = AcquisitionSettings(root_path=str(tmp_path / "plate.ome.zarr"), dtype="uint8", **kw)
    with create_stream(s, in_process=True) as stream:
        for i, _ in enumerate(seq):
            stream.append(np.full((8, 8), i, np.uint8))
    report = validate(s.root_path)
    assert report.ok, str(report)
    info = dataset_info(s.root_path)
    assert info["kind"] == "plate"
    assert sorted(img["path"] for img in info["images"]) == [
        "plate.ome.zarr/A/1/fov0", "plate.ome.zarr/A/1/fov1", "plate.ome.zarr/B/3/fov0",
        "plate.ome.zarr/B/3/fov1"]
