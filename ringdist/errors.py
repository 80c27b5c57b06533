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
    """A peer closed or reset its connection in the middle of an operation."""


class RingTimeoutError(RingError, TimeoutError):
    """A bounded wait expired with no progress."""


class MismatchError(RingError):
    """Ranks of a group called different collectives, or with different shapes/dtypes."""


class GroupBrokenError(RingError):
    """A collective on this group failed earlier; the group can no longer be trusted."""
