"""ringdist-launch's input: bounded, validated hostfiles, per-rank variables, a script that is not there,
and standard files that are closed or go away."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from helpers import HOSTFILES, LAUNCHER, ROOT, SCRIPTS, kill_tree, loopback_aliases, run_launcher

PY = sys.executable
SHOW_ENV = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
            "('RANK', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'RINGDIST_LOCAL_RANK', 'RINGDIST_LOCAL_WORLD_SIZE')}))")


def one_error_line(result, started: float, path: str) -> str:
    """The single `ringdist-launch: error: PATH: ...` line of a refused hostfile, checked."""
    assert time.monotonic() - started < 20, "a bad hostfile must be refused promptly"
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ringdist-launch: error: {path}: "), lines[0]
    return lines[0]


# Written as bytes: each is a file a user (or a mistake) could hand to --hosts.
BAD_HOSTFILES = {
    "nul-in-env-value": (b'{"hosts": [{}], "envs": ["A=x\\u0000y"]}', r"envs\[0\]: A: the value holds a NUL byte"),
    "nul-in-ssh": (b'{"hosts": [{"ssh": "node\\u00001"}]}', r'hosts\[0\]\.ssh: expected a host name, got "node\\u00001"'),
    "deep-nesting": (b"[" * 100_000 + b"]" * 100_000, r"JSON nested more than 16 levels deep"),
    "slots-1e23": (b'[{"slots": 100000000000000000000000}]', r"\[0\]\.slots: at most 4096 ranks per host"),
    "slots-5000": (b'{"hosts": [{}, {"slots": 5000}]}', r"hosts\[1\]\.slots: at most 4096 ranks per host, got 5000"),
    "ranks-in-all": (b'[{"slots": 4096}, {"ips": ["127.0.0.2"]}]', r"4097 ranks; at most 4096 in one job"),
    "too-many-hosts": (b"[" + b",".join([b"{}"] * 5000) + b"]", r"5000 host entries; at most 4096"),
    "huge-integer": (b'[{"slots": ' + b"9" * 5000 + b"}]", r"not valid JSON: a number with too many digits"),
    "long-env": (b'{"hosts": [{}], "envs": ["A=' + b"x" * 70_000 + b'"]}', r"envs\[0\]: A: longer than 65536"),
    "long-ssh": (b'[{"ssh": "' + b"n" * 300 + b'"}]', r"\[0\]\.ssh: longer than 255 characters"),
    "over-1-mib": (b'{"hosts": [{}], "envs": [' + b'"A=1", ' * 200_000 + b'"A=1"]}', r"hostfile larger than 1048576"),
}


@pytest.mark.parametrize("kind", sorted(BAD_HOSTFILES))
def test_bad_hostfile_is_one_line_and_exit_2(tmp_path, kind):
    data, message = BAD_HOSTFILES[kind]
    path = tmp_path / f"{kind}.json"
    path.write_bytes(data)
    started = time.monotonic()
    result = run_launcher(["--hosts", str(path), "--", PY, "-c", "print('ran')"], timeout=30)
    line = one_error_line(result, started, str(path))
    assert re.search(message, line), line


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_hostfile_that_never_ends_is_refused_promptly(tmp_path, kind):
    """/dev/zero would be read for ever, a FIFO nobody writes to would block the open."""
    path = tmp_path / "hosts.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    started = time.monotonic()
    result = run_launcher(["--hosts", str(path), "--", PY, "-c", "print('ran')"], timeout=30)
    line = one_error_line(result, started, str(path))
    assert line.endswith("cannot read hostfile: not a regular file"), line


def test_a_device_named_directly_is_read_as_a_hostfile_and_refused():
    started = time.monotonic()
    result = run_launcher(["--hosts", "/dev/zero", "--", PY, "-c", "print('ran')"], timeout=30)
    line = one_error_line(result, started, "/dev/zero")
    assert line.endswith("cannot read hostfile: not a regular file"), line


def test_too_many_ranks_on_the_command_line():
    result = run_launcher(["-n", "100000000", "--", PY, "-c", "print('ran')"], timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == ("ringdist-launch: error: argument -n/--nprocs: "
                                              "at most 4096 ranks, got '100000000'")
    hosts = run_launcher(["--hosts", "localhost:100000", "--", PY, "-c", "print('ran')"], timeout=30)
    assert hosts.returncode == 2 and hosts.stdout == ""
    assert hosts.stderr == "ringdist-launch: error: --hosts: entry 0: slots: at most 4096 ranks per host, got 100000\n"


def test_every_rank_gets_local_world_size():
    # Two entries for this machine: LOCAL_RANK counts across them, LOCAL_WORLD_SIZE counts them all.
    result = run_launcher(["--hosts", "localhost:2,localhost", "--", PY, "-c", SHOW_ENV], timeout=60)
    assert result.returncode == 0, result.stderr
    seen = {}
    for line in result.stdout.splitlines():
        m = re.fullmatch(r"\[(\d+)\] (\{.*\})", line)
        assert m, line
        seen[int(m.group(1))] = json.loads(m.group(2))
    assert sorted(seen) == [0, 1, 2]
    for rank, env in seen.items():
        assert env == {"RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "3",
                       "RINGDIST_LOCAL_RANK": str(rank), "RINGDIST_LOCAL_WORLD_SIZE": "3"}, env


def test_local_world_size_is_the_launchers_to_set():
    result = run_launcher(["-n", "2", "--env", "LOCAL_WORLD_SIZE=8", "--", PY, "-c", "print('ran')"], timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "ringdist-launch: error: --env: LOCAL_WORLD_SIZE is set by the launcher for each rank"


def test_missing_script_exits_127_naming_it(tmp_path):
    result = run_launcher(["-n", "2", "no_such_script.py", "--flag"], timeout=30)
    assert result.returncode == 127, result.stderr
    assert result.stdout == ""
    assert result.stderr == "ringdist-launch: no_such_script.py: No such file or directory\n"
    in_cwd = run_launcher(["--cwd", str(tmp_path), "train.py"], timeout=30)
    assert in_cwd.returncode == 127, in_cwd.stderr
    assert in_cwd.stderr == f"ringdist-launch: train.py: No such file or directory (in --cwd {tmp_path})\n"
    # The same script there runs: the check looks where the ranks will.
    (tmp_path / "train.py").write_text("print('trained')\n")
    found = run_launcher(["--cwd", str(tmp_path), "train.py"], timeout=60)
    assert found.returncode == 0 and found.stdout == "[0] trained\n", found.stderr


def test_program_that_is_not_executable_exits_126(tmp_path):
    program = tmp_path / "run.sh"
    program.write_text("#!/bin/sh\necho hi\n")
    program.chmod(0o644)
    result = run_launcher(["-n", "2", "--", str(program)], timeout=30)
    assert result.returncode == 126, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot start rank 0 (host localhost): Permission denied: '{program}'" in result.stderr


@pytest.mark.parametrize("name, theirs, ours, shown", [
    ("RINGDIST_LANES", "2", "1", "rank 0: 1, rank 1: 2, rank 2: 1, rank 3: 1, rank 4: 1, rank 5: 1"),
    ("RINGDIST_ALGO", "all_gather:ring", "", "rank 0: [], rank 1: [['all_gather', 'ring']], rank 2: []"),
    ("RINGDIST_DIRECT_MAX", "100000000", "", "rank 0: unset, rank 1: 100000000, rank 2: unset"),
    ("RINGDIST_DIRECTIONS", "2", "1", "rank 0: 1, rank 1: 2, rank 2: 1")])
def test_ranks_with_different_settings_they_must_share_fail_in_init_naming_it(name, theirs, ours, shown):
    # Before anything connects: a ring built with 1 lane on one side and 2 on the other waited 30 s;
    # a forced algorithm that cannot run on one rank alone would leave the others in the call.
    # Every rank says so, the first to leave included in no other's table: each gets its table
    # before any notice that a rank has left.
    res = run_launcher(["-n", "6", str(SCRIPTS / "setting_differs.py"), name, theirs, ours], timeout=30,
                       env={"RINGDIST_CONNECT_TIMEOUT": "60"})
    lines = re.findall(r"^\[(\d)\] ConfigError: (.*)$", res.stdout, re.M)
    assert sorted(r for r, _ in lines) == [str(r) for r in range(6)], res.stdout + res.stderr
    for _, text in lines:
        assert f"{name} differs between ranks ({shown}" in text, text
    assert res.returncode == 3


def test_a_direct_limit_past_64_bits_is_compared_in_init_as_any_other():
    # Every rank's settings go to the rendezvous: 2^64 (what 18446744073709551615 parses to) did
    # not fit msgpack's integers, and init() raised OverflowError.
    res = run_launcher(["-n", "2", str(SCRIPTS / "setting_differs.py"), "RINGDIST_DIRECT_MAX", "18446744073709551615",
                        "18446744073709551615"], timeout=30)
    assert res.returncode == 0 and res.stdout.count("init returned") == 2, res.stdout + res.stderr


def test_local_world_size_counts_the_ranks_local_rank_counts_among():
    # loopback-4.json: four "hosts" on one machine. LOCAL_RANK is 0 on each, so torchrun's
    # LOCAL_WORLD_SIZE is 1 (it was 4: LOCAL_RANK < LOCAL_WORLD_SIZE held, but not RANK =
    # node * LOCAL_WORLD_SIZE + LOCAL_RANK); RINGDIST_LOCAL_WORLD_SIZE still counts the
    # machine's ranks, for the spin default.
    loopback_aliases()
    result = run_launcher(["--hosts", str(HOSTFILES / "loopback-4.json"), "--dry-run", "--", PY, "-c", "pass"],
                          timeout=30)
    assert result.returncode == 0, result.stderr
    for name, value in (("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"), ("RINGDIST_LOCAL_WORLD_SIZE", "4")):
        assert re.findall(rf"(?<![A-Z_]){name}=(\d+)", result.stdout) == [value] * 4, (name, result.stdout)
    # RINGDIST_LOCAL_RANK counts the ranks of this computer, as RINGDIST_LOCAL_WORLD_SIZE does.
    assert re.findall(r"RINGDIST_LOCAL_RANK=(\d+)", result.stdout) == ["0", "1", "2", "3"], result.stdout


def test_a_directory_given_as_script_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "job.py").mkdir()  # no __main__.py: each rank's python would fail
    result = run_launcher(["-n", "2", "job.py"], timeout=30, cwd=tmp_path)
    assert result.returncode == 127 and result.stdout == "", result.stderr
    assert result.stderr == "ringdist-launch: job.py: is a directory without a __main__.py for Python to run\n"
    (tmp_path / "app.py").mkdir()  # one Python can run
    (tmp_path / "app.py" / "__main__.py").write_text("print('app ran')\n")
    ran = run_launcher(["-n", "2", "app.py"], timeout=60, cwd=tmp_path)
    assert ran.returncode == 0 and sorted(ran.stdout.splitlines()) == ["[0] app ran", "[1] app ran"], ran.stderr
    (tmp_path / "tool").mkdir()
    named = run_launcher(["-n", "2", "./tool"], timeout=30, cwd=tmp_path)
    assert named.returncode == 126 and named.stderr == "ringdist-launch: ./tool: is a directory, not a program\n"


def test_a_program_named_without_a_slash_is_looked_up_on_path_and_that_is_said(tmp_path):
    program = tmp_path / "train"
    program.write_text("#!/bin/sh\necho trained\n")
    program.chmod(0o755)
    (tmp_path / "tools").mkdir()
    for args, shown in ((["train"], "to run the file here, write ./train"),
                        (["--", "train"], "to run the file here, write ./train"),
                        (["tools"], "./tools is a directory, not a program")):
        result = run_launcher(["-n", "2", *args], timeout=30, cwd=tmp_path)
        assert result.returncode == 127 and result.stdout == "", result.stderr
        name = args[-1]
        assert result.stderr == (f"ringdist-launch: {name}: not found on PATH (a program named without '/' "
                                 f"is looked up there); {shown}\n")
    ran = run_launcher(["-n", "2", "./train"], timeout=30, cwd=tmp_path)
    assert ran.returncode == 0 and sorted(ran.stdout.splitlines()) == ["[0] trained", "[1] trained"], ran.stderr


def test_an_ipv6_address_with_a_slots_like_tail_must_be_bracketed():
    result = run_launcher(["--hosts", "::1:2", "--dry-run", "--", PY, "-c", "pass"], timeout=30)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == ("ringdist-launch: error: --hosts: entry 0: '::1:2' is ambiguous: write [::1]:2 "
                             "for 2 slots on ::1, or [::1:2] for that address\n")
    slots = run_launcher(["--hosts", "[::1]:2", "--dry-run", "--", PY, "-c", "pass"], timeout=30)
    assert slots.returncode == 0, slots.stderr
    assert slots.stdout.count("on host ::1 (local)") == 2 and "ssh" not in slots.stdout, slots.stdout


@pytest.mark.parametrize("closed", [">&-", "2>&-"])
def test_a_closed_standard_file_is_not_a_crash(closed):
    """`ringdist-launch ... >&-`: Python starts with sys.stdout None, and the launcher's first pipe would take fd 1."""
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    launch = shlex.join([*LAUNCHER, "-n", "2", "--", PY, "-c", code])
    proc = subprocess.Popen(["bash", "-c", f"exec {launch} {closed}"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    if closed != ">&-":
        assert sorted(out.splitlines()) == ["[0] out", "[1] out"], out + err
    if closed != "2>&-":
        assert sorted(err.splitlines()) == ["[0] err", "[1] err"], out + err


def test_output_whose_reader_went_away_ends_the_launcher_quietly():
    """`ringdist-launch --dry-run ... | head -1`: killed by SIGPIPE as other programs are, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        proc = subprocess.Popen([*LAUNCHER, "-n", "64", "--dry-run", "--", PY, "-c", "pass"], stdin=subprocess.DEVNULL,
                                stdout=write_end, stderr=subprocess.PIPE, text=True, start_new_session=True)
    finally:
        os.close(write_end)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    assert err == ""
    assert proc.returncode == -signal.SIGPIPE


def test_a_job_whose_output_reader_went_away_stops_as_sigpipe_stops_a_program():
    # `ringdist-launch -n 2 loop.py | head -1`: the launcher dropped the output and the ranks ran
    # on for ever; a program writing there itself dies of SIGPIPE (torchrun's ranks write there).
    script = ("import time, ringdist as rd\ng = rd.init()\ni = 0\nwhile True:\n"
              "    print(g.rank(), i, flush=True)\n    i += 1\n    time.sleep(0.001)\n")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([*LAUNCHER, "-n", "2", "--", PY, "-c", script], stdin=subprocess.DEVNULL,
                            stdout=write_end, stderr=subprocess.PIPE, text=True, start_new_session=True)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            first = reader.readline()  # as `head -1` does, then it goes
        began = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - began
    finally:
        kill_tree(proc)
    assert first.split()[0] in (b"[0]", b"[1]"), first
    assert proc.returncode == -signal.SIGPIPE, (proc.returncode, err)
    assert "interrupted by SIGPIPE (a reader of its output went away); ranks 0,1 stopped by the launcher" in err, err
    assert took < 30, took


def test_a_host_that_runs_here_with_an_address_this_machine_lacks_is_refused_before_anything_starts(tmp_path):
    # No "ssh": its ranks start on this machine, and each failed to listen on 203.0.113.9 with a
    # traceback of its own. Found by binding to it, which sends nothing.
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"hosts": [{"ips": ["127.0.0.1"]}, {"ips": ["203.0.113.9"], "slots": 2}]}))
    result = run_launcher(["--hosts", str(hosts), "--dry-run", "--", PY, "-c", "pass"], timeout=30)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("ringdist-launch: error: host '203.0.113.9': 203.0.113.9 is not an address of "
                                    "this machine ("), result.stderr
    assert result.stderr.endswith('its ranks start here, as it names no other machine with "ssh": list one of '
                                  'this machine\'s addresses, or add "ssh"\n'), result.stderr


@pytest.mark.parametrize("given,instead", [
    (["-np", "2"], "-np is not an option of ringdist-launch: give -n N"),
    (["--np=2"], "--np is not an option of ringdist-launch: give -n N"),
    (["-hostfile", "hosts"], "-hostfile is not an option of ringdist-launch: give --hosts FILE.json"),
    (["--hostfile", "hosts"], "--hostfile is not an option of ringdist-launch: give --hosts FILE.json"),
    (["--nproc_per_node=2"], "--nproc_per_node is not an option of ringdist-launch: give -n N for ranks on this"),
    (["--nproc-per-node", "2"], "--nproc-per-node is not an option of ringdist-launch: give -n N"),
    (["-x", "OMP_NUM_THREADS"], "-x is not an option of ringdist-launch: give --env NAME=value"),
    (["--backend", "ring"], "--backend is not an option of ringdist-launch: ring is ringdist's only backend"),
])
def test_another_launchers_option_says_what_to_give_instead(given, instead):
    # mpirun's -np 2 was read as -n with the value "p"; -hostfile as -h with "ostfile".
    result = run_launcher([*given, "--", PY, "-c", "print('ran')"], timeout=30)
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"ringdist-launch: error: {instead}"), result.stderr


def test_a_hostfile_in_mpirun_text_form_is_told_hostfiles_are_json(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("node1 slots=2\nnode2 slots=2\n")
    started = time.monotonic()
    result = run_launcher(["--hosts", str(path), "--", PY, "-c", "print('ran')"], timeout=30)
    line = one_error_line(result, started, str(path))
    assert "not valid JSON" in line and 'a hostfile is JSON, MLX\'s format: {"hosts": [{"ssh": "node1"' in line, line


def test_a_bad_setting_in_a_hostfiles_envs_names_the_file_and_entry(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"hosts": [{"slots": 2}], "envs": ["A=1", "RINGDIST_TIMEOUT=abc"]}))
    started = time.monotonic()
    result = run_launcher(["--hosts", str(path), "--", PY, "-c", "print('ran')"], timeout=30)
    line = one_error_line(result, started, str(path))
    assert line == f"ringdist-launch: error: {path}: envs[1]: RINGDIST_TIMEOUT='abc' is not a number", line
    # --env wins over the hostfile, so it is the one named when it sets the variable too.
    result = run_launcher(["--hosts", str(path), "--env", "RINGDIST_TIMEOUT=-1", "--", PY, "-c", "print('ran')"],
                          timeout=30)
    assert result.returncode == 2 and "error: --env: RINGDIST_TIMEOUT='-1' must be" in result.stderr, result.stderr


def test_a_misspelt_ringdist_variable_or_a_bare_name_in_envs_is_warned_of(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"hosts": [{}], "envs": ["OMP_NUM_THREADS", "RINGDIST_SHM_CMAA=0"]}))
    result = run_launcher(["--hosts", str(path), "--env", "RINGDIST_TIMOUT=5", "--", PY, "-c",
                           "import os; print(repr(os.environ['OMP_NUM_THREADS']))"], timeout=30,
                          env={"OMP_NUM_THREADS": "7", "RINGDIST_LANE": "2", "RINGDIST_BENCH_TOOL": "x"})
    assert result.returncode == 0 and result.stdout == "[0] ''\n", result.stdout + result.stderr
    warnings = result.stderr.splitlines()
    assert ("ringdist-launch: warning: --env: RINGDIST_TIMOUT is not a variable ringdist reads "
            "(did you mean RINGDIST_TIMEOUT?)") in warnings, warnings
    assert (f"ringdist-launch: warning: {path}: envs[1]: RINGDIST_SHM_CMAA is not a variable ringdist reads "
            "(did you mean RINGDIST_SHM_CMA?)") in warnings, warnings
    # The launcher's own environment (the ranks inherit it): a near miss of a variable is a
    # misspelling; another tool's RINGDIST_ name is left alone.
    assert ("ringdist-launch: warning: the environment: RINGDIST_LANE is not a variable ringdist reads "
            "(did you mean RINGDIST_LANES?)") in warnings, warnings
    assert not [w for w in warnings if "RINGDIST_BENCH_TOOL" in w], warnings
    assert any(w.startswith(f"ringdist-launch: warning: {path}: envs: 'OMP_NUM_THREADS' has no '=': every rank "
                            "gets OMP_NUM_THREADS set empty") for w in warnings), warnings


def test_every_ringdist_variable_the_code_names_is_one_the_launcher_knows():
    from ringdist.settings import VARIABLES
    from ringdist_launch.plan import LAUNCHER_VARS

    named = set()
    for folder in ("ringdist", "launcher"):
        for path in (ROOT / folder).rglob("*.py"):
            named |= set(re.findall(r"RINGDIST_[A-Z_]*[A-Z]", path.read_text()))
    assert named - VARIABLES - LAUNCHER_VARS == set()


def test_a_remote_host_whose_name_does_not_resolve_is_unreachable(monkeypatch, capsys):
    # Nothing is looked up: the route and name lookups answer as for a name no resolver knows.
    from ringdist_launch import cli, route

    monkeypatch.setattr(route, "source_address", lambda host: None)
    monkeypatch.setattr(route, "datagram_addresses", lambda host: [])
    monkeypatch.setattr(route, "_ssh_config", lambda agent, target: {"hostname": "nosuchhost.invalid"})
    status = cli.main(["--hosts", "nosuchhost.invalid", "--", PY, "-c", "pass"])
    err = capsys.readouterr().err
    assert status == 255, err
    assert err.strip() == ("ringdist-launch: host 'nosuchhost.invalid': cannot resolve 'nosuchhost.invalid' "
                           "(no such host name, or no name service) (--hosts nosuchhost.invalid: no file of that "
                           "name here, so it was taken as a host name; a hostfile is given by its path, or named "
                           "*.json)"), err
    # Behind a jump host, ssh resolves the name there: the address to give is still asked for.
    monkeypatch.setattr(route, "_ssh_config", lambda agent, target: {"hostname": "db7.internal.invalid",
                                                                      "proxyjump": "bastion.example.com"})
    status = cli.main(["--hosts", "inner", "--", PY, "-c", "pass"])
    err = capsys.readouterr().err
    assert status == 2 and "cannot tell which address of this machine host 'inner' can reach" in err, err
    assert "give --rendezvous ADDR[:PORT]" in err, err
