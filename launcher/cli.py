"""`ringdist-launch`: command-line parsing and the entry point.

    ringdist-launch [options] script.py [args...]
    ringdist-launch [options] -m module [args...]
    ringdist-launch [options] -- command [args...]

Launcher options stop at the program: everything after `script.py`, after
`-m module` or after `--` belongs to the program, so `ringdist-launch -n 2
s.py -n 5` passes `-n 5` to s.py. Bad arguments or a malformed hostfile end
with one `ringdist-launch: error: ...` line and exit status 2; a script.py
that does not exist ends with one line naming it and status 127, as a shell's
"not found".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
from typing import Sequence

from ringdist.errors import ConfigError
from .hostfile import MAX_RANKS, Hostfile, load_hostfile, parse_env_assignment, parse_hosts_arg
from ringdist import tuning
from ringdist.settings import Settings

from .job import run_job
from .output import LineWriter
from .plan import JobPlan, RankLaunch, Target, build_plan, describe_plan, local_hostfile
from .policy import EXIT_NOT_FOUND
from .route import choose_rendezvous
from .spawn import LocalSpawner, RemoteSpawner, spawner_for

PROG = "ringdist-launch"
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments), run the job, return the exit status."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C before the ranks' supervision took over the signal
        return 130


def _main(argv: list[str]) -> int:
    parser = _parser()
    options, target = parse_command_line(parser, argv)
    local = LocalSpawner()
    remote: list[RemoteSpawner] = []
    try:
        plan = _plan(options, target)
        agent = _agent(options)
        host, port = choose_rendezvous(plan, options.rendezvous, agent)
        plan = dataclasses.replace(plan, rendezvous_host=host, rendezvous_port=port)

        def remote_spawner() -> RemoteSpawner:
            if not remote:
                remote.append(RemoteSpawner(local, agent=agent, python=options.python, grace=options.grace,
                                            connect_timeout=_connect_timeout(plan)))
            return remote[0]

        spawners = [spawner_for(r.placement, local, remote_spawner) for r in plan.ranks]
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    missing = _missing_script(target, plan)
    if missing is not None:
        print(f"{PROG}: {missing}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if options.dry_run:
        def remote_command(rank: RankLaunch, env: dict[str, str]) -> str:
            argv = remote_spawner().command(rank.placement.ssh or "", rank.argv, env,
                                            plan.cwd or os.getcwd(), keeper="<ringdist_launch/remote.py>")
            return shlex.join(argv) + "  (the job secret goes on its stdin)"

        print(describe_plan(plan, remote_command))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    writer = LineWriter(sys.stdout.fileno(), sys.stderr.fileno())
    try:
        return run_job(
            plan,
            spawners,
            writer,
            prefix=not options.no_prefix,
            timeout=options.timeout,
            grace=options.grace,
            verbose=options.verbose,
        )
    finally:
        writer.close()  # bounded: a stdout nobody reads does not keep the launcher from exiting


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Target]:
    """Split `argv` at the program, parse the launcher's part; argparse exits 2 on errors."""
    split = _program_start(argv)
    options = parser.parse_args(argv if split is None else argv[: split[0]])
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
                        help="wall-clock limit of the whole job; on expiry stop every rank and exit 124 "
                        "(inf: no limit)")
    parser.add_argument("--grace", type=_grace, default=5.0, metavar="S",
                        help=f"seconds between SIGTERM and SIGKILL when stopping ranks (default: 5, "
                        f"at most {MAX_GRACE:g})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say what the launcher does, and set RINGDIST_VERBOSE=1 in the ranks")
    parser.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with [rank]")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each rank's command and environment (secret redacted) and exit")
    parser.add_argument("-m", metavar="MODULE", dest="_module",
                        help="run a module as python -m does; the rest of the line is its arguments")
    return parser


def _plan(options: argparse.Namespace, target: Target) -> JobPlan:
    hostfile = _hosts(options)
    env = [parse_env_assignment(text, "--env") for text in options.env]
    if options.cwd is not None and not os.path.isdir(options.cwd):
        raise ConfigError(f"--cwd: no such directory: {options.cwd}")
    plan = build_plan(
        target,
        hostfile,
        nprocs=options.nprocs,
        python=options.python,
        env=env,
        cwd=options.cwd,
        verbose=options.verbose,
    )
    for rank in plan.ranks[:1]:  # the library's settings, as the ranks will read them: refused here, not in N tracebacks
        tuning.check_overrides(Settings.from_env({**os.environ, **dict(rank.user_env)}).algo)
    return plan


def _missing_script(target: Target, plan: JobPlan) -> str | None:
    """Why `script.py` cannot run on this machine (it does not exist), or None.

    Checked only when some rank runs here: a remote host has its own files.
    """
    if target.kind != "script" or not target.name.endswith(".py"):
        return None  # a command is looked up on PATH when it starts (127 if not found)
    if not any(r.placement.is_local for r in plan.ranks):
        return None
    path = os.path.join(plan.cwd or "", target.name)
    if os.path.exists(path):
        return None
    where = f" (in --cwd {plan.cwd})" if plan.cwd and not os.path.isabs(target.name) else ""
    return f"{target.name}: No such file or directory{where}"


def _agent(options: argparse.Namespace) -> list[str] | None:
    if options.rsh_agent is None:
        return None
    try:
        agent = shlex.split(options.rsh_agent)
    except ValueError as e:
        raise ConfigError(f"--rsh-agent: {e}") from None
    if not agent:
        raise ConfigError("--rsh-agent: empty command")
    return agent


def _connect_timeout(plan: JobPlan) -> float:
    """RINGDIST_CONNECT_TIMEOUT as the ranks will see it (their envs, else the launcher's environment)."""
    env = {**os.environ, **dict(plan.ranks[0].user_env)} if plan.ranks else dict(os.environ)
    return Settings.from_env(env).connect_timeout


def _hosts(options: argparse.Namespace) -> Hostfile:
    spec = options.hosts
    if spec is None:
        return local_hostfile(options.nprocs or 1)
    if spec.endswith(".json") or os.sep in spec or os.path.isfile(spec):  # host names hold no "/"
        return load_hostfile(spec)
    return parse_hosts_arg(spec)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _rank_count(text: str) -> int:
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
