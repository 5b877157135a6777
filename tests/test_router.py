"""FrameRouter against a brute-force enumeration of the acquisition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from ome_writers_service import AcquisitionSettings, Dimension, PositionDimension
from ome_writers_service.router import FrameRouter

YX = [Dimension(name="y", count=4), Dimension(name="x", count=4)]


def brute_force(s: AcquisitionSettings):
    outer = s.dimensions[:-2]
    names = [d.name for d in outer]
    storage = [d.name for d in s.storage_dimensions[:-2]]
    for acq in np.ndindex(*[d.count for d in outer]):
        named = dict(zip(names, acq))
        pos = next((named[d.name] for d in outer if d.type == "position"), 0)
        yield pos, tuple(named[n] for n in storage)


@given(order=st.permutations(["t", "c", "z"]), sizes=st.tuples(*[st.integers(1, 3)] * 3),
       pos_at=st.integers(0, 3), npos=st.integers(1, 3))
@hsettings(max_examples=40, deadline=None)
def test_router_matches_brute_force(order, sizes, pos_at, npos):
    dims = [Dimension(name=n, count=c) for n, c in zip(order, sizes)]
    dims.insert(pos_at, PositionDimension(coords=[f"P{i}" for i in range(npos)]))
    s = AcquisitionSettings(root_path="r.ome.tiff", dtype="uint8", dimensions=[*dims, *YX],
                            storage_order="acquisition" if pos_at % 2 else "ome")
    router = FrameRouter(s)
    expected = list(brute_force(s))
    assert [tuple(loc) for loc in router] == expected
    assert [tuple(router.locate(i)) for i in range(len(expected))] == expected
    assert [router.frame_number(p, i) for p, i in expected] == list(range(len(expected)))
    with pytest.raises(IndexError, match=f"{len(expected)} frames declared"):
        router.locate(len(expected))


def test_extent_after_counts_what_frames_reached():
    s = AcquisitionSettings(root_path="r.ome.zarr", dtype="uint8", dimensions=[
        Dimension(name="t", count=None), Dimension(name="c", count=3), *YX])
    router = FrameRouter(s)
    assert [router.extent_after(n) for n in (0, 1, 3, 4, 7)] == \
        [(0, 0), (1, 1), (1, 3), (2, 3), (3, 3)]
    assert router.num_frames is None
    assert router.locate(10**6) == (0, (333333, 1))  # unbounded: no end


def test_skip_advances_and_refuses_to_pass_the_end():
    s = AcquisitionSettings(root_path="r.ome.zarr", dtype="uint8",
                            dimensions=[Dimension(name="t", count=5), *YX])
    router = FrameRouter(s)
    next(router)
    assert [loc.index for loc in router.skip(2)] == [(1,), (2,)]
    assert router.frames_done == 3
    with pytest.raises(IndexError, match="goes past the 5 frames"):
        router.skip(3)
    assert list(itertools.islice(router, 10)) == [(0, (3,)), (0, (4,))]
