"""init() under cluster schedulers: ranks started by the test itself (no launcher) with only Slurm,
only Open MPI or only torchrun variables form the right world; rank 0 hosts the rendezvous."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time

import pytest

from helpers import SCRIPTS
from ringdist import jobenv
from ringdist.errors import ConfigError

WORLD_CHECK = str(SCRIPTS / "world_check.py")
# Variables of any launcher or scheduler: none may leak from the test's own environment into the ranks.
FOREIGN = ("RINGDIST_", "SLURM_", "OMPI_", "PMIX_", "MASTER_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
           "LOCAL_WORLD_SIZE", "TORCHELASTIC_")
BASE = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10", "RINGDIST_INIT_TIMEOUT": "30"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_a_free_port(make_envs, **kwargs) -> tuple[int, list[subprocess.CompletedProcess[str]]]:
    """`run_ranks(make_envs(port), **kwargs)` on a free port; again on another (3 tries in all)
    when rank 0 found it taken by the time it listened: a port checked free can go to another
    test's process before then (tests run in parallel)."""
    for _ in range(3):
        port = free_port()
        results = run_ranks(make_envs(port), **kwargs)
        if not any("cannot listen on" in r.stderr and "Address already in use" in r.stderr for r in results):
            break
    return port, results


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def job_id_with_free_port(make_env) -> str:
    """A job id whose derived rendezvous port is free here (tests run in parallel)."""
    for _ in range(100):
        job = str(random.randrange(10**6, 10**7))
        sched = jobenv.detect_scheduler(make_env(job))
        if sched is not None and sched.port_hint and port_is_free(sched.port_hint):
            return job
    raise AssertionError("no free port found")


def run_ranks(envs: list[dict[str, str]], *, args: tuple[str, ...] = (), delays: dict[int, float] | None = None,
              timeout: float = 60, script: str = WORLD_CHECK) -> list[subprocess.CompletedProcess[str]]:
    """Start one process per env (in list order, rank r after delays[r] s), wait for all; kill on timeout."""
    procs = []
    try:
        for i, env in enumerate(envs):
            time.sleep((delays or {}).get(i, 0))
            procs.append(subprocess.Popen([sys.executable, script, *args], env={**BASE, **FAST, **env},
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        deadline = time.monotonic() + timeout
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"ranks did not finish in {timeout}s") from None
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(10)


def check_world(results, n: int, source: str) -> None:
    reports = []
    for res in results:
        assert res.returncode == 0, res.stderr
        reports.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert sorted(r["rank"] for r in reports) == list(range(n))
    for rep in reports:
        assert rep["size"] == n and rep["source"] == source
        assert rep["split"] == sorted((q for q in range(n) if q % 2 == rep["rank"] % 2), reverse=True)
        assert rep["addresses"] == ["127.0.0.1"]  # the source address towards the rendezvous


def test_slurm_variables_only():
    n = 8  # ranks leave the rendezvous as soon as they have the table, while later ones still wait for it

    def env(job: str, rank: int = 0) -> dict[str, str]:
        return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(n), "SLURM_LOCALID": str(rank),
                "SLURM_NNODES": "1", "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0",
                "SLURM_JOB_NODELIST": "localhost", "RINGDIST_SECRET": "slurm-test-secret"}

    job = job_id_with_free_port(env)
    check_world(run_ranks([env(job, r) for r in range(n)], args=("100000",)), n, "Slurm")


def test_open_mpi_variables_only_with_a_secret_file(tmp_path):
    n = 3
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef\n")
    secret.chmod(0o600)

    def env(job: str, rank: int = 0) -> dict[str, str]:
        return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(n),
                "OMPI_COMM_WORLD_LOCAL_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(n),
                "OMPI_MCA_ess_base_jobid": job, "RINGDIST_SECRET_FILE": str(secret)}

    job = job_id_with_free_port(env)
    results = run_ranks([env(job, r) for r in range(n)])
    check_world(results, n, "Open MPI")
    assert not any("secret" in r.stderr.lower() for r in results)  # a 0600 file: no warning


def test_torchrun_variables_only_rank_0_last_and_insecure():
    n = 4
    _, results = run_on_a_free_port(
        lambda port: [{"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RINGDIST_INSECURE": "1"}
                      for r in reversed(range(n))],  # rank 0 starts a second after the others, which wait for it
        delays={n - 1: 1.0})
    check_world(results, n, "torchrun")
    assert all("RINGDIST_INSECURE=1: no job secret" in r.stderr for r in results)


def test_torchrun_variables_on_one_node_without_master_addr_meet_on_loopback():
    # LOCAL_WORLD_SIZE == WORLD_SIZE: one node, so 127.0.0.1, as under Slurm and Open MPI.
    n = 2
    _, results = run_on_a_free_port(
        lambda port: [{"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n),
                       "MASTER_PORT": str(port), "RINGDIST_SECRET": "s"} for r in range(n)])
    check_world(results, n, "torchrun")


@pytest.mark.parametrize("call", ["recv", "irecv"])
def test_a_recv_from_a_rank_that_has_left_fails_without_a_launcher(call):
    # No launcher tells the others that rank 1 has left: a wait for its connection tries its
    # address after a second, finds nothing listening, and raises instead of waiting 300 s.
    n = 3
    _, results = run_on_a_free_port(
        lambda port: [{"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RINGDIST_SECRET": "probe-test-secret",
                       "RINGDIST_TIMEOUT": "120"} for r in range(n)],
        args=(call,), script=str(SCRIPTS / "recv_from_gone.py"), timeout=90)
    for r in (0, 2):
        line = [x for x in results[r].stdout.splitlines() if x.startswith("outcome after ")]
        assert line, results[r].stdout + results[r].stderr
        took, _, what = line[0].removeprefix("outcome after ").partition(": ")
        assert what.startswith(f"PeerLostError: rank {r}: recv in group 'world': waiting for rank 1 to send: "
                               "nothing listens at its address any more: it has left the job"), what
        assert float(took) < 10, took
    assert results[1].returncode == 0, results[1].stderr


def test_no_secret_is_refused_with_the_line_to_add():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_JOB_ID": "77"}
    (res,) = run_ranks([env], timeout=30)
    assert res.returncode == 1 and res.stdout == ""
    assert "ConfigError: Slurm rank 0: no job secret. Add this line to the job script, before srun:" in res.stderr
    assert "    export RINGDIST_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')" in res.stderr


def test_missing_rank_0_times_out_naming_the_rendezvous():
    port = free_port()
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "RINGDIST_SECRET": "s", "RINGDIST_INIT_TIMEOUT": "1.5"}
    started = time.monotonic()
    (res,) = run_ranks([env], timeout=30)
    assert time.monotonic() - started < 15
    assert res.returncode == 1
    assert f"rank 1 (torchrun): init() gave up after 1.5 s: no rendezvous answered at 127.0.0.1:{port}" in res.stderr


def test_ranks_waiting_when_rank_0_gives_up_hear_which_rank_never_registered():
    """Rank 1 of 4 never starts. Rank 0, which serves the rendezvous, times out first and tells
    the ranks still waiting why before it closes (they read the connection closing, as if rank 0
    had crashed): every rank names rank 1."""
    def envs(port: int) -> list[dict[str, str]]:
        env = {"WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RINGDIST_SECRET": "s",
               "RINGDIST_INIT_TIMEOUT": "3"}
        return [{**env, "RANK": str(r)} for r in (0, 2, 3)]
    _, results = run_on_a_free_port(envs, delays={1: 0.3, 2: 0.3}, timeout=40)
    for res in results:
        assert res.returncode == 1 and "ranks that never registered: 1 (host ?)" in res.stderr, res.stderr
    assert "the job cannot start: rank 0, which serves the rendezvous, failed in init()" in results[2].stderr


def test_a_rank_with_another_secret_is_named_in_rank_0s_timeout():
    """Rank 1's secret differs: it is refused as a stranger at once, and rank 0's init timeout
    says that the rendezvous refused a connection meanwhile, and what a refusal may mean."""
    def envs(port: int) -> list[dict[str, str]]:
        env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RINGDIST_INIT_TIMEOUT": "6"}
        return [{**env, "RANK": "0", "RINGDIST_SECRET": "one"}, {**env, "RANK": "1", "RINGDIST_SECRET": "another"}]
    _, (res0, res1) = run_on_a_free_port(envs, delays={1: 0.5}, timeout=40)
    assert res1.returncode == 1 and "refused by peer: wrong job (every rank of a job needs the same secret" in res1.stderr
    assert res0.returncode == 1
    assert re.search(r"RingTimeoutError: rank 0: init\(\) timed out after 6 s at the rendezvous 127\.0\.0\.1:\d+: "
                     r"ranks that never registered: 1 \(host \?\); the rendezvous refused 1 connection meanwhile, "
                     r"the latest from 127\.0\.0\.1:\d+: connection for another job \('[0-9a-f]+'\) \(a rank "
                     r"started with another RINGDIST_SECRET is refused as a stranger\)", res0.stderr), res0.stderr


# --- the environment, read without starting anything --------------------------------------


def test_innermost_launcher_wins_and_launcher_variables_win_over_all():
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "RINGDIST_SECRET": "s", "MASTER_ADDR": "10.0.0.1"}
    torch = {**slurm, "RANK": "5", "WORLD_SIZE": "8"}
    job = jobenv.read_environment(torch)
    assert (job.source, job.rank, job.size, job.rendezvous) == ("torchrun", 5, 8, ("10.0.0.1", 29500))
    ompi = {**slurm, "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}
    assert jobenv.read_environment(ompi).source == "Open MPI"
    launched = {**torch, "RINGDIST_RANK": "0", "RINGDIST_WORLD_SIZE": "1", "RINGDIST_RENDEZVOUS": "127.0.0.1:9",
                "RINGDIST_BIND": "127.0.0.1"}
    assert jobenv.read_environment(launched).source == "ringdist-launch"
    assert jobenv.read_environment({"PATH": "/bin"}) is None


def test_rendezvous_address_rules():
    base = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "4242", "RINGDIST_SECRET": "s",
            "RINGDIST_BIND": "127.0.0.1"}
    multi = jobenv.read_environment({**base, "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08],cpu1"})
    assert multi.rendezvous[0] == "gpu07" and 20000 <= multi.rendezvous[1] < 40000
    assert not multi.hosts_rendezvous and multi.bind == ["127.0.0.1"]
    single = jobenv.read_environment({**base, "SLURM_NNODES": "1"})
    assert single.rendezvous == ("127.0.0.1", multi.rendezvous[1])
    given = jobenv.read_environment({**base, "MASTER_ADDR": "node9", "MASTER_PORT": "1234"})
    assert given.rendezvous == ("node9", 1234)
    agent_store = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "n1", "MASTER_PORT": "29500",
                   "TORCHELASTIC_USE_AGENT_STORE": "True", "RINGDIST_SECRET": "s", "RINGDIST_BIND": "127.0.0.1"}
    assert jobenv.read_environment(agent_store).rendezvous == ("n1", 29501)  # torchrun's store has 29500
    override = jobenv.read_environment({**base, "MASTER_ADDR": "x", "RINGDIST_RENDEZVOUS": "[::1]:77"})
    assert override.rendezvous == ("::1", 77)
    rank0 = jobenv.read_environment({**base, "SLURM_PROCID": "0", "SLURM_NNODES": "1"})
    assert rank0.hosts_rendezvous
    with pytest.raises(ConfigError, match="Open MPI rank 1: no rendezvous address: set MASTER_ADDR"):
        jobenv.read_environment({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
                                    "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "RINGDIST_SECRET": "s"})
    with pytest.raises(ConfigError, match="rank 4 is not in range for a world of 4"):
        jobenv.read_environment({**base, "SLURM_PROCID": "4"})


def test_first_slurm_host():
    assert jobenv.first_slurm_host("node[07-09,12],gpu1") == "node07"
    assert jobenv.first_slurm_host("a1,b[1-2]") == "a1"
    assert jobenv.first_slurm_host("rack[2-3]-n[04-05]") == "rack2-n04"
    assert jobenv.first_slurm_host("single") == "single"


def test_values_a_user_can_get_wrong_are_config_errors_naming_them():
    from launcher.route import parse_rendezvous_option
    from ringdist.settings import Settings

    torch = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "RINGDIST_BIND": "127.0.0.1"}
    # Digits int() does not take ("²" passes str.isdigit) are refused by name, not a traceback.
    for name in ("MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env = {**torch, "RINGDIST_SECRET": "s", name: "\u00b2"}
        if name == "MASTER_PORT":
            with pytest.raises(ConfigError, match="MASTER_PORT='\u00b2' is not a port number"):
                jobenv.read_environment(env)
        else:
            assert jobenv.read_environment(env).size == 2
            Settings.from_env(env)  # the cores per rank unknown: the default spin, no traceback
    with pytest.raises(ConfigError, match="the port must be a number"):
        parse_rendezvous_option("127.0.0.1:\u00b2")
    for port in ("\u00b2", "\u0663"):  # (int() took the second: an Arabic-Indic 3)
        with pytest.raises(ConfigError, match=f"RINGDIST_RENDEZVOUS: '127.0.0.1:{port}' is not host:port"):
            jobenv.read_environment({"RINGDIST_RANK": "0", "RINGDIST_WORLD_SIZE": "2", "RINGDIST_SECRET": "s",
                                     "RINGDIST_RENDEZVOUS": f"127.0.0.1:{port}"})
    assert jobenv.read_environment({**torch, "RINGDIST_SECRET": "s", "MASTER_PORT": "65535"}).rendezvous[1] == 65535
    # RINGDIST_INSECURE=false is no: without a secret, the error that says how to set one.
    with pytest.raises(ConfigError, match="no job secret"):
        jobenv.read_environment({**torch, "RINGDIST_INSECURE": "false"})
    with pytest.raises(ConfigError, match="RINGDIST_INSECURE='maybe' must be 1 or 0"):
        jobenv.read_environment({**torch, "RINGDIST_INSECURE": "maybe"})
    assert jobenv.read_environment({**torch, "RINGDIST_INSECURE": "yes"}).secret == jobenv.INSECURE_SECRET
    # A secret of bytes that are not UTF-8 (as `head -c16 /dev/urandom` gives) is those bytes.
    assert jobenv.read_environment({**torch, "RINGDIST_SECRET": os.fsdecode(b"\xff\xfe\x01")}).secret == b"\xff\xfe\x01"
    for name in ("RINGDIST_SPIN_US", "RINGDIST_BUFFER_CACHE_MB", "RINGDIST_DIRECT_MAX"):
        with pytest.raises(ConfigError, match=f"{name}='-0.5' must be at least 0"):
            Settings.from_env({name: "-0.5"})
        Settings.from_env({name: "0"})
    assert Settings.from_env({"RINGDIST_VERBOSE": "false"}).verbose is False
    assert Settings.from_env({"RINGDIST_VERBOSE": "True"}).verbose is True
    with pytest.raises(ConfigError, match="RINGDIST_VERBOSE='2' must be 1 or 0"):
        Settings.from_env({"RINGDIST_VERBOSE": "2"})
