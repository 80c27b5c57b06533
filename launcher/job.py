"""Running a planned job: rendezvous, spawning, output, waiting, and carrying out the policy.

Everything here is mechanism; `policy.JobPolicy` makes every decision. The
main thread spawns the ranks and then sleeps in one place, `_Inbox.get`, woken
by a waiter thread per rank (its exit) and by signals (`HANDLED_SIGNALS`), with a
timeout only when a deadline is pending. A signal ignored when the launcher
started (`nohup`, a background job's SIGINT) stays ignored.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import secrets
import select
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

from ringdist import channel, posixshm
from ringdist.endpoint import local_backend
from ringdist.errors import ConnectError
from ringdist.rendezvous import RendezvousServer
from ringdist.settings import Settings

from .output import LineWriter, Pump, pump_rank
from .plan import JobPlan, RankLaunch
from .policy import (PASSED_ON, SETTLE_WAIT, SUSPENDING, Action, Decision, JobPolicy, Outcome, RankInfo, describe_exit,
                     rank_list)
from .spawn import Guard, RankProcess, Spawner, signal_every, signal_once, stop_sessions

# How long to wait for ranks after SIGKILL, and for their output to drain, before giving up.
KILL_WAIT = 10.0
# Open files the launcher holds at least: per rank its output pipes and its control connection,
# and its own (measured: 32 local ranks, 109 in all). Below this a job cannot start: said at once.
FDS_PER_RANK = 3
FDS_BASE = 20
DRAIN_WAIT = 5.0
# The signals the launcher handles while the job runs: the policy stops the job on the first
# four, passes SIGUSR1/SIGUSR2 on to the ranks, and suspends the job on SIGTSTP (Ctrl-Z).
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGTSTP)


@dataclass(frozen=True)
class _Exited:
    rank: int
    returncode: int
    seen: float  # time.monotonic() when its exit was seen


@dataclass(frozen=True)
class _Signalled:
    signum: int


@dataclass(frozen=True)
class _NotStarted:
    rank: int
    reason: str
    status: int
    by_signal: bool  # what was starting it was ended by a signal


_Event = Union[_Exited, _Signalled, _NotStarted]


MAX_POLL_WAIT = 3600.0  # the longest single poll() (its argument is a C int of ms); longer waits loop


class _Inbox:
    """Where the main thread sleeps: woken at once by another thread's event or by a signal.

    A signal cannot simply be turned into a queue item by its Python handler: CPython
    runs that handler only between bytecodes, so a signal that lands while the main
    thread is already inside a blocking `queue.get(timeout)` - past its last check for
    pending signals, not yet asleep in the lock wait - or that the kernel hands to
    another thread, only sets a flag, and the main thread sleeps on until the timeout
    (the whole grace period, or for ever): a second Ctrl-C seemingly ignored. Here the
    C-level handler itself writes the signal's number into a pipe (`signal.set_wakeup_fd`)
    and the main thread sleeps in poll() on that pipe, so no signal is ever late (the
    self-pipe trick). Other threads append their event and write a 0 byte to the pipe.
    """

    def __init__(self) -> None:
        self._events: collections.deque[_Event] = collections.deque()
        self._read_fd, self.wakeup_fd = os.pipe()
        for fd in (self._read_fd, self.wakeup_fd):
            os.set_blocking(fd, False)
        self._poller = select.poll()
        self._poller.register(self._read_fd, select.POLLIN)
        self._lock = threading.Lock()
        self._closed = False

    def put(self, event: _Event) -> None:
        """Hand `event` to the main thread (any thread)."""
        self._events.append(event)
        with self._lock:  # never write to the fd number once closed (it may be reused)
            if self._closed:
                return
            try:
                os.write(self.wakeup_fd, b"\0")
            except BlockingIOError:  # the pipe is full of wake-ups already
                pass

    def get(self, timeout: float | None) -> _Event | None:
        """The next event, waiting at most `timeout` s (None: no limit); None when it passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._read_signals()
            if self._events:
                return self._events.popleft()
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            self._poller.poll(None if wait is None else math.ceil(min(wait, MAX_POLL_WAIT) * 1000))

    def _read_signals(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 512)
            except BlockingIOError:
                return
            if not data:
                return
            self._events.extend(_Signalled(b) for b in data if b)

    def close(self) -> None:
        """Close the pipe (after `signal.set_wakeup_fd` has been given back)."""
        with self._lock:
            self._closed = True
            os.close(self._read_fd)
            os.close(self.wakeup_fd)


@dataclass
class _Rank:
    launch: RankLaunch
    proc: RankProcess
    pumps: list[Pump]


def run_job(
    plan: JobPlan,
    spawners: Sequence[Spawner],
    writer: LineWriter,
    *,
    prefix: bool = True,
    timeout: float | None = None,
    grace: float = 5.0,
    verbose: bool = False,
) -> Outcome:
    """Run every rank of `plan` (rank r started by `spawners[r]`) to completion; say how it ended."""
    supervisor = _Supervisor(plan, writer, prefix=prefix, timeout=timeout, grace=grace, verbose=verbose)
    return supervisor.run(spawners)


class _Supervisor:
    """One job's processes, deadlines and event queue; carries out `JobPolicy` decisions."""

    def __init__(
        self,
        plan: JobPlan,
        writer: LineWriter,
        *,
        prefix: bool,
        timeout: float | None,
        grace: float,
        verbose: bool,
    ) -> None:
        self.plan = plan
        self.writer = writer
        self.prefix = prefix
        self.timeout = timeout
        self.grace = grace
        self.verbose = verbose
        self.policy = JobPolicy(timeout)
        self.events = _Inbox()
        self.ranks: dict[int, _Rank] = {}
        self.server: RendezvousServer | None = None
        self.guard: Guard | None = None
        self.settle_deadline: float | None = None
        self.term_deadline: float | None = None
        self.kill_deadline: float | None = None
        self.job_deadline: float | None = None  # --timeout's

    def run(self, spawners: Sequence[Spawner]) -> Outcome:
        secret = secrets.token_hex(32)
        # A reader of the launcher's output that went away (`| head -1`) stops the job as SIGPIPE
        # would stop a program writing there itself (Python ignores SIGPIPE: the launcher hears EPIPE).
        self.writer.on_reader_gone = lambda: self.events.put(_Signalled(signal.SIGPIPE))
        try:
            with _signals_to(self.events):
                started = self._run(spawners, secret)
        finally:
            self.events.close()
        if not started:
            return Outcome(1)
        summary = self.policy.summary(self.server.waited() if self.server is not None else None)
        if summary:
            self.writer.message(summary)
        return Outcome(self.policy.exit_status, self.policy.fatal_signal)

    def _run(self, spawners: Sequence[Spawner], secret: str) -> bool:
        """Serve the rendezvous, start and supervise the ranks; False if the rendezvous cannot start."""
        need = FDS_PER_RANK * self.plan.world_size + FDS_BASE
        have = channel.raise_fd_limit(need)
        if have < need:
            self.writer.message(f"ringdist-launch: error: {self.plan.world_size} ranks need about {need} open files "
                                f"in the launcher (pipes and a control connection for each), and it may open "
                                f"{have} (`ulimit -n`; its hard limit is as far as it can raise it): raise the limit")
            return False
        server = RendezvousServer(
            secret,
            self.plan.world_size,
            host=self.plan.rendezvous_host,
            port=self.plan.rendezvous_port,
            rank_hosts=[r.host for r in self.plan.ranks],
            announce_departures=True,  # its ranks watch their control connections for the whole job
        )
        try:
            server.start()
        except ConnectError as e:
            self.writer.message(f"ringdist-launch: error: cannot start the rendezvous service: {e}")
            return False
        self.server = server
        socket_dir = None
        try:
            self._log(f"rendezvous listening at {server.address}")
            self._start_guard()
            socket_dir = self._make_socket_dir()  # after the guard starts: it is told before it is made
            self._start_ranks(spawners, server.address, secret, socket_dir)
            self._supervise()
        finally:
            self._clean_up()
            server.close()
            if socket_dir is not None:
                shutil.rmtree(socket_dir, ignore_errors=True)  # with what a rank killed by a signal left there
            if self.guard is not None:
                self.guard.release()
        return True

    def _make_socket_dir(self) -> str | None:
        """A private (0700) directory for the local ranks' Unix sockets, removed when the job ends;
        None unless local ranks use the shared-memory link's portable backend (files; Linux's
        abstract sockets need none), or if it cannot be made."""
        if not any(r.placement.is_local and local_backend(self._shm_setting(r)) == "posix" for r in self.plan.ranks):
            return None
        # Under /tmp where $TMPDIR is too long a path for the socket files (`posixshm.fits`).
        short = posixshm.fits(os.path.join(tempfile.gettempdir(), "rd-" + "x" * 8))
        # Its guard is told first, then it is made (a name of 64 random bits nobody else holds):
        # a launcher killed between making it and telling the guard (mkdtemp) left it behind.
        path = os.path.join(tempfile.gettempdir() if short else posixshm.SHORT_BASE, f"rd-{secrets.token_hex(8)}")
        if self.guard is not None:
            self.guard.remove(path)
        try:
            os.mkdir(path, 0o700)
            return path
        except OSError as e:  # the ranks then put their sockets under $TMPDIR themselves
            self.writer.message(f"ringdist-launch: warning: cannot make the job's socket directory: {e}")
            return None

    @staticmethod
    def _shm_setting(launch: RankLaunch) -> str:
        """The shared-memory backend `launch`'s rank will ask for ("auto" or "posix")."""
        return Settings.from_env({**os.environ, **dict(launch.user_env)}).shm_backend

    def _start_guard(self) -> None:
        """Start the process that kills the ranks' process groups (their children too) if the launcher dies."""
        try:
            self.guard = Guard()
        except OSError as e:  # the ranks themselves still die with the launcher (Linux)
            self.writer.message(f"ringdist-launch: warning: cannot start the job's guard process: {e}")

    def _start_ranks(self, spawners: Sequence[Spawner], rendezvous: str, secret: str,
                     socket_dir: str | None) -> None:
        # Ranks are started from the main thread: on Linux their parent-death
        # signal fires when the thread that forked them ends.
        for launch, spawner in zip(self.plan.ranks, spawners):
            try:
                proc = spawner.start(launch.argv, launch.env(rendezvous, secret, socket_dir), self.plan.cwd)
            except OSError as e:
                self._apply(self.policy.start_failed(launch.rank, launch.host, e))
                return
            if self.guard is not None and proc.guarded_group is not None:
                self.guard.watch(proc.guarded_group)
            self._log(f"rank {launch.rank} started on host {launch.host}, pid {proc.pid}")
            self.policy.rank_started(RankInfo(launch.rank, launch.host, proc.pid))
            pumps = pump_rank(launch.rank, proc.stdout, proc.stderr, self.writer, self.prefix,
                              (proc.stdout_tap, proc.stderr_tap))
            self.ranks[launch.rank] = _Rank(launch, proc, pumps)
            threading.Thread(
                target=self._watch, args=(launch.rank, proc), name=f"wait rank {launch.rank}", daemon=True
            ).start()

    def _watch(self, rank: int, proc: RankProcess) -> None:
        try:
            problem = proc.wait_started()  # a remote rank: has its host answered?
            if problem is not None:
                self.events.put(_NotStarted(rank, *problem))
            returncode = proc.wait_exit()
        except ChildProcessError:  # already reaped by the clean-up of a failed launcher
            return
        self.events.put(_Exited(rank, returncode, time.monotonic()))

    def _supervise(self) -> None:
        self.job_deadline = time.monotonic() + self.timeout if self.timeout else None
        while self.policy.running:
            deadline = self.kill_deadline or self.term_deadline or self.settle_deadline
            if deadline is None and not self.policy.stopping:
                deadline = self.job_deadline
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.events.get(timeout=wait)
            if event is None:
                if self.kill_deadline is not None:
                    self.writer.message(
                        f"ringdist-launch: ranks {','.join(map(str, self.policy.running))} "
                        f"still running {KILL_WAIT:g}s after SIGKILL; giving up on them"
                    )
                    return
                if self.term_deadline is not None:
                    self._apply(self.policy.grace_expired())
                elif self.settle_deadline is not None:
                    self._apply(self.policy.settle_expired(self._left(), self._told()))
                else:
                    self.policy.heard(self._told(), self._left())  # (what failed meanwhile, before the stop)
                    self._apply(self.policy.timed_out())
                continue
            if isinstance(event, _Exited):
                remote_pid = getattr(self.ranks[event.rank].proc, "remote_pid", None)
                if remote_pid is not None:
                    self.policy.rank_pid(event.rank, remote_pid)
                self._log(f"rank {event.rank} {describe_exit(event.returncode)}")
                if self.server is not None:  # ranks waiting for it (to register, to connect) fail now
                    threading.Thread(target=self.server.rank_exited,
                                     args=(event.rank, describe_exit(event.returncode), event.returncode == 0),
                                     name="ringdist-left", daemon=True).start()  # sends may block: not here
                left = self._left()
                if self.server is not None and event.rank not in left and not self.server.registered(event.rank):
                    # It never registered, so no control connection says when it left: it left when its
                    # exit was seen, before its peers heard (they learn it from the rendezvous just now).
                    # Counted as leaving last, it lost to the peers it made fail.
                    left[event.rank] = event.seen
                self._apply(self.policy.rank_exited(event.rank, event.returncode, left,
                                                    self._exiting(event.returncode), self._told()))
            elif isinstance(event, _NotStarted):
                host = self.ranks[event.rank].launch.host
                self.policy.heard(self._told(), self._left())
                self._apply(self.policy.host_failed(event.rank, host, event.reason, event.status, event.by_signal))
            else:
                self.policy.heard(self._told(), self._left())
                self._apply(self.policy.signalled(event.signum))

    def _exiting(self, returncode: int) -> set[int]:
        """Running ranks whose process is dying, when the policy may need them (a failure is being judged)."""
        if self.policy.stopping or (returncode == 0 and not self.policy.settling):
            return set()
        return {r for r in self.policy.running if self.ranks[r].proc.exiting()}

    def _left(self) -> dict[int, float]:
        """When each rank's control connection closed, for those closed so far."""
        return self.server.disconnected() if self.server is not None else {}

    def _told(self) -> dict[int, str]:
        """The failure each rank told the rendezvous, for those that told one so far."""
        return self.server.told() if self.server is not None else {}

    def _apply(self, decision: Decision) -> None:
        if decision.message:
            self.writer.message(decision.message)
        if decision.action is Action.WAIT:
            if self.settle_deadline is None:
                self.settle_deadline = time.monotonic() + SETTLE_WAIT
            self._log(f"waiting up to {SETTLE_WAIT:g}s for {rank_list(decision.ranks)} (leaving, or not yet "
                      "failed where the failed heard of another's failure) before naming the first failure")
        elif decision.action is Action.STOP:
            self.settle_deadline = None
            procs = [self.ranks[rank].proc for rank in decision.ranks]
            signal_once(procs, signal.SIGTERM if decision.signum is None else decision.signum)
            if self.term_deadline is None:
                self.term_deadline = time.monotonic() + self.grace
        elif decision.action is Action.KILL:
            for rank in decision.ranks:
                self.ranks[rank].proc.signal(signal.SIGKILL)
            stop_sessions([self.ranks[rank].proc for rank in decision.ranks], signal.SIGKILL)
            self.kill_deadline = time.monotonic() + KILL_WAIT
        elif decision.action is Action.FORWARD and decision.signum is not None:
            self._log(f"passing {signal.Signals(decision.signum).name} on to {rank_list(decision.ranks)}")
            for rank in decision.ranks:
                self.ranks[rank].proc.signal(decision.signum)
        elif decision.action is Action.SUSPEND:
            self._suspend([self.ranks[rank].proc for rank in decision.ranks])

    def _suspend(self, procs: list[RankProcess]) -> None:
        """Job control (Ctrl-Z): stop every process of these ranks (SIGSTOP: a rank leads a session
        of its own, where the terminal's SIGTSTP would be discarded), then the launcher itself, as
        a shell sees a stopped program; once the launcher is continued (`fg`, `bg`, SIGCONT),
        continue them. The time stopped does not count against the launcher's deadlines
        (`--timeout`, the grace before SIGKILL)."""
        self._log(f"suspending {rank_list([r for r, rank in self.ranks.items() if rank.proc in procs])}")
        signal_every(procs, signal.SIGSTOP)
        began = time.monotonic()
        os.kill(os.getpid(), signal.SIGSTOP)
        stopped = time.monotonic() - began
        signal_every(procs, signal.SIGCONT)
        self._log(f"continued after {stopped:.1f}s")
        for name in ("job_deadline", "kill_deadline", "term_deadline", "settle_deadline"):
            if getattr(self, name, None) is not None:
                setattr(self, name, getattr(self, name) + stopped)

    def _clean_up(self) -> None:
        """Kill whatever is left in every rank's process group and session, reap the ranks, drain their output."""
        stop_sessions([r.proc for r in self.ranks.values()], signal.SIGKILL)  # one pass, before any is reaped
        finishers = [threading.Thread(target=r.proc.finish, args=(KILL_WAIT,), daemon=True)
                     for r in self.ranks.values()]
        for t in finishers:
            t.start()
        for t in finishers:
            t.join(KILL_WAIT + 1)
        # Their output is still being written: a signal meanwhile is heard (what the launcher dies of,
        # `fatal_signal`), and a stop signal ends the wait.
        drain_until = time.monotonic() + DRAIN_WAIT
        pumps = [pump for r in self.ranks.values() for pump in r.pumps]
        wait = 0.0  # (most often their output has ended with them: no wait)
        while time.monotonic() < drain_until:
            pumps = [p for p in pumps if not p.join(0)]
            if not pumps or self._heard_signal(min(wait, max(0.0, drain_until - time.monotonic()))):
                break
            wait = min(0.05, wait + 0.005)
        self._heard_signal(0)  # any that came as the last rank ended

    def _heard_signal(self, wait: float) -> bool:
        """The inbox's events (waiting up to `wait` s for the first), its signals given to the
        policy (the ranks are gone: nothing to carry out); whether one came that stops the job."""
        stop = False
        event = self.events.get(timeout=wait)
        while event is not None:
            if isinstance(event, _Signalled):
                if event.signum in SUSPENDING:  # the ranks are gone: the launcher alone
                    self._suspend([])
                else:
                    self.policy.signalled(event.signum)
                stop = stop or event.signum not in PASSED_ON + SUSPENDING
            event = self.events.get(timeout=0)
        return stop

    def _log(self, text: str) -> None:
        if self.verbose:
            self.writer.message(f"ringdist-launch: {text}")


@contextlib.contextmanager
def _signals_to(inbox: _Inbox) -> Iterator[None]:
    """Deliver `HANDLED_SIGNALS` to `inbox` while the job runs (main thread only).

    The signal's number reaches the inbox's pipe from the C-level handler
    (`signal.set_wakeup_fd`); the Python-level handler has nothing left to do.
    A signal ignored at the start (SIG_IGN: `nohup`, a shell's background job)
    is left ignored, as Python itself leaves an ignored SIGINT.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: object) -> None:
        pass

    previous_fd = signal.set_wakeup_fd(inbox.wakeup_fd, warn_on_full_buffer=False)
    previous = {}
    try:
        for sig in HANDLED_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(previous_fd)
