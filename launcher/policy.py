"""First-failure-wins supervision policy: whom to stop, when, and the launcher's exit status.

Pure bookkeeping: `job` feeds it events (a rank started, exited, a signal
arrived, the deadline passed) and carries out the `Decision` it returns.
The first abnormal event is the job's cause: it fixes the exit status and
the root-cause line; anything after it is a consequence of stopping.

Which rank failed first is not always which exit the launcher saw first: when
rank 1 leaves (say `sys.exit(1)` before a collective), rank 0 raises
`PeerLostError` at once and may well finish exiting while rank 1 is still in
interpreter teardown. What orders them is the rendezvous's control connections:
a rank closes its own first thing when it leaves, so its peers can only fail
after that. `job` passes the times these connections closed (`left`). When a
rank fails while other ranks are already leaving (connection closed, process
still running), the policy waits for those to exit (up to `SETTLE_WAIT`) rather
than cut their exit short with SIGTERM, then names as first the failed rank
that left earliest, and only then stops the rest.

A rank killed from outside (kill -9, the OOM killer) is different: the kernel
closes its sockets in the middle of its exit, highest file descriptor first,
so its data connections before its control connection (opened first), with
reschedule points between them; on a busy machine its peers can then raise
`PeerLostError`, close their own control connections and even finish exiting
before its control connection closes. Timing cannot order these; causality
can: ringdist turns a peer's death into an exception, never into a signal, so
a rank that died of a signal the launcher did not send is named before ranks
that exited with an error code. And since its peers could only notice once it
was dying, `job` also reports the ranks whose process is exiting (`exiting`),
which the policy waits for like ranks whose control connection has closed.

A rank whose failure was passed on to it ("... aborted by rank 1: ...", a peer it lost) can
leave before the rank that caused it, which may spend up to a second telling its other peers
(an ABORT over a dead link): the policy waits for the rank it names as well.
"""

from __future__ import annotations

import enum
import math
import re
import signal
from dataclasses import dataclass
from typing import Iterable, Mapping

PROG = "ringdist-launch"  # as messages name the launcher
EXIT_USAGE = 2  # bad arguments or a malformed hostfile, as argparse
EXIT_TIMEOUT = 124  # as timeout(1) and mpirun --timeout
EXIT_NOT_EXECUTABLE = 126  # as the shell when a command cannot be executed
EXIT_NOT_FOUND = 127  # as the shell when a command does not exist
EXIT_START_FAILED = 1
# How long to wait, after a rank failed, for ranks already leaving (control connection closed) to
# exit, and, where its failure was another rank's as heard, for that rank.
SETTLE_WAIT = 2.0


class Action(enum.Enum):
    """What the launcher must do to the ranks still running."""

    NOTHING = "nothing"
    WAIT = "wait"  # ranks are leaving, or named as a cause: wait for them (SETTLE_WAIT) before naming the first failure
    STOP = "stop"  # SIGTERM each rank's process group, SIGKILL after the grace period
    KILL = "kill"  # SIGKILL each rank's process group now
    FORWARD = "forward"  # pass `Decision.signum` on to each rank's process group; the job goes on
    SUSPEND = "suspend"  # stop each rank (SIGSTOP), then the launcher; once it is continued, continue them


@dataclass(frozen=True)
class Decision:
    """An action on the given ranks, and the line (if any) to tell the user why."""

    action: Action
    ranks: tuple[int, ...] = ()
    message: str | None = None
    signum: int | None = None  # the signal to pass on (Action.FORWARD); that stops (Action.STOP; None: SIGTERM)


NOTHING = Decision(Action.NOTHING)


@dataclass(frozen=True)
class Outcome:
    """How the launcher ends: its exit status, or, once everything is cleaned up and written,
    killed by `fatal_signal` (`JobPolicy.fatal_signal`; `status` only should it survive that)."""

    status: int
    fatal_signal: int | None = None


def after_output(outcome: Outcome, lost: bool, gone: bool) -> Outcome:
    """How the job ends once the ranks' output is written: with its reader gone (its last output,
    after the ranks ended: as `seq 9 | head -1`), of SIGPIPE; with output lost (`output`'s writer
    said how much), not a success (1); otherwise as the ranks made it end."""
    if gone and outcome.fatal_signal is None:
        return Outcome(128 + signal.SIGPIPE, signal.SIGPIPE)
    if lost and outcome.status == 0 and outcome.fatal_signal is None:
        return Outcome(1)
    return outcome


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


def rank_list(ranks: Iterable[int]) -> str:
    """'rank 3' or 'ranks 0,1,3'."""
    ordered = sorted(ranks)
    listed = ",".join(map(str, ordered))
    return f"rank {listed}" if len(ordered) == 1 else f"ranks {listed}"


# Returncodes of ranks the launcher's signals ended (SIGINT: Ctrl-C's, passed on).
_STOP_SIGNALS = (-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT)
# Signals to the launcher that it passes on to every rank, as mpirun does (a scheduler's warning
# before pre-emption, `--signal=USR1@60`); any other it handles stops the job.
PASSED_ON = (signal.SIGUSR1, signal.SIGUSR2)
# Job control: Ctrl-Z (SIGTSTP) suspends the whole job, as under mpirun (each rank leads a session
# of its own, so the terminal's signal reaches the launcher alone); `fg` or `bg` resumes it.
SUSPENDING = (signal.SIGTSTP,)
# Signals that stop the job and that the launcher then dies of itself, once the job is cleaned
# up, so that its caller sees how it ended: a shell loop stops on Ctrl-C. (Not SIGQUIT: its
# default action dumps core; the launcher exits 131 instead.)
_DIE_OF = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


def _killed_from_outside(returncode: int) -> bool:
    """Whether a failed rank died of a signal the launcher did not send (it sends none before the
    cause is named): kill -9, the OOM killer, a crash. ringdist turns a peer's death into an
    exception, never a signal, so such a death is a cause, not a consequence. SIGPIPE (writing
    to a peer that is gone) can be a consequence, and counts as an error code."""
    return returncode < 0 and returncode != -signal.SIGPIPE


_IN_GROUP = re.compile(r"\(as rank \d+ of group .*?\) ")  # a sub-group's failure, as ringdist tells it
_LEFT = re.compile(r"(?:world )?rank (\d+) left the job")  # a departure a rank heard of, as ringdist tells it
_CAUSE = re.compile(r"(?:aborted by|lost) rank (\d+)(?: \(world rank (\d+)[,)])?|world rank (\d+) left the job")


def _heard_of_another(told: str | None) -> bool:
    """Whether a rank's told failure is another rank's, as it heard of it: a peer it lost (or
    that left the job), or a failure passed on to it ('... aborted by rank 2: ...')."""
    if told is None:
        return False
    told = _IN_GROUP.sub("", told, count=1)
    return told.startswith("PeerLostError") or " aborted by rank " in told or " left the job" in told


def _cause_named(told: str | None) -> int | None:
    """The world rank a failure heard of another names as its cause (the rank it was passed on
    from, the peer it lost); None where it names none, or only a sub-group's rank."""
    if told is None:
        return None
    found = _CAUSE.search(told)
    if found is None:
        return None
    world = found.group(3) or found.group(2)
    if world is not None:
        return int(world)
    return None if _IN_GROUP.match(told) else int(found.group(1))


def _waits(waited: Mapping[int, Iterable[int]], failed: list[int], stopped: list[int]) -> list[str]:
    """'ranks 0,3 had timed out waiting for rank 2', for the failed ranks whose timeout waited
    for ranks the launcher then stopped (they had not failed: they made no progress); grouped by
    the ranks waited for, the cause's first."""
    by_stalled: dict[tuple[int, ...], list[int]] = {}
    for rank in failed:
        stalled = tuple(sorted(set(waited.get(rank, ())).intersection(stopped)))
        if stalled:
            by_stalled.setdefault(stalled, []).append(rank)
    return [f"{rank_list(waiters)} had timed out waiting for {rank_list(stalled)}"
            for stalled, waiters in by_stalled.items()]


class JobPolicy:
    """Decides, event by event, what happens to a job; first failure wins."""

    def __init__(self, timeout: float | None = None) -> None:
        self._timeout = timeout
        self._ranks: dict[int, RankInfo] = {}
        self._running: set[int] = set()
        self._exits: dict[int, int] = {}  # rank -> returncode
        self._exit_order: list[int] = []
        self._left: dict[int, float] = {}  # rank -> when its control connection closed
        self._told: dict[int, str] = {}  # rank -> the failure it told before it left ('PeerLostError: ...')
        self._exiting: set[int] = set()  # running ranks whose process is dying, as last reported
        self._failed: list[int] | None = None  # failed ranks while settling (None: not settling)
        self._waiting_for: set[int] = set()  # the leaving ranks the settling waits for
        self._awaiting_cause = False  # settling waits for every rank: the failed ones only heard of another's
        self._stopped: set[int] = set()
        self._left_at_stop: set[int] = set()  # stopped ranks that were already leaving then
        self._told_at_stop: set[int] = set()  # stopped ranks that had told a failure by then
        self._killed: set[int] = set()
        self._not_started: set[int] = set()  # remote ranks whose agent failed on its own, after the cause
        self._cause: str | None = None
        self._cause_rank: int | None = None
        self._exit_status = 0
        self._stopped_by: int | None = None  # the signal to the launcher that stopped the job
        self._passed_on: set[int] = set()  # signals the launcher passed on to the ranks (PASSED_ON)

    @property
    def running(self) -> list[int]:
        """Ranks started and not yet exited, in rank order."""
        return sorted(self._running)

    @property
    def stopping(self) -> bool:
        """Whether the job is being stopped (a cause has been recorded)."""
        return self._cause is not None

    @property
    def settling(self) -> bool:
        """Whether a rank failed and the policy waits for ranks already leaving (Action.WAIT)."""
        return self._failed is not None

    @property
    def exit_status(self) -> int:
        """The launcher's exit status: the cause's, or 0 if every rank exited 0."""
        return self._exit_status

    @property
    def fatal_signal(self) -> int | None:
        """The signal the launcher ends by, after the job is cleaned up: the SIGINT, SIGTERM,
        SIGHUP or SIGPIPE (its output's reader gone) that stopped the job (`exit_status` then
        128+N, should it survive it); else None."""
        return self._stopped_by if self._stopped_by in _DIE_OF else None

    def rank_started(self, info: RankInfo) -> None:
        """Record a started rank."""
        self._ranks[info.rank] = info
        self._running.add(info.rank)

    def rank_exited(self, rank: int, returncode: int, left: Mapping[int, float] | None = None,
                    exiting: Iterable[int] = (), told: Mapping[int, str] | None = None) -> Decision:
        """A rank exited; a non-zero or signalled exit is the cause unless one exists.

        `left`: when (any clock) each rank's control connection closed, for the ranks
        whose connection has closed so far; it orders failures that come close together.
        `exiting`: running ranks whose process is already dying (its exit not yet seen).
        `told`: the failure each rank told before it left, where it told one: one that heard of
        another rank's (it lost that rank, or was told its failure) is a consequence.
        """
        self._running.discard(rank)
        self._exits[rank] = returncode
        self._exit_order.append(rank)
        self._left.update(left or {})
        self._told.update(told or {})
        self._exiting = set(exiting)
        if self.stopping:
            return NOTHING
        if self._failed is not None:  # settling: one more exit; the first-failure question may be settled
            if returncode != 0:
                self._failed.append(rank)
                if self._awaiting_cause and not self._consequence(rank):
                    self._awaiting_cause = False  # a failure of its own: no need to wait for its cause now
                    self._waiting_for = set()
                elif self._awaiting_cause:
                    self._waiting_for |= self._cause_of(rank)
            self._waiting_for |= self._leaving()  # a rank that started leaving meanwhile is waited for too
            if self._waiting_for & self._running:
                return NOTHING
            return self._name_first_failure()
        if returncode == 0:
            return NOTHING
        self._failed = [rank]
        self._waiting_for = self._leaving()
        # A rank that only heard of another's failure names its cause, which may still be telling
        # its other peers (an ABORT on a dead link takes up to a second): wait for that rank.
        self._awaiting_cause = self._consequence(rank)
        if self._awaiting_cause:
            self._waiting_for |= self._cause_of(rank)
        if self._waiting_for:
            return Decision(Action.WAIT, tuple(sorted(self._waiting_for)))
        return self._name_first_failure()

    def heard(self, told: Mapping[int, str], left: Mapping[int, float] | None = None) -> None:
        """The failures ranks told so far, and when their control connections closed
        (`rank_exited`'s `told` and `left`), before a stop for another reason (the job's timeout,
        a signal to the launcher, a host's failure): a rank stopped after it told one, or after it
        began to leave, had failed on its own."""
        self._told.update(told)
        self._left.update(left or {})

    def settle_expired(self, left: Mapping[int, float] | None = None,
                       told: Mapping[int, str] | None = None) -> Decision:
        """`SETTLE_WAIT` passed after Action.WAIT: name the first failure among the ranks failed so far."""
        self._left.update(left or {})
        self._told.update(told or {})
        if self._failed is None:
            return NOTHING
        return self._name_first_failure()

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
        """The launcher got a signal. SIGUSR1/SIGUSR2: pass it on to every running rank. SIGTSTP
        (Ctrl-Z): suspend every running rank and the launcher, until it is continued. Any other
        (SIGINT, SIGTERM, SIGHUP, SIGQUIT): stop in order; a second such signal kills at once. The
        first such signal is what the launcher dies of once the job is cleaned up (`fatal_signal`),
        even where a rank's failure, which came first, stays the job's cause and exit status: a
        shell loop that ran it stops. One that comes after the ranks are gone (their output still
        being written) counts too."""
        if signum in PASSED_ON:
            self._passed_on.add(signum)
            return Decision(Action.FORWARD, tuple(self.running), signum=signum)
        if signum in SUSPENDING:  # the job goes on once continued, whatever was under way
            return Decision(Action.SUSPEND, tuple(self.running))
        first = self._stopped_by is None
        if first:
            self._stopped_by = signum
        if self.settling:  # a rank failed before the signal: that is the cause; stop in order
            return self._name_first_failure()
        name = _signal_name(signum) if signum != signal.SIGPIPE else "SIGPIPE (a reader of its output went away)"
        if not self.stopping:
            self._set_cause(f"interrupted by {name}", 128 + signum)
            # Ctrl-C reaches each rank as Ctrl-C does a program run alone: SIGINT, its KeyboardInterrupt
            # (its finally blocks and exit handlers run); the others stop it by SIGTERM.
            return self._stop_all(stop_signal=signal.SIGINT if signum == signal.SIGINT else None)
        if not self._running:
            return NOTHING
        self._killed.update(self._running)
        said = f"{name} again" if not first else f"interrupted by {name}"  # a failure's stop, interrupted
        message = f"ringdist-launch: {said}; killing {rank_list(self.running)} now"
        return Decision(Action.KILL, tuple(self.running), message)

    def rank_pid(self, rank: int, pid: int) -> None:
        """A remote rank's own pid became known (messages name it rather than the ssh client's)."""
        info = self._ranks[rank]
        self._ranks[rank] = RankInfo(info.rank, info.host, pid)

    def host_failed(self, rank: int, host: str, reason: str, status: int, by_signal: bool = False) -> Decision:
        """A remote rank never started: its host could not be reached, or refused to run it.

        `by_signal`: a signal ended its agent. Once the job is being stopped that is the launcher's
        own doing for a rank it stopped; any other such failure is the rank's own, and the summary
        says so."""
        if self.settling or self.stopping:
            if not (by_signal and rank in self._stopped):
                self._not_started.add(rank)
            return self._name_first_failure() if self.settling else NOTHING
        self._set_cause(f"cannot start rank {rank} on host {host}: {reason}", status)
        self._cause_rank = rank
        return self._stop_all(exclude=rank)  # its agent has exited, or was killed, already

    def timed_out(self) -> Decision:
        """The job's limit on its run time (`--timeout`) passed."""
        if self.settling:
            return self._name_first_failure()
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

    def summary(self, waited: Mapping[int, Iterable[int]] | None = None) -> str | None:
        """The closing line: the cause, then what became of every other rank; None if nothing to add.

        Printed after the ranks' last output; the line printed when the cause was found
        said only whom the launcher was stopping. `waited`: for each rank whose failure was a
        timeout waiting for peers, their ranks (as it told the rendezvous): a peer waited for that
        had not failed, and was stopped, is named as the one the others waited for.

        'rank 1 (host h, pid 9) exited with code 1 first; ranks 0,3 then failed in turn;
        rank 4 had already exited (code 0); rank 2 stopped by the launcher; ranks 0,1,3 had timed
        out waiting for rank 2'

        Ranks that failed before the stop: "in turn" where what they told names another rank's
        failure (a lost peer, an ABORT passed on), "on their own" otherwise; remote ranks whose
        host failed them too (after the cause): "could not be started either".
        """
        if self._cause is None:
            return None
        on_own, early, stopped, unstarted = [], [], [], []
        for rank, returncode in self._exits.items():
            if rank == self._cause_rank:
                continue
            if rank in self._not_started:  # its host failed it too (as the cause's, most often)
                unstarted.append(rank)
            elif rank in self._stopped:
                (on_own if self._failed_after_stop(rank, returncode) else stopped).append(rank)
            else:
                (early if returncode == 0 else on_own).append(rank)
        stopped += sorted(self._stopped - self._exits.keys())  # never exited (given up on)
        parts = [self._cause]
        heard = _LEFT.search(self._told.get(self._cause_rank, "")) if self._cause_rank is not None else None
        left = int(heard.group(1)) if heard is not None else None
        if left in early:  # the cause failed on the news of a clean exit
            early.remove(left)
            parts[0] += f", on hearing that rank {left} had left the job (it exited with code 0)"
        in_turn = [r for r in on_own if self._consequence(r)]
        own = [r for r in on_own if r not in in_turn]
        if in_turn:
            parts.append(f"{rank_list(in_turn)} then failed in turn")
        if own:
            parts.append(f"{rank_list(own)} then failed on {'its' if len(own) == 1 else 'their'} own")
        if unstarted:
            parts.append(f"{rank_list(unstarted)} could not be started either")
        if early:
            parts.append(f"{rank_list(early)} had already exited (code 0)")
        if stopped:
            part = f"{rank_list(stopped)} stopped by the launcher"
            killed = self._killed.intersection(stopped)
            if killed:
                part += f" ({rank_list(killed)} killed with SIGKILL)"
            parts.append(part)
        parts += _waits(waited or {}, [r for r in [self._cause_rank, *on_own] if r is not None], stopped)
        if parts == [self._cause]:
            return None
        return "ringdist-launch: " + "; ".join(parts)

    def _failed_after_stop(self, rank: int, returncode: int) -> bool:
        """Whether a rank the launcher stopped had failed on its own: it was leaving already, or it
        had told a failure by then (ringdist raised in it: a program that ignores SIGTERM ends as
        that made it; not what the stop itself raised, a KeyboardInterrupt, a SIGTERM handler's
        exit), and its exit is a failure (not 0, not by the launcher's signal)."""
        return ((rank in self._left_at_stop or rank in self._told_at_stop) and returncode != 0
                and returncode not in _STOP_SIGNALS)

    def _cause_of(self, rank: int) -> set[int]:
        """The running ranks that may be the cause of failed `rank`'s failure: the one it names, if
        still running; every running rank where it names none (or only a sub-group's rank)."""
        named = _cause_named(self._told.get(rank))
        if named is None:
            return set(self._running)
        return {named} & self._running

    def _consequence(self, rank: int) -> bool:
        """Whether failed `rank` told only of another rank's failure (and was not killed from outside)."""
        return not _killed_from_outside(self._exits[rank]) and _heard_of_another(self._told.get(rank))

    def _leaving(self) -> set[int]:
        """Running ranks on their way out: their control connection has closed, or their process is dying."""
        return {r for r in self._running if r in self._left or r in self._exiting}

    def _name_first_failure(self) -> Decision:
        """End the settling: of the ranks that failed, the first to leave is the cause."""
        failed, self._failed, self._waiting_for = self._failed or [], None, set()

        def leaving_order(rank: int) -> tuple[bool, bool, float, int]:
            # Killed from outside first; then a failure of its own before one that heard of another
            # rank's (a rank that left by os._exit closed its data connections before the launcher
            # saw it go: the peers that lost it could be seen leaving first); then by when it left,
            # unknown times last; then by exit order.
            return not _killed_from_outside(self._exits[rank]), _heard_of_another(self._told.get(rank)), \
                self._left.get(rank, math.inf), self._exit_order.index(rank)

        first = min(failed, key=leaving_order)
        info, returncode = self._ranks[first], self._exits[first]
        self._cause_rank = first
        passed_on = ""
        if returncode < 0 and -returncode in self._passed_on:  # a rank with no handler for it
            passed_on = (f" (the launcher had passed {_signal_name(-returncode)} on to the ranks; rank {first} "
                         f"has no handler for it)")
        self._set_cause(
            f"rank {first} (host {info.host}, pid {info.pid}) {describe_exit(returncode)} first{passed_on}",
            exit_status(returncode),
        )
        return self._stop_all()

    def _set_cause(self, cause: str, status: int) -> None:
        self._cause = cause
        self._exit_status = status

    def _stop_all(self, exclude: int | None = None, stop_signal: int | None = None) -> Decision:
        """Stop every running rank (by `stop_signal`; default SIGTERM), saying so now; with none left
        to stop, the summary says it all."""
        targets = tuple(sorted(self._running - {exclude}))
        self._stopped.update(targets)
        self._left_at_stop.update(r for r in targets if r in self._left)
        self._told_at_stop.update(r for r in targets if r in self._told)
        if targets:
            return Decision(Action.STOP, targets, f"ringdist-launch: {self._cause}; stopping {rank_list(targets)}",
                            signum=stop_signal)
        if self.summary() is not None:
            return Decision(Action.STOP)
        return Decision(Action.STOP, (), f"ringdist-launch: {self._cause}; no other rank was running")
