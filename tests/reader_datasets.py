"""Every layout the service writes, as small datasets, for the tests that open them with
readers nobody here wrote (test_readers.py): Bio-Formats for OME-TIFF; ome-zarr-py, bioio,
ome-zarr-models and zarr-python for OME-Zarr (and bioio-ome-tiff for OME-TIFF).

Each `Written` dataset keeps what a reader must find: each image's pixels in storage order
(frames regenerated from their seed, routed by hand), its name, axes, scales and units,
channel names and plate position. Datasets are written once per test session, some in
process, some through a real daemon, some by a writer that dies and `recover`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import ome_writers_service as ows
from ome_writers_service.recover import recover

from service_util import expected_images, frame_pixels, reference_levels, start_daemon

HERE = Path(__file__).resolve().parent
#: OME-XML PixelType of each dtype
OME_PIXEL_TYPE = {"uint8": "uint8", "uint16": "uint16", "int16": "int16", "uint32": "uint32",
                  "float32": "float", "float64": "double"}


def pixels(seed: int, i: int, shape, dtype) -> np.ndarray:
    """Frame ``i`` of a dataset: random integers over the dtype's range, or floats."""
    if np.issubdtype(np.dtype(dtype), np.integer):
        return frame_pixels(seed, i, shape, dtype)
    return (np.random.default_rng([seed, i]).random(shape) * 1000 - 100).astype(dtype)


@dataclass
class Written:
    """One dataset on disk and what readers must find in it."""

    layout: str  #: what kind of layout this is (the row of the reader matrix)
    settings: ows.AcquisitionSettings
    expected: list[np.ndarray]  #: each image's pixels, storage order
    how: str  #: "in process", "daemon", "recovered"
    notes: dict[str, Any] = field(default_factory=dict)
    _levels: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def fmt(self) -> str:
        return self.settings.format_name

    @property
    def root(self) -> Path:
        return Path(self.settings.output_path)

    @property
    def storage_dims(self) -> list[ows.Dimension]:
        return list(self.settings.storage_dimensions)

    @property
    def image_names(self) -> list[str]:
        return [self.settings.image_name_of(p) for p in self.settings.positions]

    @property
    def levels(self) -> int:
        """Resolution levels written (1: full resolution only)."""
        return getattr(self.settings.format, "levels", 1)

    def expected_levels(self, image: int) -> list[np.ndarray]:
        """An image's pixels at every resolution level, full resolution first, computed by
        the definition of the format's downsampling (service_util.reference_levels)."""
        if image not in self._levels:
            self._levels[image] = reference_levels(self.expected[image], self.levels,
                                                   self.settings.format.downsampling)
        return self._levels[image]

    @property
    def channel_names(self) -> list[str]:
        cdim = next((d for d in self.storage_dims if d.type == "channel"), None)
        return [] if cdim is None or not cdim.coords else [c.name for c in cdim.channels]

    # ---- OME-TIFF ----

    @property
    def tiff_files(self) -> list[Path]:
        """Each image's file."""
        if self.root.is_dir():
            return sorted(p for p in self.root.iterdir() if p.suffix == ".tiff")
        return [self.root]

    @property
    def companion(self) -> Path | None:
        found = sorted(self.root.glob("*.companion.ome")) if self.root.is_dir() else []
        return found[0] if found else None

    def ome_letters(self) -> list[str]:
        """OME letter (T, C, Z) of each non-frame storage axis."""
        return [{"time": "T", "channel": "C", "space": "Z"}[d.type]
                for d in self.storage_dims[:-2]]

    def dimension_order(self) -> str:
        """The DimensionOrder a reader must report: the fastest storage axis first, absent
        axes (size 1) as in the first of OME's orders that fits (as ome-writers 0.3.2)."""
        prefix = "XY" + "".join(self.ome_letters()[::-1])
        return next(o for o in ("XYZCT", "XYZTC", "XYCTZ", "XYCZT", "XYTCZ", "XYTZC")
                    if o.startswith(prefix))

    def plane(self, image: int, z: int, c: int, t: int, level: int = 0) -> np.ndarray:
        where = {"Z": z, "C": c, "T": t}
        pixels = self.expected_levels(image)[level] if level else self.expected[image]
        return pixels[tuple(where[a] for a in self.ome_letters())]

    def sizes(self, image: int) -> dict[str, int]:
        """SizeX..SizeT of an image as written."""
        shape = self.expected[image].shape
        out = {"X": shape[-1], "Y": shape[-2], "Z": 1, "C": 1, "T": 1}
        for letter, n in zip(self.ome_letters(), shape[:-2]):
            out[letter] = n
        return out

    # ---- OME-Zarr ----

    @property
    def zarr_version(self) -> str:
        return self.settings.format.version

    def image_groups(self) -> list[str]:
        """Each image's group, relative to the store, as the layout names it."""
        from ome_writers_service.backends.zarr_tensorstore import TensorstoreZarrBackend

        return TensorstoreZarrBackend(self.settings).image_groups


def _dims(*spec: tuple, yx=(24, 20), scale_yx=0.25) -> list[ows.Dimension]:
    out = []
    for s in spec:
        if isinstance(s, ows.Dimension):
            out.append(s)
        else:
            name, count, *rest = s
            kw = rest[0] if rest else {}
            out.append(ows.Dimension(name=name, count=count, **kw))
    out += [ows.Dimension(name="y", count=yx[0], scale=scale_yx, unit="um"),
            ows.Dimension(name="x", count=yx[1], scale=scale_yx, unit="um")]
    return out


def _positions(n: int) -> ows.PositionDimension:
    return ows.PositionDimension(coords=[ows.Position(name=f"P{i}", x_coord=100.0 * i,
                                                      y_coord=-50.0 * i) for i in range(n)])


def _plate_positions(numbered: bool = False) -> tuple[ows.PositionDimension, ows.Plate]:
    """A 2×2-well plate (B/C × 3/4 of a 96-well plate) with 2 fields per well, named
    ``B3f0``, ... (or, ``numbered``, 0 and 1 in each well)."""
    plate = ows.Plate.from_standard_wells(96)
    plate.name = "screen"
    coords = [ows.Position(name=str(f) if numbered else f"{r}{c}f{f}", plate_row=r,
                           plate_column=c,
                           x_coord=1000.0 * int(c) + 10 * f, y_coord=2000.0 * (ord(r) - 65))
              for r in "BC" for c in "34" for f in range(2)]
    return ows.PositionDimension(coords=coords), plate


CHANNELS = {"coords": ["DAPI", "GFP", "mCherry"]}


def _write(s: ows.AcquisitionSettings, how: str, seed: int, daemon=None, frames: int | None = None,
           skip: set[int] = frozenset()) -> None:
    if how == "daemon":
        stream = ows.create_stream(s, endpoint=daemon.endpoint, token=daemon.token)
    else:
        stream = ows.create_stream(s, in_process=True)
    n = s.num_frames if frames is None else frames
    for i in range(n):
        if i in skip:
            stream.skip(frames=1)
        else:
            stream.append(pixels(seed, i, s.frame_shape, s.dtype),
                          frame_metadata={"exposure_time": 0.01, "frame": i})
    stream.close()


_CRASH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import ome_writers_service as ows
    from reader_datasets import pixels
    s = ows.AcquisitionSettings.model_validate_json(open({settings!r}).read())
    stream = ows.create_stream(s, in_process=True)
    for i in range({frames}):
        stream.append(pixels({seed}, i, s.frame_shape, s.dtype))
    if s.format_name == "ome-zarr":
        stream._backend.wait_for_writes()
    os._exit(0)  # a writer that dies: no finalize; recover() finishes the dataset
""")


def _crash_and_recover(s: ows.AcquisitionSettings, seed: int, frames: int, tmp: Path) -> None:
    sfile = tmp / f"{Path(s.output_path).name}.settings.json"
    sfile.write_text(s.model_dump_json())
    subprocess.run([sys.executable, "-c", _CRASH.format(tests=str(HERE), settings=str(sfile),
                                                        frames=frames, seed=seed)],
                   check=True, timeout=120)
    recover(s.root_path)


def _settings(root: Path, dims, dtype="uint16", **kw) -> ows.AcquisitionSettings:
    return ows.AcquisitionSettings(root_path=str(root), dimensions=dims, dtype=dtype,
                                   overwrite=True, **kw)


Recipe = tuple[str, str, Callable[[Path], ows.AcquisitionSettings], dict[str, Any]]


def tiff_recipes() -> list[Recipe]:
    """(layout, how, settings, write options) of every OME-TIFF layout."""
    plate_dim, plate = _plate_positions()
    t5 = ows.Dimension(name="t", count=2, scale=2.5, unit="s")
    return [
        # acquisition order z, t, c: pages in that order, DimensionOrder XYCTZ
        ("single file, 5D (z,t,c acquisition order)", "in process", lambda r: _settings(
            r / "five_d.ome.tiff", _dims(("z", 3, {"scale": 1.5, "unit": "um"}), t5,
                                         ("c", 3, CHANNELS)), image_name="five-d"), {}),
        ("single file, uint8, LZW", "daemon", lambda r: _settings(
            r / "lzw.ome.tiff", _dims(("c", 2, {"coords": ["BF", "GFP"]}), ("z", 2)),
            dtype="uint8", compression="lzw"), {}),
        ("single file, float32, zstd", "in process", lambda r: _settings(
            r / "zstd.ome.tiff", _dims(("t", 3), ("c", 2, {"coords": ["a", "b"]})),
            dtype="float32", compression="zstd"), {}),
        ("single file, ended early (3 of 4 t)", "daemon", lambda r: _settings(
            r / "early.ome.tiff", _dims(("t", 4), ("c", 2, {"coords": ["a", "b"]}))),
         {"frames": 5}),
        ("single file, unbounded t (BigTIFF)", "daemon", lambda r: _settings(
            r / "unbounded.ome.tiff", _dims(("t", None), ("c", 2, {"coords": ["a", "b"]}))),
         {"frames": 7, "bigtiff": True}),
        ("multi-file, one position (prefer_single_file='never')", "in process",
         lambda r: _settings(r / "never.ome.tiff", _dims(("t", 2), _positions(1)),
                             format={"name": "ome-tiff", "prefer_single_file": "never"}), {}),
        ("multi-file, 3 positions, redundant", "daemon", lambda r: _settings(
            r / "redundant.ome.tiff", _dims(("t", 2), _positions(3), ("c", 2, CHANNELS | {
                "coords": ["DAPI", "GFP"]})),
            format={"name": "ome-tiff", "multi_file_metadata": "redundant"}), {}),
        ("multi-file, 3 positions, master-tiff", "in process", lambda r: _settings(
            r / "master.ome.tiff", _dims(_positions(3), ("z", 2, {"scale": 2, "unit": "um"})),
            format={"name": "ome-tiff", "multi_file_metadata": "master-tiff"}), {}),
        ("multi-file, 3 positions, companion-file", "daemon", lambda r: _settings(
            r / "companion.ome.tiff", _dims(("t", 2), _positions(3)),
            format={"name": "ome-tiff", "multi_file_metadata": "companion-file"}), {}),
        ("plate, 2×2 wells × 2 fields", "daemon", lambda r: _settings(
            r / "plate.ome.tiff", _dims(plate_dim, ("c", 2, {"coords": ["DAPI", "GFP"]}),
                                        yx=(16, 12)), plate=plate), {}),
        ("plate, companion-file", "in process", lambda r: _settings(
            r / "plate_companion.ome.tiff", _dims(plate_dim, yx=(16, 12)), plate=plate,
            format={"name": "ome-tiff", "multi_file_metadata": "companion-file"}), {}),
        ("multi-file, recovered after a crash", "recovered", lambda r: _settings(
            r / "crashed.ome.tiff", _dims(("t", 3), _positions(2), ("c", 2, {
                "coords": ["a", "b"]}))), {"frames": 9}),
        ("single file, 3 resolution levels (SubIFDs)", "daemon", lambda r: _settings(
            r / "pyramid.ome.tiff", _dims(("t", 2), ("c", 2, {"coords": ["DAPI", "GFP"]}),
                                          yx=(37, 30)),
            format={"name": "ome-tiff", "levels": 3}), {}),
        ("2 positions, 3 resolution levels (max), redundant", "in process", lambda r: _settings(
            r / "pyramids.ome.tiff", _dims(_positions(2), ("z", 2, {"scale": 2, "unit": "um"}),
                                           yx=(32, 32)),
            format={"name": "ome-tiff", "levels": 3, "downsampling": "max"}), {}),
    ]


def zarr_recipes(version: str) -> list[Recipe]:
    """(layout, how, settings, write options) of every OME-Zarr layout of NGFF ``version``."""
    fmt = {"name": "ome-zarr", "version": version}
    plate_dim, plate = _plate_positions()
    tag = version.replace(".", "")

    def zarr(name: str, dims, levels: dict | None = None,
             **kw) -> Callable[[Path], ows.AcquisitionSettings]:
        return lambda r: _settings(r / f"{name}_{tag}.ome.zarr", dims,
                                   format={**fmt, **(levels or {})}, **kw)

    out = [
        # acquisition order c, z, t: stored t, c, z (NGFF's order); chunks of 2 z planes
        ("image, 5D (c,z,t acquisition order), chunked", "in process", zarr(
            "five_d", _dims(("c", 3, CHANNELS),
                            ("z", 4, {"scale": 1.5, "unit": "um", "chunk_size": 2,
                                      "translation": 10.0}),
                            ("t", 2, {"scale": 2.5, "unit": "s"})), image_name="five-d"), {}),
        ("image, uint8, blosc-zstd", "daemon", zarr(
            "blosc", _dims(("t", 3, {"chunk_size": 3}), ("c", 2, {"coords": ["BF", "GFP"]})),
            dtype="uint8", compression="blosc-zstd"), {}),
        ("image, float32, zstd", "in process", zarr(
            "zstd", _dims(("z", 3, {"scale": 0.5, "unit": "um"})), dtype="float32",
            compression="zstd"), {}),
        ("image, unbounded t", "daemon", zarr(
            "unbounded", _dims(("t", None, {"chunk_size": 2}),
                               ("c", 2, {"coords": ["a", "b"]}))), {"frames": 7}),
        ("3 positions named P0..P2 (groups named after them)", "daemon", zarr(
            "positions", _dims(("t", 2), _positions(3), ("c", 2, {"coords": ["DAPI", "GFP"]}))),
         {}),
        ("3 positions by count (groups 0, 1, 2)", "in process", zarr(
            "numbered", _dims(("t", 2), ows.PositionDimension(count=3), ("z", 2))), {}),
        ("plate, 2×2 wells × 2 fields", "in process", zarr(
            "plate", _dims(plate_dim, ("c", 2, {"coords": ["DAPI", "GFP"]}), yx=(16, 12)),
            plate=plate), {}),
        ("plate, fields named 0, 1 in each well", "in process", zarr(
            "plate_numbered", _dims(_plate_positions(numbered=True)[0], yx=(16, 12)),
            plate=plate), {}),
        ("image, 3 resolution levels (mean)", "daemon", zarr(
            "pyramid", _dims(("t", 2), ("c", 2, {"coords": ["DAPI", "GFP"]}), yx=(37, 30)),
            levels={"levels": 3}), {}),
        ("3 positions, 3 resolution levels (stride)", "in process", zarr(
            "pyramids", _dims(ows.PositionDimension(count=3), ("z", 2), yx=(32, 32)),
            levels={"levels": 3, "downsampling": "stride"}), {}),
        ("2 positions, recovered after a crash", "recovered", zarr(
            "crashed", _dims(("t", 4, {"chunk_size": 1}), _positions(2),
                             ("c", 2, {"coords": ["a", "b"]}))), {"frames": 11}),
    ]
    if version == "0.5":  # sharding is zarr v3's
        out.insert(3, ("image, sharded", "in process", zarr(
            "sharded", _dims(("t", 4, {"chunk_size": 1, "shard_size_chunks": 2}),
                             ("z", 2, {"chunk_size": 1, "shard_size_chunks": 2}),
                             yx=(32, 24)), compression="blosc-lz4"), {}))
    return out


def write_all(recipes: list[Recipe], root: Path) -> list[Written]:
    """Write every recipe under ``root`` (one daemon for those written through one)."""
    root.mkdir(parents=True, exist_ok=True)
    daemon = start_daemon(root / "rt") if any(how == "daemon" for _, how, _, _ in recipes) \
        else None
    out = []
    try:
        for seed, (layout, how, make, opts) in enumerate(recipes, start=1):
            s = make(root)
            frames = opts.get("frames")
            if how == "recovered":
                _crash_and_recover(s, seed, frames, root)
            else:
                _write(s, how, seed, daemon, frames=frames)
            expected = _expected(s, seed, frames)
            out.append(Written(layout, s, expected, how, notes=opts))
    finally:
        if daemon is not None:
            assert daemon.stop() == 0, daemon.log_text()
    return out


def _expected(s: ows.AcquisitionSettings, seed: int, frames: int | None) -> list[np.ndarray]:
    return expected_images(s, seed, frames=frames, pixels=pixels)
