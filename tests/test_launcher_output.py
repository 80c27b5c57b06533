"""ringdist-launch's output: a stdout nobody reads never holds up the job, memory stays bounded, \\r passes through."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import pytest

from helpers import LAUNCHER, descendants, kill_tree, wait_until_gone

PY = sys.executable
PIPE_FULL = 64 << 10  # Linux's default pipe capacity

# Writes numbered lines to stdout until the file argv[1] exists (if given), then "done".
CHATTY = """
import os, sys
stop = sys.argv[1] if len(sys.argv) > 1 else None
i = 0
while not (stop and i % 1000 == 0 and os.path.exists(stop)):
    sys.stdout.write(f"line {i} " + "x" * 200 + "\\n")
    i += 1
print("done")
"""
NOT_READ = re.compile(r"^ringdist-launch: (\d+) lines of rank output dropped \(stdout not being read\)$", re.M)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe and /proc checks are Linux's")


class Launch:
    """ringdist-launch with its stdout on a pipe the test reads only when it wants, stderr in a file."""

    def __init__(self, args: list[str]) -> None:
        self.read_end, write_end = os.pipe()
        self.err = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*LAUNCHER, *args], stdin=subprocess.DEVNULL, stdout=write_end,
                                     stderr=self.err, start_new_session=True)
        os.close(write_end)
        self.ranks: list[int] = []

    def wait_until_stdout_is_full(self, timeout: float = 30) -> None:
        """Until the pipe holds all it will take (unchanged for a while): the launcher's writes now block."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            assert time.monotonic() < deadline, "stdout never filled up"
            assert self.proc.poll() is None, self.stderr()
            pending = _pending(self.read_end)
            if pending != last:
                last, since = pending, time.monotonic()
            elif pending >= PIPE_FULL // 2 and time.monotonic() - since > 0.3:
                break
            time.sleep(0.05)
        self.ranks = descendants(self.proc.pid)

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """The launcher's exit status (None if still running after `timeout` s) and when it exited."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic()

    def read(self, deadline: float) -> bytes:
        """What stdout has now (b"" at its end), waiting until `deadline` at most."""
        ready, _, _ = select.select([self.read_end], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "stdout neither had output nor ended in time"
        return os.read(self.read_end, 1 << 20)

    def read_all(self, timeout: float = 30) -> bytes:
        chunks, deadline = [], time.monotonic() + timeout
        while chunk := self.read(deadline):
            chunks.append(chunk)
        return b"".join(chunks)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def close(self) -> None:
        kill_tree(self.proc)
        os.close(self.read_end)
        self.err.close()
        assert wait_until_gone(self.ranks) == [], "ranks left behind"


def _pending(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def test_timeout_acts_on_time_while_stdout_is_not_read():
    launch = Launch(["--timeout", "5", "--", PY, "-c", CHATTY])
    try:
        launch.wait_until_stdout_is_full()
        code, ended = launch.wait(timeout=40)
        assert code == 124, launch.stderr()
        assert ended - launch.started < 15, f"--timeout 5 took {ended - launch.started:.1f}s"
        stderr = launch.stderr()
        assert "job exceeded --timeout 5s; rank 0 stopped by the launcher" in stderr
        dropped = NOT_READ.findall(stderr)
        assert dropped and int(dropped[-1]) > 0, stderr
    finally:
        launch.close()


def test_sigterm_acts_at_once_while_stdout_is_not_read():
    launch = Launch(["-n", "2", "--", PY, "-c", CHATTY])
    try:
        launch.wait_until_stdout_is_full()
        time.sleep(1.5)  # the launcher's queue fills up and its writer is stuck
        signalled = time.monotonic()
        launch.proc.send_signal(signal.SIGTERM)
        code, ended = launch.wait(timeout=40)
        assert code == -signal.SIGTERM, launch.stderr()
        assert ended - signalled < 10, f"SIGTERM took {ended - signalled:.1f}s"
        assert "interrupted by SIGTERM; stopping ranks 0,1" in launch.stderr()
    finally:
        launch.close()


FAIL_LATER = """
import os, sys, time
if os.environ["RINGDIST_RANK"] == "1":
    time.sleep(3)
    sys.exit(3)
while True:
    sys.stdout.write("x" * 200 + "\\n")
"""


def test_first_failure_acts_on_time_while_stdout_is_not_read():
    launch = Launch(["-n", "2", "--", PY, "-c", FAIL_LATER])
    try:
        launch.wait_until_stdout_is_full()
        code, ended = launch.wait(timeout=40)
        assert code == 3, launch.stderr()
        assert ended - launch.started < 20, f"the failure took {ended - launch.started:.1f}s to end the job"
        assert re.search(r"rank 1 \(host localhost, pid \d+\) exited with code 3 first; rank 0 stopped by the launcher",
                         launch.stderr())
    finally:
        launch.close()


def test_output_resumes_with_a_count_of_the_lines_dropped(tmp_path):
    stop = tmp_path / "stop"
    launch = Launch(["--", PY, "-c", CHATTY, str(stop)])
    try:
        launch.wait_until_stdout_is_full()
        time.sleep(5)  # stalled for longer than the launcher waits for a writer to move (2 s)
        # Read again, and tell the rank to finish only once the launcher is writing again: were
        # "done" printed before the launcher saw its stdout move, it would rightly be dropped too.
        chunks, deadline = [], time.monotonic() + 30
        while sum(map(len, chunks)) < 4 << 20:  # more than the pipe and the launcher's queue hold
            chunk = launch.read(deadline)
            assert chunk, "the job ended before the rank was told to"
            chunks.append(chunk)
        stop.touch()
        out = b"".join(chunks) + launch.read_all()
        code, _ = launch.wait(timeout=30)
        assert code == 1, launch.stderr()  # the rank exited 0, but not all of its output came out
        lines = out.decode().splitlines()
        assert lines[-1] == "[0] done"
        numbers = [int(m.group(1)) for m in (re.fullmatch(r"\[0\] line (\d+) x{200}", s) for s in lines[:-1]) if m]
        assert len(numbers) == len(lines) - 1, "a mangled line"
        assert numbers == sorted(numbers) and numbers[0] == 0
        missing = numbers[-1] + 1 - len(numbers)
        assert missing > 0, "nothing was dropped: the test did not stall the reader"
        dropped = [int(n) for n in NOT_READ.findall(launch.stderr())]
        assert sum(dropped) == missing, launch.stderr()  # every line is written or counted
    finally:
        launch.close()


BIG_LINE = """
import os
block = b"y" * (8 << 20)
for _ in range(50):  # 400 MiB without a newline
    os.write(1, block)
os.write(1, b"\\n")
"""


def test_memory_stays_bounded_with_a_400_mib_line():
    proc = subprocess.Popen([*LAUNCHER, "--", PY, "-c", BIG_LINE], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    peak = 0
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                break
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            peak = max(peak, int(m.group(1)) if m else 0)
            time.sleep(0.02)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        kill_tree(proc)
        proc.stderr.close()
    assert 0 < peak < 200 * 1024, f"launcher peak RSS {peak // 1024} MiB while copying a 400 MiB line"


def test_a_long_line_comes_out_in_marked_pieces():
    size = 200 * 1024
    code = f"import sys; sys.stdout.write('z' * {size} + '\\n'); sys.stdout.write('tail')"
    proc = subprocess.run([*LAUNCHER, "--", PY, "-c", code], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split(b"\n")
    assert lines[-1] == b"" and lines[-2] == b"[0] tail"
    pieces = lines[:-2]
    assert len(pieces) == 4  # 64 KiB, 64 KiB, 64 KiB, 8 KiB
    assert all(p.startswith(b"[0] ") for p in pieces)
    assert all(p.endswith(b" [line continues]") and len(p) == len(b"[0] ") + 65536 + 17 for p in pieces[:-1])
    assert b"".join(p[4:].removesuffix(b" [line continues]") for p in pieces) == b"z" * size


PROGRESS = """
import os, sys, time
sys.stdout.write("step 1\\r")
sys.stdout.flush()
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[1]):  # the launcher passed the update on: go on
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.02)
sys.stdout.write("step 2\\r\\n")
"""


def test_carriage_return_updates_pass_through_before_the_line_ends(tmp_path):
    seen = tmp_path / "seen"
    launch = Launch(["--", PY, "-c", PROGRESS, str(seen)])
    try:
        got = b""
        deadline = time.monotonic() + 20
        while b"[0] step 1\r" not in got:
            chunk = launch.read(deadline)
            assert chunk, f"stdout ended first: {got!r}"
            got += chunk
        seen.touch()
        got += launch.read_all()
        code, _ = launch.wait(timeout=30)
        assert code == 0, launch.stderr()
        assert got == b"[0] step 1\r[0] step 2\r\n"
    finally:
        launch.close()


def test_a_remote_ranks_output_keeps_its_pieces_and_exit_report(tmp_path):
    """Through an rsh agent (here one that runs the command on this machine) the keeper's reports share stdout."""
    agent = tmp_path / "agent.sh"
    agent.write_text('#!/bin/sh\nshift\nexec "$@"\n')  # drop the host name, run the rest here
    agent.chmod(0o755)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('{"hosts": [{"ssh": "rdtest-elsewhere", "ips": ["127.0.0.1"]}]}')
    code = "import sys; sys.stdout.write('a\\rb\\r' + 'q' * 70000 + '\\nlast, unfinished'); sys.exit(3)"
    proc = subprocess.run([*LAUNCHER, "--rsh-agent", str(agent), "--hosts", str(hostfile), "--", PY, "-c", code],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60, start_new_session=True)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == (b"[0] a\r[0] b\r[0] " + b"q" * 65536 + b" [line continues]\n[0] " + b"q" * 4464
                           + b"\n[0] last, unfinished\n")
    assert b"rank 0 (host rdtest-elsewhere, pid" in proc.stderr and b"exited with code 3" in proc.stderr


MANY_LINES = "for i in range(80000):\n    print(f'line {i} ' + 'x' * 50)\n"


def test_at_exit_every_line_is_written_or_counted_once():
    # stdout is never read while the job runs: the launcher gives up on it at exit and counts what
    # it did not write. The write under way when it gave up counted whole, though part of it was
    # out (a blocked write of 16 KiB to a pipe may have put some of it in), and the last line in
    # the pipe could be cut short: writes to a pipe now end at a line's end, each taken whole.
    launch = Launch(["--", PY, "-c", MANY_LINES])
    try:
        code, _ = launch.wait(timeout=60)
        assert code == 1, launch.stderr()  # lines were lost: not a success
        lines = launch.read_all().decode().splitlines()
        whole = [line for line in lines if re.fullmatch(r"\[0\] line \d+ x{50}", line)]
        assert len(lines) == len(whole), lines[-3:]
        dropped = [int(n) for n in NOT_READ.findall(launch.stderr())]
        assert dropped and len(whole) + sum(dropped) == 80000, (len(whole), dropped)
    finally:
        launch.close()


FAIL_AFTER_OUTPUT = """
import os, sys, time
if os.environ["RINGDIST_RANK"] == "1":
    line = b"x" * 99 + b"\\n"
    for _ in range(50):
        sys.stdout.buffer.write(line * 1000)  # 5 MB in all
    sys.stdout.flush()
    sys.exit(3)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_slow_reader_of_both_outputs_still_gets_the_launchers_own_lines():
    # stdout and stderr into one pipe read slowly (4 KiB every 20 ms): the output that cannot be
    # written by the end is dropped, and said so. The launcher's own lines (the failure, the
    # count) went with it: waiting for the rank output had used up the time left for them, and
    # giving up on it dropped them too. A piece already in a blocked write went out after it
    # was counted as dropped.
    proc = subprocess.Popen([*LAUNCHER, "-n", "2", "--", PY, "-c", FAIL_AFTER_OUTPUT], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        chunks = []
        while chunk := proc.stdout.read1(4096):
            chunks.append(chunk)
            time.sleep(0.02)
        assert proc.wait(timeout=30) == 3
        text = b"".join(chunks).decode()
        assert "rank 1 (host localhost" in text and "exited with code 3 first" in text, text[-2000:]
        written = len(re.findall(r"^\[1\] x{99}$", text, re.M))
        dropped = [int(n) for n in re.findall(r"^ringdist-launch: (\d+) lines of rank output dropped", text, re.M)]
        assert dropped and written + sum(dropped) == 50000, (written, dropped)
    finally:
        kill_tree(proc)


def test_output_that_cannot_be_written_is_said_and_the_launcher_does_not_exit_0():
    # `ringdist-launch ... > results.txt` on a full disk said so on stderr and exited 0.
    with open("/dev/full", "wb") as full:
        res = subprocess.run([*LAUNCHER, "-n", "2", "--", PY, "-c", "print('result')"], stdin=subprocess.DEVNULL,
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, start_new_session=True)
    assert res.returncode == 1, res.stderr
    assert "ringdist-launch: cannot write to stdout: No space left on device; dropping its output" in res.stderr


def test_no_prefix_passes_a_rank_s_bytes_unchanged(tmp_path):
    # A long line was cut every 64 KiB with " [line continues]" and a last line got a newline:
    # `-n 1 --no-prefix script.py > result.json` was not the script's output.
    data = os.urandom(1 << 20) + b"x" * 300_000 + b"\nend without a newline"
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    for args, expected in ((["--no-prefix"], data), ([], None)):
        res = subprocess.run([*LAUNCHER, "-n", "1", *args, "--", "cat", str(source)], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=60, start_new_session=True)
        assert res.returncode == 0, res.stderr
        if expected is not None:
            assert res.stdout == expected
        else:  # with the prefix, lines stay whole and marked, as before
            assert b" [line continues]\n[0] " in res.stdout and res.stdout.endswith(b"[0] end without a newline\n")


def test_a_reader_gone_from_the_launcher_s_own_lines_alone_leaves_the_job_and_its_status_alone():
    # Only rank output that cannot be written stops the job: stderr closed, a rank that exits 3
    # after printing on stdout ends the launcher with 3 (its "rank 0 exited" line found no reader).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run([*LAUNCHER, "-n", "2", "--", PY, "-c", "import sys; print('hi'); sys.exit(3)"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=write_end, timeout=60,
                             start_new_session=True)
    finally:
        os.close(write_end)
    assert res.returncode == 3 and b"] hi" in res.stdout, res  # (the first to exit 3 may stop the other first)


def test_rank_output_the_reader_left_before_the_end_ends_the_launcher_by_sigpipe_as_seq_head_does():
    # The ranks had ended and the launcher was writing their last output when `head` left: it
    # exited 0 though most of the output was never written (`seq 100000 | head -1` dies of SIGPIPE).
    code = "import sys\nfor i in range(16000): print('x' * 50, i)\n"  # 1 MB: the launcher's queue holds it
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([*LAUNCHER, "-n", "1", "--", PY, "-c", code], stdin=subprocess.DEVNULL,
                            stdout=write_end, stderr=subprocess.PIPE, start_new_session=True)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and _pending(read_end) < (32 << 10) and time.monotonic() < deadline:
            time.sleep(0.05)  # the pipe full: the launcher's writer waits on it
        time.sleep(1.0)  # the rank has ended meanwhile, its output queued in the launcher
        os.close(read_end)  # the reader goes without reading
        _, err = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    assert proc.returncode == -signal.SIGPIPE, (proc.returncode, err)


def test_verbose_lines_first_in_a_write_that_fails_still_count_the_rank_output_lost():
    with open("/dev/full", "wb") as full:
        res = subprocess.run([*LAUNCHER, "-v", "-n", "1", "--", PY, "-c", "print('result')"],
                             stdin=subprocess.DEVNULL, stdout=full, stderr=full, timeout=60, start_new_session=True)
    assert res.returncode == 1


@pytest.mark.parametrize("prefix", [True, False])
def test_a_remote_rank_s_unfinished_last_line_is_ended_only_with_the_prefix(prefix, tmp_path):
    # The keeper's exit report follows the rank's last bytes: the line it cut short got a newline
    # even with --no-prefix, which passes a rank's bytes unchanged.
    from test_launcher_signals import remote_hosts

    res = subprocess.run([*LAUNCHER, *remote_hosts(tmp_path, 1), *([] if prefix else ["--no-prefix"]), "--", PY,
                          "-c", "import sys; sys.stdout.write('a\\nunfinished'); sys.exit(3)"],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60, start_new_session=True)
    assert res.returncode == 3, res.stderr  # the keeper's report still read
    assert res.stdout == (b"[0] a\n[0] unfinished\n" if prefix else b"a\nunfinished"), res.stdout
