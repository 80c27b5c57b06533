"""An algorithm's record: its name, its run functions per kind of collective, and `fits`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

KINDS = ("gather", "reduce", "reduce_scatter", "broadcast", "all_to_all", "gather_v", "gather_root")


def _always(comm: Any, kind: str, nbytes: int) -> str | None:
    return None


@dataclass(frozen=True)
class Algorithm:
    name: str
    gather: Callable[..., None] | None = None
    reduce: Callable[..., Any] | None = None
    reduce_scatter: Callable[..., None] | None = None
    broadcast: Callable[..., None] | None = None
    all_to_all: Callable[..., Any] | None = None
    gather_v: Callable[..., Any] | None = None
    gather_root: Callable[..., Any] | None = None
    fits: Callable[[Any, str, int], str | None] = _always  # (comm, kind, bytes per rank) -> why not

    def kinds(self) -> list[str]:
        return [k for k in KINDS if getattr(self, k) is not None]

    def why_not(self, comm: Any, kind: str, nbytes: int) -> str | None:
        """Why this algorithm cannot run this case, or None."""
        if getattr(self, kind) is None:
            return f"{self.name} has no {kind.replace('_', '-')}"
        return self.fits(comm, kind, nbytes)
