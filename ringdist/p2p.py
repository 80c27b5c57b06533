"""Point-to-point messages between any two ranks of a group, over direct connections.

Each ordered pair (sender, receiver) gets its own authenticated connection, opened by the
sender on first use and kept; messages between a pair arrive in order. Like MPI's
standard mode, `send` may block until the receiver takes the message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import buffers, wire
from .channel import Channel
from .arrays import as_array, byte_view
from .collectives import _comm
from .errors import MismatchError
from .comm import Comm
from .flows import Inflow, Outflow, Segments


def _message_header(arr: np.ndarray, number: int) -> wire.Header:
    return wire.Header(wire.make_header("send", number, wire.dtype_tag(arr.dtype), arr.shape))


def send(x: Any, dst: int, *, group: Comm | None = None, timeout: float | None = None) -> None:
    """Send array `x` to rank `dst` of the group (any rank but this one)."""
    g = _comm(group, timeout)
    dst = g.check_peer(dst, "send", "dst")
    arr = as_array(x)
    data = np.ascontiguousarray(arr)
    g.check_usable("send")
    ch, number = g.p2p_channel(dst, outgoing=True)
    g.run("send", [], [Outflow(ch, Segments([byte_view(data)]), "send", _message_header(arr, number))], [ch],
          timeout=timeout)


def _expect_message(mine: dict[str, Any], theirs: dict[str, Any], ch: Channel) -> None:
    if mine != theirs:
        got = dict(theirs)
        raise MismatchError(
            f"rank {ch.me} expected recv(shape={tuple(mine['shape'])}, dtype={_dtype_name(mine)}) "
            f"from rank {ch.peer} but rank {ch.peer} sent {wire.describe_header(got)} (group {ch.group!r})")


def _dtype_name(header: dict[str, Any]) -> str:
    try:
        return np.dtype(header["dtype"]).name
    except Exception:
        return str(header["dtype"])


def recv(shape: Any, dtype: Any, src: int, *, group: Comm | None = None,
         timeout: float | None = None) -> np.ndarray:
    """Receive an array of `shape` and `dtype` from rank `src`; MismatchError if the sender's differs."""
    g = _comm(group, timeout)
    src = g.check_peer(src, "recv", "src")
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError("ringdist receives raw array bytes; object dtypes are not supported")
    out = buffers.cache.empty(np.broadcast_to(0, shape).shape, dt)  # broadcast_to checks shape as np.empty does
    g.check_usable("recv")
    ch, number = g.p2p_channel(src, outgoing=False, timeout=timeout)
    inflow = Inflow(ch, Segments([byte_view(out)]), "recv", _message_header(out, number), check=_expect_message)
    g.run("recv", [inflow], [], [ch], timeout=timeout)
    return out


def recv_like(x: Any, src: int, *, group: Comm | None = None, timeout: float | None = None) -> np.ndarray:
    """Receive an array shaped and typed like `x` from rank `src`."""
    arr = np.asarray(x)
    return recv(arr.shape, arr.dtype, src, group=group, timeout=timeout)
