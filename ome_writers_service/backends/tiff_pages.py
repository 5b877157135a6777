"""Appending uncompressed TIFF pages shaped exactly like the ones tifffile wrote before.

``TiffWriter.write`` costs ~85 µs of Python per page, most of the time a 256x256 frame takes
to store: it builds and sorts the tags anew for every call. Every page after the first has
the same tags, though, with only the strip offset (and the offsets of values kept outside
the entry table) depending on where the page lands. So tifffile writes the first two pages
(the first carries the OME-XML), and `PageAppender` clones the second page's IFD for every
later one: one ``pwritev`` of IFD + pixels (on Windows, which has none, the pieces joined
and written at once: `platform.pwritev`), then one write linking the previous IFD to it.
The file is a valid TIFF after every page, as with tifffile page by page.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import tifffile

from .. import platform

#: bytes per value of each TIFF field type (TIFF 6.0 and BigTIFF)
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              13: 4, 16: 8, 17: 8, 18: 8}
_STRIP_OFFSETS = 273
_DATA_ALIGN = 16  # tifffile's default alignment of image data


class PageAppender:
    """Appends pages to ``path`` after its last page, cloning the IFD of page ``template``
    (a page tifffile wrote without a description: page 1)."""

    def __init__(self, path: str | os.PathLike, template: int = 1) -> None:
        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) <= template:
                raise ValueError(f"{path}: no page {template} to clone")
            big = tf.is_bigtiff
            page = tf.pages[template]
            tags = list(page.tags.values())
            if len(page.dataoffsets) != 1:
                raise ValueError(f"{path}: page {template} has {len(page.dataoffsets)} strips")
            ifd = page.offset
            self._nbytes = int(page.databytecounts[0])
            last = tf.pages[-1]
        count_fmt, entry, self._offset_fmt = ("<Q", 20, "<Q") if big else ("<H", 12, "<I")
        head = struct.calcsize(count_fmt)
        value_at = entry - struct.calcsize(self._offset_fmt)  # value field within an entry
        table_end = ifd + head + len(tags) * entry
        end = table_end + struct.calcsize(self._offset_fmt)
        #: positions (in the IFD blob) of offset fields that point into the blob itself
        self._relocated: list[int] = []
        strip_field = None
        for k, tag in enumerate(tags):
            field = head + k * entry + value_at
            if tag.code == _STRIP_OFFSETS:
                strip_field = field
            elif tag.valueoffset != ifd + field:  # the value is stored outside the entry
                self._relocated.append(field)
                end = max(end, tag.valueoffset + tag.count * _TYPE_SIZE[tag.dtype.value])
        if strip_field is None:
            raise ValueError(f"{path}: page {template} has no StripOffsets")
        self._strip_field = strip_field
        self._next_field = table_end - ifd
        self._path = Path(path)
        self._fd = os.open(self._path, os.O_RDWR | platform.O_BINARY | platform.O_CLOEXEC)
        try:
            self._template = bytearray(platform.pread(self._fd, end - ifd, ifd))
            self._template_pos = ifd
            # the pointer of the file's last IFD, linked to each new page in turn
            last_tags = len(last.tags)
            self._link = last.offset + head + last_tags * entry
            self._end = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def page_nbytes(self) -> int:
        return self._nbytes

    def append(self, frame: np.ndarray) -> None:
        """Write one page: ``frame`` must have the template page's shape, dtype, byte order
        and be C-contiguous (its bytes are written as they are)."""
        pos = self._end + (self._end & 1)  # IFDs start on a word boundary
        ifd = self._template.copy()
        delta = pos - self._template_pos
        fmt = self._offset_fmt
        for field in self._relocated:
            (value,) = struct.unpack_from(fmt, ifd, field)
            struct.pack_into(fmt, ifd, field, value + delta)
        data = pos + len(ifd)
        data += -data % _DATA_ALIGN
        struct.pack_into(fmt, ifd, self._strip_field, data)
        struct.pack_into(fmt, ifd, self._next_field, 0)
        pad = b"\0" * (data - pos - len(ifd))
        buffers = [ifd, pad, memoryview(frame).cast("B")]
        if pos != self._end:
            buffers.insert(0, b"\0")
        written = platform.pwritev(self._fd, buffers, self._end)
        expected = data + self._nbytes - self._end
        if written != expected:
            raise OSError(f"short write to {self._path}: {written} of {expected} bytes")
        # only now is the page reachable: a crash before leaves the file as it was
        platform.pwrite(self._fd, struct.pack(fmt, pos), self._link)
        self._link = pos + self._next_field
        self._end = data + self._nbytes

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
