"""Grid (MPI's Create_cart, Cart_shift, Cart_sub), dims_create and sendrecv, on ranks as threads
over real connections."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import MismatchError, RingError

from harness import run_ranks


@pytest.mark.parametrize("n, ndims, dims", [(12, 2, (4, 3)), (16, 3, (4, 2, 2)), (7, 2, (7, 1)), (1, 3, (1, 1, 1)),
                                            (72, 2, (9, 8)), (24, 3, (4, 3, 2)), (4096, 3, (16, 16, 16)),
                                            (30, 3, (5, 3, 2))])
def test_dims_create_gives_mpi_s_sizes(n, ndims, dims):
    assert rd.dims_create(n, ndims) == dims


def test_a_grid_places_ranks_row_major_and_shifts_wrap_where_periodic():
    def rank(g):
        grid = rd.Grid((2, 3), periodic=(True, False), group=g)
        return grid.coords(), grid.shift(0), grid.shift(1), grid.shift(1, -2), grid.rank_of((-1, 2)), grid.rank_of((0, 3))

    got = run_ranks(6, rank)
    assert [c for c, *_ in got] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert got[0][1:] == ((3, 3), (None, 1), (2, None), 5, None)  # rows wrap; columns end
    assert got[4][1:] == ((1, 1), (3, 5), (None, None), 5, None)


def test_sub_grids_are_the_rows_and_columns():
    def rank(g):
        grid = rd.Grid(rd.dims_create(g.size(), 2), group=g)
        row, col = grid.sub((False, True)), grid.sub((True, False))
        mine = np.array([g.rank()])
        return rd.all_gather(mine, group=row).tolist(), rd.all_gather(mine, group=col).tolist(), row.rank(), col.rank()

    got = run_ranks(6, rank)  # dims (3, 2): rows of 2, columns of 3
    assert got[0] == ([0, 1], [0, 2, 4], 0, 0) and got[5] == ([4, 5], [1, 3, 5], 1, 2), got


def test_grid_refuses_dims_that_do_not_hold_the_group():
    def rank(g):
        with pytest.raises(ValueError, match=r"dims \(2, 2\) hold 4 ranks, but group 'world' has 6 "
                                             r"\(dims_create\(6, 2\) = \(3, 2\)\)"):
            rd.Grid((2, 2), group=g)
        with pytest.raises(ValueError, match="periodic must be True, False or 2 of them"):
            rd.Grid((3, 2), periodic=(True,), group=g)
        with pytest.raises(ValueError, match="dim must be 0 to 1, got 2"):
            rd.Grid((3, 2), group=g).shift(2)
        return True

    assert all(run_ranks(6, rank))
    with pytest.raises(ValueError, match="dims_create: n must be 1 to 1048576, got 0"):
        rd.dims_create(0, 2)


@pytest.mark.parametrize("async_op", [False, True])
def test_sendrecv_round_a_ring_of_any_size_and_off_an_edge(async_op):
    # 8 MB each way round a periodic ring (more than the socket buffers: blocking sends in that
    # order would wait for each other), then along a line whose ends have no neighbour.
    def rank(g):
        ring = rd.Grid((g.size(),), periodic=True, group=g)
        src, dst = ring.shift(0)
        out = rd.sendrecv(np.full(1 << 20, g.rank(), dtype=np.float64), dst, src, group=g, async_op=async_op)
        got = out.wait() if async_op else out
        line = rd.Grid((g.size(),), group=g)
        src, dst = line.shift(0)
        edge = rd.sendrecv(np.array([g.rank()]), dst, src, group=g, async_op=async_op)
        edge = edge.wait() if async_op else edge
        return int(got[0]), bool((got == got[0]).all()), None if edge is None else int(edge[0])

    assert run_ranks(4, rank) == [(3, True, None), (0, True, 0), (1, True, 1), (2, True, 2)]


def test_messages_to_and_from_none_off_an_edge_move_nothing():
    # MPI's PROC_NULL, as a halo exchange along a line posts it at the ends: a send to None and a
    # receive from None are done at once (the send gives back its array; the receive gives None,
    # its status source None).
    def rank(g):
        left, right = rd.Grid((g.size(),), group=g).shift(0)
        st_left, st_right = rd.Status(), rd.Status()
        works = [rd.recv((2,), np.int64, left, tag=1, status=st_left, group=g, async_op=True),
                 rd.recv_like(np.zeros(2, np.int64), right, tag=2, status=st_right, group=g, async_op=True),
                 rd.send(np.full(2, g.rank()), right, tag=1, group=g, async_op=True),
                 rd.send(np.full(2, -g.rank()), left, tag=2, group=g, async_op=True)]
        from_left, from_right, _, _ = rd.wait_all(works)
        zeros = np.zeros(1)
        inline = (rd.send(zeros, None, group=g) is zeros, rd.recv((1,), np.float32, None, group=g),
                  rd.send_object({"a": 1}, None, group=g), rd.recv_object(None, group=g))
        objects = [rd.send_object(g.rank(), right, group=g, async_op=True),
                   rd.recv_object(left, group=g, async_op=True)]
        rd.wait_all(objects)
        with pytest.raises(ValueError, match=r"rank \d: send: tag=-1: a tag is an integer from 0 to"):
            rd.send(np.zeros(1), None, tag=-1, group=g)
        with pytest.raises(TypeError, match=r"rank \d: recv_object: status must be a ringdist Status"):
            rd.recv_object(None, status=3, group=g)
        # Checked as a message to or from a rank is: an edge rank fails where an inner one does.
        with pytest.raises(ValueError, match=r"rank \d: recv: shape=\(-1,\): dimensions cannot be negative"):
            rd.recv((-1,), np.float32, None, group=g)
        with pytest.raises(TypeError, match=r"rank \d: recv: ringdist receives raw array bytes"):
            rd.recv((1,), object, None, group=g)
        with pytest.raises(ValueError, match=r"timeout must be a positive number"):
            rd.send_object(1, None, timeout=-1, group=g)
        with pytest.raises(TypeError, match=r"rank \d: send: ringdist sends raw array bytes"):
            rd.send(np.array([None]), None, group=g)
        halves = (None if from_left is None else from_left.tolist(), (st_left.source, st_left.tag),
                  None if from_right is None else from_right.tolist(), (st_right.source, st_right.tag))
        return halves, inline, objects[1].wait()

    got = run_ranks(3, rank)
    assert got[0] == ((None, (None, rd.ANY_TAG), [-1, -1], (1, 2)), (True,) + (None,) * 3, None)
    assert got[1] == (([0, 0], (0, 1), [-2, -2], (2, 2)), (True,) + (None,) * 3, 0)
    assert got[2] == (([1, 1], (1, 1), None, (None, rd.ANY_TAG)), (True,) + (None,) * 3, 1)


def test_sendrecv_fixing_the_shape_checks_it_on_both_ranks():
    def rank(g):
        other = 1 - g.rank()
        try:
            rd.sendrecv(np.zeros(3 + g.rank()), other, other, shape=(3,), dtype=np.float64, group=g)
        except RingError as exc:
            return type(exc)
        return None

    assert MismatchError in run_ranks(2, rank)


def test_sendrecv_on_a_broken_group_names_itself():
    # Its error named its receive half ("cannot run recv").
    def rank(g):
        with pytest.raises(TypeError):
            rd.all_sum(np.array(["a"]), group=g)
        with pytest.raises(rd.GroupBrokenError) as info:
            rd.sendrecv(np.zeros(2), 1 - g.rank(), 1 - g.rank(), group=g, timeout=20)
        return str(info.value)

    for r, text in enumerate(run_ranks(2, rank)):
        assert text.startswith(f"rank {r}: group 'world' cannot run sendrecv"), text


def test_sendrecv_checks_its_arguments_before_anything_is_sent():
    # A bad src is refused at once, before the send goes (which nobody would take).
    def rank(g):
        if g.rank() == 1:
            return None
        began = time.monotonic()
        with pytest.raises(ValueError, match="rank 0: sendrecv: src=5 is not a rank of group 'world'"):
            rd.sendrecv(np.zeros(1 << 22), 1, 5, group=g, timeout=20)
        with pytest.raises(TypeError, match="rank 0: sendrecv: shape=.x.: each dimension must be an integer"):
            rd.sendrecv(np.zeros(3), 1, 1, shape="x", group=g, timeout=20)
        return time.monotonic() - began

    assert run_ranks(2, rank)[0] < 5


def test_sendrecv_to_itself_along_a_periodic_dimension_of_one_is_its_own_array():
    def rank(g):
        grid = rd.Grid(rd.dims_create(g.size(), 2), periodic=True, group=g)  # (3, 1)
        src, dst = grid.shift(1)
        got = rd.sendrecv(np.array([g.rank(), 7]), dst, src, group=g)
        late = rd.sendrecv(np.array([g.rank()]), dst, src, group=g, async_op=True).wait()
        # Half to itself, half to a neighbour (MPI allows it): its own message, then the next rank's.
        right = (g.rank() + 1) % 3
        rd.send(np.array([g.rank() * 10]), g.rank(), group=g)
        mixed = rd.sendrecv(np.array([g.rank()]), right, g.rank(), group=g)
        mixed2 = rd.recv((1,), np.int64, (g.rank() - 1) % 3, group=g)
        return (src, dst), got.tolist(), late.tolist(), mixed.tolist(), mixed2.tolist()

    got = run_ranks(3, rank)
    assert got == [((r, r), [r, 7], [r], [r * 10], [(r - 1) % 3]) for r in range(3)], got


def test_sendrecv_refuses_an_array_it_cannot_send_at_once():
    # An object array was refused only when the send started, on the progress thread: the
    # receive waited for its timeout meanwhile.
    def rank(g):
        began = time.monotonic()
        with pytest.raises(TypeError, match="object arrays are not supported"):
            rd.sendrecv(np.array([object(), 1]), 1 - g.rank(), 1 - g.rank(), group=g, timeout=20)
        return time.monotonic() - began

    assert max(run_ranks(2, rank)) < 5


@pytest.mark.parametrize("async_op", [False, True])
def test_a_sendrecv_whose_receive_fails_raises_at_once(async_op):
    # Rank 1 sends 3 floats where rank 0 fixed shape (5,), and never takes rank 0's 32 MB: the
    # MismatchError comes at once, not after the send's timeout.
    def rank(g):
        if g.rank() == 1:
            rd.send(np.zeros(3), 0, group=g)
            time.sleep(3)
            return None
        began = time.monotonic()
        with pytest.raises(MismatchError):
            w = rd.sendrecv(np.zeros(1 << 22), 1, 1, shape=(5,), group=g, timeout=20, async_op=async_op)
            if async_op:
                w.wait(timeout=10)
        return time.monotonic() - began

    assert run_ranks(2, rank)[0] < 5


def test_an_async_sendrecv_is_done_only_once_its_send_is():
    # The receive is done at once, the send only once rank 1 takes it (after 1.5 s): the handle
    # says so, and a wait with a timeout keeps to it.
    def rank(g):
        if g.rank() == 1:
            rd.send(np.ones(3), 0, group=g)
            time.sleep(1.5)
            return rd.recv(None, None, 0, group=g).shape
        w = rd.sendrecv(np.zeros(1 << 22), 1, 1, group=g, async_op=True)
        time.sleep(0.5)
        early = w.done()
        began = time.monotonic()
        with pytest.raises(rd.RingTimeoutError, match="still outstanding"):
            w.wait(timeout=0.3)
        waited = time.monotonic() - began
        got = w.wait(timeout=20)
        return early, waited, got.tolist(), rd.wait_any([w])[0]

    early, waited, got, index = run_ranks(2, rank)[0]
    assert early is False and waited < 1.0 and got == [1.0, 1.0, 1.0] and index == 0, (early, waited)


def test_grid_takes_numpy_flags_and_generators_and_dims_create_names_bad_types():
    def rank(g):
        grid = rd.Grid((q for q in (3, 2)), periodic=np.bool_(True), group=g)
        row = grid.sub(np.array([False, True]))
        return grid.dims, grid.periodic, row.size()

    assert run_ranks(6, rank)[0] == ((3, 2), (True, True), 2)
    with pytest.raises(TypeError, match="dims_create: n must be an integer, got 12.0"):
        rd.dims_create(12.0, 2)
    with pytest.raises(ValueError, match="dims_create: ndims must be 1 to 16, got 1100"):
        rd.dims_create(1, 1100)


def test_sendrecv_to_itself_checks_as_a_message_from_another_rank_would_be():
    def rank(g):
        me = g.rank()
        x = np.zeros((3, 2))
        got = rd.sendrecv(x, me, me, shape=(3,), dtype="(2,)f8", group=g).shape  # a subarray's dims, as recv's
        with pytest.raises(MismatchError, match=r"expected recv\(shape=\(any, 2\), dtype=float64\) from itself but "
                                                r"it sent send\(shape=\(3,\)"):
            rd.sendrecv(np.zeros(3), me, me, dtype="(2,)f8", group=g)
        with pytest.raises(TypeError, match="object dtypes are not supported"):
            rd.sendrecv(x, me, me, dtype=object, group=g)
        late = rd.sendrecv(x, me, me, shape=(4,), group=g, async_op=True)  # refused at wait, as another rank's
        with pytest.raises(MismatchError):
            late.wait()
        return got

    assert run_ranks(1, rank) == [(3, 2)]


def test_ranks_that_pass_different_grids_all_raise_naming_each_rank_s_and_the_group_stays_usable():
    # Making a grid is collective, as MPI's Create_cart: a grid that differs by rank would give
    # ranks different neighbours, and nothing would say so until a message went astray.
    def rank(g):
        dims = (1, 3) if g.rank() == 0 else (3, 1)
        with pytest.raises(MismatchError) as different:
            rd.Grid(dims, group=g)
        with pytest.raises(MismatchError) as flags:
            rd.Grid((3,), periodic=g.rank() == 2, group=g)
        return str(different.value), str(flags.value), rd.all_sum(np.ones(1), group=g).tolist()

    got = run_ranks(3, rank)
    for r, (different, flags, total) in enumerate(got):
        assert different == (f"rank {r}: Grid: the ranks of group 'world' passed different arguments: rank 0: "
                             f"dims (1, 3) periodic (False, False); ranks 1, 2: dims (3, 1) periodic (False, False)")
        assert flags.endswith("ranks 0, 1: dims (3,) periodic (False,); rank 2: dims (3,) periodic (True,)"), flags
        assert total == [3.0]


def test_a_grid_refused_on_one_rank_is_an_error_on_every_rank_at_once_not_a_wait():
    def rank(g):
        began = time.monotonic()
        bad = g.rank() == 1
        with pytest.raises(ValueError) as grid:
            rd.Grid((2, 2) if bad else (3, 2), group=g)
        good = rd.Grid((3, 2), group=g)
        with pytest.raises(ValueError) as keep:
            good.sub((True, 1) if bad else (True, False))
        with pytest.raises(MismatchError) as different:
            good.sub((True, False) if bad else (False, True))
        return str(grid.value), str(keep.value), str(different.value), time.monotonic() - began, \
            rd.all_gather(np.array([g.rank()]), group=good.sub((False, True))).tolist()

    got = run_ranks(6, rank, timeout=60)
    assert got[1][0].startswith("rank 1: Grid: dims (2, 2) hold 4 ranks"), got[1]
    assert got[1][1] == "rank 1: Grid.sub: keep must be 2 flags, got (True, 1)"
    for r in (0, 2, 3, 4, 5):
        assert got[r][0] == (f"rank {r}: Grid: the arguments of rank 1 failed their checks there (its error names "
                             f"the problem)"), got[r]
        assert got[r][1].startswith(f"rank {r}: Grid.sub: the arguments of rank 1 failed"), got[r]
    assert all(d.endswith("ranks 0, 2, 3, 4, 5: keep (False, True); rank 1: keep (True, False)") for _, _, d, _, _ in got)
    assert all(waited < 10 for _, _, _, waited, _ in got), [w for _, _, _, w, _ in got]
    assert [row for *_, row in got] == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]


def test_a_grid_against_another_collective_is_a_mismatch_naming_the_grid():
    def rank(g):
        with pytest.raises(MismatchError) as exc:
            rd.Grid((2,), group=g) if g.rank() == 0 else rd.barrier(group=g)
        return str(exc.value)

    got = run_ranks(2, rank)
    assert all("Grid() [call #0]" in m and "barrier" in m for m in got), got


def test_a_grid_of_many_dimensions_is_named_for_its_size_not_dims_create_s_bounds():
    def rank(g):
        with pytest.raises(ValueError) as many:
            rd.Grid([1] * 16 + [3], group=g)
        with pytest.raises(ValueError) as most:
            rd.Grid([1] * 40 + [2], group=g)
        return str(many.value), str(most.value), rd.Grid([1] * 20 + [2], group=g).coords()[-1]

    got = run_ranks(2, rank)
    assert got[0][0] == "rank 0: Grid: dims (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3) hold 3 ranks, but " \
                        "group 'world' has 2", got[0]
    assert got[1][1] == "rank 1: Grid: dims has 41 dimensions, more than 32", got[1]
    assert [c for *_, c in got] == [0, 1]


def test_dims_create_takes_mpi_s_array_with_fixed_sizes():
    assert rd.dims_create(12, [0, 3]) == (4, 3)
    assert rd.dims_create(24, [0, 2, 0]) == (4, 2, 3)  # the free sizes largest first, among themselves
    assert rd.dims_create(6, (2, 3)) == (2, 3) and rd.dims_create(16, np.array([0, 0, 2])) == (4, 2, 2)
    with pytest.raises(ValueError, match=r"dims_create: 12 ranks cannot be split over dims \(5, 0\) \(the fixed "
                                         r"sizes multiply to 5\)"):
        rd.dims_create(12, [5, 0])
    with pytest.raises(ValueError, match="cannot be split over dims"):
        rd.dims_create(12, [2, 2])
    with pytest.raises(ValueError, match=r"dims must be 1 to 16 sizes, each 0 \(free\) or positive, got \[-1, 0\]"):
        rd.dims_create(12, [-1, 0])
