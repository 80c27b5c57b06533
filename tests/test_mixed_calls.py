"""Random sequences of every kind of call in launched jobs, each result checked on every rank
(`scripts/mixed_calls.py`): collectives, uneven and object calls, point-to-point, async calls
waited out of order, and split groups, 0 B to 5 MB a rank, with and without shared memory."""

from __future__ import annotations

import pytest

from helpers import SCRIPTS, run_launcher


@pytest.mark.slow
@pytest.mark.parametrize("n, shm, seed", [(4, "1", 1), (9, "1", 2), (9, "0", 3), (12, "1", 4)])
def test_random_sequences_of_calls_give_every_rank_numpy_s_results(n, shm, seed):
    res = run_launcher(["-n", str(n), str(SCRIPTS / "mixed_calls.py"), str(seed), "150"], timeout=300,
                       env={"RINGDIST_SHM": shm, "RINGDIST_TIMEOUT": "60"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert all(f"[{r}] ok 150 steps" in res.stdout for r in range(n)), res.stdout[-3000:]
