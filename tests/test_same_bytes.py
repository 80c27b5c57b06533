"""Reductions give every rank the same bytes, not only the same values: inputs whose memory
differs from their peers' copies (unaligned), forced algorithms, and long doubles' padding.

Bytes are compared (`tobytes`): `np.array_equal` takes -0.0 for 0.0 and no NaN for any other."""

from __future__ import annotations

import numpy as np
import pytest

import ringdist as rd
from harness import run_ranks


def _unaligned(a: np.ndarray) -> np.ndarray:
    """`a`'s values in a C-contiguous array one byte past an aligned address."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1)
    out[...] = a
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def _nan_inputs(n: int, count: int) -> list[np.ndarray]:
    """+NaN on rank 0 (unaligned), -NaN (the CPU's default NaN) on rank 1, ones elsewhere: which
    NaN a sum keeps depends on numpy's loop, which depends on the operands' memory."""
    with np.errstate(invalid="ignore"):
        negative = np.full(count, np.inf) - np.inf
    return [_unaligned(np.full(count, np.nan)), negative] + [np.ones(count) for _ in range(n - 2)]


@pytest.mark.parametrize("n, variant", [(2, {}), (2, {"shm": False}), (4, {}), (4, {"shm": False}),
                                        (3, {"shm": False})])
def test_an_unaligned_input_gives_every_rank_the_same_bytes(n, variant):
    # 8192 + 3 elements: numpy's buffered loop over an unaligned operand ends in a 3-element
    # piece, which kept the other NaN than a long aligned call's end, on that rank alone.
    count = 8195
    inputs = _nan_inputs(n, count)

    def rank(g):
        x = inputs[g.rank()]
        with np.errstate(invalid="ignore"):
            return [rd.all_sum(x, group=g).tobytes(), rd.all_reduce(x, "prod", group=g).tobytes(),
                    rd.scan(x, group=g).tobytes(), rd.reduce(x, 1, group=g),
                    rd.sum_scatter(np.concatenate([x] * n)[: count * n], group=g).tobytes()]

    got = run_ranks(n, rank, **variant)
    for r in range(1, n):
        assert got[r][:2] == got[0][:2], r  # all_sum, all_reduce(prod)
    assert got[1][3].tobytes() == got[0][0]  # reduce on root 1: all_sum's bytes
    scans = [got[r][2] for r in range(n)]
    assert scans[n - 1][-24:] == got[0][0][-24:]  # the last rank's scan folds every rank, as all_sum


def test_a_reduce_gives_all_reduces_bytes_when_only_the_all_reduce_is_forced():
    # RINGDIST_ALGO=all_sum:ring: a rooted reduce of op sum gives all_sum's bits, so it runs
    # what all_sum runs (it ran the table's shared-memory algorithm).
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(1000) for _ in range(3)]

    def rank(g):
        x = inputs[g.rank()]
        s, red = rd.all_sum(x, group=g), rd.reduce(x, 0, group=g)
        m, (values, _) = rd.all_max(x, group=g), rd.all_maxloc(x, group=g)
        return s.tobytes(), None if red is None else red.tobytes(), m.tobytes(), values.tobytes()

    got = run_ranks(3, rank, algo=(("all_sum", "ring"), ("all_max", "ring")))
    assert got[0][1] == got[0][0]
    assert all(r[2] == r[3] == got[0][2] for r in got)
    # An entry naming the rooted reduce itself still wins, wherever it stands.
    from ringdist import tuning

    chosen = run_ranks(3, lambda g: tuning.choose(g, "reduce", 8000, "all_sum").name, shm=False,
                       algo=(("reduce", "direct"), ("all_sum", "ring")))
    assert chosen == ["direct"] * 3


@pytest.mark.skipif(np.finfo(np.longdouble).nmant != 63 or np.dtype(np.longdouble).itemsize != 16,
                    reason="x87 long doubles (16 bytes, 10 of them used) only")
@pytest.mark.parametrize("variant", [{}, {"shm": False}, {"shm": False, "direct_max": 0}])
def test_long_doubles_come_back_with_the_same_padding_on_every_rank(variant):
    # An operation writes 10 of a long double's 16 bytes; the other 6 were whatever the result's
    # buffer held before (an earlier array of the process's), different on every rank.
    n, count = 3, 1000
    inputs = [np.arange(count, dtype=np.longdouble) + r for r in range(n)]

    def rank(g):
        x = inputs[g.rank()]
        results = []
        for op in ("sum", "max"):
            rd.all_gather(np.full(count * 16, 0xC0 + g.rank(), np.uint8), group=g)  # buffers to reuse
            junk = np.full(count * 16, 0xA0 + g.rank(), np.uint8)
            del junk
            results.append(rd.all_reduce(x, op, group=g).tobytes())
        results.append(rd.all_reduce(x.astype(np.clongdouble), "sum", group=g).tobytes())
        results.append(rd.scan(x, group=g)[-1:].tobytes())
        return results

    got = run_ranks(n, rank, **variant)
    for r in range(1, n):
        assert got[r][:3] == got[0][:3], r
    padding = np.frombuffer(got[0][0], np.uint8).reshape(count, 16)[:, 10:]
    assert not padding.any()


@pytest.mark.parametrize("count", [515, 1030, 8195, 70_003])
def test_a_reducing_inflow_folds_the_same_calls_however_the_bytes_come(count):
    # Its folds are cut where whole blocks end, and its last call folds the last whole block
    # and the rest: numpy's loop for a call under 8 elements keeps another NaN than a longer
    # call's last elements, so a rest folded alone (the bytes came in two bursts) differed from
    # one folded with the block before it (one burst), and a pair's two ranks could differ.
    from types import SimpleNamespace

    from ringdist.flows import ReducingInflow

    with np.errstate(invalid="ignore"):
        landed = np.full(count, np.inf) - np.inf  # -NaN, the peer's
    own = np.full(count, np.nan)
    results = []
    split = 70_000 if count > 70_000 else 7
    for bursts in ([count], [count - 3, 3], [count - 1, 1], [split, count - split],
                   [8192 + 5] * (count // 8197) + [count - 8197 * (count // 8197)]):
        acc = np.empty(count)
        flow = ReducingInflow(SimpleNamespace(reader=None), [(acc, own)], np.add, "all_sum")
        done = 0
        for burst in bursts:
            if burst <= 0:
                continue
            acc[done:done + burst] = landed[done:done + burst]
            done += burst
            flow.received = done * 8
            with np.errstate(invalid="ignore"):
                flow.on_data()
        assert flow.reduced == count * 8, bursts
        results.append(acc.tobytes())
    with np.errstate(invalid="ignore"):
        whole = np.add(landed, own).tobytes()
    assert all(r == whole for r in results)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant != 63 or np.dtype(np.longdouble).itemsize != 16,
                    reason="x87 long doubles (16 bytes, 10 of them used) only")
@pytest.mark.parametrize("variant", [{}, {"shm": False}])
def test_byte_swapped_long_doubles_keep_their_value(variant):
    # ">f16": the 10 bytes of the number are the last ones; zeroing bytes 10-16 as padding
    # wiped 48 bits of the mantissa (0.2846649 came back 0.28466034).
    xs = [np.array([0.82161814, 1 / 3], np.longdouble).astype(">f16"),
          np.array([-0.53695324, 2 / 7], np.longdouble).astype(">f16")]
    want = (xs[0].astype(np.longdouble) + xs[1].astype(np.longdouble))
    for got in run_ranks(2, lambda g: (rd.all_reduce(xs[g.rank()], "sum", group=g),
                                       rd.all_reduce(xs[g.rank()].astype(">c32"), "sum", group=g)), **variant):
        assert got[0].dtype == np.dtype(">f16") and np.array_equal(got[0].astype(np.longdouble), want), got
        assert np.array_equal(got[1].real.astype(np.longdouble), want), got
