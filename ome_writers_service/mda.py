"""`ServiceSink`: a pymmcore-plus output handler that writes an MDA through the service.

    from ome_writers_service.mda import ServiceSink
    sink = ServiceSink("run.ome.zarr", overwrite=True)
    core.mda.run(sequence, output=sink)
    sink.report, sink.error          # the daemon's final report; None or what went wrong

It writes the dataset pymmcore-plus' built-in ome-writers sink writes (``output="run.ome.zarr"``
with ome-writers 0.3.2): the same settings from the sequence and the camera (dimensions in the
sequence's axis order, positions and grid positions, plate, a ``cam`` axis before y, x for
several cameras, the unbounded t/y/x fallback for sequences that are not a regular array), the
same per-frame metadata (delta_t, exposure_time, position_x/y/z) and the summary metadata
(OME-Zarr: ``pymmcore_plus.summary_metadata`` in each image group's attributes; OME-TIFF: a
``pymmcore_plus`` MapAnnotation holding ``summary_metadata_json``) — but through the writer
daemon, so disk I/O never blocks the acquisition.

pymmcore-plus tells an output handler only of the frames it acquired: each frame goes to the
place its event's index says, and the frames of skipped events (a failed autofocus) keep the
fill value. Errors are never only logged: one reported by the daemon raises in the next
``frameReady`` (the sink first finalizes what was written, since pymmcore-plus stops handing
events to its handlers once one raised), and once the sequence is over ``report`` and
``error`` hold the outcome, which is logged at ERROR when it failed.

Needs pymmcore-plus (``pip install ome-writers-service[pymmcore-plus]``); importing
``ome_writers_service`` never imports it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from .api import create_stream
from .schema import AcquisitionSettings, Dimension, ScratchFormat
from .useq_support import position_index_of, useq_to_acquisition_settings

log = logging.getLogger(__name__)

__all__ = ["ServiceSink"]

#: pymmcore-plus' namespace for its metadata (as its built-in sink writes it)
NAMESPACE = "pymmcore_plus"


class ServiceSink:
    """Writes a pymmcore-plus MDA to ``output`` (a path, ``"memory"``, or settings).

    ``endpoint``, ``token``, ``transport``, ``in_process`` and ``runtime_dir`` are those of
    `create_stream`. Attributes after the sequence: ``report`` (frames written, skipped,
    paths, errors), ``error`` (None, or the exception that stopped the writing),
    ``settings`` (what was written), ``paths``.
    """

    def __init__(self, output: str | os.PathLike | AcquisitionSettings, *,
                 overwrite: bool = False, endpoint: str | None = None,
                 token: str | None = None, transport: str = "shm", in_process: bool = False,
                 runtime_dir: str | os.PathLike | None = None) -> None:
        if isinstance(output, AcquisitionSettings):
            self._base = output
        elif str(output).rstrip("/").rstrip(":").lower() in ("memory", "scratch"):
            self._base = AcquisitionSettings(format="scratch", overwrite=overwrite)
        else:
            self._base = AcquisitionSettings(root_path=os.fspath(output), overwrite=overwrite)
            if not overwrite and os.path.lexists(self._base.root_path):
                # said now, before the acquisition starts: pymmcore-plus goes on acquiring
                # when a handler fails at the start of the sequence
                raise FileExistsError(f"{self._base.root_path} already exists; pass "
                                      "overwrite=True to replace it")
        self._connect = {"endpoint": endpoint, "token": token, "transport": transport,
                         "in_process": in_process, "runtime_dir": runtime_dir}
        self.settings: AcquisitionSettings | None = None
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.paths: list[str] = []
        self._stream: Any = None
        self._summary: dict[str, Any] | None = None
        self._frame_of: Callable[[Mapping[str, int]], int] | None = None
        self._cameras = 1
        self._last_event: tuple | None = None
        self._camera = 0
        self._canceled = False

    # ---- pymmcore-plus' handler protocol (method names are its signal names) ----

    def sequenceStarted(self, sequence: Any, meta: Mapping[str, Any] | None = None) -> None:
        """Build the settings from the sequence and the camera; open the stream."""
        self._reset()
        try:
            self.settings = self._settings_for(sequence, meta or {})
            self._stream = create_stream(self.settings, **self._connect)
            self.paths = list(getattr(self._stream, "paths", []))
            if self.settings.format_name == "ome-zarr" and self._summary is not None:
                self._add_zarr_summary()
        except BaseException as e:
            self._fail(e, "could not start writing")
            raise

    def frameReady(self, img: Any, event: Any, meta: Mapping[str, Any] | None = None) -> None:
        """Append the frame at its event's place (frames of skipped events before it keep
        the fill value). Raises the daemon's error, once the dataset is finalized."""
        if self._stream is None:
            return  # not started, or stopped by an earlier error (``error`` holds it)
        try:
            n = self._frame_number(event)
            done = self._frames_done()
            if n < done:
                raise ValueError(f"frame of event {dict(event.index)} arrived after later "
                                 f"frames (frame {n}, {done} already handled): pymmcore-plus "
                                 "events must come in the sequence's order")
            if n > done:
                self._stream.skip(frames=n - done)  # events the engine skipped
            self._stream.append(img, frame_metadata=frame_metadata(meta or {}))
        except BaseException as e:
            self._fail(e, f"frame of event {dict(getattr(event, 'index', {}))}")
            self._close_quietly()
            raise

    def sequenceCanceled(self, sequence: Any = None) -> None:
        self._canceled = True

    def sequenceFinished(self, sequence: Any = None) -> None:
        """Finalize the dataset (trailing skipped events keep the fill value; a canceled
        sequence ends early, as far as its frames got); ``report``/``error`` hold the
        outcome."""
        stream = self._stream
        if stream is None:
            return
        try:
            total = self.settings.num_frames
            if total is not None and not self._canceled and self._frames_done() < total:
                stream.skip(frames=total - self._frames_done())
            self.report = _report_of(stream, stream.close())
            if self.settings.format_name == "ome-tiff" and self._summary is not None:
                self._add_tiff_summary()
        except Exception as e:  # noqa: BLE001 - held in ``error`` and logged at ERROR: the
            # sequence is over, and pymmcore-plus would only log it again from its thread
            self._fail(e, "could not finish writing")
            self._close_quietly()
        finally:
            self._stream = None

    # ---- settings ----

    def _settings_for(self, sequence: Any, meta: Mapping[str, Any]) -> AcquisitionSettings:
        """As pymmcore-plus' built-in sink builds them (from ome-writers 0.3.2's helpers)."""
        infos = meta.get("image_infos") or []
        if not infos:
            raise ValueError("ServiceSink needs the engine's summary metadata (image_infos) "
                             "to know the camera's frame size and dtype")
        info = infos[0]
        width, height = int(info["width"]), int(info["height"])
        pixel = info.get("pixel_size_um") or None  # 0: no pixel size configured
        self._summary = _summary_json(meta)
        useq_kw: dict[str, Any] | None = None
        if not _is_generator_sequence(sequence):
            try:
                useq_kw = useq_to_acquisition_settings(sequence, image_width=width,
                                                       image_height=height, pixel_size_um=pixel)
                self._frame_of = _frame_number_of(sequence, useq_kw["dimensions"])
            except NotImplementedError as e:
                log.warning("Could not convert MDASequence to AcquisitionSettings: %s. "
                            "Falling back to generic unbounded 3D settings.", e)
        if useq_kw is None:  # frames in arrival order along an unbounded t
            useq_kw = {"dimensions": _unbounded_3d(width, height, pixel), "plate": None}
            self._frame_of = None
        self._cameras = int(info.get("num_camera_adapter_channels", 1) or 1)
        dims = list(useq_kw["dimensions"])
        if self._cameras > 1:  # as pymmcore-plus: one frame per camera, before y, x
            dims.insert(len(dims) - 2, Dimension(name="cam", count=self._cameras, type="other"))
        data = {**self._base.model_dump(exclude_unset=True), "dimensions": dims,
                "plate": useq_kw.get("plate"), "dtype": str(info["dtype"])}
        if isinstance(self._base.format, ScratchFormat):
            data["format"] = self._base.format
        return AcquisitionSettings.model_validate(data)

    def _frame_number(self, event: Any) -> int:
        """Frame number of this frame: from its event's index (and camera), or the next."""
        if self._frame_of is None:
            return self._frames_done()
        index = dict(getattr(event, "index", {}) or {})
        if self._cameras == 1:
            return self._frame_of(index)
        key = tuple(sorted(index.items()))
        self._camera = self._camera + 1 if key == self._last_event else 0
        self._last_event = key
        return self._frame_of(index) * self._cameras + self._camera

    def _frames_done(self) -> int:
        return self._stream.frames_sent

    # ---- summary metadata (where pymmcore-plus' built-in sink puts it) ----

    def _add_zarr_summary(self) -> None:
        attrs = self._stream.get_metadata()
        for group in attrs.values():
            group.setdefault(NAMESPACE, {})["summary_metadata"] = self._summary
        self._stream.update_metadata(attrs)

    def _add_tiff_summary(self) -> None:
        from ome_types import model as m

        docs = self._stream.get_metadata()
        text = json.dumps(self._summary)
        for ome in docs.values():
            if ome.binary_only is not None:
                continue
            if ome.structured_annotations is None:
                ome.structured_annotations = m.StructuredAnnotations()
            ome.structured_annotations.map_annotations.append(m.MapAnnotation(
                namespace=NAMESPACE, value={"summary_metadata_json": text}))
        self._stream.update_metadata(docs)

    # ---- errors ----

    def _fail(self, e: BaseException, what: str) -> None:
        if self.error is None:
            self.error = e
            where = self.settings.output_path if self.settings is not None else "?"
            log.error("ServiceSink (%s): %s: %s", where, what, e)

    def _close_quietly(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            self.report = _report_of(stream, stream.close())
        except BaseException as e:  # noqa: BLE001 - the first error is the one reported
            # a daemon-backed stream keeps the daemon's final report even when close() raises
            self.report = _report_of(stream, getattr(stream, "report", None),
                                     errors=[] if str(e) == str(self.error) else [str(e)])

    def _reset(self) -> None:
        self.report = self.error = self.settings = None
        self._stream = self._frame_of = self._summary = None
        self._last_event, self._camera, self._canceled = None, 0, False


def frame_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """ome-writers frame metadata from pymmcore-plus' FrameMetaV1 (as its built-in sink)."""
    out: dict[str, Any] = {}
    if meta.get("runner_time_ms") is not None:
        out["delta_t"] = meta["runner_time_ms"] / 1000
    if meta.get("exposure_ms") is not None:
        out["exposure_time"] = meta["exposure_ms"] / 1000
    for k, v in (meta.get("position") or {}).items():
        if k in ("x", "y", "z") and v is not None:
            out[f"position_{k}"] = v
    return out


def _frame_number_of(sequence: Any, dims: list[Dimension]) -> Callable[[Mapping[str, int]], int]:
    """Frame number (acquisition order of ``dims``) of an event index {axis: i}."""
    outer = dims[:-2]
    position = position_index_of(sequence)
    strides, acc = [], 1
    for d in reversed(outer):
        strides.append(acc)
        acc *= int(d.count or 1)
    strides.reverse()
    plan = [(d.name, d.is_position, s) for d, s in zip(outer, strides)]

    def frame_of(index: Mapping[str, int]) -> int:
        return sum((position(index) if is_pos else index.get(name, 0)) * stride
                   for name, is_pos, stride in plan)
    return frame_of


def _unbounded_3d(width: int, height: int, pixel: float | None) -> list[Dimension]:
    return [Dimension(name="t", count=None, chunk_size=1, type="time"),
            Dimension(name="y", count=height, chunk_size=height, scale=pixel, unit="micrometer"),
            Dimension(name="x", count=width, chunk_size=width, scale=pixel, unit="micrometer")]


def _is_generator_sequence(sequence: Any) -> bool:
    try:
        from pymmcore_plus.mda._generator_sequence import GeneratorMDASequence
    except ImportError:  # pragma: no cover - another pymmcore-plus layout
        return type(sequence).__name__ == "GeneratorMDASequence"
    return isinstance(sequence, GeneratorMDASequence)


def _summary_json(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The summary metadata as JSON values (the sequence as pymmcore-plus dumps it)."""
    d = dict(meta)
    seq = d.get("mda_sequence")
    if seq is not None and hasattr(seq, "model_dump"):
        d["mda_sequence"] = seq.model_dump(mode="json", exclude_unset=True)
    return json.loads(json.dumps(d, default=str))


def _report_of(stream: Any, report: Mapping[str, Any] | None, *,
               errors: list[str] | None = None) -> dict[str, Any]:
    """The daemon's report, or the same keys for an in-process stream."""
    if isinstance(report, Mapping):
        out = dict(report)
    else:  # an in-process stream (or a daemon that never answered close)
        out = {"frames_written": getattr(stream, "frames_written", None),
               "paths": list(stream.paths), "errors": []}
    if errors:
        out["errors"] = [*out.get("errors", []), *errors]
    return out
