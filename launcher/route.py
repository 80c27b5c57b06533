"""Where the launcher's rendezvous listens: an address every host of the job can reach.

`--rendezvous ADDR[:PORT]` decides. Otherwise an all-local job uses 127.0.0.1,
and a job with remote hosts uses this machine's address on the route to the
first remote host (found by the kernel's route lookup, which sends nothing).
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from typing import Sequence

from ringdist.errors import ConfigError
from ringdist.channel import datagram_addresses
from ringdist.routes import source_address

from .plan import RENDEZVOUS_HOST, JobPlan
from .spawn import is_ssh_like


class UnreachableHost(ConfigError):
    """A host of the hostfile that ssh cannot reach: its name does not resolve (exit status 255)."""


def parse_rendezvous_option(text: str) -> tuple[str, int]:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address -> (ip, port); port 0 means any."""
    where = f"--rendezvous {text!r}"
    host, port = text, 0
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(f"{where}: malformed bracketed address")
        port_text = rest[1:] if rest else "0"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        port_text = "0"
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"{where}: the port must be a number from 1 to 65535")
    port = int(port_text)
    if not host:
        raise ConfigError(f"{where}: no address")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        try:
            ip = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
        except OSError as exc:
            raise ConfigError(f"{where}: cannot resolve {host!r}: {exc.strerror or exc}") from None
    return ip, port


def choose_rendezvous(plan: JobPlan, option: str | None, agent: Sequence[str] | None) -> tuple[str, int]:
    """The (ip, port) the rendezvous of `plan` listens on."""
    if option is not None:
        return parse_rendezvous_option(option)
    if not plan.has_remote_ranks:
        return RENDEZVOUS_HOST, 0
    first = next(r.placement for r in plan.ranks if not r.placement.is_local)
    assert first.ssh is not None
    target = first.ssh.rpartition("@")[2].strip("[]")
    candidates = [*first.ips, target]
    for candidate in candidates:
        address = source_address(candidate)
        if address:
            return address, 0
    if agent is None or is_ssh_like(agent):  # an alias in ~/.ssh/config: ask ssh for the real name
        config = _ssh_config(list(agent or ["ssh"]), first.ssh)
        real = config.get("hostname")
        address = source_address(real) if real else None
        if address:
            return address, 0
        name = real or target
        proxied = any(config.get(key, "none") != "none" for key in ("proxyjump", "proxycommand"))
        if not proxied and not datagram_addresses(name):  # ssh could not reach it either (a jump host may)
            raise UnreachableHost(f"host {first.host!r}: cannot resolve {name!r} (no such host name, or no "
                                  f"name service)")
    raise ConfigError(
        f"cannot tell which address of this machine host {first.host!r} can reach "
        f"(tried {', '.join(candidates)}); give --rendezvous ADDR[:PORT]")


def _ssh_config(agent: list[str], target: str) -> dict[str, str]:
    """What ssh would use to reach `target` (`ssh -G`: hostname, proxyjump, ...), by lower-case key;
    empty when ssh cannot say."""
    try:
        out = subprocess.run([*agent, "-G", target], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if value.strip():
            config.setdefault(key.lower(), value.strip())
    return config
