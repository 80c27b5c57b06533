"""The ringdist exception tree.

Every error the library raises on purpose derives from `RingError`, which is a
`RuntimeError` (as MLX raises `RuntimeError`). Messages name the rank, the peer,
the address and the operation wherever they are known.

    RingError
    ├── ConfigError        environment, hostfile, arguments to init()
    ├── ConnectError       a peer (or the rendezvous) cannot be reached
    ├── AuthError          a connection failed the HMAC handshake
    ├── ProtocolError      bytes that are not ringdist's wire protocol
    ├── PeerLostError      a peer closed or reset its connection mid-operation
    ├── RingTimeoutError   a bounded wait expired (also a TimeoutError)
    ├── MismatchError      ranks called different collectives / shapes / dtypes
    └── GroupBrokenError   a group whose earlier collective or message failed

Each error also carries what its message names, as attributes, where known (else None):
`rank` (this rank, in `group`), `group` (the group's id), `op` (the call), `peer` (the rank
of `group` it concerns: the one lost, waited for, or that called otherwise), `address` (that
peer's address) and `origin` (the rank that found the failure: this one, or the one whose
ABORT told this one; `peer` and `address` come with that ABORT). `known` fills them in.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "RingError",
    "ConfigError",
    "ConnectError",
    "AuthError",
    "ProtocolError",
    "PeerLostError",
    "RingTimeoutError",
    "MismatchError",
    "GroupBrokenError",
]


class RingError(RuntimeError):
    """Base class of every error ringdist raises on purpose."""

    rank: int | None = None  # this rank, in `group`
    group: str | None = None  # the id of the group it happened on
    op: str | None = None  # the call: 'all_gather', 'recv', 'init', ...
    peer: int | None = None  # the rank of `group` it concerns (lost, waited for, called otherwise)
    address: str | None = None  # that peer's address, 'host:port'
    origin: int | None = None  # the rank of `group` that found it (this one, or one that told it)


_FIELDS = ("rank", "group", "op", "peer", "address", "origin")

# Reductions a call runs under an internal op name (its headers', its algorithms'), with the
# call and the `op` argument that made them: an error's `op` is the call.
CALLED_AS = {"all_avg": ("all_reduce", "avg"),
             **{f"all_{r}": ("all_reduce", r) for r in ("band", "bor", "bxor")},
             **{f"{r}_scatter": ("reduce_scatter", r) for r in ("max", "min", "prod", "band", "bor", "bxor", "avg")}}
E = TypeVar("E", bound=BaseException)


def known(exc: E, **fields: object) -> E:
    """`exc` with each of `fields` it does not yet carry set (a RingError; others unchanged):
    the innermost code to know one sets it, and the layers it passes keep it. One that no ABORT
    brought (`ringdist_origin`) was found by its `rank`."""
    if isinstance(exc, RingError):
        for name, value in fields.items():
            assert name in _FIELDS, name
            if value is not None and getattr(exc, name) is None:
                setattr(exc, name, CALLED_AS[value][0] if name == "op" and value in CALLED_AS else value)
        if exc.origin is None and exc.rank is not None and getattr(exc, "ringdist_origin", None) is None:
            exc.origin = exc.rank
    return exc


class ConfigError(RingError):
    """The environment, a hostfile or init() arguments are wrong or incomplete."""


class ConnectError(RingError):
    """A peer or the rendezvous service could not be reached."""


class AuthError(RingError):
    """A connection failed the handshake (wrong secret, wrong job, replay)."""


class ProtocolError(RingError):
    """Bytes on a connection that do not follow the wire protocol."""


class PeerLostError(RingError):
    """A peer closed or reset its connection in the middle of an operation.

    Its text ends with why that rank left the job, where this rank has heard by the time the
    error is shown (`ringdist_why_left`, set by `Comm.why_lost`: the launcher's notice comes as
    the connection closes; a wait for it in the call lost the race with the launcher's SIGTERM)."""

    def __str__(self) -> str:
        text = super().__str__()
        look = getattr(self, "ringdist_why_left", None)
        why = look() if look is not None else None
        return f"{text}; {why}" if why else text


class RingTimeoutError(RingError, TimeoutError):
    """A bounded wait expired with no progress."""


class MismatchError(RingError):
    """Ranks of a group called different collectives, or with different shapes/dtypes."""


class GroupBrokenError(RingError):
    """A collective on this group failed earlier; the group can no longer be trusted."""
