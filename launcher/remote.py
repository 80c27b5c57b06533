"""The rank's keeper on a remote host: runs there as `python -c <this file> GRACE argv...`.

The launcher starts it through ssh (or any --rsh-agent) and talks to it over the
agent's stdin, so nothing secret is ever on a command line:
  line 1      the job secret; the keeper puts it in RINGDIST_SECRET for the rank
  TERM, KILL  stop the rank: signal its whole process group, and (Linux) the rest of its
              session, what it started in process groups of its own
  USR1, USR2  pass the signal on to the rank's process group (the launcher got it)
  STOP, CONT  suspend or continue the rank (Ctrl-Z, then fg): its process group and the rest of
              its session, as TERM
  end of file the launcher (or its ssh connection) is gone: SIGKILL the group at
              once, as the kernel and the job's guard do for local ranks
The rank runs in its own session with stdin closed and this process's stdout and
stderr, so its output streams back through the agent unchanged. On stdout the
keeper adds marker lines, which the launcher strips: ready (before the rank
starts), pid N (after), exit N (the rank's returncode, -N for signal N).
Standard library only: this file is the whole program the remote side needs
beyond the rank's own interpreter.
"""

import os
import signal
import subprocess
import sys
import threading

MARKER = b"\x00RINGDIST-REMOTE "
ORDERS = {b"TERM": signal.SIGTERM, b"KILL": signal.SIGKILL, b"USR1": signal.SIGUSR1, b"USR2": signal.SIGUSR2,
          b"STOP": signal.SIGSTOP, b"CONT": signal.SIGCONT}


def _signal_session(sid, sig):
    """Linux: send `sig` to every live process of session `sid` (the rank's: it leads one) outside
    its own process group (signalled already: a second SIGTERM would interrupt a handler of the
    first), again while new ones appear (SIGKILL); as the launcher's guard.py does for local ranks."""
    if not sys.platform.startswith("linux"):
        return
    done = set()
    for _ in range(100 if sig == signal.SIGKILL else 1):
        more = set()
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if not name.isdigit() or int(name) in done:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()  # state, ppid, group, session, ...
                if (len(fields) > 3 and fields[3] == str(sid).encode() and fields[0] not in (b"Z", b"X")
                        and (sig == signal.SIGKILL or fields[2] != str(sid).encode())):
                    os.kill(int(name), sig)
                    more.add(int(name))
            except OSError:
                pass
        if not more:
            return
        done |= more


def _say(word):
    try:
        os.write(1, MARKER + word.encode() + b"\n")
    except OSError:  # the launcher's end is gone; stdin's end of file will stop the rank
        pass


def _outlive_the_agent():
    """Linux: clear the parent-death signal an agent that execs its command (`ip netns exec`)
    passes on from the launcher, so that when the launcher is killed the keeper lives to see
    its stdin end and kill the rank's process group, the rank's children with it."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG, none
        except (OSError, AttributeError):
            pass


def _die_with_keeper():
    """Linux: SIGKILL the rank if this keeper is killed (the agent's process may be SIGKILLed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    keeper = os.getpid()

    def set_death_signal():
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != keeper:
            os._exit(1)

    return set_death_signal


class Keeper:
    def __init__(self, grace, argv):
        self.grace = grace
        self.argv = argv
        self.proc = None
        self.lock = threading.RLock()  # held while signalling, so the group is never signalled after reaping
        self.reaped = False
        self.asked = False  # told to stop before the rank started: do not start it

    def signal_rank(self, sig):
        with self.lock:
            if self.proc is None or self.reaped:
                return
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
                _signal_session(self.proc.pid, sig)

    def listen(self, stdin):
        """Carry out the launcher's orders (`ORDERS`); on end of file stop the rank ourselves."""
        for line in iter(stdin.readline, b""):
            word = line.strip()
            if word in ORDERS:
                self.signal_rank(ORDERS[word])
        self.signal_rank(signal.SIGKILL)

    def run(self, stdin):
        secret = stdin.readline()
        if not secret.endswith(b"\n"):
            return 1  # the launcher went away before the job started
        env = dict(os.environ)
        env["RINGDIST_SECRET"] = secret.strip().decode()
        _say("ready")
        if self.asked:  # stopped before the rank started
            return 143
        try:
            self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_keeper())
        except OSError as exc:
            sys.stderr.write(f"ringdist-launch: cannot start {self.argv[0]!r} on "
                             f"{os.uname().nodename}: {exc.strerror or exc}\n")
            sys.stderr.flush()
            return 127 if isinstance(exc, FileNotFoundError) else 126
        _say(f"pid {self.proc.pid}")
        threading.Thread(target=self.listen, args=(stdin,), daemon=True).start()
        returncode = self._wait()
        with self.lock:
            try:  # whatever the rank left in its process group and session goes with it, as for local ranks
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _signal_session(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.reaped = True
        _say(f"exit {returncode}")
        return 128 - returncode if returncode < 0 else returncode

    def _wait(self):
        """The rank's returncode, leaving it unreaped so its process group id cannot be reused yet."""
        if hasattr(os, "waitid"):
            while True:
                try:
                    info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return self.proc.wait()


def main(argv):
    _outlive_the_agent()
    keeper = Keeper(float(argv[0]), argv[1:])

    def stop(signum, frame):  # the keeper is told to go (SIGTERM, SIGHUP): its rank goes first
        keeper.asked = True
        keeper.signal_rank(signal.SIGTERM)
        timer = threading.Timer(keeper.grace, keeper.signal_rank, (signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)  # a handler, not SIG_IGN: the rank must not inherit an ignored signal
    return keeper.run(os.fdopen(0, "rb", buffering=0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
