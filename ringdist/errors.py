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
"""

from __future__ import annotations

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
