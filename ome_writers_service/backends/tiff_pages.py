"""Appending uncompressed TIFF pages shaped exactly like the ones tifffile wrote before.

``TiffWriter.write`` costs ~85 µs of Python per page, most of the time a 256x256 frame takes
to store: it builds and sorts the tags anew for every call. Every page after the first has
the same tags, though, with only the strip offset (and the offsets of values kept outside
the entry table) depending on where the page lands. So tifffile writes the first two pages
(the first carries the OME-XML), and `PageAppender` clones the second page's IFD for every
later one: one ``pwritev`` of IFD + pixels (on Windows, which has none, the pieces joined
and written at once: `platform.pwritev`), then one write linking the previous IFD to it.
The file is a valid TIFF after every page, as with tifffile page by page.

A pyramid page (``levels`` > 1) carries its lower resolutions as SubIFDs, as tifffile writes
them: the page's IFD lists their offsets (tag 330), each a chained IFD of its own with its
pixels. They are cloned the same way, and written in one ``writev`` right after the page's
own (which need not wait for the levels to be computed), before the page is linked.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile

from .. import platform

#: bytes per value of each TIFF field type (TIFF 6.0 and BigTIFF)
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              13: 4, 16: 8, 17: 8, 18: 8}
_STRIP_OFFSETS = 273
_SUB_IFDS = 330
_DATA_ALIGN = 16  # tifffile's default alignment of image data


class _IfdTemplate:
    """One IFD as tifffile wrote it: its bytes (entries and the values kept outside them),
    and where in them the offsets lie that depend on where a clone lands."""

    def __init__(self, fd: int, page, big: bool, path) -> None:
        count_fmt, entry, self.offset_fmt = ("<Q", 20, "<Q") if big else ("<H", 12, "<I")
        size = struct.calcsize(self.offset_fmt)
        head = struct.calcsize(count_fmt)
        tags = list(page.tags.values())
        if len(page.dataoffsets) != 1:
            raise ValueError(f"{path}: page {page.index} has {len(page.dataoffsets)} strips")
        ifd = page.offset
        self.nbytes = int(page.databytecounts[0])
        self.shape = page.shape
        table_end = ifd + head + len(tags) * entry
        end = table_end + size
        #: positions of offset fields that point into the blob itself
        self.relocated: list[int] = []
        #: positions of the SubIFDs' offsets (patched with where the clones land)
        self.sub_ifd_fields: list[int] = []
        self.strip_field: int | None = None
        for k, tag in enumerate(tags):
            field = head + k * entry + entry - size  # the value field within the entry
            inline = tag.valueoffset == ifd + field
            if tag.code == _STRIP_OFFSETS:
                self.strip_field = field
                continue
            if not inline:
                self.relocated.append(field)
                end = max(end, tag.valueoffset + tag.count * _TYPE_SIZE[tag.dtype.value])
            if tag.code == _SUB_IFDS:
                step = _TYPE_SIZE[tag.dtype.value]
                first = field if inline else tag.valueoffset - ifd
                self.sub_ifd_fields = [first + i * step for i in range(tag.count)]
        if self.strip_field is None:
            raise ValueError(f"{path}: page {page.index} has no StripOffsets")
        self.next_field = table_end - ifd
        self.origin = ifd
        self.blob = bytearray(platform.pread(fd, end - ifd, ifd))

    def clone(self, pos: int) -> tuple[bytearray, int]:
        """The IFD's bytes for a copy at file offset ``pos``, and where its pixels go (they
        follow it, aligned as tifffile aligns them); the next-IFD pointer is 0."""
        ifd = self.blob.copy()
        delta = pos - self.origin
        fmt = self.offset_fmt
        for field in self.relocated:
            (value,) = struct.unpack_from(fmt, ifd, field)
            struct.pack_into(fmt, ifd, field, value + delta)
        data = pos + len(ifd)
        data += -data % _DATA_ALIGN
        struct.pack_into(fmt, ifd, self.strip_field, data)
        struct.pack_into(fmt, ifd, self.next_field, 0)
        return ifd, data


class PageAppender:
    """Appends pages to ``path`` after its last page, cloning the IFD of page ``template``
    (a page tifffile wrote without a description: page 1) and those of its SubIFDs."""

    def __init__(self, path: str | os.PathLike, template: int = 1) -> None:
        self._path = Path(path)
        self._fd = os.open(self._path, os.O_RDWR | platform.O_BINARY | platform.O_CLOEXEC)
        try:
            with tifffile.TiffFile(path) as tf:
                if len(tf.pages) <= template:
                    raise ValueError(f"{path}: no page {template} to clone")
                big = tf.is_bigtiff
                page = tf.pages[template]
                self._ifds = [_IfdTemplate(self._fd, page, big, path)]
                for i, offset in enumerate(page.subifds or ()):
                    tf.filehandle.seek(offset)
                    sub = tifffile.TiffPage(tf, index=(template, i))
                    self._ifds.append(_IfdTemplate(self._fd, sub, big, path))
                last = tf.pages[-1]
                # the pointer of the file's last IFD, linked to each new page in turn
                head, entry = (8, 20) if big else (2, 12)
                self._link = last.offset + head + len(last.tags) * entry
            if len(self._ifds[0].sub_ifd_fields) != len(self._ifds) - 1:
                raise ValueError(f"{path}: page {template}'s SubIFDs tag does not list its "
                                 f"{len(self._ifds) - 1} SubIFDs")
            self._fmt = self._ifds[0].offset_fmt
            self._end = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def page_nbytes(self) -> int:
        return self._ifds[0].nbytes

    @property
    def levels(self) -> int:
        """Resolutions per page: the page and its SubIFDs."""
        return len(self._ifds)

    def append(self, frame: np.ndarray, *lower: np.ndarray,
               ready: Callable[[], object] | None = None) -> None:
        """Write one page and its SubIFDs: ``frame`` (and each of ``lower``) must have its
        template's shape, dtype and byte order, and be C-contiguous (its bytes are written as
        they are). With ``ready``, the page's own IFD and pixels are written first, then
        ``ready()`` returns once ``lower`` holds its pixels, and the SubIFDs follow: the
        lower levels may still be computed while the page is written."""
        if len(lower) != len(self._ifds) - 1:
            raise ValueError(f"{self._path}: a page takes {len(self._ifds) - 1} lower "
                             f"resolutions, got {len(lower)}")
        fmt = self._fmt
        buffers: list = []
        at = self._end
        blobs = []
        split = split_at = None  # where the page's own part ends, in buffers and in the file
        for template, pixels in zip(self._ifds, (frame, *lower)):
            pos = at + (at & 1)  # IFDs start on a word boundary
            ifd, data = template.clone(pos)
            blobs.append((pos, ifd))
            if pos != at:
                buffers.append(b"\0")
            buffers += [ifd, b"\0" * (data - pos - len(ifd)), memoryview(pixels).cast("B")]
            at = data + template.nbytes
            if split is None:
                split, split_at = len(buffers), at
        main = blobs[0][1]
        for field, (pos, _) in zip(self._ifds[0].sub_ifd_fields, blobs[1:]):
            struct.pack_into(fmt, main, field, pos)  # the SubIFDs' offsets...
        for template, (_, ifd), (pos, _) in zip(self._ifds[1:], blobs[1:], blobs[2:]):
            struct.pack_into(fmt, ifd, template.next_field, pos)  # ...chained, as tifffile
        if ready is not None and lower:  # the page's own part while the levels are computed
            written = platform.pwritev(self._fd, buffers[:split], self._end)
            ready()
            written += platform.pwritev(self._fd, buffers[split:], split_at)
        else:
            if ready is not None:
                ready()
            written = platform.pwritev(self._fd, buffers, self._end)
        if written != at - self._end:
            raise OSError(f"short write to {self._path}: {written} of {at - self._end} bytes")
        # only now is the page reachable: a crash before leaves the file as it was
        platform.pwrite(self._fd, struct.pack(fmt, blobs[0][0]), self._link)
        self._link = blobs[0][0] + self._ifds[0].next_field
        self._end = at

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
