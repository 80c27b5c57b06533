"""Starting rank processes and signalling them: the mechanics, no decisions.

A spawner per kind of host returns a `RankProcess`, the launcher's handle on a
rank: its output pipes, how to signal it, how to wait for it.

- `LocalSpawner`: the rank is a child of the launcher, in its own session (so
  the launcher can signal its whole process group, and a terminal's Ctrl-C
  reaches only the launcher), stdin closed, stdout/stderr piped.
- `RemoteSpawner`: the rank runs on another host, started through ssh or any
  `--rsh-agent` command (`ssh -p 2222`, `ip netns exec`, ...). The agent runs
  `remote.py` there (the keeper), which reads the job secret from the agent's
  stdin, starts the rank in its own session, and from then on takes TERM/KILL
  (and USR1/USR2) orders on stdin, signalling the rank itself; when stdin ends
  (the launcher or its connection died) it stops the rank on its own.
"""

from __future__ import annotations

import collections
import ctypes
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from .guard import kill_sessions, signal_sessions
from .hostfile import Placement

_PR_SET_PDEATHSIG = 1
_PF_EXITING = 0x4  # a task's flag in /proc/PID/stat while it exits (include/linux/sched.h)
DEFAULT_AGENT = ("ssh", "-o", "BatchMode=yes")
KEEPER_SOURCE = (Path(__file__).with_name("remote.py")).read_text(encoding="utf-8")
GUARD_FILE = str(Path(__file__).with_name("guard.py"))
MARKER = b"\x00RINGDIST-REMOTE "  # as in remote.py
UNREACHABLE = 255  # the exit status when a host cannot be reached, as ssh's own
# How long to wait, after the agent exited, for its last output line (the keeper's exit report).
EXIT_REPORT_WAIT = 5.0


class RankProcess:
    """A rank started on this machine: a child process in its own session."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    @property
    def stdout(self):  # noqa: ANN201 - a binary pipe
        return self.proc.stdout

    @property
    def stderr(self):  # noqa: ANN201
        return self.proc.stderr

    def stdout_tap(self, line: bytes | None) -> bytes | None:
        """Sees every stdout line (None at end of file); returns what to print (None: nothing)."""
        return line

    def stderr_tap(self, line: bytes | None) -> bytes | None:
        return line

    def wait_started(self) -> tuple[str, int, bool] | None:
        """Block until the rank is known to run: None, or why it never started, the exit status,
        and whether a signal ended what was starting it (perhaps the launcher's own)."""
        return None

    def signal(self, sig: int) -> None:
        """Send `sig` to the rank's whole process group (the rest of its session: `stop_sessions`)."""
        signal_group(self.proc, sig)

    def wait_exit(self) -> int:
        """Block until the rank exits; its returncode (-N for signal N), the process left unreaped
        on Linux. Elsewhere it is reaped here (no `waitid` that leaves it), and its process group's
        id may be another's once the group is empty: what the rank left in its group is killed now,
        while that id can only be the rank's (on Linux, at `finish`)."""
        code = wait_exit(self.proc)
        if not sys.platform.startswith("linux"):
            signal_group(self.proc, signal.SIGKILL)
        return code

    def exiting(self) -> bool:
        """Whether the rank's process is dying or dead (its exit perhaps not seen yet); False where unknown."""
        return process_exiting(self.pid)

    @property
    def session(self) -> int | None:
        """The session the rank leads on this machine, while its id is still its own (the rank not
        reaped): what it started in process groups of its own is in it too (`stop_sessions`)."""
        return self.pid if self.proc.returncode is None else None

    @property
    def guarded_group(self) -> int | None:
        """The process group the job's guard kills if the launcher dies, its session too: the rank's own."""
        return self.pid

    def finish(self, timeout: float) -> None:
        """Kill whatever is left in the rank's process group and reap it (at the end of the job, after
        `stop_sessions`)."""
        if self.proc.returncode is None:  # not reaped: the group's id is still the rank's
            signal_group(self.proc, signal.SIGKILL)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


class Spawner(Protocol):
    """Starts one rank; `env` holds only the variables to add to the rank's environment."""

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> RankProcess: ...


class LocalSpawner:
    """Starts ranks as children of the launcher on this machine."""

    def __init__(self) -> None:
        self._preexec = _die_with_parent()

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> RankProcess:
        """Start `argv` with the launcher's environment plus `env`, in a new session."""
        return RankProcess(self.popen(list(argv), {**os.environ, **env}, cwd, stdin=subprocess.DEVNULL))

    def popen(self, argv: list[str], env: Mapping[str, str] | None, cwd: str | None,
              stdin: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=self._preexec,
        )


class RemoteSpawner:
    """Starts ranks on other hosts through an rsh agent (default: ssh in batch mode).

    An agent whose program name ends in `ssh` or `rsh` gets the remote command as
    one shell string, as ssh expects; any other agent (`ip netns exec`, `docker
    exec`, ...) gets `sh -c COMMAND`, as a command that execs its arguments expects.
    """

    def __init__(self, local: LocalSpawner, *, agent: Sequence[str] | None, python: str,
                 grace: float, connect_timeout: float) -> None:
        self.local = local
        limit = ["-o", f"ConnectTimeout={math.ceil(connect_timeout)}"] if math.isfinite(connect_timeout) else []
        self.agent = list(agent) if agent else [*DEFAULT_AGENT, *limit]  # (`inf`: ssh's own, the system's)
        self.takes_a_string = is_ssh_like(self.agent)
        self.python = python
        self.grace = grace
        self.connect_timeout = connect_timeout

    @property
    def name(self) -> str:
        """The agent as named in messages: `ssh`, `ip netns exec`."""
        return " ".join(self.agent[:3] if not self.takes_a_string else self.agent[:1])

    def command(self, host: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
                keeper: str = KEEPER_SOURCE) -> list[str]:
        """The local command line that runs `argv` on `host`; the secret is not in it (it goes on stdin)."""
        words = ["env", *(f"{k}={v}" for k, v in env.items() if k != "RINGDIST_SECRET"),
                 self.python, "-c", keeper, f"{self.grace:g}", *argv]
        line = f"cd {shlex.quote(cwd)} && exec {shlex.join(words)}"
        if self.takes_a_string:
            return [*self.agent, host, line]
        return [*self.agent, host, "sh", "-c", line]

    def for_host(self, host: str) -> "RemoteHost":
        return RemoteHost(self, host)


class RemoteHost:
    """A `Spawner` for one remote host."""

    def __init__(self, spawner: RemoteSpawner, host: str) -> None:
        self.spawner = spawner
        self.host = host

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> RankProcess:
        s = self.spawner
        command = s.command(self.host, argv, env, cwd or os.getcwd())
        proc = s.local.popen(command, None, None, stdin=subprocess.PIPE)
        rank = RemoteRankProcess(proc, self.host, s.name, s.connect_timeout)
        rank.order(env["RINGDIST_SECRET"])
        return rank


class RemoteRankProcess(RankProcess):
    """The local end (the agent's process) of a rank kept by remote.py on another host."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, agent: str, connect_timeout: float) -> None:
        super().__init__(proc)
        self.host = host
        self.agent = agent
        self.connect_timeout = connect_timeout
        self.remote_pid: int | None = None
        self.remote_exit: int | None = None
        self._started = False
        self._answered = threading.Event()  # ready, or stdout ended first
        self._exit_known = threading.Event()  # the exit report, or stdout ended first
        self._stderr_done = threading.Event()
        self._early_errors: collections.deque[str] = collections.deque(maxlen=3)
        self._stdin_lock = threading.Lock()

    def order(self, word: str, close: bool = False) -> None:
        """Write one line to the keeper (the secret, TERM, KILL); a closed pipe is fine."""
        with self._stdin_lock:
            stdin = self.proc.stdin
            if stdin is None or stdin.closed:
                return
            try:
                stdin.write(word.encode() + b"\n")
                stdin.flush()
                if close:
                    stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass

    def stdout_tap(self, line: bytes | None) -> bytes | None:
        if line is None:
            self._answered.set()
            self._exit_known.set()
            return None
        at = line.find(MARKER)
        if at < 0:
            return line
        report = line[at + len(MARKER):].decode("ascii", "replace").split()
        if report == ["ready"]:
            self._started = True
            self._answered.set()
        elif len(report) == 2 and report[0] == "pid" and report[1].isdigit():
            self.remote_pid = int(report[1])
        elif len(report) == 2 and report[0] == "exit" and re.fullmatch(r"-?\d+", report[1]):
            self.remote_exit = int(report[1])
            self._exit_known.set()
        else:
            return line
        return line[:at] if at else None  # a rank's unfinished last line, then the report (`output` ends it)

    def stderr_tap(self, line: bytes | None) -> bytes | None:
        if line is None:
            self._stderr_done.set()
        elif not self._started:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._early_errors.append(text)
        return line

    def wait_started(self) -> tuple[str, int, bool] | None:
        if not self._answered.wait(self.connect_timeout if math.isfinite(self.connect_timeout) else None):
            signal_group(self.proc, signal.SIGKILL)
            return (f"no answer through {self.agent} within {self.connect_timeout:g} s "
                    f"(RINGDIST_CONNECT_TIMEOUT sets the limit)", UNREACHABLE, False)
        if self._started:
            return None
        code = wait_exit(self.proc)
        self._stderr_done.wait(2.0)
        how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
        detail = " | ".join(self._early_errors)
        reason = f"{self.agent} {how} before the rank started" + (f": {detail}" if detail else "")
        return reason, code if code > 0 else UNREACHABLE, code < 0

    def signal(self, sig: int) -> None:
        if sig not in (signal.SIGTERM, signal.SIGKILL):  # passed on (SIGUSR1, SIGUSR2): a rank not started misses it
            if self._started or sig in (signal.SIGSTOP, signal.SIGCONT):  # (the keeper reads orders once it
                self.order(signal.Signals(sig).name[3:])  # has started the rank: a Ctrl-Z reaches it then)
            return
        if sig == signal.SIGKILL:
            self.order("KILL", close=True)
        else:
            self.order("TERM")
        if not self._started:  # still connecting: the keeper, if it ever starts, sees stdin end
            signal_group(self.proc, sig)

    def exiting(self) -> bool:
        return False  # the rank's process is on another host

    @property
    def session(self) -> None:
        """None: the keeper on the rank's host stops the rank's session."""
        return None

    @property
    def guarded_group(self) -> None:
        """None: the keeper on the rank's host kills its process group when its stdin ends. (Killing
        the agent would not reach the rank's host, and could kill a keeper the agent execs first.)"""
        return None

    def wait_exit(self) -> int:
        code = wait_exit(self.proc)
        self._exit_known.wait(EXIT_REPORT_WAIT)
        return code if self.remote_exit is None else self.remote_exit

    def finish(self, timeout: float) -> None:
        if self.proc.poll() is None:
            self.order("KILL", close=True)
            try:
                self.proc.wait(min(timeout, self.connect_timeout) / 2)
            except subprocess.TimeoutExpired:
                pass
        super().finish(timeout / 2)


class Guard:
    """The job's guard process (guard.py): if the launcher dies, it kills every rank's process group and session."""

    def __init__(self) -> None:
        # Isolated (-I): its directory, this package's, is not on its path; `ps` shows the file, not its source.
        self.proc = subprocess.Popen([sys.executable, "-I", GUARD_FILE], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def watch(self, pgid: int) -> None:
        """Add a process group (and the session of the same id) to kill should the launcher die."""
        self._say(f"+{pgid}")

    def remove(self, path: str) -> None:
        """Add a directory to remove (after the kills) should the launcher die."""
        self._say(f"={path}")

    def release(self) -> None:
        """The job is cleaned up: let the guard exit without killing anything, and reap it."""
        self._say("done")
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _say(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (OSError, ValueError):  # the guard is gone (someone killed it): the job goes on
            pass


def is_ssh_like(agent: Sequence[str]) -> bool:
    """Whether the agent takes the remote command as one string (ssh, rsh, autossh, ...)."""
    return bool(agent) and re.search(r"(ssh|rsh)$", os.path.basename(agent[0])) is not None


def spawner_for(placement: Placement, local: LocalSpawner, remote: Callable[[], RemoteSpawner]) -> Spawner:
    """The spawner for a rank at `placement`: local, or through the agent to `placement.ssh`."""
    if placement.is_local:
        return local
    assert placement.ssh is not None
    return remote().for_host(placement.ssh)


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process's whole process group; a group already gone is fine."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        # PermissionError: macOS reports EPERM for a group whose only member is a zombie.
        pass


def stop_sessions(ranks: Sequence[RankProcess], sig: int) -> None:
    """Linux: send `sig` (SIGTERM, SIGKILL) to the rest of the sessions these ranks lead on this
    machine, in one pass over /proc: what a rank started in a process group of its own is still
    the job's. Only a process that started a session of its own has left the job. Ranks already
    reaped are left out (their ids may be another's now). Elsewhere: nothing."""
    sessions = {r.session for r in ranks} - {None}
    if sig == signal.SIGKILL:
        kill_sessions(sessions)
    else:
        signal_sessions(sessions, sig)


def signal_every(ranks: Sequence[RankProcess], sig: int) -> None:
    """Send `sig` (SIGSTOP, SIGCONT: repeats are harmless) to every process of these ranks: each
    one's process group (a remote rank's by its keeper), then the rest of its session (Linux)."""
    for r in ranks:
        r.signal(sig)
    signal_sessions({r.session for r in ranks} - {None}, sig)


def signal_once(ranks: Sequence[RankProcess], sig: int) -> None:
    """Send `sig` (SIGTERM, SIGINT) once to every process of these ranks' sessions (on Linux;
    elsewhere its process group): a second one, as its group's and its session's signals
    together would be, would interrupt the handling of the first (a handler of the program's,
    its exit handlers). A remote rank's keeper stops it as ever (SIGTERM)."""
    local = [r for r in ranks if r.session is not None] if sys.platform.startswith("linux") else []
    for r in local:  # the ranks' own process groups first, together (a pass over /proc takes milliseconds,
        r.signal(sig)  # and a rank interrupted early would fail its peers' calls before their own came); a
        # group's signal misses no process forked meanwhile, and reaches a rank's program under a wrapper
    signal_sessions({r.session for r in local}, sig, skip_groups={r.session for r in local})
    for r in ranks:
        if r not in local:
            r.signal(signal.SIGTERM if isinstance(r, RemoteRankProcess) else sig)


def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Block until the process exits; return its returncode (-N for signal N).

    On Linux the process is left unreaped (a zombie) so that its pid, and thus
    its process group id, cannot be reused until the launcher reaps it with
    `proc.wait()` - signalling the group later can never hit an unrelated process.
    """
    if sys.platform.startswith("linux"):
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    return proc.wait()


def process_exiting(pid: int) -> bool:
    """Linux: whether process `pid` has begun to exit (PF_EXITING) or is a zombie.

    A process killed with SIGKILL closes its sockets in the middle of its exit, so its
    peers can fail on the lost connections, and even finish exiting, before its own exit
    is reported; from the moment they could notice, this says it is on its way out.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)
    except (OSError, IndexError, ValueError):
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the rank if the launcher dies (Linux only).

    The death signal follows the thread that forked the child, so ranks must be
    started from a thread that lives as long as the launcher (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    launcher_pid = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os._exit(1)

    return set_parent_death_signal
