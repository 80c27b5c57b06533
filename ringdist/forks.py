"""Fork safety: a forked child lets go of its parent's connections.

After `os.fork()` a child holds a copy of every file descriptor of the rank,
its connections included. A rank that forks (a data-loader worker, a helper
process) and then dies would leave its connections open in the child: its
peers would see no close and wait for `RINGDIST_TIMEOUT` instead of failing
at once, and a child that used them would write into its parent's streams.

So in a forked child ringdist closes its copy of every socket it made
(listening sockets, data and point-to-point connections, the control
connection) and of its pipes. Only the child's copies close: nothing is shut
down or sent, and the parent's connections are untouched. The parent's groups
refuse work in the child with an error naming the process they belong to.
Sockets are already closed on exec (Python makes them non-inheritable).
"""

from __future__ import annotations

import os
import socket
import sys
import weakref
from typing import Any, Callable

from . import channel

_hooks: list[Callable[[], None]] = []  # modules' own, run after the sockets and holders, in registration order
_sockets: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
_holders: "weakref.WeakSet[Any]" = weakref.WeakSet()  # objects with a forget_in_child() method
_owner = os.getpid()  # the process the tracked sockets belong to
_parent = _owner  # in a forked child: the process it was forked from


def track(thing: Any) -> Any:
    """Close `thing` in forked children: a socket, or an object with a `forget_in_child()` method
    (called in the child, which has no other thread: it must take no lock the parent may hold)."""
    (_sockets if isinstance(thing, socket.socket) else _holders).add(thing)
    return thing


def in_child(hook: Callable[[], None]) -> None:
    """Run `hook()` in forked children, after the sockets and holders are let go (hooks in the
    order given: as the modules that give them are imported); a module's state of its own (its
    threads, pipes, locks a parent's thread may hold) starts afresh there."""
    _hooks.append(hook)


def parent() -> int:
    """In a forked child: the process whose sockets and groups it inherited."""
    return _parent


def _after_fork_in_child() -> None:
    global _owner, _parent
    _parent, _owner = _owner, os.getpid()
    for sock in list(_sockets):
        channel.close_quietly(sock)  # this process's descriptor only: no shutdown, the parent's stays open
    _sockets.clear()
    for forget in [holder.forget_in_child for holder in list(_holders)] + _hooks:
        try:
            forget()
        except Exception:  # noqa: BLE001 - as os.register_at_fork's own: reported, and the rest still run
            sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    _holders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
