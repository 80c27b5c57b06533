"""Timeouts of any size, `inf` included, and settings refused with an error that names them."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist import deadlines
from ringdist.settings import Settings

from helpers import SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}


@pytest.mark.parametrize("timeout", ["inf", "1e10", "3e6"])
def test_a_long_or_unlimited_timeout_argument_waits_as_long_as_needed(timeout):
    res = run_launcher(["-n", "3", str(SCRIPTS / "long_timeouts.py"), timeout], timeout=90, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] ok" in res.stdout


@pytest.mark.parametrize("variable", ["RINGDIST_TIMEOUT", "RINGDIST_CONNECT_TIMEOUT", "RINGDIST_INIT_TIMEOUT"])
def test_unlimited_timeouts_in_the_environment(variable):
    env = {**FAST, variable: "inf", "RINGDIST_BUFFER_CACHE_MB": "inf", "RINGDIST_SPIN_US": "inf"}
    res = run_launcher(["-n", "3", str(SCRIPTS / "long_timeouts.py"), "default"], timeout=90, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[0] ok" in res.stdout


def test_spinning_never_outlasts_the_timeout():
    """RINGDIST_SPIN_US=1e9 (1000 s of spinning) with a 1 s timeout: the stalled call fails on time."""
    res = run_launcher(["-n", "2", str(SCRIPTS / "stalled_call.py"), "1"], timeout=60,
                       env={**FAST, "RINGDIST_SPIN_US": "1e9"})
    assert res.returncode == 3, res.stdout + res.stderr
    found = re.search(r"\[0\] timed out after ([0-9.]+) s: .*made no progress for 1 s", res.stdout)
    assert found, res.stdout + res.stderr
    assert float(found.group(1)) < 6, found.group(0)  # rank 1 stalls 8 s; spinning 1000 s would outlast it


@pytest.mark.parametrize("name, bad", [
    ("RINGDIST_SOCKET_BUFFERS", "99999999999999999999,1"),
    ("RINGDIST_SOCKET_BUFFERS", "1,4294967296"),
    ("RINGDIST_SOCKET_BUFFERS", "١,2"),  # a digit, but not an ASCII one
    ("RINGDIST_LANES", "inf"),
    ("RINGDIST_DIRECT_MAX", "inf"),
    ("RINGDIST_TIMEOUT", "nan"),
    ("RINGDIST_TIMEOUT", "-inf"),
    ("RINGDIST_SPIN_US", "nan"),
    ("RINGDIST_BUFFER_CACHE_MB", "nan"),
    ("RINGDIST_CONNECT_TIMEOUT", "0"),
])
def test_bad_settings_are_a_config_error_naming_the_variable(name, bad):
    with pytest.raises(rd.ConfigError, match=name):
        Settings.from_env({name: bad})


def test_unlimited_settings_are_accepted():
    s = Settings.from_env({"RINGDIST_TIMEOUT": "inf", "RINGDIST_CONNECT_TIMEOUT": "inf",
                           "RINGDIST_INIT_TIMEOUT": "inf", "RINGDIST_BUFFER_CACHE_MB": "inf",
                           "RINGDIST_SPIN_US": "inf"})
    assert (s.timeout, s.connect_timeout, s.init_timeout, s.buffer_cache_mb, s.spin_us) == (math.inf,) * 5


def test_waits_are_cut_into_slices_the_kernel_accepts():
    assert deadlines.poll_ms(math.inf) == deadlines.MAX_WAIT * 1000
    assert deadlines.poll_ms(1e10) == deadlines.MAX_WAIT * 1000
    assert deadlines.poll_ms(0.0004) == 1 and deadlines.poll_ms(-1) == 0
    assert deadlines.after(math.inf) == math.inf and deadlines.left(math.inf) == math.inf
    assert deadlines.socket_wait(math.inf) is None
    assert deadlines.socket_wait(time.monotonic() + 1e10) == deadlines.MAX_WAIT
    with pytest.raises(TimeoutError):
        deadlines.socket_wait(time.monotonic() - 1)


@pytest.mark.parametrize("args, named", [
    (["--env", "RINGDIST_SOCKET_BUFFERS=99999999999999,1"], "RINGDIST_SOCKET_BUFFERS"),
    (["--env", "RINGDIST_TIMEOUT=soon"], "RINGDIST_TIMEOUT"),
    (["--grace", "3000000"], "--grace"),
    (["--grace", "inf"], "--grace"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
])
def test_the_launcher_refuses_bad_settings_in_one_line(args, named):
    res = run_launcher(["-n", "2", *args, str(SCRIPTS / "exit_code.py"), "-1", "0", "0"], timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert named in lines[-1] and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("args", [["--timeout", "3000000"], ["--timeout", "inf"], ["--grace", "86400"]])
def test_the_launcher_takes_long_limits(args):
    res = run_launcher(["-n", "2", *args, str(SCRIPTS / "exit_code.py"), "-1", "0", "0"], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def _limited(soft: int, hard: int):
    import resource

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return set_limit


def test_a_launcher_without_files_enough_for_its_ranks_says_so_at_once(tmp_path):
    # It once served the rendezvous through "Too many open files" for half a minute, then blamed a rank.
    import subprocess
    import sys
    script = tmp_path / "job.py"
    script.write_text("import ringdist as rd\nrd.init()\n")
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "ringdist_launch", "-n", "32", str(script)], capture_output=True,
                         text=True, timeout=60, preexec_fn=_limited(60, 60))
    assert time.monotonic() - started < 20
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"ringdist-launch: error: 32 ranks need about \d+ open files in the launcher .* and it may "
                     r"open 60 \(`ulimit -n`", res.stderr), res.stderr


def test_ranks_raise_their_soft_limit_on_open_files_as_far_as_the_hard_one(tmp_path):
    # 64 ranks hold about 130 files a group: a soft limit of 1024 runs out at the eighth group.
    import subprocess
    import sys
    script = tmp_path / "job.py"
    script.write_text("import resource\nimport ringdist as rd\nrd.init()\n"
                      "print('limit', *resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    res = subprocess.run([sys.executable, "-m", "ringdist_launch", "-n", "2", str(script)], capture_output=True,
                         text=True, timeout=60, preexec_fn=_limited(200, 3000))
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(re.findall(r"^\[(\d)\] limit (\d+) (\d+)$", res.stdout, re.M)) == [("0", "3000", "3000"),
                                                                                      ("1", "3000", "3000")], res.stdout


def test_a_wait_for_a_connection_says_when_this_rank_could_not_accept_for_want_of_files():
    from ringdist.endpoint import Endpoint, InboxKey
    from ringdist.errors import RingTimeoutError
    ep = Endpoint(b"secret", ["127.0.0.1"], connect_timeout=5, label="rank 3")
    try:
        ep._acceptor.out_of_fds = (time.monotonic(), "Too many open files")
        with pytest.raises(RingTimeoutError, match=r"rank 3: waiting for rank 1: no connection arrived in time; this "
                                                   r"rank could not accept connections: Too many open files \(out of "
                                                   r"file descriptors: (\d+ open, )?limit \d+; raise `ulimit -n`\)"):
            ep.take(InboxKey("world", 1, "ring", 0), time.monotonic() + 0.2, "waiting for rank 1")
    finally:
        ep.close()
