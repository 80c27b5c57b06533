"""all_to_all and scatter through shared memory: bit for bit against numpy at N = 1..9 and 11 (forced),
with splits, empty blocks, 2-D and 4-D rows, strided inputs and streams longer than a slot;
ranks that disagree all raise; the table's choice."""

from __future__ import annotations

import sys

import ml_dtypes
import msgpack
import numpy as np
import pytest

import ringdist as rd
from ringdist import crossmem, shmsignal, tuning
from ringdist.algorithms import shm, shm_blocks, shm_cma
from ringdist.shm import slot_bytes

from harness import assert_all_raised_then_broken, run_disagreement, run_ranks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared-memory link is Linux's")
SHM = (("*", "shm"),)


def rows(rank: int, count: int, width: int = 3, dtype=np.float32) -> np.ndarray:
    """`count` rows of rank `rank`, every element naming its rank, row and column."""
    return (np.arange(count * width).reshape(count, width) + 100_000 * rank).astype(dtype)


def splits_of(rank: int, n: int) -> list[int]:
    """Uneven row counts, zeros included, different on every rank."""
    return [(rank * 7 + p * 3) % 4 for p in range(n)]


def big_splits(rank: int, n: int, width: int) -> list[int]:
    """Rank 0 sends a stream of about five slots, the others a few rows: rounds follow the longest
    (past the mesh, with reads from the peers' memory, over READ_SLOTS slots: reads)."""
    many = (shm_blocks.READ_SLOTS + 1) * slot_bytes(max(n, 2)) // (4 * width) // max(n - 1, 1) + 7
    return [many if rank == 0 and p != 0 else (p + rank) % 3 for p in range(n)]


def calls(n: int, r: int, g: rd.Group | None, only: tuple[str, ...] | None = None) -> dict:
    """The cases (`only` those named); with g None, each rank's inputs and the expected results
    from numpy alone."""
    big = 3 * slot_bytes(max(n, 2)) // 12 // n * n + n  # float32 rows of 3: about three slots a rank
    cases = {
        "even": (rows(r, 2 * n), {}),
        "even_big": (rows(r, big), {}),
        "even_empty": (rows(r, 0), {}),
        "even_strided": (rows(r, 4 * n, 6)[::2, ::2], {}),
        "even_bf16_4d": (np.full((2 * n, 2, 1, 3), r + 0.5, ml_dtypes.bfloat16), {}),
        "splits": (rows(r, sum(splits_of(r, n)), 2, np.int64), {"splits": splits_of(r, n)}),
        "splits_big": (rows(r, sum(big_splits(r, n, 5)), 5), {"splits": big_splits(r, n, 5)}),
        "splits_zero": (rows(r, 0, 4, np.int16), {"splits": [0] * n}),
        "splits_strided": (rows(r, 2 * sum(splits_of(r, n)), 4, np.float64)[::2],
                           {"splits": splits_of(r, n)}),
    }
    out = {}
    for name, (x, kw) in cases.items():
        if only is None or name in only:
            out[name] = (x, kw) if g is None else rd.all_to_all(x, group=g, **kw)
    if only is not None:
        return out
    root = n // 2
    for name, x in {"scatter": rows(root, 3 * n, 4, np.int16), "scatter_big": rows(root, big),
                    "scatter_empty": rows(root, 0, 5, np.float64)}.items():
        out[name] = x if g is None else rd.scatter(x if r == root else None, root=root, group=g)
    return out


def expected(n: int, r: int, only: tuple[str, ...] | None = None) -> dict:
    mine = calls(n, r, None, only)
    theirs = [calls(n, q, None, only) for q in range(n)]
    want = {}
    for name in (k for k in mine if not k.startswith("scatter")):
        parts = []
        for q in range(n):
            xq, kwq = theirs[q][name]
            counts = kwq.get("splits") or [xq.shape[0] // n] * n
            start = sum(counts[:r])
            parts.append(xq[start:start + counts[r]])
        want[name] = np.concatenate(parts)
    for name in ("scatter", "scatter_big", "scatter_empty") if only is None else ():
        x = mine[name]
        per = x.shape[0] // n
        want[name] = x[r * per:(r + 1) * per]
    return want


@pytest.mark.parametrize("n, cma", [(9, False), (9, True), (11, False)])
def test_equal_blocks_past_the_mesh_go_through_shared_memory(n, cma):
    # More than 8 ranks: no connection to every rank, so no header between every pair to carry
    # a stream's layout. Blocks of one size need none: through the segments in rounds (or, where
    # every rank reads its peers' memory and the input is over a slot, read from the peers).
    even = ("even", "even_big", "even_empty", "even_strided", "even_bf16_4d")

    def rank(g: rd.Group) -> dict:
        found = {name: v for name, v in calls(n, g.rank(), g, only=even).items()}
        big = calls(n, g.rank(), None, only=("even", "even_big"))
        found["names"] = [tuning.choose(g, "all_to_all", big[k][0].nbytes).name for k in ("even", "even_big")]
        return found

    results = run_ranks(n, rank, shm_cma=cma)
    for r in range(n):
        want = expected(n, r, only=even)
        assert results[r]["names"] == ["shm", "shm-cma" if cma and crossmem.supported() else "shm"], results[r]["names"]
        for name in even:
            got = results[r][name]
            assert got.dtype == want[name].dtype and got.shape == want[name].shape, (name, r)
            assert got.tobytes() == want[name].tobytes(), (name, r)


@pytest.mark.parametrize("n, algo", [(n, "shm") for n in range(1, 10)] + [(11, "shm"), (9, "shm-cma"), (11, "shm-cma")])
def test_forced_shm_all_to_all_and_scatter_match_numpy_bit_for_bit(n, algo):
    # Past 8 ranks (no mesh) blocks of any sizes declare their layout at the head of each stream;
    # shm-cma reads them from the peers' memory where a stream is longer than a slot (splits_big).
    if algo == "shm-cma" and not crossmem.supported():
        pytest.skip("no process_vm_readv here")

    def rank(g: rd.Group):
        assert n == 1 or g.shm is not None
        return calls(n, g.rank(), g)

    results = run_ranks(n, rank, algo=(("*", algo),))
    for r in range(n):
        want = expected(n, r)
        assert sorted(results[r]) == sorted(want)
        for name, w in want.items():
            got = results[r][name]
            assert got.dtype == w.dtype and got.shape == w.shape, (name, r, got.shape, w.shape)
            assert got.flags.c_contiguous and got.tobytes() == w.tobytes(), (name, r)


def test_a_result_is_not_overwritten_by_later_calls():
    def rank(g: rd.Group):
        n, r = g.size(), g.rank()
        first = rd.all_to_all(rows(r, 2 * n), splits=[2] * n, group=g)
        second = rd.all_to_all(rows(r + 10, 2 * n), splits=[2] * n, group=g)
        return first, second

    for r, (first, second) in enumerate(run_ranks(3, rank, algo=SHM)):
        assert np.array_equal(first, np.concatenate([rows(q, 6)[2 * r:2 * r + 2] for q in range(3)]))
        assert np.array_equal(second, np.concatenate([rows(q + 10, 6)[2 * r:2 * r + 2] for q in range(3)]))


DISAGREEMENTS = {
    "splits_or_not": lambda g: rd.all_to_all(np.ones((3, 2)), splits=[1, 1, 1] if g.rank() else None, group=g),
    "dtype": lambda g: rd.all_to_all(np.ones((3, 2), np.float32 if g.rank() else np.float64), splits=[1, 1, 1],
                                     group=g),
    "trailing": lambda g: rd.all_to_all(np.ones((3, 2 + (g.rank() == 2))), splits=[0, 1, 2], group=g),
    "shape_no_splits": lambda g: rd.all_to_all(np.ones((3 * (1 + (g.rank() == 1)), 2)), group=g),
    "big_shape_no_splits": lambda g: rd.all_to_all(np.ones((3 << (17 + (g.rank() == 1)), 2)), group=g),
    "scatter_root": lambda g: rd.scatter(np.ones(6), root=0 if g.rank() < 2 else 1, group=g),
    "scatter_vs_all_to_all": lambda g: (rd.scatter(np.ones(3), group=g) if g.rank() else
                                        rd.all_to_all(np.ones(3), splits=[1, 1, 1], group=g)),
    "all_to_all_vs_all_gather": lambda g: (rd.all_gather(np.ones(3 << 16), group=g) if g.rank() == 1 else
                                           rd.all_to_all(np.ones(3 << 16), group=g)),
}


@pytest.mark.parametrize("case", list(DISAGREEMENTS))
def test_ranks_that_disagree_over_shared_memory_all_raise_then_the_group_is_broken(case):
    outcomes, errors = run_disagreement(3, DISAGREEMENTS[case], algo=SHM)
    assert_all_raised_then_broken(outcomes, errors)


WIDE_DISAGREEMENTS = {  # 9 ranks: no mesh; the layouts ride in the segments
    "splits_or_not": lambda g: rd.all_to_all(np.ones((9, 2)), splits=[1] * 9 if g.rank() != 4 else None, group=g),
    "dtype": lambda g: rd.all_to_all(np.ones((9, 2), np.float32 if g.rank() != 7 else np.float64), splits=[1] * 9,
                                     group=g),
    "trailing": lambda g: rd.all_to_all(np.ones((9, 2 + (g.rank() == 2))), splits=[1] * 9, group=g),
    "scatter_vs_all_to_all": lambda g: (rd.scatter(np.ones(9), group=g) if g.rank() != 3 else
                                        rd.all_to_all(np.ones(9), splits=[1] * 9, group=g)),
    # all_gather(uneven=True): each stream's fields at its head
    "uneven_or_not": lambda g: rd.all_gather(np.ones((2, 2)), uneven=g.rank() != 5, group=g),
    "uneven_dtype": lambda g: rd.all_gather(np.ones((g.rank() % 3, 2), np.float32 if g.rank() != 2 else np.float64),
                                            uneven=True, group=g),
    "object_vs_uneven": lambda g: (rd.all_gather_object(g.rank(), group=g) if g.rank() != 6 else
                                   rd.all_gather(np.ones(2), uneven=True, group=g)),
}


@pytest.mark.parametrize("cma", [False, True])
@pytest.mark.parametrize("case", list(WIDE_DISAGREEMENTS))
def test_ranks_that_disagree_past_the_mesh_all_raise_then_the_group_is_broken(case, cma):
    outcomes, errors = run_disagreement(9, WIDE_DISAGREEMENTS[case], shm_cma=cma)
    assert_all_raised_then_broken(outcomes, errors)


@pytest.mark.parametrize("field, value", [(1, 5), (2, 1 << 40), (0, -1)])
def test_a_corrupt_layout_in_shared_memory_fails_the_call_on_every_rank_at_once(monkeypatch, field, value):
    # A layout no rank could have written (bytes that are not whole rows, a block past its
    # stream, an offset inside the layout): the rank that reads it raises ProtocolError naming
    # the writer and tells the others (who may have finished the call: one round), so the
    # group's next call fails on every rank at once instead of waiting out its timeout.
    original = shm_blocks._write_layout

    def corrupt(slot, r, *args):
        original(slot, r, *args)
        if r == 3:  # rank 3's entry for rank 0
            np.frombuffer(slot, np.int64, 4)[field] = value

    monkeypatch.setattr(shm_blocks, "_write_layout", corrupt)
    outcomes, errors = run_disagreement(
        9, lambda g: rd.all_to_all(np.ones((18, 2)), splits=[2] * 9, group=g, timeout=60), timeout=60)
    assert isinstance(outcomes[0], rd.ProtocolError), outcomes
    assert "rank 0: rank 3's all_to_all layout in shared memory declares" in str(outcomes[0]), outcomes[0]
    assert all(o == "returned" or isinstance(o, rd.RingError) for o in outcomes), outcomes
    assert isinstance(errors[0], rd.GroupBrokenError), errors[0]
    assert all(isinstance(e, rd.RingError) and "rank 3's all_to_all layout" in str(e) for e in errors), errors


@pytest.mark.parametrize("n", [4, 9])
@pytest.mark.parametrize("descriptor, says", [
    (b"\xff\xff", "wrote no readable shape and dtype"),
    (len(msgpack.packb({"shape": [7], "dtype": "<f4"})).to_bytes(4, "little") + msgpack.packb({"shape": [7], "dtype": "<f4"}),
     "whose rows do not divide"),
])
def test_a_scatter_whose_root_wrote_an_unreadable_descriptor_fails_on_every_rank(monkeypatch, n, descriptor, says):
    monkeypatch.setattr(shm, "_descriptor", lambda g, arr: descriptor)
    outcomes, errors = run_disagreement(n, lambda g: rd.scatter(np.ones(n) if g.rank() == 1 else None, root=1, group=g,
                                                                 timeout=60), algo=SHM, timeout=60)
    assert all(isinstance(outcomes[r], rd.ProtocolError) and says in str(outcomes[r]) for r in range(n) if r != 1), outcomes
    assert all(isinstance(e, rd.RingError) for e in errors), errors


@pytest.mark.parametrize("n, cma", [(4, False), (9, False), (9, True)])
def test_a_scatter_whose_dtype_is_too_long_to_describe_fails_on_every_rank_at_once(n, cma):
    # A structured dtype of 60 fields: its description does not fit the room at the head of the
    # root's stream. The root raises ValueError naming it and tells the others, who were waiting
    # for its first signal: they raise at once, not after their timeout.
    wide = np.dtype([(f"field{i}", "<f8") for i in range(60)])

    def rank(g: rd.Group):
        import time
        start = time.monotonic()
        try:
            rd.scatter(np.zeros(2 * n, wide) if g.rank() == 0 else None, group=g, timeout=30)
            return "returned", time.monotonic() - start
        except (ValueError, rd.RingError) as exc:
            return f"{type(exc).__name__}: {exc}", time.monotonic() - start

    got = run_ranks(n, rank, algo=SHM if not cma else (("scatter", "shm-cma"),), shm_cma=cma)
    assert got[0][0].startswith("ValueError: rank 0: scatter on group 'world': the description of its array's dtype"), got
    assert all(how.startswith("ValueError") or "aborted by rank 0" in how for how, _ in got), got
    assert all(took < 10 for _, took in got), got


def test_the_table_sends_all_to_all_through_shared_memory_from_its_threshold():
    def choices(g: rd.Group) -> list:
        return [tuning.choose(g, op, nbytes).name for op, nbytes in
                [("all_to_all", 4096), ("all_to_all", tuning.SHM_ALL_TO_ALL_MIN), ("all_to_all", tuning.UNKNOWN),
                 ("scatter", tuning.ROOTED)]]
    # A scatter's size only its root knows: one direct step, the root's header declaring it.
    assert run_ranks(4, choices, shm_signals=False)[0] == ["direct", "shm", "shm", "direct"]
    if shmsignal.supported():  # rounds signalled through the segments: all_to_all and scatter from the first byte
        assert run_ranks(4, choices)[0] == ["shm", "shm", "shm", "shm"]
    assert run_ranks(4, choices, shm=False)[0] == ["direct"] * 4


@pytest.mark.skipif(not crossmem.supported(), reason="no process_vm_readv here")
def test_past_the_mesh_uneven_blocks_beyond_the_first_slot_are_read_from_their_owner(monkeypatch):
    # Rank 0's stream is over READ_SLOTS slots: every rank copies what the first slots hold and
    # reads the rest of rank 0's block for it from rank 0's memory (ranks whose block lies in the
    # first slot read nothing); no other rank is read.
    n, reads = 9, []
    real = shm_cma._read

    def read(g, p, into, remote, op):
        reads.append((g.rank(), p))
        real(g, p, into, remote, op)

    monkeypatch.setattr(shm_cma, "_read", read)
    results = run_ranks(n, lambda g: calls(n, g.rank(), g, only=("splits", "splits_big")), shm_cma=True)
    for r in range(n):
        want = expected(n, r, only=("splits", "splits_big"))
        for name in want:
            assert results[r][name].tobytes() == want[name].tobytes(), (name, r)
    block = big_splits(0, n, 5)[1] * 4 * 5  # rank 0's block for each rank, in rank order in its stream
    past = [(r, 0) for r in range(1, n) if shm_blocks.layout_bytes(n) + r * block > slot_bytes(n)]
    assert len(past) >= n - 2 and sorted(reads) == past, reads


@pytest.mark.parametrize("cma", [False, True])
def test_past_the_mesh_the_table_sends_uneven_all_to_all_and_scatter_through_shared_memory(cma):
    # 9 ranks, no mesh: all_to_all with splits and scatter used to go round the ring.
    def choices(g: rd.Group) -> list:
        return [tuning.choose(g, op, nbytes).name for op, nbytes in
                [("all_to_all", tuning.UNKNOWN), ("scatter", tuning.ROOTED), ("scatter", 1 << 20), ("scatter", 9 << 20)]]

    reads = "shm-cma" if cma and crossmem.supported() else "shm"
    want = [reads, "shm", reads, reads]  # a scatter: by the previous one's size; over a slot, read from the root
    assert run_ranks(9, choices, shm_cma=cma) == [want] * 9
    # Over TCP: splits by pairwise exchange, a scatter down a binomial tree.
    assert run_ranks(9, choices, shm=False)[0] == ["pairwise-exchange"] + ["binomial"] * 3


def test_past_the_mesh_blocks_of_any_size_gather_through_shared_memory_or_by_bruck_over_tcp():
    def choices(g: rd.Group) -> list:
        return [tuning.choose(g, op, 0).name for op in ("all_gather_uneven", "all_gather_object", "broadcast_object")]

    assert run_ranks(9, choices) == [["shm"] * 3] * 9
    assert run_ranks(9, choices, shm=False) == [["bruck"] * 3] * 9  # ceil(log2 N) steps, not N-1 hops
    assert run_ranks(4, choices, shm=False) == [["direct"] * 3] * 4
    # On the mesh with shared memory: the root's object written once (the direct path sent N-1
    # copies); every rank's object, each landing in a buffer of its own either way, directly.
    assert run_ranks(4, choices) == [["shm", "direct", "shm"]] * 4


def test_a_scatter_is_chosen_by_the_size_of_the_previous_one_and_sizes_may_change():
    # Only the root knows a scatter's size: the table sees the previous scatter's (one direct step
    # for the first). Small, large, large, small, small: each result right on every rank, and the
    # algorithm the table saw follows the previous call's size on every rank alike.
    sizes = [8, 1 << 18, 1 << 18, 8, 8]

    def rank(g: rd.Group) -> list:
        seen = []
        for count in sizes:
            hint = g.plans.get("scatter-size", tuning.ROOTED)
            seen.append(tuning.choose(g, "scatter", hint).name)
            whole = np.arange(4 * count, dtype=np.float32).reshape(count, 4)
            got = rd.scatter(whole if g.rank() == 1 else None, root=1, group=g)
            per = count // 4
            assert np.array_equal(got, whole[g.rank() * per:(g.rank() + 1) * per]), (count, g.rank())
        return seen

    res = run_ranks(4, rank, shm_signals=False)
    assert res == [["direct", "direct", "shm", "shm", "direct"]] * 4
    if shmsignal.supported():  # signalled through the segments: shared memory whatever the size
        assert run_ranks(4, rank, shm_cma=False) == [["shm"] * 5] * 4
        # Where ranks read each other's memory, a scatter after one over a slot reads from the root.
        reads = "shm-cma" if crossmem.supported() else "shm"
        assert run_ranks(4, rank) == [["shm", "shm", reads, reads, "shm"]] * 4
