"""ringdist: a pure-Python, socket-based ring transport for numpy arrays.

    import ringdist as rd
    g = rd.init()                       # the world group (rank 0 of 1 when not launched)
    y = rd.all_gather(x)                # every rank's x, concatenated along axis 0

Launch ranks with `ringdist-launch --hosts hosts.json script.py`. The API mirrors
`mlx.core.distributed` with numpy arrays; see README.md for the whole table.
"""

import atexit
import signal
import sys
from typing import TYPE_CHECKING

from . import errors, exiting
from .errors import *  # noqa: F403 - the exception tree is part of the API

# The API, by module, imported on its first use (`__getattr__`), whole and in this order (`world`
# first: it makes the default group): `import ringdist` alone, and its submodules (the launcher's
# `settings`, `rendezvous`), import no numpy.
_API = (("world", ("init", "is_available")),
        ("any_source", ("recv_any", "recv_object_any")),
        ("collectives", ("all_gather", "all_max", "all_min", "all_prod", "all_reduce", "all_sum", "barrier",
                         "broadcast", "gather", "reduce", "reduce_scatter", "sum_scatter")),
        ("object_messages", ("recv_object", "send_object")),
        ("objects", ("all_gather_object", "broadcast_object")),
        ("rooted_objects", ("gather_object", "scatter_object")),
        ("uneven", ("all_to_all", "scatter")),
        ("group", ("Group",)),
        ("locations", ("all_maxloc", "all_minloc")),
        ("p2p", ("recv", "recv_like", "send", "sendrecv")),
        ("tags", ("ANY_TAG", "TAG_MAX", "Status")),
        ("grid", ("Grid", "dims_create")),
        ("prefix", ("scan",)),
        ("work", ("Work",)),
        ("handle", ("wait_all", "wait_any")))
_NAMES = frozenset(name for _, names in _API for name in names)

if TYPE_CHECKING:
    from .world import init, is_available
    from .any_source import recv_any, recv_object_any
    from .collectives import (all_gather, all_max, all_min, all_prod, all_reduce, all_sum, barrier, broadcast,
                              gather, reduce, reduce_scatter, sum_scatter)
    from .object_messages import recv_object, send_object
    from .objects import all_gather_object, broadcast_object
    from .rooted_objects import gather_object, scatter_object
    from .uneven import all_to_all, scatter
    from .group import Group
    from .locations import all_maxloc, all_minloc
    from .p2p import recv, recv_like, send, sendrecv
    from .tags import ANY_TAG, TAG_MAX, Status
    from .grid import Grid, dims_create
    from .prefix import scan
    from .work import Work
    from .handle import wait_all, wait_any


def _at_exit() -> None:
    """ringdist's exit hook, registered as the package is imported, before a user's exit hooks
    (which run first, and may still use the world group): the world group and the rest closed
    (`world.shutdown`), then the socket files this process made removed. Modules loaded later
    (the API loads on first use) register none of their own for these."""
    exiting.mark()
    # A Ctrl-C now (a launcher's SIGINT that came after a peer's failure ended the program) would
    # cut the closing short: it waits until the hook is done (a few milliseconds; bounded).
    try:
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        interrupt = None
    try:
        world = sys.modules.get(f"{__name__}.world")
        if world is not None:
            world.shutdown(at_exit=True)
        posixshm = sys.modules.get(f"{__name__}.posixshm")
        if posixshm is not None:
            posixshm.remove_all()
    finally:
        if interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)


atexit.register(_at_exit)


def __getattr__(name: str) -> object:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    for module, names in _API:
        loaded = importlib.import_module(f".{module}", __name__)
        for each in names:
            globals()[each] = getattr(loaded, each)
    return globals()[name]


def __dir__() -> list[str]:
    """The API (what tab completion offers): not the modules this one uses (`sys`, `signal`)."""
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "init",
    "is_available",
    "Group",
    "all_gather",
    "all_sum",
    "all_max",
    "all_min",
    "all_prod",
    "all_reduce",
    "all_maxloc",
    "all_minloc",
    "sum_scatter",
    "reduce_scatter",
    "broadcast",
    "barrier",
    "gather",
    "scatter",
    "reduce",
    "all_to_all",
    "scan",
    "all_gather_object",
    "broadcast_object",
    "gather_object",
    "scatter_object",
    "send",
    "recv",
    "recv_like",
    "sendrecv",
    "Grid",
    "dims_create",
    "send_object",
    "recv_object",
    "recv_any",
    "recv_object_any",
    "ANY_TAG",
    "TAG_MAX",
    "Status",
    "Work",
    "wait_any",
    "wait_all",
    *errors.__all__,
    "__version__",
]
