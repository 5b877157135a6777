"""The shared-memory ring: layout, permissions, attach without unlinking, stale cleanup."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from ome_writers_service.ring import (HEADER_SIZE, MAGIC, FrameRing, RingError,
                                      clean_stale_rings, slot_size_for)


def test_layout_matches_the_documented_header():
    ring = FrameRing.create(frame_nbytes=100 * 80 * 2, slots=3)
    try:
        raw = ring.path.read_bytes()
        magic, version, header, slots, pid, slot_size, nbytes = struct.unpack_from("<8sIIIIQQ", raw)
        assert (magic, version, header, slots, pid) == (MAGIC, 1, HEADER_SIZE, 3, os.getpid())
        assert slot_size == slot_size_for(16000) == 16384 and nbytes == 16000
        assert len(raw) == HEADER_SIZE + 3 * 16384
        assert stat.S_IMODE(ring.path.stat().st_mode) == 0o600
        views = ring.slots((100, 80), np.uint16)
        views[2][...] = 7
        off = HEADER_SIZE + 2 * 16384
        assert np.frombuffer(ring.path.read_bytes()[off:off + 16000], np.uint16).tolist() == \
            [7] * 8000
    finally:
        ring.close()
    assert not ring.path.exists()


def test_an_attaching_process_that_exits_does_not_remove_the_ring():
    ring = FrameRing.create(frame_nbytes=4096, slots=2)
    try:
        code = (
            "import sys, numpy as np; from ome_writers_service.ring import FrameRing;"
            f"r = FrameRing.attach({ring.name!r}); r.slot(1, (64, 32), np.uint16)[...] = 5; "
            "sys.exit(0)"  # exits without closing: nothing may unlink the segment
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        assert ring.path.exists()
        assert (ring.slot(1, (64, 32), np.uint16) == 5).all()
    finally:
        ring.close()


def test_stale_rings_of_dead_owners_are_removed_live_ones_kept():
    live = FrameRing.create(frame_nbytes=4096, slots=1)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    stale = live.path.with_name(f"ows-{dead_pid}-deadbeef0000")
    header = bytearray(live.path.read_bytes()[:HEADER_SIZE])
    struct.pack_into("<I", header, 20, int(dead_pid))
    stale.write_bytes(bytes(header))
    try:
        removed = clean_stale_rings()
        assert stale.name in removed and not stale.exists()
        assert live.path.exists()
    finally:
        stale.unlink(missing_ok=True)
        live.close()


def test_attach_refuses_names_that_are_not_rings():
    with pytest.raises(RingError):
        FrameRing.attach("../etc/passwd")
    with pytest.raises(RingError):
        FrameRing.attach("ows-does-not-exist")
