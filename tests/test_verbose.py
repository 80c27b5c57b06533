"""ringdist-launch -v sets RINGDIST_VERBOSE=1, and the ranks then say where they listen and how long joining took."""

from __future__ import annotations

import re

from helpers import ROOT, run_launcher


def test_verbose_ranks_log_how_they_joined():
    res = run_launcher(["-v", "-n", "3", str(ROOT / "examples" / "gather.py")], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    for r in range(3):
        assert re.search(rf"^\[{r}\] ringdist: rank {r} of 3 \(ringdist-launch, pid \d+\): listening on "
                         rf"127\.0\.0\.1:\d+; joined in [\d.]+ ms$", res.stderr, re.M), res.stderr


def test_quiet_by_default():
    res = run_launcher(["-n", "2", str(ROOT / "examples" / "gather.py")], timeout=60)
    assert res.returncode == 0 and "joined in" not in res.stderr, res.stderr
