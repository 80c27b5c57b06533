"""The foundation through the public API: real ranks under ringdist-launch, over real sockets."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from helpers import HOSTFILES, ROOT, SCRIPTS, loopback_aliases, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}


def launch(n: int, script: str, *args: str, timeout: float = 120, env: dict | None = None,
           launcher_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return run_launcher(["-n", str(n), *launcher_args, str(SCRIPTS / script), *args],
                        timeout=timeout, env={**FAST, **(env or {})})


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_all_gather_every_dtype_and_shape(n):
    big = str(16 << 20) if n in (2, 4) else "0"  # one large case (16 MiB per rank) where it is cheap
    res = launch(n, "gather_matrix.py", big, timeout=240)
    assert res.returncode == 0, res.stderr
    oks = re.findall(r"^\[(\d+)\] gather ok rank=(\d+) size=(\d+) cases=(\d+)$", res.stdout, re.M)
    assert sorted(int(r) for r, *_ in oks) == list(range(n))
    assert all(int(size) == n and int(cases) >= 65 for _, _, size, cases in oks)


def test_large_all_gather_over_three_lanes_both_ways():
    # 9 MiB + 24 bytes per rank: six streams with uneven pieces (both ways round the ring, as
    # across hosts), each sending its piece of this rank's block from the input while the
    # block is copied into the output.
    res = launch(3, "gather_matrix.py", str((9 << 20) + 24), timeout=240,
                 env={"RINGDIST_LANES": "3", "RINGDIST_DIRECTIONS": "2"})
    assert res.returncode == 0, res.stderr
    oks = re.findall(r"^\[(\d+)\] gather ok rank=(\d+) size=(\d+) cases=(\d+)$", res.stdout, re.M)
    assert sorted(int(r) for r, *_ in oks) == [0, 1, 2]


def test_main_job_on_the_shipped_hostfiles():
    for hostfile in ("localhost-4.json", "loopback-4.json"):
        if hostfile == "loopback-4.json":
            loopback_aliases()
        res = run_launcher(["--hosts", str(HOSTFILES / hostfile), str(ROOT / "examples" / "gather.py")],
                           timeout=60, env=FAST)
        assert res.returncode == 0, res.stderr
        expected = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0, 30.0, 31.0, 32.0, 33.0]
        for r in range(4):
            assert f"[{r}] rank {r} of 4: all_gather -> {expected}" in res.stdout


def test_loopback_hostfile_binds_each_rank_to_its_own_address():
    loopback_aliases()
    code = ("import ringdist as rd, ringdist.world as b; g = rd.init(); "
            "print('bound', b._endpoint.addresses[0][0]); rd.barrier()")
    script = ROOT / "tests" / "scripts" / "_bound.py"
    res = run_launcher(["--hosts", str(HOSTFILES / "loopback-4.json"), "--", sys.executable, "-c", code],
                       timeout=60, env=FAST)
    assert res.returncode == 0, res.stderr
    for r in range(4):
        assert f"[{r}] bound 127.0.0.{r + 1}" in res.stdout
    assert not script.exists()


@pytest.mark.parametrize("kind", ["shape", "dtype", "op", "straddle", "path", "directions"])
def test_mismatch_raises_on_every_rank(kind):
    t0 = time.monotonic()
    res = launch(4, "mismatch.py", kind, timeout=60)
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, (res.stdout, res.stderr)
    lines = re.findall(r"^\[(\d)\] MismatchError after ([\d.]+)s: (.*)$", res.stdout, re.M)
    assert sorted(int(r) for r, _, _ in lines) == [0, 1, 2, 3], res.stdout
    assert all(float(t) < 5 for _, t, _ in lines)
    # The message shows both sides.
    direct = [msg for _, _, msg in lines if "but rank" in msg or "chose different paths" in msg]
    assert direct and all(("shape=(5,)" in m and "shape=(4,)" in m) if kind == "shape" else True for m in direct)
    if kind == "dtype":
        assert any("int32" in m and "float32" in m for m in direct)
    if kind == "op":
        assert any("all_sum" in m and "all_gather" in m for m in direct)
    if kind == "straddle":  # direct path on three ranks, ring on one: still a mismatch, not a hang
        assert any("shape=(1048576,)" in m and "shape=(4,)" in m for m in direct)
    if kind == "path":
        assert any("chose different paths" in m and "RINGDIST_DIRECT_MAX" in m for m in direct), direct
    if kind == "directions":
        assert any("chose different paths" in m and "one way round the ring" in m and "RINGDIST_DIRECTIONS" in m
                   for m in direct), direct
    assert len(re.findall(r"GroupBrokenError", res.stdout)) == 4
    assert elapsed < 30


@pytest.mark.parametrize("shm", ["1", "0"])
def test_rank_exiting_mid_job_raises_peer_lost_elsewhere(shm):
    t0 = time.monotonic()
    res = launch(4, "peer_exit.py", timeout=60, launcher_args=("--grace", "8", "--env", f"RINGDIST_SHM={shm}"))
    elapsed = time.monotonic() - t0
    assert res.returncode == 7, (res.stdout, res.stderr)
    lost = re.findall(r"^\[(\d)\] PeerLostError after ([\d.]+)s: (.*)$", res.stdout, re.M)
    assert sorted(int(r) for r, _, _ in lost) == [0, 1, 3], res.stdout + res.stderr
    assert all(float(t) < 5 for _, t, _ in lost)
    # Shown once the launcher's notice has come, a loss of rank 2 found here says why it left.
    later = re.findall(r"^\[(\d)\] later: rank \d: lost rank 2 (.*)$", res.stdout, re.M)
    assert later and all("; world rank 2 left the job: " in text for _, text in later), res.stdout
    assert "rank 2" in res.stderr
    assert elapsed < 20


def test_strangers_are_refused_and_the_job_goes_on():
    res = launch(3, "stranger.py", timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    refused = {int(r): int(k) for r, k in re.findall(r"^\[(\d)\] correct; refused=(\d+)$", res.stdout, re.M)}
    assert sorted(refused) == [0, 1, 2], res.stdout
    assert refused[1] >= 4 and refused[2] >= 4, refused
    assert "refused connection" in res.stderr  # dropped and logged


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in __import__("os").environ.items()
             if not k.startswith("RINGDIST_") and k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def test_init_without_launcher_is_a_singleton():
    res = _python("import numpy as np, ringdist as rd\n"
                  "g = rd.init(); assert rd.init() is g\n"
                  "print(g.rank(), g.size(), rd.is_available(), rd.all_gather(np.arange(3)).tolist())")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "1", "True", "[0,", "1,", "2]"]


def test_a_backend_ringdist_lacks_is_a_value_error_naming_it_strict_or_not():
    # As MLX: an unknown name is a ValueError. MLX's own other backends are refused too (MLX
    # gives a world of one where one is missing, which would run a launched job N times).
    res = _python("import ringdist as rd\n"
                  "print(rd.is_available('any'), rd.is_available('mpi'), rd.init(backend='any').size())\n"
                  "for strict, name in ((False, 'mpi'), (True, 'nccl'), (False, 'bogus')):\n"
                  "    try:\n        rd.init(strict, name)\n    except ValueError as e:\n        print(e)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "True False 1",
        "init: backend 'mpi' is MLX's, not ringdist's: ringdist has only the ring backend "
        "(backend='ring', or MLX's default 'any')",
        "init: backend 'nccl' is MLX's, not ringdist's: ringdist has only the ring backend "
        "(backend='ring', or MLX's default 'any')",
        "init: unknown backend 'bogus'; ringdist provides 'ring', 'any'"]


def test_send_returns_its_array_as_mlx_does():
    # MLX's `send` returns an array identical to x; ringdist's returns x as an array, once sent
    # (to itself here, to nobody, and from a Work's wait()); a list comes back as its array.
    res = _python("import numpy as np, ringdist as rd\n"
                  "x = np.arange(3.0)\n"
                  "print(rd.send(x, 0) is x, rd.send(x, None) is x, rd.send(x, 0, async_op=True).wait() is x,\n"
                  "      rd.send(x, None, async_op=True).wait() is x, rd.send([1, 2], 0).tolist())\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True"] * 4 + ["[1,", "2]"]


def test_a_message_to_nobody_on_the_default_group_names_the_rank_in_its_errors():
    # send(x, None) (MPI's PROC_NULL) checks `x` as a send to a rank does, with group=None too.
    res = _python("import numpy as np, ringdist as rd\n"
                  "for call in (lambda: rd.send(np.array([None]), None), lambda: rd.send(np.zeros(1), None, tag=-1)):\n"
                  "    try:\n        call()\n    except (TypeError, ValueError) as e:\n        print(e)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "rank 0: send: ringdist sends raw array bytes; object arrays are not supported",
        "rank 0: send: tag=-1: a tag is an integer from 0 to 2147483647 (rd.ANY_TAG, -1, is for receives: it takes a "
        "message of any tag, and a message has one)"], res.stdout


def test_a_submodule_imported_alone_and_an_exit_hook_before_init_use_the_world_group():
    # The API loads on first use: a collective imported from its module still makes the default
    # group, and ringdist's exit hook (registered as the package is imported) runs after a
    # user's registered before init().
    from helpers import SCRIPTS, run_launcher

    res = _python("import numpy as np\nfrom ringdist.collectives import all_sum\nprint(all_sum(np.ones(3)).tolist())")
    assert res.returncode == 0 and res.stdout.strip() == "[1.0, 1.0, 1.0]", res.stdout + res.stderr
    res = run_launcher(["-n", "2", str(SCRIPTS / "exit_hook.py")], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(line for line in res.stdout.splitlines() if "exit hook" in line) == [
        "[0] exit hook: [2.0]", "[1] exit hook: [2.0]"], res.stdout + res.stderr


@pytest.mark.parametrize("launched", [True, False])
def test_code_run_after_ringdist_s_exit_hook_is_told_it_shut_down_and_joins_nothing(launched):
    # init() made a new world there: it registered the rank a second time (the rendezvous refused
    # it as two processes sharing a rank), made a new world under a scheduler, or hung starting
    # a thread as the interpreter finalized (a __del__).
    from helpers import SCRIPTS, run_launcher

    script = str(SCRIPTS / "after_exit_hook.py")
    res = run_launcher(["-n", "2", script], timeout=60) if launched else _python(open(script).read())
    assert res.returncode == 0, res.stdout + res.stderr
    ranks = (0, 1) if launched else (0,)
    lines = [line.partition("] ")[2] if launched else line for line in res.stdout.splitlines()]
    for r in ranks:
        closed = (f"RingError: rank {r}: group 'world' is closed (ringdist shut down as this process exits: its "
                  f"exit hook has run)")
        assert f"all_sum: {closed}" in lines and f"split: {closed}" in lines, res.stdout
    assert lines.count(f"init: returned {len(ranks)}") == len(ranks), res.stdout
    assert "registered twice" not in res.stdout + res.stderr
    res = run_launcher(["-n", "2", script, "--no-init"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("init: RingError: ringdist shut down as this process exits: its exit hook has run; "
                            "init() cannot join the job now") == 2, res.stdout
    assert "rendezvous" not in res.stderr, res.stderr


def test_init_strict_without_launcher_raises_config_error():
    res = _python("import ringdist as rd\n"
                  "try:\n    rd.init(strict=True)\nexcept rd.ConfigError as e:\n    print('ConfigError:', e)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ConfigError:") and "ringdist-launch" in res.stdout


def test_init_with_a_broken_environment_raises_even_when_not_strict():
    res = _python("import ringdist as rd\n"
                  "try:\n    rd.init()\nexcept rd.ConfigError as e:\n    print('ConfigError:', e)\n",
                  env={"RINGDIST_RANK": "0", "RINGDIST_WORLD_SIZE": "2", "RINGDIST_RENDEZVOUS": "nowhere"})
    assert res.returncode == 0, res.stderr
    assert "RINGDIST_RENDEZVOUS" in res.stdout


def test_init_names_the_ranks_that_never_registered():
    # Rank 5 never calls init(): every rank's init deadline names it, the ranks whose deadline
    # came a moment after the first's too (they heard of its departure, and blamed that rank).
    # An init() that failed once its rank had registered cannot be called again, and says so.
    code = ("import os, time, ringdist as rd\n"
            "if os.environ['RINGDIST_RANK'] == '5':\n    time.sleep(30)\n"
            "else:\n"
            "    for attempt in (1, 2):\n"
            "        try:\n            rd.init()\n"
            "        except rd.RingError as e:\n            print(attempt, type(e).__name__, e, flush=True)\n"
            "    time.sleep(1)\n    raise SystemExit(1)\n")
    res = run_launcher(["-n", "6", "--", sys.executable, "-c", code], timeout=60,
                       env={**FAST, "RINGDIST_INIT_TIMEOUT": "2"})
    assert res.returncode != 0
    first = re.findall(r"^\[(\d)\] 1 (\w+) (.*)$", res.stdout, re.M)
    assert sorted(r for r, _, _ in first) == ["0", "1", "2", "3", "4"], res.stdout + res.stderr
    for _, kind, text in first:
        assert "init() timed out after 2 s" in text and "never registered: 5 (host" in text, text
    again = re.findall(r"^\[(\d)\] 2 RingError (.*)$", res.stdout, re.M)
    assert len(again) == 5 and all("init() failed once this rank had registered at the rendezvous" in text
                                   and "cannot be called again in this process" in text for _, text in again), again


@pytest.mark.parametrize("rank_2, n, limit, summary", [
    # It never calls init(): the ranks whose init() timed out tell the launcher whom they waited
    # for, and those that heard of a departure first tell that (the summary named the first to
    # time out alone, "on their own", and rank 2 only as stopped).
    ("time.sleep(30)", 4, "2", r"rank [013] \(host localhost, pid \d+\) exited with code 1 first; .*rank 2 stopped by "
                          r"the launcher; ranks? [013](,[013])* had timed out waiting for rank 2"),
    # It exits 0 before init(): the others fail on hearing it left (the summary named a rank that
    # failed first and, apart, "rank 2 had already exited (code 0)", nothing linking the two).
    ("sys.exit(0)", 3, "10", r"rank [01] \(host localhost, pid \d+\) exited with code 1 first, on hearing that rank 2 had "
                       r"left the job \(it exited with code 0\); rank [01] then failed in turn"),
])
def test_the_launchers_summary_names_rank_2_which_never_took_part(rank_2, n, limit, summary):
    code = f"import os, sys, time, ringdist as rd\nif os.environ['RANK'] == '2':\n    {rank_2}\nrd.init()\nrd.barrier()\n"
    res = run_launcher(["-n", str(n), "--", sys.executable, "-c", code], timeout=60,
                       env={**FAST, "RINGDIST_INIT_TIMEOUT": limit})
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.fullmatch("ringdist-launch: " + summary, res.stderr.strip().splitlines()[-1]), res.stderr


def test_init_refuses_a_strict_that_is_not_a_bool():
    res = _python("import ringdist as rd\ntry:\n    rd.init(strict='yes')\nexcept TypeError as e:\n    print(e)\n"
                  "print(rd.init(strict=False).size())\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["init: strict must be True or False, got 'yes'", "1"], res.stdout
