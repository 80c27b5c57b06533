"""Reused memory for large arrays: outputs and scratch of collectives.

A fresh large numpy array is a fresh mapping: the kernel faults in and zeroes every page
on first touch, which costs as much as a quarter of a large collective. Large arrays
here are views of cached blocks instead (anonymous mappings that ask for transparent
huge pages). A block is handed out again only once the array made on it is gone, and
with it every view of it (each view refers to that array). At most
`RINGDIST_BUFFER_CACHE_MB` of idle blocks are kept; the oldest go first.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref

import numpy as np

from . import channel

# Results from this size come from the cache; smaller ones from numpy. Whether numpy's malloc
# reuses freed memory depends on what else the program allocated: in the shared harness every
# 2-rank 1 MiB all_gather (a 2 MiB result) faulted its pages in, fastest call 584-643 µs; from
# the cache, 205-213 µs.
MIN_BYTES = 256 << 10
# Blocks below this size are "medium": at most MEDIUM_IDLE_BYTES of them stay idle, so random
# sizes do not leave a trail of them behind (uncapped, a soak of random collectives grew
# 18-33 MiB in its second half; capped at 8 MiB, 8).
MEDIUM_BYTES = 16 << 20
MEDIUM_IDLE_BYTES = 8 << 20
# A collective's own scratch (never handed to the caller) is cached from this size: malloc
# trims freed memory at the top of its heap, so a few MiB of scratch would fault in every call.
SCRATCH_MIN_BYTES = 64 << 10
_PAGE = mmap.PAGESIZE


class _Block:
    """A cached mapping and a weak reference to the array now using it (None: never used)."""

    __slots__ = ("mem", "user")

    def __init__(self, mem: mmap.mmap):
        self.mem = mem
        self.user: weakref.ref | None = None

    def idle(self) -> bool:
        # Every view of the array (reshape, slice, memoryview) keeps that array alive:
        # numpy points a view's base at the first array whose own base is not an array.
        return self.user is None or self.user() is None


class BufferCache:
    """Blocks for large arrays, reused once unreferenced; idle blocks bounded by `limit` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self._blocks: list[_Block] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype, min_bytes: int = MIN_BYTES) -> np.ndarray:
        """Like `np.empty(shape, dtype)` (C order); its contents are arbitrary. Arrays smaller
        than `min_bytes` are plain numpy arrays."""
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes < min_bytes or nbytes > self.limit:
            return np.empty(shape, dtype=dtype)
        with self._lock:
            block = self._take(-(-nbytes // _PAGE) * _PAGE)
            owner = np.frombuffer(block.mem, dtype=dtype, count=count)  # its base is the mapping
            block.user = weakref.ref(owner)
        return owner.reshape(shape)

    def _take(self, size: int) -> _Block:
        blocks = self._blocks
        best = -1  # the smallest idle block that is large enough: sizes that vary call to call share blocks
        for i, block in enumerate(blocks):
            if len(block.mem) >= size and block.idle() and (best < 0 or len(block.mem) < len(blocks[best].mem)):
                best = i
        if best >= 0:
            block = blocks.pop(best)
            # Blocks that went idle since a block was last made count now: results a program
            # held many of at once, then dropped, are trimmed to the limits on the next call.
            self._drop_idle(0, self.limit, lambda block: True)
            self._drop_idle(0, MEDIUM_IDLE_BYTES, lambda block: len(block.mem) < MEDIUM_BYTES)
            blocks.append(block)  # most recently used last
            return block
        self._drop_idle(size, self.limit, lambda block: True)
        if size < MEDIUM_BYTES:
            self._drop_idle(size, MEDIUM_IDLE_BYTES, lambda block: len(block.mem) < MEDIUM_BYTES)
        # Private: an anonymous mapping is shared by default, and a forked child writing into a
        # result would change its parent's (copy on write instead, as for any numpy array).
        try:
            mem = channel.map_private(size)
        except MemoryError:  # the idle blocks given back first, once
            self._drop_idle(size, 0, lambda block: True)
            mem = channel.map_private(size)
        channel.advise_huge_pages(mem)  # fewer faults and TLB misses in the copies
        block = _Block(mem)
        blocks.append(block)
        return block

    def _drop_idle(self, size: int, limit: int, kind) -> None:
        """Unmap the oldest idle blocks of a kind until they and `size` more bytes fit in `limit`."""
        blocks = self._blocks
        idle = sum(len(b.mem) for b in blocks if kind(b) and b.idle())
        i = 0
        while idle + size > limit and i < len(blocks):
            if kind(blocks[i]) and blocks[i].idle():
                idle -= len(blocks[i].mem)
                blocks.pop(i).mem.close()
            else:
                i += 1


cache = BufferCache(int(1024 * (1 << 20)))  # its limit is set by init() from RINGDIST_BUFFER_CACHE_MB


def configure(limit: float) -> None:
    """Keep at most `limit` bytes of idle blocks in the process's cache (`inf`: no limit, 0: none)."""
    cache.limit = limit


class ChunkedCopy:
    """A large copy done a piece at a time: `step()` copies the next piece and says whether
    any is left, `finish()` copies the rest. A collective hands `step` to the
    engine as its idle work, so the copy fills the waits for the network."""

    __slots__ = ("dst", "src", "pos", "piece")

    def __init__(self, dst: memoryview, src: memoryview, piece: int = 512 << 10):
        self.dst, self.src, self.pos, self.piece = dst, src, 0, piece

    def step(self) -> bool:
        end = min(self.pos + self.piece, len(self.src))
        self.dst[self.pos:end] = self.src[self.pos:end]
        self.pos = end
        return end < len(self.src)

    def finish(self) -> None:
        self.dst[self.pos:] = self.src[self.pos:]
        self.pos = len(self.src)
