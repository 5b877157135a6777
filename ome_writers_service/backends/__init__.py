"""Format writers behind one interface (`ArrayBackend`); `create_backend` picks one."""

from __future__ import annotations

from ..schema import AcquisitionSettings, OmeTiffFormat, OmeZarrFormat, ScratchFormat
from .base import ArrayBackend, BackendError

__all__ = ["ArrayBackend", "BackendError", "create_backend"]


def create_backend(settings: AcquisitionSettings) -> ArrayBackend:
    """The backend for the settings' format (not yet created on disk)."""
    fmt = settings.format
    if isinstance(fmt, OmeZarrFormat):
        from .zarr_tensorstore import TensorstoreZarrBackend

        return TensorstoreZarrBackend(settings)
    if isinstance(fmt, OmeTiffFormat):
        from .tiff_tifffile import TifffileBackend

        return TifffileBackend(settings)
    if isinstance(fmt, ScratchFormat):
        from .scratch import ScratchBackend

        return ScratchBackend(settings)
    raise ValueError(f"no backend for format {fmt!r}")
