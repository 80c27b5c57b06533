"""The buffer cache: a block is reused only when no array or view of it is left."""

from __future__ import annotations

import numpy as np

from ringdist.buffers import MIN_BYTES, BufferCache

SHAPE = (MIN_BYTES // 4,)  # the smallest size the cache serves, as float32


def test_small_arrays_come_from_numpy():
    cache = BufferCache(1 << 30)
    small = cache.empty((1000,), np.float64)
    assert small.shape == (1000,) and small.flags.owndata and not cache._blocks


def test_a_block_is_reused_only_once_every_view_is_gone():
    cache = BufferCache(1 << 30)
    a = cache.empty(SHAPE, np.float32)
    a[:] = 1
    views = [a[10:20], memoryview(a), a.reshape(2, -1), a[::2].T]
    del a
    b = cache.empty(SHAPE, np.float32)  # the views keep the first block busy
    b[:] = 2
    assert len(cache._blocks) == 2
    assert views[0][0] == 1 and views[1][0] == 1 and views[2][0, 0] == 1 and views[3][0] == 1
    del views
    c = cache.empty(SHAPE, np.float32)
    assert len(cache._blocks) == 2  # the first block again
    c[:] = 3
    assert b[0] == 2 and c.shape == SHAPE and c.dtype == np.float32 and c.flags.writeable


def test_idle_blocks_are_bounded_and_other_shapes_fit():
    cache = BufferCache(2 * MIN_BYTES)
    for _ in range(5):
        cache.empty((MIN_BYTES // 8,), np.float64)  # each dropped at once: one block serves all
    assert len(cache._blocks) == 1
    cache.empty((2, MIN_BYTES // 4), np.uint16)  # the same byte count, another dtype and shape
    assert len(cache._blocks) == 1
    big = cache.empty((MIN_BYTES // 2,), np.float32)  # twice the size: the idle block is dropped
    assert len(cache._blocks) == 1 and big.nbytes == 2 * MIN_BYTES
    assert cache.empty((3 * MIN_BYTES,), np.uint8).flags.owndata  # over the limit: numpy's own


def test_varying_sizes_share_the_smallest_idle_block_that_fits():
    cache = BufferCache(1 << 30)
    rng = np.random.default_rng(7)
    largest, records = 0, 0
    for _ in range(50):  # sizes that differ every call, as scratch of random shapes does
        nbytes = int(rng.integers(MIN_BYTES, 2 * MIN_BYTES))
        cache.empty((nbytes,), np.uint8)[-1] = 1
        pages = -(-nbytes // 4096)  # blocks are whole pages
        if pages > largest:
            largest, records = pages, records + 1
    # a new block only for a size larger than any before: not one block per size
    assert len(cache._blocks) == records < 10
    held = cache.empty((MIN_BYTES + 5,), np.uint8)  # served from a block at least that large
    small = cache.empty((MIN_BYTES,), np.uint8)  # another block: never the one still held
    assert not np.shares_memory(held, small)


def test_medium_results_reuse_one_block_and_idle_medium_blocks_are_capped():
    from ringdist.buffers import MEDIUM_BYTES, MEDIUM_IDLE_BYTES

    cache = BufferCache(1 << 30)
    for _ in range(5):  # a loop that drops each 2 MiB result: one block, no fresh pages
        cache.empty((2 << 20,), np.uint8)[:] = 1
    assert len(cache._blocks) == 1
    held = [cache.empty((k << 20,), np.uint8) for k in range(1, 9)]  # 1..8 MiB at once
    del held  # 38 MiB of idle medium blocks, until the next block is made
    fresh = cache.empty((9 << 20,), np.uint8)
    idle = sum(len(b.mem) for b in cache._blocks if len(b.mem) < MEDIUM_BYTES and b.idle())
    assert idle <= MEDIUM_IDLE_BYTES and fresh.nbytes == 9 << 20


def test_blocks_that_go_idle_later_are_trimmed_on_the_next_call_that_reuses_one():
    # 40 results held at once, then dropped, then calls that each reuse an idle block: the
    # limits held only when a block was made, so the 40 stayed idle, call after call.
    from ringdist.buffers import MEDIUM_BYTES, MEDIUM_IDLE_BYTES

    def idle(cache: BufferCache, medium: bool = False) -> int:
        return sum(len(b.mem) for b in cache._blocks if b.idle() and (not medium or len(b.mem) < MEDIUM_BYTES))

    small = BufferCache(2 * MIN_BYTES)
    held = [small.empty(SHAPE, np.float32) for _ in range(40)]
    del held
    for _ in range(3):
        kept = small.empty(SHAPE, np.float32)  # reuses one; the rest past the limit go
        assert idle(small) <= 2 * MIN_BYTES and len(small._blocks) <= 3, idle(small)
        del kept
    medium = BufferCache(1 << 30)
    held = [medium.empty((1 << 20,), np.uint8) for _ in range(20)]
    del held
    kept = medium.empty((1 << 20,), np.uint8)
    assert idle(medium, medium=True) <= MEDIUM_IDLE_BYTES, idle(medium, medium=True)
    assert kept.nbytes == 1 << 20


def test_byte_view_is_the_raw_bytes_of_any_contiguous_array():
    from ringdist.arrays import byte_view

    cases = [np.arange(12, dtype=np.float32).reshape(3, 4), np.full((), 2.5), np.zeros(0, np.int8),
             np.zeros((2, 0, 3)), np.array([1, 2, 3], dtype="datetime64[s]"), np.ones(4, np.complex64),
             np.zeros(2, [("a", "<i4"), ("b", "<f8")]), np.array([True, False])]
    for arr in cases:
        view = byte_view(arr)
        assert (view.format, view.ndim, bytes(view)) == ("B", 1, arr.tobytes()), arr.dtype
        if arr.nbytes:
            view[0] ^= 0xFF  # a view, not a copy
            assert arr.tobytes()[0] == bytes(view)[0]


def test_no_memory_for_a_result_is_a_memory_error_on_that_rank_and_told_to_its_peers(monkeypatch):
    # mmap says ENOMEM (an address-space limit, say) for rank 1's 2 MiB result: it raised that
    # OSError, which a caller catching MemoryError (as numpy's allocations raise) or RingError missed.
    import errno
    import mmap
    import threading

    import pytest

    import ringdist as rd
    from harness import run_ranks
    from ringdist import buffers, channel

    real = mmap.mmap

    class Refusing:
        def __call__(self, fileno, length, *args, **kwargs):
            if fileno == -1 and length >= 1 << 20 and threading.current_thread().name == "harness-rank-1":
                raise OSError(errno.ENOMEM, "Cannot allocate memory")
            return real(fileno, length, *args, **kwargs)

    monkeypatch.setattr(channel.mmap, "mmap", Refusing())
    monkeypatch.setattr(buffers.cache, "_blocks", [])  # no idle block of this process's earlier tests to reuse

    def rank(g: rd.Group) -> str:
        with pytest.raises((MemoryError, rd.RingError)) as info:
            rd.all_gather(np.ones(1 << 18, np.float32), group=g)
        return f"{type(info.value).__name__}: {info.value}"

    got = run_ranks(2, rank, shm=False)
    assert got[1] == "MemoryError: cannot map 2097152 bytes of memory: Cannot allocate memory", got
    assert got[0].startswith("RingError: rank 0: all_gather aborted by rank 1: MemoryError: cannot map"), got

    monkeypatch.setattr(buffers.cache, "_blocks", [])  # (the first part's blocks, idle now, would serve it)

    def counted(g: rd.Group) -> str:  # reduce_scatter(counts=) through shared memory: the rank and call named
        with pytest.raises((MemoryError, rd.RingError)) as info:
            rd.reduce_scatter(np.ones(3 << 18, np.float32), counts=[1 << 18, 2 << 18], group=g)
        return f"{type(info.value).__name__}: {info.value}"

    got = run_ranks(2, counted)
    assert got[1] == ("MemoryError: rank 1: sum_scatter: no memory for its result, 524288 rows of 4 bytes "
                      "(counts=[262144, 524288])"), got
    assert got[0] == f"RingError: rank 0: sum_scatter aborted by rank 1: {got[1]}", got
