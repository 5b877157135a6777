"""Resolution levels computed from each frame as it arrives, never read back from disk.

Level ``k`` halves level ``k-1`` in y and x (z and every other axis untouched): each output
pixel combines a 2x2 block of the level above. An odd extent rounds up: the last row or
column is taken twice, as if the image were padded by repeating its edge. The methods:

* ``mean``: the block's mean; integers round half up (``floor(mean + 1/2)``);
* ``min`` / ``max``: the block's minimum / maximum;
* ``stride``: the block's top-left pixel (plain subsampling).

``mean``, ``min`` and ``max`` put a level's pixel at the centre of the block it summarises,
so the level's grid is shifted by half a pixel of the level above (`grid_shift`); ``stride``
keeps the top-left pixel's position.

The arithmetic is numpy ufuncs over bands of rows that stay in the CPU cache; numpy releases
the GIL in them, so the frames' levels are computed on a pool of threads (`submit`), one
per core, beside the writer thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Literal, Sequence

import numpy as np

Method = Literal["mean", "stride", "min", "max"]
METHODS: tuple[str, ...] = ("mean", "stride", "min", "max")
#: rows of the level computed per step: what a band's temporaries keep in the L2 cache
_BAND = 64
#: pixels of the level computed per step of `_mean_in_lanes` (128 rows of 1024: its three
#: temporaries, 2.5 MB, stay in the L2/L3 cache)
_BAND_PIXELS = 1 << 17


def level_shapes(frame_shape: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(y, x) of each level, level 0 first."""
    out = [tuple(frame_shape)]
    for _ in range(levels - 1):
        y, x = out[-1]
        out.append((-(-y // 2), -(-x // 2)))
    return out  # type: ignore[return-value]


def max_levels(frame_shape: tuple[int, int]) -> int:
    """Most levels a frame has while each one still halves both y and x (a level of one
    pixel along an axis is the last)."""
    n, (y, x) = 1, frame_shape
    while y > 1 and x > 1:
        y, x = -(-y // 2), -(-x // 2)
        n += 1
    return n


def grid_shift(method: str, level: int) -> float:
    """Offset of level ``level``'s first pixel centre from level 0's, in level-0 pixels."""
    return 0.0 if method == "stride" else (2 ** level - 1) / 2


def level_transforms(scale: Sequence[float], translation: Sequence[float] | None,
                     level: int, method: str) -> tuple[list[float], list[float] | None]:
    """The scale and translation (None: none needed) of a level, for axes whose last two
    are y and x, given level 0's. The one place that says where a level's pixels lie."""
    scale = [float(s) for s in scale]
    base = [0.0] * len(scale) if translation is None else [float(t) for t in translation]
    shift = grid_shift(method, level)
    out_scale, out_trans = list(scale), list(base)
    for ax in (-2, -1):
        out_scale[ax] = scale[ax] * 2 ** level
        out_trans[ax] = base[ax] + shift * scale[ax]
    if translation is None and not any(out_trans):
        return out_scale, None
    return out_scale, out_trans


# ---- the arithmetic ----

def _wide(dtype: np.dtype) -> np.dtype | None:
    """The integer type a sum of four values of ``dtype`` fits in (None: 64-bit input)."""
    if dtype.itemsize >= 8:
        return None
    kind = "u" if dtype.kind == "u" else "i"
    return np.dtype(f"{kind}{max(4, dtype.itemsize * 2)}")


def _mean_int64(parts: Sequence[np.ndarray], out: np.ndarray) -> None:
    """Mean of 2 or 4 arrays of 64-bit integers, rounded half up, without overflow: each
    value is 2^k q + r (k: log2 of the count), summed separately."""
    k = len(parts).bit_length() - 1
    mask = (1 << k) - 1
    q = sum(p >> k for p in parts)
    r = sum(p & mask for p in parts)
    np.add(q, (r + (1 << (k - 1))) >> k, out=out, casting="unsafe")


def _mean_of(parts: Sequence[np.ndarray], out: np.ndarray) -> None:
    """Mean of 2 or 4 equally shaped arrays into ``out`` (small edge slices)."""
    if out.dtype.kind == "f":
        np.multiply(sum(p.astype(out.dtype) for p in parts), 1 / len(parts), out=out)
    elif _wide(out.dtype) is None:
        _mean_int64(parts, out)
    else:
        wide = _wide(out.dtype)
        total = sum(p.astype(wide) for p in parts)
        np.right_shift(total + len(parts) // 2, len(parts).bit_length() - 1, out=out,
                       casting="unsafe")


_local = threading.local()


def _scratch(slot: int, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A temporary of the calling thread, kept from frame to frame: a fresh one of a few MB
    per frame is faulted in anew each time, which on these VMs costs more than the sums."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    nbytes = shape[0] * shape[1] * dtype.itemsize
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[slot] = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _lanes(dtype: np.dtype) -> tuple[np.dtype, int] | None:
    """For a native integer type of 1, 2 or 4 bytes: the unsigned type of twice its size,
    each value of which holds two neighbouring pixels (lanes), and a lane's width in bits."""
    if dtype.kind not in "ui" or dtype.itemsize > 4 or not dtype.isnative:
        return None
    return np.dtype(f"u{2 * dtype.itemsize}"), 8 * dtype.itemsize


def _mean_in_lanes(src: np.ndarray, out: np.ndarray, h: int, w: int) -> None:
    """``mean`` of the whole 2x2 blocks, for 8 to 32-bit integers. Each pair of pixels in
    a row is read as one unsigned integer of twice the size, so the pair's sum is
    ``(v & mask) + (v >> bits)``: already in the wider type, without the buffered cast of
    summing in a widened type (~20% less CPU for uint16). Signed pixels have their sign bit
    flipped first (offset by 2^(bits-1)), which offsets the rounded mean by as much."""
    pair, bits = _lanes(src.dtype)  # type: ignore[misc]
    mask, shift = pair.type((1 << bits) - 1), pair.type(bits)
    sign = src.dtype.kind == "i"
    both_signs = pair.type(((1 << bits) + 1) << (bits - 1))
    rows_of = src[:2 * h, :2 * w].view(pair)  # (2h, w): one value per pair of a row
    n = max(1, min(h, _BAND_PIXELS // w))
    lo, hi = _scratch(0, (2 * n, w), pair), _scratch(1, (2 * n, w), pair)
    total = _scratch(2, (n, w), pair)
    for y0 in range(0, h, n):
        k = min(n, h - y0)
        rows, a, b = rows_of[2 * y0:2 * (y0 + k)], lo[:2 * k], hi[:2 * k]
        if sign:
            rows = np.bitwise_xor(rows, both_signs, out=b)
        np.bitwise_and(rows, mask, out=a)
        np.right_shift(rows, shift, out=b)
        np.add(a, b, out=a)  # each pair's sum, row by row
        s = np.add(a[0::2], a[1::2], out=total[:k])  # each block's sum
        np.add(s, 2, out=s)
        if sign:
            np.right_shift(s, 2, out=s)
            np.bitwise_xor(s, pair.type(1 << (bits - 1)), out=s)
            np.copyto(out[y0:y0 + k, :w], s, casting="unsafe")
        else:
            np.right_shift(s, 2, out=out[y0:y0 + k, :w], casting="unsafe")


def _mean_widened(src: np.ndarray, out: np.ndarray, h: int, w: int) -> None:
    """``mean`` of the whole 2x2 blocks for floats (summed in their own type) and 64-bit
    integers (no wider type: `_mean_int64`), and what `_mean_in_lanes` cannot view."""
    W = src.shape[1]
    wide = src.dtype if src.dtype.kind == "f" else _wide(src.dtype)
    if wide is None:  # 64-bit integers: no wider type to sum in
        _mean_of([src[0:2 * h:2, 0:2 * w:2], src[1:2 * h:2, 0:2 * w:2],
                  src[0:2 * h:2, 1:2 * w:2], src[1:2 * h:2, 1:2 * w:2]], out[:h, :w])
        return
    rows_sum = np.empty((min(_BAND, h) or 1, W), wide)
    block_sum = np.empty((min(_BAND, h) or 1, w), wide)
    for y0 in range(0, h, _BAND):
        n = min(_BAND, h - y0)
        rows = src[2 * y0:2 * (y0 + n)]
        r = np.add(rows[0::2], rows[1::2], out=rows_sum[:n], dtype=wide)
        s = np.add(r[:, 0:2 * w:2], r[:, 1:2 * w:2], out=block_sum[:n])
        if wide.kind == "f":
            np.multiply(s, 0.25, out=out[y0:y0 + n, :w])
        else:
            np.add(s, 2, out=s)
            np.right_shift(s, 2, out=out[y0:y0 + n, :w], casting="unsafe")


def halve(src: np.ndarray, out: np.ndarray, method: str) -> None:
    """One level: ``src`` (y, x) halved into ``out`` (ceil(y/2), ceil(x/2))."""
    H, W = src.shape
    h, w = H // 2, W // 2  # whole 2x2 blocks
    if method == "stride":
        np.copyto(out, src[::2, ::2])
        return
    if method in ("min", "max"):
        op = np.minimum if method == "min" else np.maximum
        tmp = np.empty((min(_BAND, h) or 1, W), src.dtype)
        for y0 in range(0, h, _BAND):
            n = min(_BAND, h - y0)
            rows = src[2 * y0:2 * (y0 + n)]
            r = op(rows[0::2], rows[1::2], out=tmp[:n])
            op(r[:, 0:2 * w:2], r[:, 1:2 * w:2], out=out[y0:y0 + n, :w])
            if W % 2:
                out[y0:y0 + n, w] = r[:, W - 1]
        if H % 2:
            last = src[H - 1]
            op(last[0:2 * w:2], last[1:2 * w:2], out=out[h, :w])
            if W % 2:
                out[h, w] = last[W - 1]
        return
    if method != "mean":
        raise ValueError(f"unknown downsampling method {method!r}; use one of {METHODS}")
    if _lanes(src.dtype) is not None and w and src.strides[1] == src.itemsize:
        _mean_in_lanes(src, out, h, w)
    else:
        _mean_widened(src, out, h, w)
    if W % 2:  # the last column, taken twice: the mean of its pairs of rows
        col = src[:, W - 1]
        _mean_of([col[0:2 * h:2], col[1:2 * h:2]], out[:h, w])
    if H % 2:  # the last row, likewise
        row = src[H - 1]
        _mean_of([row[0:2 * w:2], row[1:2 * w:2]], out[h, :w])
        if W % 2:
            out[h, w] = src[H - 1, W - 1]


def cascade(src: np.ndarray, outs: Sequence[np.ndarray], method: str) -> None:
    """Every lower level of ``src`` in turn, each from the one above."""
    above = src
    for out in outs:
        halve(above, out, method)
        above = out


# ---- where the arithmetic runs ----

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def submit(fn: Callable, *args) -> Future:
    """Run ``fn(*args)`` on the process's downsampling threads (one per core, shared by every
    stream)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                           thread_name_prefix="ows-levels")
    return _pool.submit(fn, *args)


def joined(done: Callable[[], None], users: int) -> Callable[[], None]:
    """A ``done`` to hand to ``users`` users of one lent frame: ``done`` runs once the last
    of them is through (from any thread)."""
    left = [users]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            done()

    return one_done


__all__ = ["METHODS", "Method", "cascade", "grid_shift", "halve", "joined", "level_shapes",
           "level_transforms", "max_levels", "submit"]
