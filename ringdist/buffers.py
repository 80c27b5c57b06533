"""Reused memory for large arrays: outputs and scratch of collectives.

A fresh large numpy array is a fresh mapping: the kernel faults in and zeroes every page
on first touch, which costs as much as a quarter of a large collective. Large arrays
here are views of cached blocks instead (anonymous mappings that ask for transparent
huge pages). A block is handed out again only once nothing refers to it any more: the
returned array, and every view of it, holds a reference to its block. At most
`RINGDIST_BUFFER_CACHE_MB` of idle blocks are kept; the oldest go first.
"""

from __future__ import annotations

import mmap
import sys
import threading

import numpy as np

MIN_BYTES = 16 << 20  # smaller arrays come from numpy (malloc reuses freed heap memory below ~32 MiB)
_PAGE = mmap.PAGESIZE


class BufferCache:
    """Blocks for large arrays, reused once unreferenced; idle blocks bounded by `limit` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self._blocks: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Like `np.empty(shape, dtype)` (C order); its contents are arbitrary."""
        dtype = np.dtype(dtype)
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * dtype.itemsize
        if nbytes < MIN_BYTES or nbytes > self.limit:
            return np.empty(shape, dtype=dtype)
        with self._lock:
            block = self._take(-(-nbytes // _PAGE) * _PAGE)
        return np.frombuffer(block, dtype=dtype, count=count).reshape(shape)

    def _take(self, size: int) -> mmap.mmap:
        blocks = self._blocks
        for i in range(len(blocks)):
            # Referenced only by this list (and the call's argument): nothing uses it.
            if len(blocks[i]) == size and sys.getrefcount(blocks[i]) == 2:
                block = blocks.pop(i)
                blocks.append(block)  # most recently used last
                return block
        idle = sum(len(b) for b in blocks if sys.getrefcount(b) == 2)
        i = 0
        while idle + size > self.limit and i < len(blocks):
            if sys.getrefcount(blocks[i]) == 2:
                idle -= len(blocks[i])
                blocks.pop(i).close()
            else:
                i += 1
        block = mmap.mmap(-1, size)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                block.madvise(mmap.MADV_HUGEPAGE)  # fewer faults and TLB misses in the copies
            except OSError:
                pass
        blocks.append(block)
        return block

    def clear(self) -> None:
        """Forget every block (those still in use stay valid until their arrays go)."""
        with self._lock:
            self._blocks.clear()


cache = BufferCache(int(1024 * (1 << 20)))  # its limit is set by init() from RINGDIST_BUFFER_CACHE_MB
