"""The public `Group`: a communicator (`comm.Comm`) with `split`.

A group is a set of ranks that run collectives together; `rank()` and `size()` as in
MLX. Every collective on a group must be called by all its ranks, in the same order.
Use `close()` (or `with`) to release its connections; open groups close at exit.
"""

from __future__ import annotations

from . import split as split_module, tuning, work
from .comm import Comm, close_all

__all__ = ["Group", "close_all"]


class Group(Comm):
    """A set of ranks that run collectives together; `rank()` and `size()` as in MLX."""

    def split(self, color: int, key: int = -1) -> "Group | None":
        """Collective: ranks with equal `color` form a new group ordered by (`key`, parent rank).

        `key < 0` means this rank's parent rank; `color < 0` means no group (returns None).
        """
        return split_module.split(self, color, key)  # type: ignore[return-value]

    def close(self) -> None:
        """Release the group's connections. Idempotent; the group is unusable afterwards.
        Operations still outstanding end with a RingError ("closed with the operation outstanding").
        RingError, closing nothing, while another thread is in a collective on the group, or in
        a send or recv on it."""
        self.check_closable()
        if work.active:
            work.before_close(self)
        super().close()

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError(f"rank {self.rank()}: a Group cannot be pickled or sent (group {self.gid!r}): it is this "
                        f"process's connections; every rank makes its own (rd.init(), split)")

    @property
    def direct_max(self) -> int:
        """The largest per-rank block this group exchanges directly (RINGDIST_DIRECT_MAX, else
        the tuning table's default for its size); settable, for benchmarks."""
        limit = self.direct_max_override
        return tuning.default_direct_max(self) if limit is None else limit

    @direct_max.setter
    def direct_max(self, value: int) -> None:
        self.direct_max_override = value
