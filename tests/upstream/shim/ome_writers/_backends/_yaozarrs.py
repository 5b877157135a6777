"""Upstream's OME-Zarr backend class name: our OME-Zarr backend (what an in-process OME-Zarr
stream holds)."""

from ome_writers_service.backends.zarr_tensorstore import TensorstoreZarrBackend as YaozarrsBackend  # noqa: F401,E501
