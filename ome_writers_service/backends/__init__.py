"""Format writers behind one interface (`ArrayBackend`); `create_backend` picks one."""

from __future__ import annotations

from ..schema import AcquisitionSettings, OmeTiffFormat, OmeZarrFormat, ScratchFormat
from .base import ArrayBackend, BackendError

__all__ = ["ArrayBackend", "BackendError", "create_backend"]


def create_backend(settings: AcquisitionSettings, *, s3_endpoint: str | None = None
                   ) -> ArrayBackend:
    """The backend for the settings' format (not yet created on disk); ``s3_endpoint``: the
    S3 endpoint of an s3:// root_path (else ``$AWS_ENDPOINT_URL``)."""
    fmt = settings.format
    if isinstance(fmt, OmeZarrFormat):
        from .zarr_tensorstore import TensorstoreZarrBackend

        return TensorstoreZarrBackend(settings, s3_endpoint=s3_endpoint)
    if isinstance(fmt, OmeTiffFormat):
        from .tiff_tifffile import TifffileBackend

        return TifffileBackend(settings)
    if isinstance(fmt, ScratchFormat):
        from .scratch import ScratchBackend

        return ScratchBackend(settings)
    raise ValueError(f"no backend for format {fmt!r}")
