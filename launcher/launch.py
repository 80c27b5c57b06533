"""Carrying out a parsed command line: the plan, the checks made before anything starts, then a
dry run or the job. `cli` imports this module only once it has taken over Ctrl-C: it loads
ringdist (and numpy).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import shlex
import shutil
import socket
import sys

from ringdist.errors import ConfigError
from ringdist.settings import VARIABLES, Settings

from .hostfile import Hostfile, load_hostfile, parse_env_assignment, parse_hosts_arg
from .job import run_job
from .output import LineWriter
from .plan import LAUNCHER_VARS, JobPlan, RankLaunch, Target, build_plan, describe_plan, local_hostfile
from .policy import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_USAGE, PROG, Outcome, after_output
from .route import UnreachableHost, choose_rendezvous
from .spawn import UNREACHABLE, LocalSpawner, RemoteSpawner, spawner_for


def launch(options: argparse.Namespace, target: Target) -> Outcome:
    """Print the plan of a parsed command line (--dry-run) or run its job; how the launcher ends."""
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
    except UnreachableHost as e:  # (a name that does not resolve: a mistyped hostfile, most often)
        print(f"{PROG}: {e}{_hint_for(options.hosts, e)}", file=sys.stderr)
        return Outcome(UNREACHABLE)
    except ConfigError as e:
        print(f"{PROG}: error: {e}{_hint_for(options.hosts, e)}", file=sys.stderr)
        return Outcome(EXIT_USAGE)
    problem = _program_problem(target, plan)
    if problem is not None:
        message, status = problem
        print(f"{PROG}: {message}", file=sys.stderr)
        return Outcome(status)
    if options.dry_run:
        def remote_command(rank: RankLaunch, env: dict[str, str]) -> str:
            argv = remote_spawner().command(rank.placement.ssh or "", rank.argv, env,
                                            plan.cwd or os.getcwd(), keeper="<ringdist_launch/remote.py>")
            return shlex.join(argv) + "  (the job secret goes on its stdin)"

        print(describe_plan(plan, remote_command))
        return Outcome(0)
    sys.stdout.flush()
    sys.stderr.flush()
    writer = LineWriter(sys.stdout.fileno(), sys.stderr.fileno())
    lost = gone = False
    try:
        outcome = run_job(
            plan,
            spawners,
            writer,
            prefix=not options.no_prefix,
            timeout=options.timeout,
            grace=options.grace,
            verbose=options.verbose,
        )
    finally:
        lost, gone = writer.close()  # bounded: a stdout nobody reads does not keep the launcher from exiting
    return after_output(outcome, lost, gone)


def _plan(options: argparse.Namespace, target: Target) -> JobPlan:
    hostfile = _hosts(options)
    env = [parse_env_assignment(text, "--env") for text in options.env]
    _warn_of_names(hostfile, env)
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
        given = {**os.environ, **dict(rank.user_env)}
        try:
            settings = Settings.from_env(given)
        except ConfigError as exc:
            raise ConfigError(f"{_set_by(str(exc), hostfile, env)}{exc}") from None
        forced = settings.algo
        if given.get("RINGDIST_SOCKET_BUFFERS", "").strip():
            _warn_of_socket_limits(settings.socket_buffers)
        if forced:  # (the table's algorithms import numpy: only then)
            from ringdist import tuning

            tuning.check_overrides(forced)
    _check_local_addresses(plan)
    return plan


def _check_local_addresses(plan: JobPlan) -> None:
    """ConfigError for an address of a host whose ranks start on this machine (no `ssh` naming
    another one) that this machine does not have: each rank would fail to listen there. Found
    by binding a socket to it (nothing is sent)."""
    seen: set[str] = set()
    for rank in plan.ranks:
        placement = rank.placement
        if not placement.is_local:
            continue
        for ip in placement.ips:
            if ip in seen:
                continue
            seen.add(ip)
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((ip, 0))
            except OSError as e:
                raise ConfigError(f"host {placement.host!r}: {ip} is not an address of this machine "
                                  f"({e.strerror or e}); its ranks start here, as it names no other machine "
                                  f"with \"ssh\": list one of this machine's addresses, or add \"ssh\"") from None


def _program_problem(target: Target, plan: JobPlan) -> tuple[str, int] | None:
    """Why the program cannot start on this machine, seen before anything starts, and the exit
    status to end with; None if no problem is seen.

    - `script.py` that does not exist, or that is a directory without `__main__.py` (what
      Python runs of a directory): 127, as a shell's "not found";
    - a program named with a "/" that is a directory: 126, as a shell's "Is a directory";
    - a program named without "/" is looked up on PATH (as a shell does): when it is not
      found there but a file or directory of that name is where the ranks start, 127, saying
      so and how to name that file.

    Checked only when some rank runs here: a remote host has its own files.
    """
    if target.kind == "module":
        return None
    local = [r for r in plan.ranks if r.placement.is_local]
    if not local:
        return None
    name = target.name
    path = os.path.join(plan.cwd or "", name)
    where = f" (in --cwd {plan.cwd})" if plan.cwd and not os.path.isabs(name) else ""
    if target.kind == "script" and name.endswith(".py"):
        if not os.path.exists(path):
            return f"{name}: No such file or directory{where}", EXIT_NOT_FOUND
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "__main__.py")):
            return f"{name}: is a directory without a __main__.py for Python to run{where}", EXIT_NOT_FOUND
        return None
    if os.sep in name or (os.altsep and os.altsep in name):
        if os.path.isdir(path):
            return f"{name}: is a directory, not a program{where}", EXIT_NOT_EXECUTABLE
        return None
    search = dict(local[0].user_env).get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(name, path=search) is not None or not os.path.lexists(path):
        return None  # found on PATH; or nowhere, which starting it reports (127)
    found = "not found on PATH (a program named without '/' is looked up there)"
    if os.path.isdir(path):
        return f"{name}: {found}; ./{name}{where} is a directory, not a program", EXIT_NOT_FOUND
    here = f"in --cwd {plan.cwd}" if plan.cwd else "here"
    return f"{name}: {found}; to run the file {here}, write ./{name}", EXIT_NOT_FOUND


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


def _set_by(error: str, hostfile: Hostfile, env: list[tuple[str, str]]) -> str:
    """Where the variable a settings error names was set ('--env: ', 'hosts.json: envs[2]: '),
    or '' for the launcher's own environment; the last setting wins, as the ranks see it."""
    name = error.partition("=")[0]
    if any(n == name for n, _ in env):
        return "--env: "
    at = [i for i, (n, _) in enumerate(hostfile.envs) if n == name]
    return f"{hostfile.source}: envs[{at[-1]}]: " if at else ""


def _warn_of_names(hostfile: Hostfile, env: list[tuple[str, str]]) -> None:
    """A warning for each RINGDIST_ variable given (--env, the hostfile, the launcher's own
    environment, which every rank inherits) that ringdist does not read (a misspelt name would
    pass unnoticed), and each hostfile `envs` entry with no '='."""
    given = [("--env", name) for name, _ in env]
    given += [(f"{hostfile.source}: envs[{i}]", name) for i, (name, _) in enumerate(hostfile.envs)]
    known = sorted(VARIABLES | LAUNCHER_VARS)
    # The environment holds other tools' RINGDIST_ names too: only a near miss of one ringdist
    # reads is taken for a misspelling there (LANE for LANES, TIMOUT for TIMEOUT).
    settable = sorted(VARIABLES - LAUNCHER_VARS)  # (a near miss suggests none of the launcher's own)
    given += [("the environment", name) for name in sorted(os.environ)
              if name.startswith("RINGDIST_") and name not in known and _near(name, settable)]
    for where, name in given:
        if name.startswith("RINGDIST_") and name not in known:
            close = _near(name, settable) or difflib.get_close_matches(name, settable, n=1)
            print(f"{PROG}: warning: {where}: {name} is not a variable ringdist reads"
                  f"{f' (did you mean {close[0]}?)' if close else ''}", file=sys.stderr)
    for name in hostfile.bare:
        print(f"{PROG}: warning: {hostfile.source}: envs: {name!r} has no '=': every rank gets {name} set empty, "
              f"as mlx.launch does (write \"{name}=value\")", file=sys.stderr)


def _warn_of_socket_limits(sizes: tuple[int, int]) -> None:
    """A warning where RINGDIST_SOCKET_BUFFERS asks more than this machine's kernel gives a
    socket (Linux: net.core.rmem_max and wmem_max): it takes its limit without a word."""
    for asked, name in zip(sizes, ("rmem_max", "wmem_max")):
        try:
            with open(f"/proc/sys/net/core/{name}") as f:
                limit = int(f.read())
        except (OSError, ValueError):
            return  # not Linux (macOS halves a refused size: channel._set_buffer)
        if asked > limit:
            print(f"{PROG}: warning: RINGDIST_SOCKET_BUFFERS asks {asked} bytes of a socket's "
                  f"{'receive' if name == 'rmem_max' else 'send'} buffer; this machine gives at most {limit} "
                  f"(net.core.{name}: raise it with sysctl)", file=sys.stderr)


def _near(name: str, known: list[str]) -> list[str]:
    """The variable `name` (RINGDIST_...) is a near miss of, judged on what follows the prefix."""
    tails = {k[len("RINGDIST_"):]: k for k in known if k.startswith("RINGDIST_")}
    return [tails[t] for t in difflib.get_close_matches(name[len("RINGDIST_"):], list(tails), n=1, cutoff=0.7)]


def _hint_for(hosts: str | None, error: Exception) -> str:
    """`_hosts_hint`, only where the error is about that name as a host (not --hosts' own syntax,
    nor other settings)."""
    return _hosts_hint(hosts) if hosts and repr(hosts) in str(error) else ""


def _hosts_hint(spec: str | None) -> str:
    """What an error adds where `--hosts` was one name that is no file here: it was taken as a host
    name, and may have been meant as a hostfile (`--hosts hosts.jsn`)."""
    if spec is None or "," in spec or ":" in spec or os.path.exists(spec) or not spec.strip():
        return ""
    return (f" (--hosts {spec}: no file of that name here, so it was taken as a host name; a hostfile is given "
            f"by its path, or named *.json)")


def _hosts(options: argparse.Namespace) -> Hostfile:
    spec = options.hosts
    if spec is None:
        return local_hostfile(options.nprocs or 1)
    if spec.endswith(".json") or os.sep in spec or os.path.isfile(spec):  # host names hold no "/"
        return load_hostfile(spec)
    return parse_hosts_arg(spec)
