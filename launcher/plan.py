"""The job plan: what each rank runs, where, and with which environment.

Pure functions of the parsed arguments and the hostfile, so that what the
launcher would do (and what `--dry-run` prints) is decided and testable
without starting anything.
"""

from __future__ import annotations

import collections

import shlex
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from ringdist.errors import ConfigError
from .hostfile import Host, Hostfile, Placement, expand_placements

REDACTED = "<redacted>"
RENDEZVOUS_HOST = "127.0.0.1"

# Variables the launcher sets per rank; users may not override them with envs/--env.
LAUNCHER_VARS = frozenset(
    {
        "RINGDIST_RANK",
        "RINGDIST_WORLD_SIZE",
        "RINGDIST_LOCAL_RANK",
        "RINGDIST_LOCAL_WORLD_SIZE",
        "RINGDIST_RENDEZVOUS",
        "RINGDIST_SECRET",
        "RINGDIST_BIND",
        "RINGDIST_HOST",
        "RINGDIST_SOCKET_DIR",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
    }
)


@dataclass(frozen=True)
class Target:
    """What every rank runs: a script (`*.py` under Python), a module (`-m`) or a command (`--`)."""

    kind: Literal["script", "module", "command"]
    name: str
    args: tuple[str, ...] = ()

    def argv(self, python: str) -> list[str]:
        """The command line that runs this target with interpreter `python`."""
        if self.kind == "module":
            return [python, "-m", self.name, *self.args]
        if self.kind == "script" and self.name.endswith(".py"):
            return [python, self.name, *self.args]
        return [self.name, *self.args]


@dataclass(frozen=True)
class RankLaunch:
    """One rank of the plan: where it runs, its command line and the variables it gets."""

    placement: Placement
    world_size: int
    argv: tuple[str, ...]
    user_env: tuple[tuple[str, str], ...]
    verbose: bool = False
    same_machine: int = 1  # ranks sharing this rank's physical machine (the library's spin default)
    local_world_size: int = 1  # ranks that `local_rank` counts among (torchrun's LOCAL_WORLD_SIZE)
    same_machine_rank: int = 0  # this rank's index among the `same_machine` ranks

    @property
    def rank(self) -> int:
        return self.placement.rank

    @property
    def host(self) -> str:
        return self.placement.host

    def env(self, rendezvous: str, secret: str, socket_dir: str | None = None) -> dict[str, str]:
        """Every variable this rank gets on top of the launcher's own environment.

        Hostfile `envs`, then `--env`, then the launcher's per-rank variables; later wins.
        `socket_dir`: the job's directory for local sockets, given to ranks on this machine.
        """
        p = self.placement
        env = dict(self.user_env)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "RINGDIST_RANK": str(p.rank),
                "RINGDIST_WORLD_SIZE": str(self.world_size),
                "RINGDIST_LOCAL_RANK": str(self.same_machine_rank),
                "RINGDIST_LOCAL_WORLD_SIZE": str(self.same_machine),
                "RINGDIST_RENDEZVOUS": rendezvous,
                "RINGDIST_SECRET": secret,
                "RINGDIST_BIND": ",".join(p.ips),
                "RINGDIST_HOST": p.host,
                "RANK": str(p.rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(p.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world_size),
            }
        )
        if self.verbose:
            env["RINGDIST_VERBOSE"] = "1"
        if socket_dir is not None and p.is_local:
            env["RINGDIST_SOCKET_DIR"] = socket_dir
        return env


@dataclass(frozen=True)
class JobPlan:
    """Every rank of a job, plus where the ranks run (`cwd`) and where the rendezvous listens."""

    ranks: tuple[RankLaunch, ...]
    cwd: str | None
    rendezvous_host: str = RENDEZVOUS_HOST
    rendezvous_port: int = 0  # 0: an ephemeral port

    @property
    def has_remote_ranks(self) -> bool:
        return any(not r.placement.is_local for r in self.ranks)

    @property
    def world_size(self) -> int:
        return len(self.ranks)


def local_hostfile(nprocs: int) -> Hostfile:
    """The hostfile of a job without `--hosts`: `nprocs` ranks on this machine at 127.0.0.1."""
    return Hostfile("-n", (Host(ssh="localhost", ips=("127.0.0.1",), slots=nprocs),))


def build_plan(
    target: Target,
    hostfile: Hostfile,
    *,
    nprocs: int | None = None,
    python: str,
    env: Sequence[tuple[str, str]] = (),
    cwd: str | None = None,
    verbose: bool = False,
) -> JobPlan:
    """Expand `hostfile` into ranks (the first `nprocs` slots, or all) running `target`.

    `env` (from `--env`) is applied after the hostfile's `envs`. Overriding a
    variable the launcher sets per rank is a `ConfigError`.
    """
    for source, pairs in ((f"{hostfile.source}: envs", hostfile.envs), ("--env", env)):
        for name, _ in pairs:
            if name == "RINGDIST_SOCKET_DIR":
                raise ConfigError(f"{source}: {name} is the launcher's own: the per-job directory it makes for the "
                                  "ranks of this machine's portable shared memory (RINGDIST_SHM=posix, or no memfd)")
            if name in LAUNCHER_VARS:
                raise ConfigError(f"{source}: {name} is set by the launcher for each rank")
    placements = expand_placements(hostfile, nprocs)
    argv = tuple(target.argv(python))
    user_env = tuple(hostfile.envs) + tuple(env)
    local = sum(1 for p in placements if p.is_local)
    by_ssh = collections.Counter(p.ssh for p in placements)
    by_machine = collections.Counter(p.machine for p in placements)
    computer = [None if p.is_local else p.ssh for p in placements]  # which computer: this one (None), or by ssh name
    ranks = tuple(
        RankLaunch(placement=p, world_size=len(placements), argv=argv, user_env=user_env, verbose=verbose,
                   same_machine=local if p.is_local else by_ssh[p.ssh], local_world_size=by_machine[p.machine],
                   same_machine_rank=computer[:i].count(computer[i]))
        for i, p in enumerate(placements)
    )
    return JobPlan(ranks=ranks, cwd=cwd)


def describe_plan(plan: JobPlan, remote_command: Callable[[RankLaunch, dict[str, str]], str] | None = None) -> str:
    """What `--dry-run` prints: each rank's host, working directory, added environment and command.

    `remote_command` renders the local command line that starts a remote rank (`remote:` line).
    """
    port = plan.rendezvous_port or "<port>"
    rendezvous = f"[{plan.rendezvous_host}]:{port}" if ":" in plan.rendezvous_host else f"{plan.rendezvous_host}:{port}"
    lines = [f"ringdist-launch: dry run: {plan.world_size} rank(s), rendezvous at {rendezvous}"]
    for r in plan.ranks:
        where = "local" if r.placement.is_local else f"remote, through {r.placement.ssh}"
        lines.append(f"rank {r.rank} on host {r.host} ({where}):")
        if plan.cwd:
            lines.append(f"  cwd: {plan.cwd}")
        env = r.env(rendezvous, REDACTED)
        shown = (f"{k}={v if v in (rendezvous, REDACTED) else shlex.quote(v)}" for k, v in env.items())
        lines.append("  env: " + " ".join(shown))
        lines.append("  cmd: " + shlex.join(r.argv))
        if remote_command is not None and not r.placement.is_local:
            lines.append("  remote: " + remote_command(r, env))
    return "\n".join(lines)
