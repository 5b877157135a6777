"""Upstream's `_backends._ome_xml` names: `MultiFileMetadata` (the public
``OmeTiffFormat.multi_file_metadata`` values); `prepare_metadata` is upstream's internal
document builder, which we do not have."""

from enum import Enum


class MultiFileMetadata(str, Enum):
    REDUNDANT = "redundant"
    MASTER_TIFF = "master-tiff"
    COMPANION = "companion-file"


def prepare_metadata(*args, **kwargs):
    raise NotImplementedError("ome_writers._backends._ome_xml.prepare_metadata is an internal "
                              "of ome-writers 0.3.2 (no counterpart in ome_writers_service)")
