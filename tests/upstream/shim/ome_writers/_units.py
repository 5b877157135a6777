"""Upstream's pure helper `ome_writers._units`, loaded from the unpacked sdist."""

from ._sdist import load_into

load_into(__name__)
