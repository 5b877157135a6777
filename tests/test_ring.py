"""The shared-memory ring: layout, permissions, attach without unlinking, stale cleanup."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ome_writers_service.ring import (MAGIC, SLOT_TABLE, FrameRing, RingError,
                                      clean_stale_rings, header_size_for, slot_size_for)

HEADER_SIZE = header_size_for(3)


def test_layout_matches_the_documented_header():
    ring = FrameRing.create(frame_nbytes=100 * 80 * 2, slots=3)
    try:
        raw = ring.path.read_bytes()
        magic, version, header, slots, pid, slot_size, nbytes = struct.unpack_from("<8sIIIIQQ", raw)
        assert (magic, version, header, slots, pid) == (MAGIC, 2, 8192, 3, os.getpid())
        assert HEADER_SIZE == 8192 and header_size_for(512) == 8192
        assert header_size_for(513) == 12288 and header_size_for(4096) == 4096 + 32768
        assert slot_size == slot_size_for(16000) == 16384 and nbytes == 16000
        assert struct.unpack_from("<I", raw, 56) == (SLOT_TABLE,) == (4096,)
        # the slot table: 1 + the frame last written into each slot, 0 for none
        assert struct.unpack_from("<3Q", raw, SLOT_TABLE) == (0, 0, 0)
        ring.filled[1] = 41 + 1
        assert struct.unpack_from("<3Q", ring.path.read_bytes(), SLOT_TABLE) == (0, 42, 0)
        assert ring.unannounced(41, None) == [(41, 1)] and ring.unannounced(42, None) == []
        assert ring.unannounced(0, 41) == []
        ring.forget(1)
        assert ring.unannounced(0, None) == []
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


def test_a_ring_whose_owner_lives_elsewhere_is_kept_even_if_its_pid_means_nothing_here():
    # a daemon in another pid namespace sharing /dev/shm: the pid in the header is no
    # process of ours, but the owner holds the ring's lock, so it is live
    code = ("import sys, time; from ome_writers_service.ring import FrameRing;"
            "r = FrameRing.create(frame_nbytes=4096, slots=1); print(r.name, flush=True);"
            "sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    name = owner.stdout.readline().strip()
    path = Path("/dev/shm") / name
    try:
        with open(path, "r+b") as f:  # a pid that is nobody's here
            f.seek(20)
            f.write(struct.pack("<I", 2**31 - 7))
        assert name not in clean_stale_rings() and path.exists()
        young = path.with_name("ows-0-beingcreated")  # no header yet: a ring being created
        young.write_bytes(b"")
        assert young.name not in clean_stale_rings() and young.exists()
        young.unlink()
    finally:
        owner.stdin.close()
        owner.wait(10)
    assert name in clean_stale_rings() and not path.exists()  # its owner died: stale now


def test_attach_refuses_names_that_are_not_rings():
    with pytest.raises(RingError):
        FrameRing.attach("../etc/passwd")
    with pytest.raises(RingError):
        FrameRing.attach("ows-does-not-exist")


def test_stale_chunk_buffer_arenas_are_removed_once_their_journal_is_gone(tmp_path):
    """An arena outlives a killed daemon for `recover`; the next daemon removes it only when
    nobody holds it and its dataset's journal is gone (finalized or recovered)."""
    from ome_writers_service.arena import BufferArena, clean_stale_arenas

    journal = tmp_path / "run.ome.zarr.ows-journal"
    journal.write_text("{}")
    code = ("import sys; from ome_writers_service.arena import BufferArena; "
            f"a = BufferArena.create((2,), 4096, 3, journal={str(journal)!r}); "
            "print(a.path, flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    path = Path(holder.stdout.readline().strip())
    try:
        assert path.name not in clean_stale_arenas()  # its daemon lives
        holder.kill()
        holder.wait()
        assert path.exists() and path.name not in clean_stale_arenas()  # awaits recover
        arena = BufferArena.open(path)
        assert arena.journal == str(journal) and list(arena.pending()) == []
        arena.close()
        journal.unlink()
        assert path.name in clean_stale_arenas() and not path.exists()
    finally:
        holder.kill()
        path.unlink(missing_ok=True)
