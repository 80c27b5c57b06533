"""What an error's message names, its attributes carry: `rank`, `group`, `op`, `peer`, `address`,
`origin` (errors.py). A peer's failure told to every rank names the same `peer` on each."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

import ringdist as rd
from harness import RankFailed, run_ranks
from helpers import SCRIPTS, run_launcher


def _errors(n: int, fn, **overrides) -> list[BaseException]:
    with pytest.raises(RankFailed) as failed:
        run_ranks(n, fn, timeout=60, **overrides)
    return failed.value.errors


@pytest.mark.parametrize("shm", [True, False])
def test_a_mismatch_carries_the_call_the_group_and_the_rank_that_called_otherwise(shm):
    def body(g):
        return rd.all_sum(np.zeros(4 if g.rank() == 1 else 3), group=g)

    errors = _errors(3, body, shm=shm)
    for r, exc in enumerate(errors):
        assert isinstance(exc, rd.MismatchError), exc
        assert (exc.rank, exc.group, exc.op) == (r, "world", "all_sum")
        # The rank that called otherwise as the rank that found the mismatch saw it, named in the text.
        assert exc.origin in (0, 1, 2) and f"rank {exc.peer} called" in str(exc), exc


def test_a_timeout_names_the_rank_waited_for_on_both_sides():
    def body(g):
        if g.rank() == 1:
            time.sleep(2.5)
        return rd.all_sum(np.ones(8), group=g, timeout=1.0)

    waiting, late = _errors(2, body)
    assert isinstance(waiting, rd.RingTimeoutError), waiting
    assert (waiting.rank, waiting.op, waiting.peer, waiting.origin) == (0, "all_sum", 1, 0)
    assert waiting.address is not None and waiting.address in str(waiting)
    # The late rank hears rank 0's timeout as an ABORT: the rank it concerns and the one that found it.
    assert isinstance(late, rd.RingTimeoutError), late
    assert (late.rank, late.op, late.peer, late.origin, late.address) == (1, "all_sum", 1, 0, waiting.address)


@pytest.mark.parametrize("shm", [True, False])
def test_a_reduction_with_no_function_of_its_own_is_named_as_it_was_called(shm):
    # all_reduce(op='avg') and reduce_scatter(op='max') run as all_avg and max_scatter inside:
    # their errors' `op`, and their messages, are the calls the user made.
    def body(g):
        if g.rank() == 1:
            time.sleep(2.5)
        return rd.all_reduce(np.ones(8), op="avg", group=g, timeout=1.0)

    waiting, late = _errors(2, body, shm=shm)
    assert isinstance(waiting, rd.RingTimeoutError) and waiting.op == "all_reduce", waiting
    assert "all_reduce(op='avg') made no progress" in str(waiting), waiting
    assert late.op == "all_reduce" and "all_reduce(op='avg') aborted by rank 0" in str(late), late

    def other(g):
        return rd.reduce_scatter(np.ones(4 if g.rank() else 6), op="max", group=g)

    for exc in _errors(2, other, shm=shm):
        assert isinstance(exc, rd.MismatchError) and exc.op == "reduce_scatter", exc
        assert "max_scatter" not in str(exc), exc

    misuses = [("reduce_scatter(op='max')", lambda g: rd.reduce_scatter(np.arange(5), op="max", group=g)),
               ("reduce_scatter(op='band')", lambda g: rd.reduce_scatter(np.arange(4.0), "band", counts=[2, 2], group=g)),
               ("reduce_scatter(op='avg')", lambda g: rd.reduce_scatter(None, op="avg", group=g)),
               ("all_reduce(op='bxor')", lambda g: rd.all_reduce(None, op="bxor", group=g)),
               ("reduce_scatter(op='min')", lambda g: rd.reduce_scatter(np.arange(4), "min", group=g, timeout=-1)),
               ("all_reduce(op='band')", lambda g: rd.all_reduce(np.arange(4), "band", group=g, async_op="yes"))]
    for shown, call in misuses:  # refused before anything is sent; then the group is broken
        def misused(g, call=call):
            found = []
            for then in (call, lambda g: rd.barrier(group=g)):
                try:
                    then(g)
                except (TypeError, ValueError, rd.RingError) as exc:
                    found.append(str(exc))
            return found

        for r, (refused, broken) in enumerate(run_ranks(2, misused, shm=shm)):
            assert refused.startswith(f"rank {r}: {shown}: "), (shown, refused)
            assert broken.startswith(f"rank {r}: group 'world' cannot run barrier: an earlier operation on it "
                                     f"failed ({shown}: "), (shown, broken)

    def outstanding(g):  # a handle of one, as repr and its wait's timeout name it
        if g.rank() == 1:
            time.sleep(1.0)
        work = rd.all_reduce(np.arange(4), "bor", group=g, async_op=True)
        seen = [repr(work)]
        if g.rank() == 0:
            with pytest.raises(rd.RingTimeoutError) as info:
                work.wait(timeout=0.2)
            seen.append(str(info.value))
        work.wait()
        return seen

    seen = run_ranks(2, outstanding, shm=shm)[0]
    assert seen == ["<ringdist.Work all_reduce(op='bor') on group 'world' rank 0 (outstanding)>",
                    "rank 0: all_reduce(op='bor') on group 'world' is still outstanding after wait(timeout=0.2)"], seen


def test_a_bad_group_of_a_queued_reduction_is_named_as_the_call_was_made():
    # Queued calls (async_op=True, or any call once a handle was issued) check `group=` apart.
    for call, shown in ((lambda: rd.reduce_scatter(np.ones(4), op="max", group="nope", async_op=True),
                         "reduce_scatter(op='max')"),
                        (lambda: rd.all_reduce(np.ones(4), op="avg", group=3, async_op=True), "all_reduce(op='avg')")):
        with pytest.raises(TypeError) as info:
            call()
        assert f"{shown}: group must be a ringdist Group or None" in str(info.value), info.value


def test_a_sub_group_error_and_the_broken_group_after_it_carry_the_sub_group():
    def body(g):
        sub = g.split(color=g.rank() % 2)
        try:
            rd.all_gather(np.zeros(2 if sub.rank() == 0 else 3), group=sub)
        except rd.MismatchError as exc:
            first = exc
        with pytest.raises(rd.GroupBrokenError) as later:
            rd.barrier(group=sub)
        return sub.gid, first, later.value

    for r, (gid, first, later) in enumerate(run_ranks(4, body, timeout=60)):
        assert gid != "world" and first.group == gid and first.rank == r // 2 and first.op == "all_gather"
        assert first.peer in (0, 1) and f"rank {first.peer} " in str(first)
        assert (later.rank, later.group, later.op, later.peer) == (r // 2, gid, "barrier", None)


def test_a_received_message_of_another_shape_names_its_sender():
    def body(g):
        if g.rank() == 0:
            rd.send(np.zeros(3), dst=1, group=g)
        else:
            rd.recv((4,), np.float64, src=0, group=g)

    errors = _errors(2, body)
    receiving = errors[1]
    assert isinstance(receiving, rd.MismatchError), receiving
    assert (receiving.rank, receiving.op, receiving.peer, receiving.origin) == (1, "recv", 0, 1)


@pytest.mark.parametrize("shm", ["1", "0"])
def test_every_survivor_of_a_killed_rank_names_it_and_its_address(shm):
    proc = run_launcher(["-n", "4", "--grace", "20", str(SCRIPTS / "error_fields.py"), "2"], timeout=60,
                        env={"RINGDIST_SHM": shm, "RINGDIST_TIMEOUT": "30"})
    assert proc.returncode == 137, proc.stdout + proc.stderr
    found = {int(m.group(1)): json.loads(m.group(2))
             for m in re.finditer(r"^\[(\d+)\] fields (.*)$", proc.stdout, re.M)}
    assert sorted(found) == [0, 1, 3], proc.stdout + proc.stderr
    addresses = {f["address"] for f in found.values()}
    assert len(addresses) == 1 and None not in addresses, found
    for r, f in found.items():
        assert f["error"] == "PeerLostError" and f["peer"] == 2, found
        assert (f["rank"], f["group"], f["op"]) == (r, "world", "all_sum"), found
        assert f["origin"] in (0, 1, 3), found


def test_a_rank_killed_while_a_sub_group_is_made_is_named_by_its_peers():
    # Errors in a group's setup (a dial, a wait for a peer to connect) carried nothing.
    proc = run_launcher(["-n", "4", "--grace", "20", str(SCRIPTS / "setup_fields.py")], timeout=90,
                        env={"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "10"})
    assert proc.returncode == 137, proc.stdout + proc.stderr
    found = {int(m.group(1)): json.loads(m.group(2))
             for m in re.finditer(r"^\[(\d+)\] fields (.*)$", proc.stdout, re.M)}
    assert sorted(found) == [0, 1, 3], proc.stdout + proc.stderr
    for world, f in found.items():
        assert f["group"] not in (None, "world") and (f["op"] == "split" or f["op"].startswith("group setup")), found
        assert f["rank"] == 3 - world, found  # keys reversed the ranks
    # Each found it gone, or heard from one that did: the same peer (rank 1 there) and address.
    assert {(f["peer"], f["address"]) for f in found.values()} == {(1, found[0]["address"])}, found
    assert found[0]["address"], found
