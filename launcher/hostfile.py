"""Hostfiles: which hosts a job runs on, the addresses its ranks listen on, how many ranks each.

The format is MLX's launcher hostfile, extended with `slots`::

    {"hosts": [{"ssh": "node1", "ips": ["192.0.2.1"], "slots": 2},
               {"ssh": "node2", "ips": ["192.0.2.2"]}],
     "envs": ["OMP_NUM_THREADS=1"]}

or a bare list of host objects. Per host: `ssh` is how the launcher reaches it
(omitted or null: this machine); `ips` are the addresses its ranks listen on, the
first one primary (omitted or empty: 127.0.0.1 for a local host, unknown for a
remote one); `slots` is the number of ranks it runs (default 1).

MLX-only fields (`backend` at the top, `rdma` per host) are accepted and ignored,
so MLX hostfiles work unchanged; any other unknown field is an error, because a
misspelt `slot` or `ip` silently ignored would run the wrong job.

This module only parses: every malformed input raises `ConfigError` with a
one-line message naming the file, the entry and the field. Input is bounded
(`MAX_*` below): a hostfile pointing at /dev/zero, a FIFO, deeply nested JSON,
`"slots": 1e23` or a NUL byte in a value is an error, never a hang or a traceback.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringdist.errors import ConfigError

__all__ = [
    "Host",
    "Hostfile",
    "Placement",
    "load_hostfile",
    "parse_hostfile",
    "parse_hosts_arg",
    "expand_placements",
    "same_machine_groups",
    "is_local_host",
    "parse_env_assignment",
]

LOCAL_DEFAULT_IP = "127.0.0.1"

_HOST_FIELDS = ("ssh", "ips", "slots")
_TOP_FIELDS = ("hosts", "envs")
_MLX_HOST_FIELDS = ("rdma",)
_MLX_TOP_FIELDS = ("backend",)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Bounds on what a hostfile may hold (documented in the README's Hostfile section).
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16  # JSON nesting; a hostfile needs 4 ({"hosts": [{"ips": [...]}]})
MAX_HOSTS = 4096  # host entries
MAX_SLOTS = 4096  # per host entry
MAX_RANKS = 4096  # in the whole job
MAX_NAME_CHARS = 255  # an ssh target (a host name is at most 253)
MAX_ENV_CHARS = 65536  # one NAME=value entry


@dataclass(frozen=True)
class Host:
    """One machine of a job: how to reach it, where its ranks listen, how many ranks."""

    ssh: str | None
    ips: tuple[str, ...]
    slots: int = 1

    @property
    def name(self) -> str:
        """The name used in messages: the ssh name, else the primary IP, else localhost."""
        if self.ssh:
            return self.ssh
        return self.ips[0] if self.ips else "localhost"

    @property
    def is_local(self) -> bool:
        """Whether ranks on this host are started as local processes (no ssh)."""
        return self.ssh is None or is_local_host(self.ssh)


@dataclass(frozen=True)
class Hostfile:
    """A parsed hostfile: the hosts in rank order and the `envs` every rank gets."""

    source: str
    hosts: tuple[Host, ...]
    envs: tuple[tuple[str, str], ...] = ()
    bare: tuple[str, ...] = ()  # names in `envs` given without "=" (set empty, as mlx.launch does)

    @property
    def slots(self) -> int:
        """Total number of ranks the hostfile has room for."""
        return sum(h.slots for h in self.hosts)


@dataclass(frozen=True)
class Placement:
    """Where one rank runs: its host (by index and ssh name), addresses and rank on that machine."""

    rank: int
    host_index: int
    host: str
    ssh: str | None
    ips: tuple[str, ...]
    local_rank: int
    is_local: bool
    machine: int = 0  # which machine, as `local_rank` counts them (`same_machine_groups`)


def load_hostfile(path: str | Path) -> Hostfile:
    """Read and validate the JSON hostfile at `path`; `ConfigError` on anything malformed."""
    source = str(path)
    raw = _read_bounded(path, source)
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is no error
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    if _nested_too_deep(text):
        raise ConfigError(f"{source}: JSON nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(text, object_pairs_hook=_unique_fields)
    except _RepeatedField as e:
        raise ConfigError(f"{source}: field {_show(e.args[0])} appears twice in one object") from None
    except json.JSONDecodeError as e:
        hint = ""
        if not text.lstrip().startswith(("{", "[")):  # mpirun's "node1 slots=2", a list of names
            hint = ('; a hostfile is JSON, MLX\'s format: {"hosts": [{"ssh": "node1", "slots": 2}, '
                    '{"ssh": "node2"}]} (hostfiles/ has examples)')
        raise ConfigError(
            f"{source}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}){hint}"
        ) from None
    except ValueError:  # an integer of thousands of digits (Python's int_max_str_digits)
        raise ConfigError(f"{source}: not valid JSON: a number with too many digits") from None
    return parse_hostfile(data, source)


class _RepeatedField(ValueError):
    """A JSON object with a key twice (json keeps the last: `"slots": 1, "slots": 2` would run 2)."""


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedField(key)
            seen.add(key)
    return obj


def _read_bounded(path: str | Path, source: str) -> bytes:
    """The bytes of the regular file at `path`, at most `MAX_FILE_BYTES` of them.

    Opened without blocking, so a FIFO nobody writes to is refused rather than waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"{source}: cannot read hostfile: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{source}: cannot read hostfile: not a regular file")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read hostfile: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: hostfile larger than {MAX_FILE_BYTES} bytes")
    return b"".join(chunks)


# A string, or an unterminated one up to the end: a match from every quote, so the scan stays linear.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _nested_too_deep(text: str) -> bool:
    """Whether arrays and objects in JSON `text` nest deeper than `MAX_DEPTH` (brackets in strings do not count)."""
    depth = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth = max(0, depth - 1)
    return False


def parse_hostfile(data: Any, source: str = "<hostfile>") -> Hostfile:
    """Validate already-decoded hostfile JSON; `source` names it in error messages."""
    if isinstance(data, list):
        return Hostfile(source, _parse_hosts(data, source, ""))
    if not isinstance(data, dict):
        raise ConfigError(
            f'{source}: expected an object with "hosts" or a list of hosts, got {_kind(data)}'
        )
    _reject_unknown(data, _TOP_FIELDS + _MLX_TOP_FIELDS, source, "top level")
    if "hosts" not in data:
        raise ConfigError(f'{source}: missing "hosts" (a list of host objects)')
    hosts = _parse_hosts(data["hosts"], source, "hosts")
    envs = data.get("envs", [])
    bare = tuple(item for item in envs if isinstance(item, str) and "=" not in item) if isinstance(envs, list) else ()
    return Hostfile(source, hosts, _parse_envs(envs, source), bare)


def parse_hosts_arg(spec: str) -> Hostfile:
    """Parse `--hosts h1,h2:4,[::1]:2`: comma-separated hosts, each with optional `:slots`.

    An IP address is both the ssh target and the listening address; a name is the
    ssh target only. Use brackets for an IPv6 address with slots.
    """
    source = "--hosts"
    if not spec.strip():
        raise ConfigError(f"{source}: empty host list")
    tokens = spec.split(",")
    if len(tokens) > MAX_HOSTS:
        raise ConfigError(f"{source}: {len(tokens)} hosts; at most {MAX_HOSTS}")
    hosts = []
    for i, token in enumerate(tokens):
        name, slots = _split_slots(token.strip(), source, i)
        if not name:
            raise ConfigError(f"{source}: entry {i}: empty host name in {spec!r}")
        _check_ssh_name(name, source, f"entry {i}")
        if _is_ip(name):
            _check_one_host(name, source, f"entry {i}")
            ips: tuple[str, ...] = (name,)
        elif is_local_host(name):
            ips = (LOCAL_DEFAULT_IP,)
        else:
            ips = ()
        hosts.append(Host(ssh=name, ips=ips, slots=slots))
    return Hostfile(source, tuple(hosts))


def expand_placements(hostfile: Hostfile, world_size: int | None = None) -> list[Placement]:
    """Per-rank placements in rank order (host order, then slot order).

    `world_size` takes the first that many slots (all slots when None); asking for
    more ranks than the hostfile has slots is a `ConfigError`. A rank's `local_rank`
    is its index among the ranks on the same machine (see `same_machine_groups`).
    """
    total = hostfile.slots
    if world_size is None:
        world_size = total
    if world_size < 1:
        raise ConfigError(f"{hostfile.source}: world size must be at least 1, got {world_size}")
    if world_size > MAX_RANKS:
        raise ConfigError(f"{hostfile.source}: {world_size} ranks; at most {MAX_RANKS} in one job")
    if world_size > total:
        raise ConfigError(
            f"{hostfile.source}: {world_size} ranks requested but the hosts have "
            f"{total} slot{'s' if total != 1 else ''}"
        )
    machine = same_machine_groups(hostfile.hosts)
    on_machine: dict[int, int] = {}  # machine -> ranks placed on it so far
    placements: list[Placement] = []
    for host_index, host in enumerate(hostfile.hosts):
        for _ in range(host.slots):
            if len(placements) == world_size:
                return placements
            local_rank = on_machine.get(machine[host_index], 0)
            on_machine[machine[host_index]] = local_rank + 1
            placements.append(
                Placement(
                    rank=len(placements),
                    host_index=host_index,
                    host=host.name,
                    ssh=host.ssh,
                    ips=host.ips,
                    local_rank=local_rank,
                    is_local=host.is_local,
                    machine=machine[host_index],
                )
            )
    return placements


def same_machine_groups(hosts: tuple[Host, ...] | list[Host]) -> list[int]:
    """For each host entry, the index of the first entry on the same machine.

    Two entries are the same machine when their `ssh` names are equal, or when both
    are local and listen on the same `ips`; the relation is closed transitively.
    Local entries with different `ips` (loopback-4.json's 127.0.0.1 to 127.0.0.4)
    stand in for different machines, as they do for everything else.
    """
    group = list(range(len(hosts)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    first: dict[tuple, int] = {}  # ("ssh", name) or ("local", ips) -> the first entry with it
    for j, host in enumerate(hosts):
        keys = [("ssh", host.ssh)] if host.ssh is not None else []
        if host.is_local:
            keys.append(("local", host.ips))
        for key in keys:
            i = first.setdefault(key, j)
            ri, rj = root(i), root(j)
            group[max(ri, rj)] = min(ri, rj)
    return [root(i) for i in range(len(hosts))]


def is_local_host(name: str | None) -> bool:
    """Whether `name` (an ssh target, possibly `user@host`) is this machine.

    True for None (ssh omitted), localhost, 127.x.y.z, ::1 and this
    machine's host name or fully qualified name. No DNS lookups: a name that only
    resolves to a local address is not treated as local.
    """
    if name is None:
        return True
    host = name.rpartition("@")[2].strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return addr.is_loopback
    return host in _own_names()


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    """This machine's host name and fully qualified name (looked up once: getfqdn may ask DNS)."""
    return frozenset({socket.gethostname().lower(), socket.getfqdn().lower()})


def _parse_hosts(value: Any, source: str, where: str) -> tuple[Host, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{_at(source, where)}expected a list of host objects, got {_kind(value)}")
    if not value:
        raise ConfigError(f"{_at(source, where)}empty list; at least one host is needed")
    if len(value) > MAX_HOSTS:
        raise ConfigError(f"{_at(source, where)}{len(value)} host entries; at most {MAX_HOSTS}")
    return tuple(_parse_host(entry, source, f"{where}[{i}]") for i, entry in enumerate(value))


def _parse_host(entry: Any, source: str, where: str) -> Host:
    if not isinstance(entry, dict):
        raise ConfigError(f"{_at(source, where)}expected a host object, got {_kind(entry)}")
    _reject_unknown(entry, _HOST_FIELDS + _MLX_HOST_FIELDS, source, where)

    ssh = entry.get("ssh")
    if ssh is not None:
        if not isinstance(ssh, str):
            raise ConfigError(f"{_at(source, where + '.ssh')}expected a string, got {_show(ssh)}")
        _check_ssh_name(ssh, source, where + ".ssh")

    ips_value = entry.get("ips", [])
    if ips_value is None:
        ips_value = []
    if not isinstance(ips_value, list):
        raise ConfigError(
            f"{_at(source, where + '.ips')}expected a list of IP addresses, got {_show(ips_value)}"
        )
    for j, ip in enumerate(ips_value):
        if not isinstance(ip, str) or not _is_ip(ip):
            raise ConfigError(
                f"{_at(source, f'{where}.ips[{j}]')}expected an IP address, got {_show(ip)}"
            )
        _check_one_host(ip, source, f"{where}.ips[{j}]")
    ips = tuple(ips_value)
    if not ips and (ssh is None or is_local_host(ssh)):
        ips = (LOCAL_DEFAULT_IP,)

    slots = entry.get("slots", 1)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(
            f"{_at(source, where + '.slots')}expected a positive integer, got {_show(slots)}"
        )
    if slots > MAX_SLOTS:
        raise ConfigError(f"{_at(source, where + '.slots')}at most {MAX_SLOTS} ranks per host, got {_show(slots)}")
    return Host(ssh=ssh, ips=ips, slots=slots)


def parse_env_assignment(text: Any, where: str, bare: bool = False) -> tuple[str, str]:
    """Split `NAME=value` (from `envs` or `--env`); `ConfigError` naming `where` otherwise. With
    `bare` (a hostfile's `envs`), a `NAME` alone sets it empty, as `mlx.launch` does."""
    name, sep, value = text.partition("=") if isinstance(text, str) else ("", "", "")
    if not (sep or bare) or not _ENV_NAME.match(name):
        raise ConfigError(f'{where}: expected "NAME=value", got {_show(text)}')
    if len(text) > MAX_ENV_CHARS:
        raise ConfigError(f"{where}: {name}: longer than {MAX_ENV_CHARS} characters")
    if "\0" in value:
        raise ConfigError(f"{where}: {name}: the value holds a NUL byte")
    return name, value


def _parse_envs(value: Any, source: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f'{source}: envs: expected a list of "NAME=value" strings, got {_show(value)}')
    return tuple(parse_env_assignment(item, f"{source}: envs[{i}]", bare=True) for i, item in enumerate(value))


def _split_slots(token: str, source: str, index: int) -> tuple[str, int]:
    """Split `host:slots`; a bare IPv6 address (or `[v6]`) has no slots part.

    A bare IPv6 address whose last group is all digits and whose rest is an address itself
    (`::1:2`) is refused: it reads as that address with slots as well, so brackets must say which.
    """
    if token.startswith("["):
        host, close, rest = token[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(f"{source}: entry {index}: malformed bracketed address {token!r}")
        return host, _slots_of(rest[1:], source, index) if rest else 1
    if _is_ip(token):
        before, _, last = token.rpartition(":")
        if last.isascii() and last.isdigit() and _is_ip(before):
            raise ConfigError(f"{source}: entry {index}: {token!r} is ambiguous: write [{before}]:{last} for "
                              f"{last} slot{'s' if last.lstrip('0') != '1' else ''} on {before}, "
                              f"or [{token}] for that address")
        return token, 1
    if ":" not in token:
        return token, 1
    host, _, slots = token.rpartition(":")
    return host, _slots_of(slots, source, index)


def _slots_of(text: str, source: str, index: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text.lstrip("0")[:10] or "0") < 1:
        raise ConfigError(f"{source}: entry {index}: slots: expected a positive integer, got {_shorten(repr(text))}")
    if len(text.lstrip("0")) > 9 or int(text) > MAX_SLOTS:
        raise ConfigError(f"{source}: entry {index}: slots: at most {MAX_SLOTS} ranks per host, got {_shorten(text)}")
    return int(text)


def _check_ssh_name(name: str, source: str, where: str) -> None:
    # A leading "-" would be read by ssh as an option; NUL and other control characters cannot be in an argument.
    if not name or name.startswith("-") or any(c.isspace() or not c.isprintable() for c in name):
        raise ConfigError(f"{_at(source, where)}expected a host name, got {_show(name)}")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"{_at(source, where)}longer than {MAX_NAME_CHARS} characters")


def _reject_unknown(obj: dict, known: tuple[str, ...], source: str, where: str) -> None:
    for key in obj:
        if key not in known:
            allowed = ", ".join(k for k in known if k not in _MLX_HOST_FIELDS + _MLX_TOP_FIELDS)
            raise ConfigError(
                f"{source}: {where}: unknown field {_show(key)} (expected {allowed})"
            )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_one_host(text: str, source: str, where: str) -> None:
    """ConfigError for an IP address that is no one host's: every interface (0.0.0.0, ::), a
    multicast group or the broadcast address. Binding to one can succeed, but peers told to dial
    it reach no rank (0.0.0.0 reaches whatever host dials it), and the job fails only at connect."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified:
        why = "means every interface, not an address peers can dial"
    elif addr.is_multicast:
        why = "is a multicast group"
    elif addr == ipaddress.IPv4Address("255.255.255.255"):
        why = "is the broadcast address"
    else:
        return
    raise ConfigError(f"{_at(source, where)}{text} {why}: give an address of that host "
                      f"(127.0.0.1 for this machine)")


def _at(source: str, where: str) -> str:
    return f"{source}: {where}: " if where else f"{source}: "


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _show(value: Any) -> str:
    """A short JSON rendering of a bad value for a one-line message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an integer of thousands of digits
        text = f"<{type(value).__name__}>"
    return _shorten(text)


def _shorten(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
