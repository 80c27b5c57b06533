"""N ranks as threads of one process, each with its own endpoint, over real loopback connections.

For algorithm coverage: every rank is a real `Group` with real sockets, so the wire, the
engine and every algorithm run exactly as in a launched job, but N=17 starts in
milliseconds. What only processes show (the launcher, kill -9, signals) stays in the
multi-process tests.

    results = run_ranks(4, lambda g: rd.all_sum(np.ones(3) * g.rank(), group=g))
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from ringdist.comm import Comm
from ringdist.endpoint import Endpoint
from ringdist.errors import RingError
from ringdist.group import Group
from ringdist.settings import Settings

SECRET = b"in-process harness secret"
DEFAULT = Settings(timeout=20.0, connect_timeout=10.0)


class RankFailed(AssertionError):
    """One or more ranks raised: `errors[r]` is rank r's exception (None where it returned)."""

    def __init__(self, errors: list[BaseException | None]):
        self.errors = errors
        lines = [f"rank {r}: {type(e).__name__}: {e}" for r, e in enumerate(errors) if e is not None]
        super().__init__("; ".join(lines))


def run_ranks(n: int, fn: Callable[[Group], Any], *, settings: Settings | None = None,
              timeout: float = 60.0, ips: list[str] | None = None,
              rank_overrides: dict[int, dict[str, Any]] | None = None, **overrides: Any) -> list[Any]:
    """Run `fn(group)` on ranks 0..n-1 of a fresh world group, each in its own thread.

    Returns every rank's result in rank order; raises `RankFailed` if any rank raised, and
    AssertionError if the ranks did not finish within `timeout` seconds (their sockets are
    closed then, so no thread is left waiting). `overrides` replace fields of `settings`;
    `rank_overrides[r]` those of rank r's only. `ips[r]` is the loopback address rank r listens
    on (default 127.0.0.1): ranks on different addresses are on different hosts to `ringdist.hosts`.
    """
    settings = dataclasses.replace(settings or DEFAULT, **overrides)
    ranks_settings = [dataclasses.replace(settings, **(rank_overrides or {}).get(r, {})) for r in range(n)]
    endpoints = [Endpoint(SECRET, [ips[r] if ips else "127.0.0.1"], connect_timeout=settings.connect_timeout,
                          label=f"rank {r}", local=ranks_settings[r].shm_backend)
                 for r in range(n)] if n > 1 else [None]
    addresses = [ep.addresses if ep is not None else [] for ep in endpoints]
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n
    groups: list[Group | None] = [None] * n

    def rank(r: int) -> None:
        try:
            group = groups[r] = Group(gid="world", rank=r, size=n, endpoint=endpoints[r], settings=ranks_settings[r],
                                      addresses=addresses, world_ranks=list(range(n)))
            results[r] = fn(group)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), name=f"harness-rank-{r}", daemon=True) for r in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        stuck = [r for r, t in enumerate(threads) if t.is_alive()]
    finally:
        for group in groups:
            if group is not None:
                try:
                    group.close()
                except RingError:  # a stuck rank's thread is still in a call: close under it
                    Comm._release(group)
        for ep in endpoints:
            if ep is not None:
                ep.close()
    if stuck:
        for t in threads:
            t.join(5)
        raise AssertionError(f"ranks {stuck} of {n} did not finish within {timeout} s")
    if any(e is not None for e in errors):
        raise RankFailed(errors)
    return results


def run_disagreement(n: int, call: Callable[[Group], Any], *, timeout: float = 30.0,
                     **options: Any) -> tuple[list[Any], list[BaseException | None]]:
    """Run `call(group)` on n ranks that disagree about it, then a small all_sum.

    Returns (outcomes, errors): `outcomes[r]` is the RingError `call` raised on rank r (or
    "returned"), and `errors[r]` what the all_sum after it raised there (None if it returned).
    `options` go to `run_ranks`."""
    import numpy as np

    from ringdist import collectives
    from ringdist.errors import RingError

    outcomes: list[Any] = [None] * n

    def rank(g: Group) -> None:
        try:
            call(g)
            outcomes[g.rank()] = "returned"
        except RingError as exc:
            outcomes[g.rank()] = exc
        collectives.all_sum(np.ones(1), group=g)  # GroupBrokenError, once the group has failed

    try:
        run_ranks(n, rank, timeout=timeout, **options)
    except RankFailed as failed:
        return outcomes, failed.errors
    return outcomes, [None] * n


def assert_all_raised_then_broken(outcomes: list[Any], errors: list[BaseException | None]) -> None:
    """`run_disagreement`'s results when every rank must raise in the call: each a RingError, at
    least one a MismatchError (the ranks that saw the difference), and the group broken on every
    rank afterwards."""
    from ringdist.errors import GroupBrokenError, MismatchError, RingError

    assert all(isinstance(o, RingError) for o in outcomes), outcomes
    assert any(isinstance(o, MismatchError) for o in outcomes), outcomes
    assert all(isinstance(e, GroupBrokenError) for e in errors), errors
