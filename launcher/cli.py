"""`ringdist-launch`: command-line parsing and the entry point.

    ringdist-launch [options] script.py [args...]
    ringdist-launch [options] -m module [args...]
    ringdist-launch [options] -- command [args...]

Launcher options stop at the program: everything after `script.py`, after
`-m module` or after `--` belongs to the program, so `ringdist-launch -n 2
s.py -n 5` passes `-n 5` to s.py. Bad arguments or a malformed hostfile end
with one `ringdist-launch: error: ...` line and exit status 2; a script.py
that does not exist ends with one line naming it and status 127, as a shell's
"not found" (`launch` makes these checks).

This module imports only the standard library and the pure `policy`: the rest
(`launch`, and ringdist) loads inside `main`, once Ctrl-C ends the
launcher quietly.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
from typing import TYPE_CHECKING, Sequence

from .policy import PROG, Outcome

if TYPE_CHECKING:
    from .plan import Target



def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments), run the job, return the exit status.

    A job stopped by SIGINT, SIGTERM or SIGHUP ends with the launcher killed by that same
    signal once the job is cleaned up and its output written, as a shell expects of an
    interrupted program (a loop running it stops); 128+N is returned only should it survive.
    Before the job's supervision takes a signal over, it ends the launcher at once, quietly.
    A reader of its output that went away (`| head`) ends it quietly too, by SIGPIPE.
    """
    _open_standard_files()
    interrupt = signal.getsignal(signal.SIGINT)
    if interrupt is signal.default_int_handler:  # not SIG_IGN (a background job): that stays
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        try:
            from .launch import launch  # loads ringdist: a Ctrl-C meanwhile ends the launcher

            outcome = launch(*parse_command_line(_parser(), list(sys.argv[1:] if argv is None else argv)))
        except KeyboardInterrupt:  # Python's handler was back (`main` called by a program that set it)
            outcome = Outcome(128 + signal.SIGINT, signal.SIGINT)
        finally:
            _flush_standard_files()
    except BrokenPipeError:
        return _end_of_readers()
    finally:
        if interrupt is signal.default_int_handler:
            signal.signal(signal.SIGINT, interrupt)
    if outcome.fatal_signal is not None:
        return _die_of(outcome.fatal_signal, outcome.status)
    return outcome.status


def _open_standard_files() -> None:
    """Point a closed file descriptor 0, 1 or 2 (`>&-`) at /dev/null, and give Python a
    sys.stdout and sys.stderr for it: else the first pipe or socket the launcher opens takes
    that number, and its messages and the ranks' output would go there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                continue
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)


def _flush_standard_files() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _end_of_readers() -> int:
    """The reader of stdout or stderr went away (`| head -1`): end as other programs do, killed by
    SIGPIPE, with no traceback (what is still buffered goes to /dev/null)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        pass
    return _die_of(signal.SIGPIPE, 128 + signal.SIGPIPE)


def _die_of(sig: int, status: int) -> int:
    """End the process by signal `sig`, its default action restored; `status` if that does not end it."""
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    return status


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Target]:
    """Split `argv` at the program, parse the launcher's part; argparse exits 2 on errors (another
    launcher's option among them says what to give instead)."""
    split = _program_start(argv)
    ours = argv if split is None else argv[: split[0]]
    for token in ours:
        instead = _FOREIGN.get(token.partition("=")[0])
        if instead is not None:
            parser.error(f"{token.partition('=')[0]} is not an option of {PROG}: {instead}")
    options = parser.parse_args(ours)
    if split is None:
        parser.error("no program to run: give script.py, -m module, or -- command")
    index, kind = split
    if kind == "module":
        if argv[index] == "-m":
            if index + 1 >= len(argv):
                parser.error("argument -m: expected a module name")
            name, rest = argv[index + 1], argv[index + 2 :]
        else:  # -mmodule
            name, rest = argv[index][2:], argv[index + 1 :]
    elif kind == "command":
        if index + 1 >= len(argv):
            parser.error("no command after --")
        name, rest = argv[index + 1], argv[index + 2 :]
    else:
        name, rest = argv[index], argv[index + 1 :]
    from .plan import Target  # loads ringdist: not before `main` has taken Ctrl-C over

    return options, Target(kind, name, tuple(rest))


def _program_start(argv: list[str]) -> tuple[int, str] | None:
    """Index and kind ("script", "module", "command") of where the program begins in `argv`."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return i, "command"
        if token.startswith("-m") and not token.startswith("--"):
            return i, "module"
        if token in _VALUE_OPTIONS:
            i += 2  # the option and its value
        elif token.startswith("-") and token != "-":
            i += 1  # a flag, --opt=value, -n4, or an unknown option argparse will reject
        else:
            return i, "script"
    return None


# Options of mpirun, mpiexec, torchrun and mlx.launch that ringdist-launch lacks, and what to give instead.
_FOREIGN = dict.fromkeys(("-np", "--np"), "give -n N, the number of ranks")
_FOREIGN.update(dict.fromkeys(("-hostfile", "--hostfile", "-machinefile", "--machinefile", "-f"),
                              "give --hosts FILE.json, a JSON hostfile (MLX's format; see hostfiles/)"))
_FOREIGN.update(dict.fromkeys(("-H", "--host", "-host"), "give --hosts h1,h2 (host:slots for several ranks on one)"))
_FOREIGN.update(dict.fromkeys(("--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank", "--node-rank"),
                              "give -n N for ranks on this machine, or --hosts for several machines (one launcher "
                              "starts them all)"))
_FOREIGN.update(dict.fromkeys(("-x",), "give --env NAME=value"))
_FOREIGN.update(dict.fromkeys(("-wdir", "--wdir", "-wd", "--wd"), "give --cwd DIR"))
_FOREIGN.update(dict.fromkeys(("--backend",), "ring is ringdist's only backend: leave --backend out"))

# The options of _parser() that take a value (as a separate word): the scan must skip their values.
_VALUE_OPTIONS = {"-n", "--nprocs", "--hosts", "--env", "--cwd", "--python", "--timeout", "--grace",
                  "--rsh-agent", "--rendezvous"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] (script.py | -m module | -- command) [args ...]",
        description="Start the ranks of a ringdist job and supervise them: "
        "prefixed output, first failure stops the job.",
        allow_abbrev=False,
    )
    parser.add_argument("-n", "--nprocs", type=_rank_count, metavar="N",
                        help="number of ranks (default: 1, or every slot of --hosts)")
    parser.add_argument("--hosts", metavar="FILE.json|h1,h2",
                        help="a JSON hostfile, or comma-separated hosts (host:slots for several ranks)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="set K=V in every rank (repeatable; wins over the hostfile's envs)")
    parser.add_argument("--cwd", metavar="DIR", help="working directory of every rank")
    parser.add_argument("--python", default=sys.executable, metavar="PY",
                        help="interpreter for script.py and -m (default: the launcher's)")
    parser.add_argument("--rsh-agent", metavar="CMD",
                        help="command that runs a command on a host named after it, for hosts that are "
                        "not local (default: ssh -o BatchMode=yes; e.g. 'ssh -p 2222', 'ip netns exec')")
    parser.add_argument("--rendezvous", metavar="ADDR[:PORT]",
                        help="address the launcher's rendezvous listens on, reachable from every host "
                        "(default: 127.0.0.1, or this machine's address on the route to the first remote host)")
    parser.add_argument("--timeout", type=_timeout, metavar="S",
                        help="limit of the whole job's run time (not counting a suspension, Ctrl-Z); on expiry "
                        "stop every rank and exit 124 (inf: no limit)")
    parser.add_argument("--grace", type=_grace, default=5.0, metavar="S",
                        help=f"seconds between SIGTERM and SIGKILL when stopping ranks (default: 5, "
                        f"at most {MAX_GRACE:g})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say what the launcher does, and set RINGDIST_VERBOSE=1 in the ranks")
    parser.add_argument("--no-prefix", action="store_true",
                        help="do not prefix output lines with [rank]: each rank's bytes pass unchanged")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each rank's command and environment (secret redacted) and exit")
    parser.add_argument("-m", metavar="MODULE", dest="_module",
                        help="run a module as python -m does; the rest of the line is its arguments")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _rank_count(text: str) -> int:
    from .hostfile import MAX_RANKS  # loads ringdist: not before `main` has taken Ctrl-C over

    value = _positive_int(text)
    if value > MAX_RANKS:
        raise argparse.ArgumentTypeError(f"at most {MAX_RANKS} ranks, got {text!r}")
    return value


MAX_GRACE = 86400.0  # a day: ranks that ignore SIGTERM longer than that are killed anyway


def _timeout(text: str) -> float | None:
    """--timeout: a positive number of seconds; inf means no limit (None)."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds (inf: no limit), got {text!r}")
    return None if value == math.inf else value


def _grace(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= MAX_GRACE:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 and <= {MAX_GRACE:g}, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return value
