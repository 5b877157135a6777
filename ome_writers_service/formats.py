"""The output formats (`OmeZarrFormat`, `OmeTiffFormat`, `ScratchFormat`) and how a root
path's suffix names one."""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, field_validator

from .schema_base import Downsampling, _Model


class OmeZarrFormat(_Model):
    """OME-Zarr, written with tensorstore: NGFF 0.5 on zarr v3 (the default), or 0.4 on
    zarr v2 (``version="0.4"``) for readers that read only that (Fiji's n5-zarr, older napari
    plugins, MoBIE). Both have every feature but sharding, which zarr v2 lacks.

    ``backend`` accepts every name ome-writers 0.3.2 does, so its scripts run unchanged; the
    service always writes with tensorstore (the arrays are the same zarr either way).
    """

    name: Literal["ome-zarr"] = "ome-zarr"
    backend: Literal["auto", "tensorstore", "acquire-zarr", "zarr-python", "zarrs-python"] = "auto"
    suffix: str = ".ome.zarr"
    # --- additions of the service (not in ome-writers 0.3.2) ---
    version: Literal["0.4", "0.5"] = "0.5"
    """The OME-Zarr (NGFF) version: "0.5" (zarr v3) or "0.4" (zarr v2)."""
    levels: PositiveInt = 1
    """Resolution levels ("0", "1", ... in each image's multiscales): each halves the one above
    in y and x, computed by the daemon as frames arrive."""
    downsampling: Downsampling = "mean"
    """How a level's pixel combines the 2x2 pixels above it (see `backends.pyramid`)."""

    def output_path(self, root_path: str, n_positions: int) -> str:
        """The store: ``root_path``'s stem with this format's suffix (as ome-writers 0.3.2)."""
        return ome_stem(root_path) + self.suffix

    def get_output_path(self, root_path: str, *, num_positions: int = 1) -> str:
        """ome-writers 0.3.2's name for `output_path`."""
        return self.output_path(root_path, num_positions)


#: The OME-TIFF specification's suffix of a companion OME-XML file (Bio-Formats needs it).
COMPANION_SUFFIX = ".companion.ome"


class OmeTiffFormat(_Model):
    """OME-TIFF, written with tifffile; one file per position.

    One position goes to the file ``<stem><suffix>``; several (or any number with
    ``prefer_single_file="never"``) go to the directory ``<stem>/`` as
    ``<stem>_p000<suffix>``, ``<stem>_p001<suffix>``, ..., with the complete OME-XML (all
    images, files linked by UUID) where ``multi_file_metadata`` says: in every file
    ("redundant"), in the first ("master-tiff", the others hold a ``BinaryOnly`` reference),
    or in the XML file ``companion_file`` beside them ("companion-file").

    The companion file is named ``<stem>.companion.ome`` unless ``companion_file`` says
    otherwise (ome-writers 0.3.2 names it ``companion.ome``, which Bio-Formats does not take
    for a companion: it recognises one only by the suffix ``.companion.ome``, the OME-TIFF
    specification's, and reads a bare ``companion.ome`` as an image of zeros). A name without
    that suffix is accepted with a warning.
    """

    name: Literal["ome-tiff"] = "ome-tiff"
    backend: Literal["auto", "tifffile"] = "auto"
    suffix: str = ".ome.tiff"
    prefer_single_file: Literal["auto", "always", "never"] = "auto"
    multi_file_metadata: Literal["redundant", "master-tiff", "companion-file"] = "redundant"
    companion_file: str | None = None
    """None: ``<stem>.companion.ome``, filled in by AcquisitionSettings (`companion_name`)."""
    # --- additions of the service ---
    levels: PositiveInt = 1
    """Resolution levels: every plane's page gets ``levels - 1`` SubIFDs, each halving the one
    above in y and x (Bio-Formats reads them as resolutions, tifffile as ``series.levels``)."""
    downsampling: Downsampling = "mean"
    """How a level's pixel combines the 2x2 pixels above it (see `backends.pyramid`)."""

    @field_validator("prefer_single_file", mode="before")
    @classmethod
    def _bool_preference(cls, v: Any) -> Any:
        return {True: "always", False: "never"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("companion_file")
    @classmethod
    def _plain_file_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or v in (".", "..") or "/" in v or "\\" in v or "\0" in v:
            raise ValueError(f"companion_file {v!r} must be a plain file name (it is written "
                             "in the directory of the position files)")
        if not v.lower().endswith(COMPANION_SUFFIX):
            warnings.warn(
                f"companion_file {v!r}: Bio-Formats (Fiji, OMERO, QuPath) recognises a "
                f"companion file only by a name ending in {COMPANION_SUFFIX!r}, and reads "
                f"{v!r} as an image of zeros; name it e.g. 'experiment{COMPANION_SUFFIX}' (or "
                "leave companion_file unset: <stem>.companion.ome)", UserWarning, stacklevel=2)
        return v

    def companion_name(self, stem: str) -> str:
        """The companion file's name for a dataset whose directory is ``stem``: the one the
        user gave, else ``<stem>.companion.ome``."""
        return self.companion_file if self._given("companion_file") else stem + COMPANION_SUFFIX

    def is_multi_file(self, n_positions: int) -> bool:
        """Whether positions go to a directory of files (else: one file)."""
        return self.prefer_single_file == "never" or (
            self.prefer_single_file == "auto" and n_positions > 1)

    def output_path(self, root_path: str, n_positions: int) -> str:
        """The file ``<stem><suffix>``, or the directory ``<stem>`` of a multi-file dataset."""
        stem = ome_stem(root_path)
        return stem if self.is_multi_file(n_positions) else stem + self.suffix

    def get_output_path(self, root_path: str, *, num_positions: int = 1) -> str:
        """ome-writers 0.3.2's name for `output_path`."""
        return self.output_path(root_path, num_positions)


class ScratchFormat(_Model):
    """Arrays in the caller's memory (ome-writers 0.3.2's scratch format; pymmcore-plus'
    ``output="memory"``): no daemon, no OME metadata, in acquisition order.

    With a ``root_path`` the arrays are memory-mapped files in that directory
    (``pos_<i>.dat``, ``manifest.json``, ``frame_metadata.jsonl``, as ome-writers). Without
    one they live in memory, up to ``max_memory_bytes``; beyond it they spill to memory-mapped
    files in a temporary directory (``spill_to_disk``, with a warning) or `MemoryError` is
    raised.
    """

    name: Literal["scratch"] = "scratch"
    backend: Literal["scratch"] = "scratch"
    max_memory_bytes: int = 4 * 1024**3
    suffix: str = ""
    spill_to_disk: bool = True

    def output_path(self, root_path: str, n_positions: int) -> str:
        """``root_path`` itself (a directory of memory-mapped arrays), or "" in memory."""
        return root_path

    def get_output_path(self, root_path: str, *, num_positions: int = 1) -> str:
        """ome-writers 0.3.2's name for `output_path`."""
        return root_path


Format = Annotated[OmeZarrFormat | OmeTiffFormat | ScratchFormat, Field(discriminator="name")]

#: Strings ``format=`` accepts: the format names and, as in ome-writers, the backend names.
_FORMAT_NAMES: dict[str, tuple[type, dict[str, str]]] = {
    "ome-zarr": (OmeZarrFormat, {}), "zarr": (OmeZarrFormat, {}),
    "tensorstore": (OmeZarrFormat, {"backend": "tensorstore"}),
    "acquire-zarr": (OmeZarrFormat, {"backend": "acquire-zarr"}),
    "zarr-python": (OmeZarrFormat, {"backend": "zarr-python"}),
    "zarrs-python": (OmeZarrFormat, {"backend": "zarrs-python"}),
    "ome-tiff": (OmeTiffFormat, {}), "tiff": (OmeTiffFormat, {}), "tif": (OmeTiffFormat, {}),
    "tifffile": (OmeTiffFormat, {"backend": "tifffile"}),
}


_OME_SUFFIX = re.compile(r"(\.ome)?\.(tiff?|zarr)$", re.IGNORECASE)
def ome_stem(path: str) -> str:
    """``path`` without its trailing ``[.ome].tif``/``.tiff``/``.zarr`` (other dots stay)."""
    path = path.rstrip("/\\") or path
    match = _OME_SUFFIX.search(path)
    return path[: match.start()] if match else path


def _path_suffix(root_path: str) -> tuple[str, str] | None:
    """(format name, suffix) that ``root_path`` ends in, e.g. ("ome-tiff", ".tif")."""
    match = _OME_SUFFIX.search(root_path.rstrip("/\\"))
    if match is None:
        return None
    kind = "ome-zarr" if match.group(2).lower() == "zarr" else "ome-tiff"
    return kind, match.group(0)


def _format_from_path(root_path: str) -> OmeZarrFormat | OmeTiffFormat | None:
    found = _path_suffix(root_path)
    if found is None:
        return None
    kind, suffix = found
    return (OmeZarrFormat if kind == "ome-zarr" else OmeTiffFormat)(suffix=suffix)
