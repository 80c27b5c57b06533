"""First-failure-wins supervision policy: whom to stop, when, and the launcher's exit status.

Pure bookkeeping: `job` feeds it events (a rank started, exited, a signal
arrived, the deadline passed) and carries out the `Decision` it returns.
The first abnormal event is the job's cause: it fixes the exit status and
the root-cause line; anything after it is a consequence of stopping.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import Iterable

EXIT_TIMEOUT = 124  # as timeout(1) and mpirun --timeout
EXIT_NOT_EXECUTABLE = 126  # as the shell when a command cannot be executed
EXIT_NOT_FOUND = 127  # as the shell when a command does not exist
EXIT_START_FAILED = 1


class Action(enum.Enum):
    """What the launcher must do to the ranks still running."""

    NOTHING = "nothing"
    STOP = "stop"  # SIGTERM each rank's process group, SIGKILL after the grace period
    KILL = "kill"  # SIGKILL each rank's process group now


@dataclass(frozen=True)
class Decision:
    """An action on the given ranks, and the line (if any) to tell the user why."""

    action: Action
    ranks: tuple[int, ...] = ()
    message: str | None = None


NOTHING = Decision(Action.NOTHING)


@dataclass(frozen=True)
class RankInfo:
    """A started rank, as named in messages."""

    rank: int
    host: str
    pid: int


def exit_status(returncode: int) -> int:
    """Map a `Popen.returncode` to a shell exit status: a signal N (returncode -N) is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """'exited with code 3' or 'was killed by signal 9 (SIGKILL)'."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    return f"was killed by signal {-returncode} ({_signal_name(-returncode)})"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _rank_list(ranks: Iterable[int]) -> str:
    """'rank 3' or 'ranks 0,1,3'."""
    ordered = sorted(ranks)
    listed = ",".join(map(str, ordered))
    return f"rank {listed}" if len(ordered) == 1 else f"ranks {listed}"


class JobPolicy:
    """Decides, event by event, what happens to a job; first failure wins."""

    def __init__(self, timeout: float | None = None) -> None:
        self._timeout = timeout
        self._ranks: dict[int, RankInfo] = {}
        self._running: set[int] = set()
        self._stopped: set[int] = set()
        self._killed: set[int] = set()
        self._cause: str | None = None
        self._exit_status = 0

    @property
    def running(self) -> list[int]:
        """Ranks started and not yet exited, in rank order."""
        return sorted(self._running)

    @property
    def stopping(self) -> bool:
        """Whether the job is being stopped (a cause has been recorded)."""
        return self._cause is not None

    @property
    def exit_status(self) -> int:
        """The launcher's exit status: the cause's, or 0 if every rank exited 0."""
        return self._exit_status

    def rank_started(self, info: RankInfo) -> None:
        """Record a started rank."""
        self._ranks[info.rank] = info
        self._running.add(info.rank)

    def rank_exited(self, rank: int, returncode: int) -> Decision:
        """A rank exited; a non-zero or signalled exit is the cause unless one exists."""
        self._running.discard(rank)
        if returncode == 0 or self.stopping:
            return NOTHING
        info = self._ranks[rank]
        self._set_cause(
            f"rank {rank} (host {info.host}, pid {info.pid}) {describe_exit(returncode)} first",
            exit_status(returncode),
        )
        return self._stop_all()

    def start_failed(self, rank: int, host: str, error: OSError) -> Decision:
        """A rank could not be started at all (no such program, not executable, ...)."""
        if self.stopping:
            return NOTHING
        if isinstance(error, FileNotFoundError):
            status = EXIT_NOT_FOUND
        elif isinstance(error, PermissionError):
            status = EXIT_NOT_EXECUTABLE
        else:
            status = EXIT_START_FAILED
        reason = error.strerror or str(error)
        what = f": {error.filename!r}" if error.filename else ""
        self._set_cause(f"cannot start rank {rank} (host {host}): {reason}{what}", status)
        return self._stop_all()

    def signalled(self, signum: int) -> Decision:
        """The launcher got SIGINT/SIGTERM/SIGHUP: stop in order; a second signal kills at once."""
        name = _signal_name(signum)
        if not self.stopping:
            self._set_cause(f"interrupted by {name}", 128 + signum)
            return self._stop_all()
        if not self._running:
            return NOTHING
        self._killed.update(self._running)
        message = f"ringdist-launch: {name} again; killing {_rank_list(self.running)} now"
        return Decision(Action.KILL, tuple(self.running), message)

    def rank_pid(self, rank: int, pid: int) -> None:
        """A remote rank's own pid became known (messages name it rather than the ssh client's)."""
        info = self._ranks[rank]
        self._ranks[rank] = RankInfo(info.rank, info.host, pid)

    def host_failed(self, rank: int, host: str, reason: str, status: int) -> Decision:
        """A remote rank never started: its host could not be reached, or refused to run it."""
        if self.stopping:
            return NOTHING
        self._set_cause(f"cannot start rank {rank} on host {host}: {reason}", status)
        return self._stop_all(exclude=rank)  # its agent has exited, or was killed, already

    def timed_out(self) -> Decision:
        """The job's wall-clock limit (`--timeout`) passed."""
        if self.stopping:
            return NOTHING
        self._set_cause(f"job exceeded --timeout {self._timeout:g}s", EXIT_TIMEOUT)
        return self._stop_all()

    def grace_expired(self) -> Decision:
        """Ranks ignored SIGTERM for the whole grace period: kill them."""
        survivors = self._running - self._killed
        if not survivors:
            return NOTHING
        self._killed.update(survivors)
        return Decision(Action.KILL, tuple(sorted(survivors)))

    def summary(self) -> str | None:
        """The closing root-cause line, repeated after the ranks' last output; None if nothing was stopped."""
        if self._cause is None or not self._stopped:
            return None
        line = f"ringdist-launch: {self._cause}; {_rank_list(self._stopped)} stopped by the launcher"
        if self._killed:
            line += f" ({_rank_list(self._killed)} killed with SIGKILL)"
        return line

    def _set_cause(self, cause: str, status: int) -> None:
        self._cause = cause
        self._exit_status = status

    def _stop_all(self, exclude: int | None = None) -> Decision:
        targets = tuple(sorted(self._running - {exclude}))
        self._stopped.update(targets)
        tail = f"stopping {_rank_list(targets)}" if targets else "no other rank was running"
        return Decision(Action.STOP, targets, f"ringdist-launch: {self._cause}; {tail}")
