"""Faults reach every rank as an error, quickly: kill -9 mid-collective, a stalled peer."""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import time

import pytest

from helpers import SCRIPTS, LineReader, kill_tree, pid_alive, run_launcher, start_launcher, wait_until_gone

KILLS_PER_OP = 20


def _ready_pids(reader: LineReader, n: int) -> dict[int, int]:
    found = reader.wait_for(r"^\[(\d+)\] ready pid=(\d+)$", count=n, timeout=60)
    return {int(m.group(1)): int(m.group(2)) for m in found}


@pytest.mark.parametrize("op,mib,kills", [pytest.param("all_gather", "4", KILLS_PER_OP, marks=pytest.mark.slow),
                                          pytest.param("all_sum", "4", KILLS_PER_OP, marks=pytest.mark.slow),
                                          pytest.param("all_gather", "0.0625", 10, marks=pytest.mark.slow),
                                          pytest.param("all_sum", "0.0625", 10, marks=pytest.mark.slow),
                                          ("all_gather", "0.0625", 4), ("all_sum", "0.0625", 4),
                                          ("all_gather", "0.00390625", 3)])
def test_kill_9_mid_collective_reaches_every_rank_within_5s(op, mib, kills):
    # 4 MiB per rank goes round the ring; 64 KiB takes the direct path (every pair connected):
    # one exchange for all_gather, recursive doubling for all_sum; a 4 KiB all_gather doubles too.
    rng = random.Random(op + mib)
    detections = []
    for round_no in range(kills):
        proc = start_launcher(["-n", "4", "--grace", "10", str(SCRIPTS / "long_loop.py"), op, mib],
                              env={"RINGDIST_TIMEOUT": "30"})
        try:
            out = LineReader(proc.stdout)
            pids = _ready_pids(out, 4)
            time.sleep(rng.uniform(0.0, 0.3))
            victim = rng.randrange(4)
            os.kill(pids[victim], signal.SIGKILL)
            killed_at = time.time()
            proc.wait(timeout=30)
            text = out.rest()
            err = proc.stderr.read()
        finally:
            kill_tree(proc)
        raised = {int(r): (name, float(t)) for r, name, t in
                  re.findall(r"^\[(\d+)\] raised (\w+) at ([\d.]+):", text, re.M)}
        assert sorted(raised) == sorted(set(range(4)) - {victim}), (round_no, victim, text, err)
        for rank, (name, t) in raised.items():
            assert name in ("PeerLostError", "RingTimeoutError"), (name, text)
            detections.append(t - killed_at)
            assert t - killed_at < 5.0, (rank, t - killed_at)
        assert proc.returncode == 137, (proc.returncode, err)
        assert f"rank {victim}" in err and "SIGKILL" in err
        assert not wait_until_gone(list(pids.values()), timeout=10)
    print(f"{op} {mib} MiB: {kills} kills, detection median {statistics.median(detections) * 1e3:.0f} ms, "
          f"max {max(detections) * 1e3:.0f} ms")


@pytest.mark.parametrize("mib", [pytest.param("1", marks=pytest.mark.slow), "0.0625"])  # ring path; direct path
def test_a_stalled_peer_is_a_timeout_naming_op_and_peer(mib):
    timeout = 4.0
    proc = start_launcher(["-n", "3", "--grace", "3", str(SCRIPTS / "long_loop.py"), "all_gather", mib],
                          env={"RINGDIST_TIMEOUT": str(timeout)})
    try:
        out = LineReader(proc.stdout)
        pids = _ready_pids(out, 3)
        os.kill(pids[1], signal.SIGSTOP)
        stopped_at = time.time()
        found = out.wait_for(r"^\[(\d)\] raised (\w+) at ([\d.]+): (.*)$", count=2, timeout=timeout + 15)
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        try:
            os.kill(pids[1], signal.SIGCONT)
        except (ProcessLookupError, NameError):
            pass
        kill_tree(proc)
    by_rank = {int(m.group(1)): m for m in found}
    assert sorted(by_rank) == [0, 2]
    direct = 0
    for m in by_rank.values():
        assert m.group(2) == "RingTimeoutError", m.group(0)
        assert float(m.group(3)) - stopped_at < timeout + 3.5, m.group(0)  # within one timeout, not two
        if "made no progress for 4 s" in m.group(4):
            direct += 1
            assert "all_gather" in m.group(4) and "rank 1" in m.group(4)
    assert direct >= 1
    assert proc.returncode != 0 and "rank" in err
    # The launcher's summary names the rank they waited for (it stopped rank 1: it had not failed).
    assert re.search(r"; ranks? [02,]+ had timed out waiting for rank 1$", err, re.M), err
    assert not pid_alive(pids[1])


def test_a_flood_of_1000_stranger_connections_changes_nothing():
    from helpers import run_launcher

    res = run_launcher(["-n", "3", str(SCRIPTS / "flood.py")], timeout=180,
                       env={"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "3"})
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rows = {int(m[0]): m for m in re.findall(
        r"^\[(\d)\] flood done rank=\d ops=(\d+) fds (\d+)->(\d+) refused=(\d+) connections=(\d+)$", res.stdout, re.M)}
    assert sorted(rows) == [0, 1, 2], res.stdout
    assert int(rows[0][5]) == 1000  # the stranger got its 1000 connections in
    assert int(rows[1][4]) + int(rows[2][4]) >= 1000  # every one refused (or dropped at the door)
    for _, ops, before, after, _, _ in rows.values():
        assert int(ops) >= 2 and int(after) <= int(before)


@pytest.mark.slow
def test_soak_5000_random_collectives_on_world_and_splits():
    from helpers import run_launcher

    res = run_launcher(["-n", "4", str(SCRIPTS / "soak.py"), "5000"], timeout=400, env={"RINGDIST_TIMEOUT": "60"})
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rows = re.findall(r"^\[(\d)\] soak ok rank=\d collectives=5000 seconds=[\d.]+ MiB=\d+ "
                      r"fds (\d+)->(\d+) rss_mib ([\d.]+)->([\d.]+)->([\d.]+)$", res.stdout, re.M)
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3], res.stdout
    for _, fd0, fd1, _, half, end in rows:
        assert int(fd1) <= int(fd0)
        assert float(end) < float(half) + 16, "resident memory kept growing in the second half"


@pytest.mark.parametrize("mode,raising", [("init", [0, 1]), ("registered", [0, 1]), ("split", [0, 1]),
                                          ("recv", [0]), ("send", [0])])
def test_a_rank_gone_before_its_peers_connect_is_lost_at_once(mode, raising, tmp_path):
    # Connecting and waiting for a connection would each last a minute here (both timeouts 60 s);
    # the survivors must hear that rank 2 left (from the launcher's rendezvous, or a refused dial).
    res = run_launcher(["-n", "3", "--grace", "60", str(SCRIPTS / "leaves_early.py"), mode], timeout=45,
                       env={"RINGDIST_CONNECT_TIMEOUT": "60", "RINGDIST_TIMEOUT": "60",
                            "RINGDIST_INIT_TIMEOUT": "60", "LEAVES_EARLY_DIR": str(tmp_path)})
    raised = dict(re.findall(r"^\[(\d+)\] raised (\w+: .*)$", res.stdout, re.M))
    assert sorted(map(int, raised)) == raising, (res.stdout, res.stderr)
    for text in raised.values():
        # Naming rank 2, or a survivor that failed first and closed its endpoint (it left too).
        assert text.startswith("PeerLostError: "), text
    if mode in ("init", "registered", "split"):
        assert res.returncode == 137 and "rank 2" in res.stderr and "SIGKILL" in res.stderr, res.stderr
    else:
        assert res.returncode == 1, (res.returncode, res.stderr)


@pytest.mark.parametrize("how", ["exit", "close"])
@pytest.mark.parametrize("call", ["send", "isend"])
def test_a_message_to_a_rank_that_has_left_fails_on_the_open_connection(how, call):
    # A small message fit the kernel's buffer of the connection to a rank gone from the other end,
    # and its send returned as if delivered: the message was lost and the job ended well.
    res = run_launcher(["-n", "2", str(SCRIPTS / "send_after_exit.py"), how, call], timeout=60,
                       env={"RINGDIST_TIMEOUT": "10", "RINGDIST_CONNECT_TIMEOUT": "10"})
    outcome = re.search(r"^\[0\] outcome: (.*)$", res.stdout, re.M)
    assert outcome is not None, res.stdout + res.stderr
    why = "left the job" if how == "exit" else "connection closed by peer"
    assert outcome.group(1).startswith("PeerLostError: rank 0: lost rank 1 ") and why in outcome.group(1), outcome
    assert "the message was not sent" in outcome.group(1)
    assert re.search(r"^\[0\] group broken$", res.stdout, re.M), res.stdout  # as any failed message does


def _rank_0_outcome(mode: str) -> str:
    """What rank 0's receive ended with, in a 3-rank `recv_from_gone.py` job of `mode` (the only outcome)."""
    res = run_launcher(["-n", "3", "--grace", "30", str(SCRIPTS / "recv_from_gone.py"), mode], timeout=60,
                       env={"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "20"})
    outcome = re.findall(r"^\[(\d)\] outcome after [\d.]+: (.*)$", res.stdout, re.M)
    assert [r for r, _ in outcome] == ["0"], res.stdout + res.stderr
    return outcome[0][1]


def test_a_later_departure_names_the_first_one():
    # Rank 1 fails; rank 2, waiting for it, leaves on that; rank 0, waiting for rank 2, hears
    # of rank 2's departure and of the first one, which is often the cause of the later ones.
    # Each why is the rendezvous's (a closed connection) or the launcher's (the exit), whichever came first.
    outcome = _rank_0_outcome("chain")
    assert re.fullmatch(r"PeerLostError: rank 0: recv in group 'world': waiting for rank 2 to send: "
                        r".*world rank 2 left the job: (its connection to the launcher closed \(its process "
                        r"ended\)|exited with code 0), after world rank 1 left first \((its connection to the "
                        r"launcher closed \(its process ended\)|exited with code 1)\)", outcome), outcome


def test_a_departure_says_what_the_rank_had_raised():
    # Rank 1 raised MismatchError in a group without rank 0 and exited: rank 0, which lost it,
    # reads why (the rank told its first failure to the rendezvous before it left).
    outcome = _rank_0_outcome("raised")
    assert re.fullmatch(r"PeerLostError: rank 0: recv in group 'world': waiting for rank 1 to send: world rank 1 "
                        r"left the job: (its connection to the launcher closed \(its process ended\)|exited with "
                        r"code 3); it had raised \(as rank 0 of group 'world/0:1'\) MismatchError: rank 0 \(world rank 1\) called "
                        r"all_gather\(shape=\(4,\), "
                        r"dtype=float64\) \[call #0\] but rank 1 \(world rank 2\) called all_gather\(shape=\(5,\), dtype=float64\) "
                        r"\[call #0\] \(group 'world/0:1'\)", outcome), outcome  # rank 2, which raised too, leaves after it


def test_a_peer_lost_while_receiving_is_named_with_the_call():
    # As a loss found while sending is: "lost rank 1 (...) during broadcast: ...".
    import numpy as np

    import ringdist as rd
    from harness import run_ranks

    def rank(g):
        if g.rank() == 1:
            time.sleep(0.3)
            g.close()  # rank 0 is receiving the root's array from it
            return None
        with pytest.raises(rd.PeerLostError) as lost:
            rd.broadcast(np.ones(4), root=1, group=g)
        return str(lost.value)

    message = run_ranks(2, rank, shm=False)[0]
    assert re.match(r"rank 0: lost rank 1 \(127\.0\.0\.1:\d+, right link of group 'world'\) during broadcast: "
                    r"connection closed by peer", message), message


@pytest.mark.parametrize("call", ["all_sum", "recv"])
@pytest.mark.parametrize("shm", [False, True], ids=["tcp", "shm"])
def test_an_error_names_a_peer_by_the_address_it_listens_on(shm, call):
    """A connection the peer dialed has a port its kernel chose at the far end: an error names
    the peer by the address it listens on (as on the connections this rank dialed), whichever
    side dialed. Rank 0 makes no call: rank 1 times out on a link rank 0 dialed (a ring's left
    link, or the pair's message connection, which its sender dials)."""
    from harness import run_ranks
    import numpy as np
    import ringdist as rd

    def rank(g):
        ip, port = g._addresses[0][0]
        if g.rank() == 0:
            rd.send(np.ones(1), 1, group=g)
            rd.barrier(group=g)
            time.sleep(1.0)  # rank 1 times out meanwhile
            return None
        rd.recv(1, np.float64, 0, group=g)
        rd.barrier(group=g)
        with pytest.raises(rd.RingTimeoutError) as info:
            if call == "recv":
                rd.recv(1, np.float64, 0, group=g, timeout=0.3)
            else:
                rd.all_sum(np.ones(1), group=g, timeout=0.3)
        return f"{ip}:{port}", str(info.value)

    (where, text), = [r for r in run_ranks(2, rank, shm=shm) if r is not None]
    assert re.search(rf"rank 0 \({re.escape(where)}, (left|mesh|p2p-in) link of group 'world'\)", text), (where, text)


def test_a_stall_in_a_step_that_carries_no_data_says_its_header_is_awaited():
    """Past 8 ranks over TCP an all-reduce's neighbours first trade headers alone: a stall there
    says the header is awaited, not "0 of 0 bytes"."""
    from harness import run_ranks
    import numpy as np
    import ringdist as rd

    def rank(g):
        if g.rank() != 0:
            time.sleep(1.0)
            return None
        with pytest.raises(rd.RingTimeoutError) as info:
            rd.all_sum(np.ones(1), group=g, timeout=0.3)
        return str(info.value)

    text = run_ranks(9, rank, shm=False)[0]
    assert "(its header not yet received)" in text and "0 of 0 bytes" not in text, text


@pytest.mark.slow
@pytest.mark.parametrize("case", ["world", "split"])
def test_a_rank_stalled_in_group_setup_is_named_by_every_peer(case):
    # World rank 1 stalls before it dials its ring. The ranks that wait for it time out naming
    # it; they tell their peers why (an ABORT of the setup) before closing, so a peer reading
    # their links says the same, where it said it lost them ("lost rank 2 ... during group
    # setup"). In a split group the stalled rank has its world rank beside its group rank.
    res = run_launcher(["-n", "6", "--grace", "30", str(SCRIPTS / "stalls_in_setup.py"), case], timeout=60,
                       env={"RINGDIST_CONNECT_TIMEOUT": "2"})
    raised = dict(re.findall(r"^\[(\d)\] raised (.*)$", res.stdout, re.M))
    raised.pop("1", None)  # (the stalled rank's own outcome)
    peers, others = (["0", "2", "3", "4", "5"], []) if case == "world" else (["3", "5"], ["0", "2", "4"])
    assert sorted(raised) == peers, res.stdout + res.stderr
    named = "waiting for rank 1 to connect" if case == "world" else "waiting for rank 0 (world rank 1) to connect"
    for text in raised.values():
        assert text.startswith("RingTimeoutError: ") and named in text, text
    assert sorted(re.findall(r"^\[(\d)\] set up$", res.stdout, re.M)) == others, res.stdout


@pytest.mark.slow
def test_a_rank_waiting_in_group_setup_for_one_that_gave_up_asks_it_why():
    # Rank 0 stalls before it dials its ring. Rank 1 waits for it there and gives up; rank 4 waits
    # for rank 1's mesh link, which rank 1 never made: it asks rank 1 whether the group failed
    # there, and says why (it named rank 1, which waited for rank 0). Rank 4 waits longer than
    # rank 1 (its own timeout, from about the same moment, raced rank 1's: 1 run in 12).
    res = run_launcher(["-n", "5", "--grace", "30", str(SCRIPTS / "stalls_in_setup.py"), "split_one", "0"],
                       timeout=60, env={"RINGDIST_CONNECT_TIMEOUT": "2", "STALLS_PATIENT": "4"})
    raised = dict(re.findall(r"^\[(\d)\] raised (.*)$", res.stdout, re.M))
    raised.pop("0", None)  # (the stalled rank's own outcome)
    assert sorted(raised) == ["1", "2", "3", "4"], res.stdout + res.stderr
    for text in raised.values():
        assert text.startswith("RingTimeoutError: ") and "waiting for rank 0 to connect" in text, text


@pytest.mark.slow
def test_a_rank_that_cannot_make_a_group_tells_a_peer_already_sending_to_it():
    # Rank 0 has the group and sends rank 1 16 MiB on it; rank 1 fails its setup. Rank 0's
    # message connection, waiting untaken in rank 1's inbox, gets the ABORT (it was closed
    # silently: "lost rank 1 ... connection closed by peer (broken pipe)").
    res = run_launcher(["-n", "4", "--grace", "30", str(SCRIPTS / "stalls_in_setup.py"), "split_send"], timeout=60,
                       env={"RINGDIST_CONNECT_TIMEOUT": "5"})
    raised = re.search(r"^\[0\] raised (.*)$", res.stdout, re.M)
    assert raised is not None, res.stdout + res.stderr
    assert raised.group(1) == ("RingError: rank 0: send aborted by rank 1: RuntimeError: injected failure after the "
                               "links were made"), raised.group(1)
