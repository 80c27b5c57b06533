"""Seeded trials of disagreeing calls: every member of the group must raise, none may return.

usage: agree_fuzz.py SEED TRIALS [--large]

Each trial draws (the same on every rank, from SEED and the trial number) a sub-group of
the world (2 ranks to all of them, in a random order), a call (op, shape, dtype, root) and
a disagreement: some members change the op, the root, the shape, the dtype, or the path
(their group's `direct_max` or `both_ways`, the values RINGDIST_DIRECT_MAX and
RINGDIST_DIRECTIONS set). Sizes span the paths (direct, doubling, pairwise, two-shot; the
ring with RINGDIST_DIRECT_MAX=0; with --large also blocks cut over lanes and directions).
Point-to-point trials: one member sends, another receives another shape or dtype.

Every member must raise a RingError from the call (a receiver MismatchError; a sender may
return: a send completes once its bytes are sent), within TRIAL_LIMIT seconds, and then
every member's next collective on the group must raise (GroupBrokenError where it already
raised). After the trials the world must still give exact results. Each rank prints
`fuzz ok rank=R trials=T calls=C ...` or one `fuzz FAILED ...` line per bad trial.
"""
import dataclasses
import os
import re
import sys
import time
from collections import Counter

import numpy as np

import ringdist as rd
from ringdist import tuning

TRIAL_LIMIT = 10.0  # the tests run with RINGDIST_TIMEOUT=30: a detection by timeout would be over it
OPS = ["all_gather", "all_sum", "all_max", "all_min", "all_prod", "sum_scatter", "broadcast", "barrier"]
KINDS = ["op", "root", "shape", "dtype", "path"]
DTYPES = ["float32", "float64", "int32", "int64", "int16", "uint8"]

seed, trials = int(sys.argv[1]), int(sys.argv[2])
large = "--large" in sys.argv[3:]
RING = os.environ.get("RINGDIST_DIRECT_MAX") == "0"
SHM = os.environ.get("RINGDIST_SHM") != "0"
world = rd.init()
me = world.rank()


def draw(rng: np.random.Generator, m: int) -> dict:
    """One trial's call and disagreement, for a group of m ranks."""
    op = str(rng.choice(OPS + ["p2p"], p=[0.11] * 8 + [0.12]))
    cls = str(rng.choice(["tiny", "mid", "large"] if large else ["tiny", "tiny", "mid"]))
    # bytes: tiny takes the direct path (doubling, pairwise); mid two-shot reductions and the
    # largest direct blocks; large (with RINGDIST_DIRECT_MAX=0) blocks cut over lanes and directions
    nbytes = {"tiny": rng.integers(4, 4096), "mid": rng.integers(64 << 10, 900 << 10),
              "large": rng.integers(1200 << 10, 5 << 20)}[cls]
    cols, dtype = int(rng.choice([1, 1, 3])), str(rng.choice(DTYPES))
    rows = m * max(1, int(nbytes) // np.dtype(dtype).itemsize // cols // m)
    spec = {"op": op, "rows": rows, "cols": cols, "dtype": dtype, "root": int(rng.integers(m)), "size": cls}
    if op == "barrier":
        spec.update(rows=1, cols=1, dtype="uint8")
    kinds = {"barrier": ["op", "path"], "broadcast": KINDS, "p2p": ["shape", "dtype"]}.get(op, ["op", "shape", "dtype", "path"])
    kind = "root" if op == "broadcast" and rng.random() < 0.5 else str(rng.choice(kinds))
    members = list(range(m))
    if op == "p2p":
        src, dst = (int(v) for v in rng.choice(m, size=2, replace=False))
        return {"spec": spec, "kind": kind, "src": src, "dst": dst, "deviants": [dst]}
    deviants = [int(v) for v in rng.choice(members, size=int(rng.integers(1, m)), replace=False)]
    other = dict(spec)
    if kind == "op":
        other["op"] = str(rng.choice([o for o in OPS if o != op]))
        if other["op"] == "barrier":
            other.update(rows=1, cols=1, dtype="uint8")
        elif op == "barrier":
            other["rows"] = m  # sum_scatter needs a multiple of the group size
    elif kind == "root":
        own = rng.random() < 0.3  # every rank passes its own rank as the root
        deviants = members if own else deviants
        other["root"] = "own" if own else int((spec["root"] + rng.integers(1, m)) % m)
    elif kind == "shape":
        if rng.random() < 0.5 or spec["cols"] == 1:
            other["rows"] = spec["rows"] + m  # still a multiple of m: sum_scatter accepts it
        else:
            other["cols"] = spec["cols"] + 1
    elif kind == "dtype":
        other["dtype"] = str(rng.choice([d for d in DTYPES if d != spec["dtype"]]))
    else:  # a flip of direct_max changes the path where it decides it: not for sum_scatter (always the
        # ring), nor by default for arrays above the direct path's limit, nor in groups over 8 (no mesh)
        decides = op != "sum_scatter" and (cls == "tiny" or RING) and m <= 8
        other["flip"] = str(rng.choice(["direct_max", "both_ways"])) if decides else "both_ways"
        if SHM and cls != "tiny" and m <= 8:  # shared memory or not (groups of 2 to 8): the one not chosen
            other["flip"] = "shm"
    return {"spec": spec, "other": other, "kind": kind, "deviants": deviants}


def array(spec: dict, rank: int) -> np.ndarray:
    shape = (spec["rows"], spec["cols"]) if spec["cols"] > 1 else (spec["rows"],)
    return (np.arange(np.prod(shape)) % 7 + rank).astype(spec["dtype"]).reshape(shape)


def call(spec: dict, g: rd.Group) -> None:
    if spec.get("flip") == "direct_max":
        g.direct_max = 0 if g.direct_max else 1 << 30
    elif spec.get("flip") == "both_ways":
        g.both_ways = not g.both_ways
    x = array(spec, g.rank())
    op = spec["op"]
    if spec.get("flip") == "shm":  # this rank forces the path the table does not choose here
        chosen = tuning.choose(g, op, x.nbytes).name
        g.settings = dataclasses.replace(g.settings, algo=(("*", "ring" if chosen == "shm" else "shm"),))
        g.choices.clear()
    if op == "broadcast":
        root = g.rank() if spec["root"] == "own" else spec["root"]
        rd.broadcast(x, root=root, group=g)
    elif op == "barrier":
        rd.barrier(group=g)
    else:
        getattr(rd, op)(x, group=g)


def run_trial(t: int, g: rd.Group, trial: dict) -> tuple[str, str | None]:
    """(outcome of this rank's call, failure or None)."""
    r = g.rank()
    spec = trial["other"] if r in trial["deviants"] and "other" in trial else trial["spec"]
    t0 = time.monotonic()
    outcome = "returned"
    try:
        if trial["spec"]["op"] == "p2p":
            spec = trial["spec"]
            if r == trial["src"]:
                rd.send(array(spec, r), trial["dst"], group=g)
            elif r == trial["dst"]:
                other = dict(spec, **({"rows": spec["rows"] + 1} if trial["kind"] == "shape"
                                      else {"dtype": "complex64" if spec["dtype"] != "complex64" else "int8"}))
                rd.recv_like(array(other, r), trial["src"], group=g)
            else:
                outcome = "idle"
        else:
            call(spec, g)
    except rd.RingError as exc:
        outcome = type(exc).__name__
        message = str(exc)
    took = time.monotonic() - t0
    after = "returned"
    try:
        rd.barrier(group=g)
    except rd.RingError as exc:
        after = type(exc).__name__
    took_all = time.monotonic() - t0
    p2p = trial["spec"]["op"] == "p2p"
    bad = None
    if p2p and r == trial["dst"] and outcome != "MismatchError":
        bad = f"the receiver got {outcome}"
    elif not p2p and outcome != "MismatchError":
        bad = f"the call {'returned normally' if outcome == 'returned' else 'raised ' + outcome + ': ' + message}"
    elif outcome != "returned" and outcome != "idle" and after != "GroupBrokenError":
        bad = f"the next call after {outcome} gave {after}, not GroupBrokenError"
    elif after == "returned":
        bad = f"the next call on the group returned normally after {outcome}"
    elif took > TRIAL_LIMIT or took_all > TRIAL_LIMIT:
        bad = f"raised after {took:.1f} s (then {took_all:.1f} s), over {TRIAL_LIMIT} s"
    if bad is None and outcome == "MismatchError" and not (
            re.search(r"rank \d+ (\(world rank \d+\) )?called .* but rank \d+ (\(world rank \d+\) )?called ", message)
            or re.search(r"rank \d+ (\(world rank \d+\) )?and rank \d+ (\(world rank \d+\) )?chose different paths",
                         message)
            or re.search(r"rank \d+ expected recv\(.*\) from rank \d+ (\(world rank \d+\) )?but rank \d+ sent ",
                         message)):
        bad = f"a MismatchError that does not name both sides: {message}"
    return outcome, bad


counts: Counter = Counter()
failures = 0
for t in range(trials):
    rng = np.random.default_rng([seed, t])
    m = int(rng.integers(2, world.size() + 1))
    order = rng.permutation(world.size())
    trial_draw = draw(rng, m)
    position = int(np.flatnonzero(order == me)[0])
    g = world.split(0 if position < m else -1, key=position)
    if g is not None:
        outcome, bad = run_trial(t, g, trial_draw)
        spec = trial_draw["spec"]
        counts[f"op:{spec['op']}"] += 1
        counts[f"kind:{trial_draw['kind']}"] += 1
        counts[f"size:{spec['size']}"] += 1
        counts[f"outcome:{outcome}"] += 1
        if bad:
            failures += 1
            print(f"fuzz FAILED trial {t} (group of {m}, rank {g.rank()}): {bad}; {trial_draw}", flush=True)
    rd.barrier()  # every member is done with the group before any closes it
    if g is not None:
        g.close()

# The world is untouched by the trials' broken groups: exact results.
n = world.size()
x = np.arange(6, dtype=np.int64) + 10 * me
assert np.array_equal(rd.all_gather(x), np.concatenate([np.arange(6) + 10 * r for r in range(n)]))
assert np.array_equal(rd.all_sum(x), sum(np.arange(6) + 10 * r for r in range(n)))
for root in range(n):
    assert np.array_equal(rd.broadcast(x, root=root), np.arange(6) + 10 * root)
summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
print(f"fuzz {'ok' if not failures else 'FAILED'} rank={me} trials={trials} failures={failures} {summary}", flush=True)
