"""The tuning table: which algorithm runs a collective, from its kind, the group and the size.

One table, read top to bottom: the first row of the collective's kind whose condition
holds and whose algorithm can run the case wins. Conditions see `Facts`: the group size,
the bytes each rank contributes, whether the group has a mesh (a connection to every
rank: groups of 2 to 8), whether large blocks go both ways round the ring, the
direct-exchange limit (`RINGDIST_DIRECT_MAX`, else by group size), shared memory across the
group, and the hosts of a group on several (`ringdist.hosts`). Groups over 8 ranks have
no mesh: their latency-optimal algorithms open links to their partners on first use. Every threshold was
measured on localhost with variants alternating call by call (docs/design.md has the
figures). `RINGDIST_ALGO=op:name,...` overrides the table for benchmarks and debugging;
the chosen algorithm's name rides in every header, so ranks that chose differently fail
with MismatchError instead of waiting on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .algorithms import ALGORITHMS, Algorithm
from .ops import REDUCE_OPS
from .comm import Comm
from .errors import ConfigError

KIND_OF = {"all_gather": "gather", "barrier": "barrier", "split": "gather", "broadcast": "broadcast",
           # A grid's arguments, checked alike on every rank (`grid`): a small all_gather.
           "Grid": "gather", "Grid.sub": "gather",
           **{"all_" + op: "reduce" for op in REDUCE_OPS},  # all_sum ... all_bxor
           **{op + "_scatter": "reduce_scatter" for op in REDUCE_OPS},  # sum_scatter ... bxor_scatter
           # A rooted reduce runs all_<op>'s rows, so its root gets all_<op>'s very bits.
           "gather": "gather_root", "reduce": "reduce",
           # MAXLOC and MINLOC: two all-reduces under the call's name (`locations`).
           "all_maxloc": "reduce", "all_minloc": "reduce",
           # all_reduce's avg: all_sum under the call's name (`collectives._all_average`); reduce_scatter's
           # avg: sum_scatter's under its own.
           "all_avg": "reduce", "avg_scatter": "reduce_scatter",
           # Blocks whose sizes ride in the headers (algorithms/blocks.py); chosen without the size,
           # which may differ by rank.
           "all_to_all": "all_to_all", "scatter": "scatter", "all_gather_uneven": "gather_v", "scan": "scan",
           "all_gather_object": "gather_v", "broadcast_object": "gather_v",
           # Objects to or from a root: all_to_all blocks whose sizes ride in the headers (`rooted_objects`).
           "gather_object": "all_to_all", "scatter_object": "all_to_all",
           # Uneven rows to or from a root: the same, the blocks' rows in the headers (`uneven`).
           "gather_uneven": "all_to_all", "scatter_uneven": "all_to_all", "scatter (agreement step)": "gather_v",
           # A reduce-scatter of uneven counts: its blocks exchanged, then folded (`uneven`).
           "reduce_scatter_counts": "all_to_all",
           # An object collective's last step: a byte from every rank, whether it could unpickle (`objects`).
           "all_gather_object (agreement step)": "gather", "broadcast_object (agreement step)": "gather",
           "gather_object (agreement step)": "gather", "scatter_object (agreement step)": "gather"}

# Direct exchange limits (RINGDIST_DIRECT_MAX's default), per-rank block bytes. On more than two
# ranks one direct step beats N-1 ring steps up to 1 MiB blocks (10-40% at 512 KiB-1 MiB), and
# ties at 2-4 MiB. Two ranks going one way round the ring have one step either way: a 512 KiB
# all_gather took a median of about 140 us directly against 200 on the ring, a 1 MiB one 390
# against 340 (separate launches, 20 windows of 400 calls each). Going both ways round, the ring
# uses both of the pair's connections from 256 KiB.
DIRECT_MAX_PAIR = 512 * 1024
DIRECT_MAX_PAIR_BOTH_WAYS = 256 * 1024
DIRECT_MAX_MESH = 1024 * 1024
# Blocks up to this size gather by recursive doubling on 4 or 8 ranks: 4-32 KiB 20-40% faster
# than one exchange with every rank (4 ranks); 64 KiB 25% slower.
DOUBLING_GATHER_MAX = 32 * 1024
# A reduction exchanges whole arrays only up to this size: recursive doubling beat one step with
# every rank from 4 KiB to 256 KiB (by 15-60%, 4 ranks), and lost to two-shot at 1 MiB.
ONE_SHOT_MAX = 256 * 1024
# Groups over 8 ranks (measured at 12 and 16 ranks on 2 cores, algorithms alternating call by call;
# docs/design.md has the figures). All-gather: recursive doubling up to 32 KiB blocks (12-14% faster
# than Bruck at 12 ranks), Bruck up to 256 KiB when N is not a power of two (5-12% faster than
# doubling's folding), doubling up to 256 KiB on a power of two; both 25-50% faster than the ring
# there, which wins from 1 MiB (10% at 12 ranks; a tie at 16).
LOG_GATHER_MAX = 256 * 1024
# Reductions: recursive doubling up to 512 KiB (2-3x faster than the ring, 14% faster than
# Rabenseifner at 512 KiB), Rabenseifner up to 4 MiB (16 ranks: 1.5x faster than the ring at
# 4 MiB; 12 ranks: a tie), the ring beyond (a tie at 16 MiB, and neighbours only on a network).
LOG_REDUCE_MAX = 512 * 1024
HALVING_REDUCE_MAX = 4 << 20
# Reduce-scatter by recursive halving for blocks up to 256 KiB (13-50% faster than the ring); the
# ring wins at 1 MiB blocks (10-30%).
HALVING_SCATTER_BLOCK_MAX = 256 * 1024
# Binomial broadcast up to 4 MiB (1 MiB: 1.5-2x faster than the ring's chain; 4 MiB: 10%); the
# ring's pipelined chain wins at 16 MiB (25%).
TREE_BROADCAST_MAX = 4 << 20
# On 5 to 7 ranks, reductions of 64-256 KiB are 13-27% faster by recursive doubling (extra ranks
# folded in and out) than by one exchange with every rank; at 4 KiB neither wins by more than noise.
FOLDED_DOUBLING_MIN = 64 * 1024
# Two ranks exchange whole arrays up to this size: 1 MiB 17-24% and 2 MiB 14-16% faster than
# the ring's reduce-scatter and all-gather, 3 MiB 4% faster, 4-8 MiB 7-9% slower.
PAIR_EXCHANGE_MAX = 2 << 20
# Groups on one machine with shared memory (`Facts.shm`) use it from these sizes (bytes per rank).
# Below them one TCP exchange carries the data with the header that shared memory needs anyway.
# 64 KiB is chosen, not measured: the 2-core box ran at a load of 15-17.
SHM_GATHER_MIN = 64 * 1024
SHM_REDUCE_MIN = 64 * 1024
# Two ranks reduce through shared memory from 1 MiB: separate launches taking turns on a quiet box,
# against the table's TCP algorithms (pairwise, two-shot, ring): 1 MiB 150-153 against 203-215 us,
# 16 MiB 3.9-4.1 against 7.1-7.3 ms, 64 MiB 15.2-15.6 against 28.4-28.7 ms; in one of the VM's slow
# phases 543-555 against 679 us and 8.6-8.7 against 12.0-12.2 ms. At 64 KiB TCP was faster (37 against
# 46 us), at 256 KiB a tie (68-70 against 67).
SHM_PAIR_REDUCE_MIN = 1 << 20
# Groups of more than 8 ranks (no mesh; shared-memory signals by dissemination rounds): 16 ranks
# on the loaded 2-core box, alternating call by call with TCP (benchmarks/alternate.py), gathered
# 0.62x and 0.91x the time at 64 KiB (two runs), 0.41x at 1 MiB (both), 0.44x at 4 MiB per rank; but reduced 1.13x at 64 KiB,
# 1.7x at 1 MiB, 3.7x at 16 MiB (two signals of ceil(log2 N) rounds per 384 KiB slot): no reduction row.
SHM_WIDE_GATHER_MIN = 64 * 1024
# all_to_all on 4 ranks, alternating with the direct exchange (loaded 2-core box): 64 KiB 1.05x slower,
# 256 KiB 0.97x, 1 MiB 0.79x, 16 MiB 0.67x the time.
SHM_ALL_TO_ALL_MIN = 256 * 1024
# Where rounds signal through the segments (`Facts.signals`: `ringdist.shmsignal`), a round costs no
# message, and the rows above start lower. Calls back to back, shared memory against the table's TCP
# choice, two launches of each taking turns (2-core VM, µs per call; N=2 / 4 / 8):
#   all_to_all 4 KiB 8-9 / 43-49 / 198-200 against 18 / 119-128 / 518-594; 64 KiB 14 / 57-60 / 212-265
#     against 27-29 / 132-148 / 564-662;
#   all_gather 4 KiB 10 / 51 / 213-231 against 20 / 104-116 / 507-561; 64 KiB 21-23 / 92-117 / 353-457
#     against 20-21 / 96-102 / 354-459 (a tie);
#   all_sum 4 KiB 18 / 108-124 / 404-416 against 20 / 117-122 / 549-550; 64 KiB 27-28 / 145-151 / 445-528
#     against 39-41 / 122-142 / 505-521.
# So from the first byte. 2-rank reductions then take one signal a round (`algorithms/shm.py`,
# ONE_SIGNAL_REDUCE_MAX): 4 KiB 11-12 against TCP's 20 us, 64 KiB 20-21 against 20. Groups over 8
# ranks too (no mesh, whose dissemination signals made shared-memory reductions lose): 16 ranks,
# back to back, all_sum 4 KiB 0.79 against 2.85 ms, 64 KiB 1.00-1.04 against 3.13-3.53, 1 MiB 6.5
# against 13.4, 16 MiB 86 against 128; all_gather 4 KiB 0.58 against 2.78 ms; against RINGDIST_SHM=0,
# broadcast 4 and 64 KiB 0.57-0.61 against 2.48-2.92 ms, sum_scatter 0.73-0.89 against 3.06-3.27 ms.
# Groups on several hosts with as many ranks on each (`Facts.hosts` > 1) gather hierarchically from
# this size (bytes per rank): each byte crosses a host's interface once. On the emulated cluster (4
# namespaces x 2 ranks, 1 Gbit/s, 2 cores for all 8 ranks) it tied with the flat ring at 16 and 64 MiB
# (990-1021 against 992-994 ms, 3952-3962 against 3948 ms): the bytes it saves on the links it spends
# copying within each host, on cores the emulated hosts share. Its all-reduce lost there (16 MiB:
# 263-334 ms against 245-248; 64 MiB: 1041-2403 against 984-990), so reductions keep the flat
# algorithms; `RINGDIST_ALGO=all_reduce:hier` forces it. docs/design.md has the figures.
HIER_GATHER_MIN = 64 * 1024
# Where every rank reads its peers' memory (`Facts.cma`), blocks from 1 MiB are read straight out
# of their owner's memory (`algorithms/shm_cma.py`). Alternating call by call with the segments
# (benchmarks/alternate.py, 2-core VM; time ratio, below 1 faster): all_to_all blocks of 256 KiB
# 1.0-1.54x (one slot's single signal wins), 1 MiB 0.92x (N=4), 2 MiB 0.91x (N=2) and 0.41x (N=8),
# 4 MiB 0.49x (N=4); all_gather on 2 ranks 1 MiB 0.97x, 4 MiB 0.75x, 16 MiB 0.72x, 64 MiB 0.39x,
# but on 3-8 ranks 0.97-1.18x (16 MiB N=4 1.07x): each segment is read by N-1 peers while in the
# cache. Rooted gather lost (1.38-1.50x: the root alone reads). Broadcast from 1 MiB too: every
# input rewritten before its call (benchmarks/scale.py --fresh; reduce-cma.md), 1, 4 and 16 MiB
# 0.73/0.87/0.95x on 4 ranks, 0.75/0.37/0.44x on 8, 0.69/0.41/0.68x on 16, 0.87/0.50/0.36x on 32,
# 0.25-0.47x on 2 (256 KiB: 1.14-1.53x on 4-32 ranks).
CMA_BLOCK_MIN = 1 << 20
# Reductions read every rank's input from its memory (three signals in all) from this size, or from
# three slots (`Facts.slot`) where that is less: through the segments each round of a slot takes
# two signals (one on 2 ranks), and each waits for every rank. Alternating call by call with the
# segments, every call's input rewritten first (benchmarks/scale.py --fresh, 2-core VM; time ratio,
# below 1 faster; benchmarks/results/2core-2026-12-05/reduce-cma.md): 2 ranks 4 MiB 1.01x, 16 MiB
# 0.78x, 64 MiB 0.39x (smaller sizes 1.9x, but 0.4-0.5x in the VM's launches where the segments'
# copies run slow); 4 ranks 1 MiB 1.13x, 4 MiB 0.62x, 16 MiB 0.81x; 8 ranks 1 MiB 1.26x, 4 MiB
# 0.82x, 16 MiB 0.71x; 16 ranks 256 KiB 1.78x, 1 MiB 0.99x, 4 MiB 0.50x, 16 MiB 0.45x; 32 ranks
# 256 KiB 1.50x, 1 MiB 0.59x, 4 MiB 0.27x; 64 ranks 1 MiB 98 against 323 ms (TCP's halving and
# doubling: 102). sum_scatter by the same rule (the size: its whole input), from 3 ranks: 4 ranks,
# 256 KiB blocks 1.29x, 1 MiB 0.85x, 4 MiB 0.91x; 16 ranks, 64 KiB blocks 1.07x, 256 KiB 0.60x,
# 1 MiB 0.32x, 4 MiB 0.45x.
CMA_REDUCE_MIN = 4 << 20
CMA_REDUCE_SLOTS = 3
# Groups of more than 8 ranks over TCP (no mesh, no shared memory): all_to_all of equal blocks
# by Bruck's algorithm up to this block size, else (and with splits) by pairwise
# exchange; the ring relayed N(N-1)/2 blocks. 16 ranks on the 2-core VM over loopback, the three
# alternating call by call (benchmarks/scale.py, RINGDIST_SHM=0; ms): blocks of 64 B-4 KiB 6.3-7.0
# (Bruck) / 9.8-10.6 (pairwise) / 16.7-18.7 (ring); 16 KiB 9.5 / 11.8 / 25.0; 32 KiB 15.9 / 12.5 /
# 38.5; 64 KiB 23.7 / 15.6 / 59.4; 256 KiB 82 / 28 / 162; 1 MiB 251 / 62 / 517. 64 ranks: 4 KiB 72
# (Bruck) against 378 (ring), 64 KiB 444 (pairwise) against 3078. With splits (pairwise; the sizes
# ride in each step's header): 16 ranks 4 KiB 19.7 against 17.2 ms, 64 KiB 28.4 against 61.1, 1 MiB
# 94 against 617; 64 ranks 4 KiB 598 against 508, 64 KiB 689 against 3039.
BRUCK_ALL_TO_ALL_BLOCK_MAX = 16 * 1024
# scan over TCP: one direct step (rank 0 sends its array to all N-1 others) up to this size, the
# chain beyond. Taking turns call by call (RINGDIST_SHM=0, 2-core VM): 4 ranks 4 KiB 124 against
# 139 us, 64-256 KiB within 10%, 1 MiB 1245 against 862 us; 8 ranks 256 KiB 2.0 against 1.6 ms,
# 1 MiB 5.5 against 3.2 ms. On one machine shared memory won at every size (4 ranks: 4 KiB 70 us
# against 124 direct; 1 MiB 0.74 against 0.80 ms on the chain; 16 MiB 9.9 against 12.3 ms).
SCAN_DIRECT_MAX = 64 * 1024
# `nbytes` of a call whose ranks may contribute different sizes (all_to_all with splits): its rows
# cannot look at the size.
UNKNOWN = -1
# `nbytes` of a group's first scatter: only the root knows the size, so a scatter is chosen by
# the size of the group's previous one (the root's whole array; every rank learned it alike), and
# the first by this. One direct step (the root's header declares its shape and dtype) beats shared
# memory's two rounds for small arrays (4 ranks, 4 KiB: 286 against 418 us); shared memory wins at
# 16 MiB (4 ranks: 19.4-20.8 ms against 18.7-27.7 ms in one direct step, launches taking turns).
ROOTED = -2


@dataclass(frozen=True)
class Facts:
    """What a row's condition may look at: the same on every rank of the group."""

    n: int  # ranks in the group
    nbytes: int  # bytes each rank contributes (its block of a gather, its whole array of a reduction)
    mesh: bool  # a connection to every rank (groups of 2 to 8)
    both_ways: bool  # large blocks go half each way round the ring (a cable to each neighbour)
    direct_max: int  # largest per-rank block exchanged directly
    shm: bool = False  # shared memory with every rank (all on one machine: `ringdist.shm`)
    signals: bool = False  # its rounds signal through the segments (`ringdist.shmsignal`), not over TCP
    cma: bool = False  # every rank reads its peers' memory (`ringdist.crossmem`: the link's `pids`)
    hosts: int = 1  # hosts of a hierarchical group (`ringdist.hosts`: several, as many ranks on each)
    slot: int = 0  # bytes of one slot of the shared-memory link (`ringdist.shm.slot_bytes`), 0 without one
    op: str = ""  # the call (a key of KIND_OF), where rows of one kind part by it

    @property
    def pow2(self) -> bool:
        return self.n & (self.n - 1) == 0

    @property
    def block(self) -> int:
        """Bytes of one rank's share of a reduction's array (rounded up)."""
        return -(-self.nbytes // self.n)


@dataclass(frozen=True)
class Row:
    kind: str
    algorithm: str
    when: Callable[[Facts], bool]
    why: str  # the measurement behind the row, or what it is for


def _always(f: Facts) -> bool:
    return True


def _shm_reduce_min(f: Facts) -> int:
    if f.signals:
        return 0
    return SHM_PAIR_REDUCE_MIN if f.n == 2 else SHM_REDUCE_MIN


TABLE: list[Row] = [
    Row("gather", "shm-cma", lambda f: f.cma and f.n == 2 and f.direct_max > 0 and f.nbytes >= CMA_BLOCK_MIN,
        "2 ranks: each reads the other's block from its memory, one kernel copy (0.39-0.75x the time at 4-64 MiB)"),
    Row("all_to_all", "shm-cma", lambda f: f.cma and f.mesh and f.direct_max > 0 and f.nbytes >= 0
        and f.nbytes // f.n >= CMA_BLOCK_MIN,
        "each rank reads its blocks from its peers' inputs: one kernel copy per byte instead of two "
        "(2 MiB blocks on 8 ranks: 0.41x the time)"),
    Row("all_to_all", "shm-cma", lambda f: f.cma and not f.mesh and f.direct_max > 0
        and (f.nbytes > f.slot or f.nbytes == UNKNOWN),
        "groups over 8 (no mesh), blocks of one size, more than a slot: each rank reads its blocks from its peers' "
        "inputs, where the ring relays them N-1 hops (16 ranks, 64 KiB-1 MiB blocks: 0.07-0.14x the ring's time, "
        "0.52-0.96x the segments'); with splits, the segments' first round carries the layouts, then reads where "
        "a stream is over 4 slots (16 ranks: 256 KiB blocks 0.63x the segments' time, 1 MiB 0.39-0.46x)"),
    Row("scatter", "shm-cma", lambda f: f.cma and f.direct_max > 0 and f.nbytes > f.slot,
        "a scatter over a slot (the previous scatter's size): every rank reads its block from the root's memory, "
        "two signals where the segments take one a slot (16 ranks, 1-4 MiB: 0.68-0.75x the time; within a slot "
        "1.30x)"),
    Row("all_to_all", "shm", lambda f: f.shm and not f.mesh and f.direct_max > 0,
        "groups over 8: through the segments in rounds, blocks of one size (16 ranks: 4 KiB blocks, one slot, "
        "0.13x the ring's time and 0.55x the reads'; 64 KiB-1 MiB 0.13-0.14x the ring's), of any sizes (each "
        "stream headed by its layout: 0.17-0.22x at 4 KiB-1 MiB)"),
    Row("scatter", "shm", lambda f: f.shm and not f.mesh and f.direct_max > 0,
        "groups over 8: the root's stream through the segments, headed by its shape and dtype (16 ranks, 4 KiB-1 "
        "MiB blocks: 0.20-0.48x the ring's time)"),
    Row("barrier", "shm", lambda f: f.shm and f.signals and f.direct_max > 0,
        "one signal through the segments: no message"),
    Row("gather", "shm", lambda f: f.shm and f.signals and f.direct_max > 0,
        "signalled through the segments: 4 KiB 2-2.4x faster than TCP at N=2-8, 64 KiB a tie "
        "(the figures above _shm_reduce_min)"),
    Row("gather", "shm", lambda f: f.shm and not f.mesh and f.direct_max > 0 and f.nbytes >= SHM_WIDE_GATHER_MIN,
        "16 ranks: 0.41-0.91x TCP's time at 64 KiB-4 MiB per rank (see SHM_WIDE_GATHER_MIN)"),
    Row("gather", "shm", lambda f: f.shm and f.mesh and f.direct_max > 0 and f.nbytes >= SHM_GATHER_MIN,
        "one copy per byte received instead of the kernel's two: 4 ranks 2.2-2.8x faster at 1-64 MiB, "
        "2 ranks 1.2-1.8x at 1-16 MiB, 0.92x at 64 MiB (alternating with TCP, loaded 2-core box)"),
    Row("reduce", "shm-cma", lambda f: f.cma and f.direct_max > 0
        and f.nbytes >= min(CMA_REDUCE_MIN, CMA_REDUCE_SLOTS * f.slot),
        "each rank reduces its slice reading every rank's input from its memory: three signals, where the "
        "segments take one or two a slot (16 MiB: 0.45-0.81x the time at N=2-16; see CMA_REDUCE_MIN)"),
    Row("reduce", "shm", lambda f: f.shm and f.direct_max > 0 and (f.signals or f.mesh) and f.nbytes >= _shm_reduce_min(f),
        "4 ranks, alternating with TCP on a loaded 2-core box: 1 MiB 1.17x, 16 MiB 1.0x, 64 MiB 1.44x "
        "faster; 2 ranks from 1 MiB (quiet box: 1.3-1.9x faster than the pair's TCP algorithms); "
        "signalled through the segments, from the first byte (one signal a round on 2 ranks and up to 256 KiB)"),
    Row("reduce_scatter", "shm-cma", lambda f: f.cma and f.direct_max > 0 and f.n > 2
        and f.nbytes >= min(CMA_REDUCE_MIN, CMA_REDUCE_SLOTS * f.slot),
        "each rank sums its block reading every rank's input from its memory: two signals, where the segments "
        "take one a slot (16 ranks, 256 KiB-4 MiB blocks: 0.32-0.60x the time; see CMA_REDUCE_MIN)"),
    Row("reduce_scatter", "shm", lambda f: f.shm and f.direct_max > 0 and f.n > 2
        and (f.signals or (f.mesh and f.nbytes >= SHM_REDUCE_MIN)),
        "each rank reduces its block straight from every rank's segment"),
    Row("broadcast", "shm-cma", lambda f: f.cma and f.direct_max > 0 and f.nbytes >= CMA_BLOCK_MIN,
        "every rank reads the root's array from its memory: one kernel copy, two signals, where the segments "
        "take two copies and a signal a slot (1-16 MiB: 0.36-0.95x the time at N=2-32; see CMA_BLOCK_MIN)"),
    Row("broadcast", "shm", lambda f: f.shm and f.direct_max > 0
        and (f.signals or (f.mesh and f.nbytes >= SHM_GATHER_MIN)),
        "the root writes once, every rank copies once"),
    Row("gather", "hier", lambda f: f.hosts > 1 and f.nbytes >= HIER_GATHER_MIN,
        "several hosts: each byte crosses a host's interface once (a flat ring: (N-1)/(N-L) times); "
        "a tie with the ring on the emulated cluster"),
    Row("gather", "doubling", lambda f: f.mesh and f.n > 2 and f.pow2 and f.nbytes <= min(DOUBLING_GATHER_MAX, f.direct_max),
        "log2(N) steps: 4-32 KiB blocks 20-40% faster than one direct exchange on 4 ranks"),
    Row("gather", "direct", lambda f: f.mesh and f.nbytes <= f.direct_max,
        "one step instead of N-1: up to 1 MiB blocks 10-40% faster than the ring"),
    Row("gather", "doubling", lambda f: not f.mesh and (f.pow2 or f.nbytes <= DOUBLING_GATHER_MAX)
        and f.nbytes <= LOG_GATHER_MAX,
        "groups over 8: log2(N) steps (+2 folding the ranks past a power of two in and out); 25-50% faster than the ring"),
    Row("gather", "bruck", lambda f: not f.mesh and f.nbytes <= LOG_GATHER_MAX,
        "groups over 8, N not a power of two, 64-256 KiB blocks: ceil(log2 N) steps, 5-12% faster than doubling"),
    Row("gather", "ring", _always, "bandwidth-optimal"),
    Row("reduce", "pairwise", lambda f: f.n == 2 and not f.both_ways and f.mesh
        and f.nbytes <= min(PAIR_EXCHANGE_MAX, f.direct_max),
        "two ranks on their direct connection: 512 KiB 24-32% faster than two steps of half arrays"),
    Row("reduce", "doubling", lambda f: f.mesh and (f.pow2 or (f.n >= 5 and f.nbytes >= FOLDED_DOUBLING_MIN))
        and f.nbytes <= min(ONE_SHOT_MAX, f.direct_max),
        "4-256 KiB 15-60% faster than one exchange with every rank (4 ranks); 64-256 KiB 13-27% on 5-7"),
    Row("reduce", "direct", lambda f: f.mesh and f.nbytes <= min(ONE_SHOT_MAX, f.direct_max),
        "small arrays on 3, 5, 6, 7 ranks: one step"),
    Row("reduce", "two-shot", lambda f: f.mesh and f.block <= f.direct_max,
        "the ring's bytes in 2 steps instead of 2(N-1): 4-rank 1 MiB 2.2-2.7 -> 1.0-1.2 ms"),
    Row("reduce", "pairwise-ring", lambda f: f.n == 2 and f.nbytes <= PAIR_EXCHANGE_MAX,
        "two ranks, 1-2 MiB: 14-24% faster than the ring's reduce-scatter and all-gather"),
    Row("reduce", "doubling", lambda f: not f.mesh and f.nbytes <= LOG_REDUCE_MAX,
        "groups over 8: log2(N) steps (+2 folding the ranks past a power of two in and out); 2-3x faster than the ring"),
    Row("reduce", "rabenseifner", lambda f: not f.mesh and f.nbytes <= HALVING_REDUCE_MAX,
        "groups over 8: the ring's bytes in 2log2(N) steps; 16 ranks, 4 MiB: 1.5x faster than the ring"),
    Row("reduce", "ring", _always, "bandwidth-optimal"),
    Row("reduce_scatter", "rabenseifner", lambda f: not f.mesh and f.block <= HALVING_SCATTER_BLOCK_MAX,
        "groups over 8: recursive halving, log2(N) steps; 13-50% faster than the ring up to 256 KiB blocks"),
    Row("reduce_scatter", "ring", _always, "bandwidth-optimal"),
    Row("broadcast", "direct", lambda f: f.mesh and f.nbytes <= f.direct_max,
        "one step, and every rank checks every other rank's call"),
    Row("broadcast", "binomial", lambda f: not f.mesh and f.nbytes <= TREE_BROADCAST_MAX,
        "groups over 8: log2(N) steps down a tree; up to 4 MiB 10%-2x faster than the chain"),
    Row("broadcast", "ring", _always, "a pipelined chain from the root"),
    Row("barrier", "direct", lambda f: f.mesh and f.nbytes <= f.direct_max,
        "one step: a byte to every rank; on 4-8 ranks within noise of dissemination"),
    Row("barrier", "dissemination", _always,
        "ceil(log2 N) rounds of a header-only message: 12-16 ranks 1.6-2x faster than a gather round the ring"),
    Row("gather_root", "shm", lambda f: f.shm and f.signals and f.direct_max > 0,
        "signalled through the segments: the others write, the root copies"),
    Row("gather_root", "direct", lambda f: f.mesh and f.direct_max > 0,
        "one step: only the root receives, (N-1) blocks; the others send one"),
    Row("gather_root", "binomial", lambda f: not f.mesh,
        "groups over 8: dissemination rounds, then a binomial tree to the root, ceil(log2 N) steps where the ring "
        "takes N-1 (16 ranks over TCP, 4 KiB-1 MiB per rank: 0.25-0.67x the ring's time in two runs)"),
    Row("gather_root", "ring", _always, "the ring all-gather kept on the root: (N-1) blocks in N-1 pipelined steps"),
    Row("all_to_all", "shm", lambda f: f.shm and f.mesh and f.direct_max > 0
        and (f.signals or f.nbytes == UNKNOWN or f.nbytes >= SHM_ALL_TO_ALL_MIN),
        "one copy into the sender's segment and one out per byte, instead of the kernel's two"),
    Row("scatter", "shm", lambda f: f.shm and f.mesh and f.direct_max > 0
        and (f.signals or f.nbytes >= SHM_ALL_TO_ALL_MIN),
        "the root writes once, each rank copies its block out (see ROOTED)"),
    Row("scatter", "direct", lambda f: f.mesh and f.direct_max > 0,
        "one step: the root's header declares the shape and dtype, every other rank's header goes alone to every "
        "rank"),
    Row("scatter", "binomial", lambda f: not f.mesh,
        "groups over 8: dissemination rounds, a binomial tree from the root, ceil(log2 N) steps, where the ring "
        "relays N(N-1)/2 blocks, and closing rounds (16 ranks over TCP, 4 KiB-1 MiB blocks: 0.38-0.60x the ring's "
        "time)"),
    Row("scatter", "ring", _always, "N-1 hops, each passing on the blocks for ranks further on"),
    Row("all_to_all", "direct", lambda f: f.mesh and f.direct_max > 0,
        "one step, each rank sending (N-1)/N of its array once: the fewest bytes and steps there are"),
    Row("all_to_all", "bruck", lambda f: not f.mesh and 0 <= f.nbytes
        and f.nbytes // f.n <= BRUCK_ALL_TO_ALL_BLOCK_MAX,
        "groups over 8, blocks of one size up to 16 KiB: ceil(log2 N) steps of about N/2 blocks "
        "(16 ranks over TCP: 0.38-0.47x the ring's time, 0.66-0.81x pairwise exchange's)"),
    Row("all_to_all", "pairwise-exchange", lambda f: not f.mesh,
        "groups over 8: N-1 steps, every block straight to its rank over links opened on first use, where the "
        "ring relays N(N-1)/2 blocks (16 ranks over TCP: 0.12-0.63x the ring's time, 1 MiB blocks 62 against "
        "517 ms; splits 0.15-0.46x at 64 KiB-1 MiB, 1.15x at 4 KiB)"),
    Row("all_to_all", "ring", _always, "N-1 hops, each passing on the blocks for ranks further on"),
    Row("gather_v", "shm", lambda f: f.shm and f.direct_max > 0 and f.op == "all_gather_uneven",
        "uneven all_gather on one machine: every stream through the segments, landing in place in the result "
        "(2 to 8 ranks, 4 KiB-16 MiB a rank, benchmarks/uneven.py: 0.27-0.76x the direct path's time; "
        "0.40-0.85x with signals through memory off; over 8 as below)"),
    Row("gather_v", "shm", lambda f: f.shm and f.direct_max > 0 and f.op == "broadcast_object",
        "broadcast_object on one machine: the root's bytes written once through the segments, every rank "
        "copying them (2 to 8 ranks, 4 KiB-16 MiB, alternating: 0.29-0.74x the direct path's time, where the "
        "root sends N-1 copies over TCP; benchmarks/objects.py --broadcast)"),
    Row("gather_v", "direct", lambda f: f.mesh and f.direct_max > 0,
        "one step; every rank checks every other rank's call (all_gather_object on 2 ranks, 16 MiB: 0.77-0.81x "
        "the shared-memory rounds' time, whose objects land each in a buffer of its own)"),
    Row("gather_v", "shm", lambda f: f.shm and not f.mesh and f.direct_max > 0,
        "groups over 8 on one machine: every stream through the segments, headed by its fields, where the ring "
        "relays each N-1 hops (16 ranks, 4 KiB-1 MiB a rank: uneven all_gather 0.26-0.45x the ring's time, "
        "all_gather_object 0.25-0.40x)"),
    Row("gather_v", "bruck", lambda f: not f.mesh,
        "groups over 8 over TCP: ceil(log2 N) steps, each carrying its blocks' fields, where the ring takes N-1 "
        "hops (uneven all_gather and all_gather_object, 4 KiB-1 MiB a rank: 0.61-0.92x the ring's time at 16 "
        "ranks, 0.48-0.57x at 64)"),
    Row("gather_v", "ring", _always, "N-1 hops, each block passed on whole"),
    Row("scan", "shm", lambda f: f.shm and f.direct_max > 0,
        "one machine: every rank writes its array once and folds those before it straight from their segments "
        "(4 ranks, 4 KiB-16 MiB: 0.56x direct's time at 4 KiB, 0.80x the chain's at 16 MiB)"),
    Row("scan", "direct", lambda f: f.mesh and f.nbytes <= min(SCAN_DIRECT_MAX, f.direct_max),
        "one step where the chain takes N-1 hops in a row (4 ranks, 4 KiB: 0.89x the chain's time)"),
    Row("scan", "ring", _always, "a pipelined chain from rank 0, each rank passing on its fold as it is made, "
        "each byte sent once (1 MiB: 0.69x direct's time on 4 ranks, 0.58x on 8)"),
]


def default_direct_max(comm: Comm) -> int:
    """RINGDIST_DIRECT_MAX's default for this group."""
    if comm.size() > 2:
        return DIRECT_MAX_MESH
    return DIRECT_MAX_PAIR_BOTH_WAYS if comm.both_ways else DIRECT_MAX_PAIR

# RINGDIST_ALGO's names for every op of a kind: all_reduce (all_sum ... all_bxor, and the rooted
# reduce, which runs them) and reduce_scatter (sum_scatter ... bxor_scatter).
GROUPS = {"reduce": "all_reduce", "reduce_scatter": "reduce_scatter"}


def facts(comm: Comm, nbytes: int, op: str = "") -> Facts:
    limit = comm.direct_max_override
    return Facts(op=op, n=comm.size(), nbytes=nbytes, mesh=comm.mesh is not None, both_ways=comm.both_ways,
                 direct_max=default_direct_max(comm) if limit is None else limit, shm=comm.shm is not None,
                 signals=comm.shm is not None and comm.shm.signals is not None,
                 cma=comm.shm is not None and comm.shm.pids is not None,
                 slot=comm.shm.slot_size if comm.shm is not None else 0,
                 hosts=len(comm.hierarchy.hosts) if comm.hierarchy is not None else 1)


def forced(comm: Comm, op: str, like: str | None = None) -> str | None:
    """The algorithm RINGDIST_ALGO names for `op`, if any (the last matching entry wins); `like`:
    the all-reduce whose bits `op` gives (a rooted reduce, MAXLOC's values: `collectives`), whose
    entries count too, unless an entry names `op` itself. A call's agreement steps are always
    the table's: `*` forces the calls, not their steps."""
    kind = KIND_OF[op]
    name = None
    every = None if op.endswith(" (agreement step)") else "*"
    own = {"all_avg": "all_sum", "avg_scatter": "sum_scatter"}.get(op, op)  # (an average is the sum's bits, divided)
    algo = comm.settings.algo
    if like is not None and any(entry_op == own for entry_op, _ in algo):
        like = None  # (`reduce:X,all_sum:Y`: the rooted reduce runs X)
    for entry_op, entry_name in algo:
        if entry_op in (own, like, every, GROUPS.get(kind)):
            name = entry_name
    return name


CHOICES_KEPT = 256  # choices a communicator remembers (its kinds of call); then it starts afresh


def choose(comm: Comm, op: str, nbytes: int, like: str | None = None) -> Algorithm:
    """The algorithm that runs `op` on `comm` for `nbytes` per rank: RINGDIST_ALGO's (`forced`;
    `like`: the all-reduce whose bits `op` gives), else the table's.

    Remembered per communicator, for what the choice depends on (a small collective's whole
    budget is tens of microseconds; the table's walk costs a few)."""
    key = (op, nbytes, comm.both_ways, comm.direct_max_override, like)
    cache = comm.choices
    algorithm = cache.get(key)
    if algorithm is None:
        algorithm = _choose(comm, op, nbytes, like)
        if len(cache) >= CHOICES_KEPT:
            cache.clear()
        cache[key] = algorithm
    return algorithm


def _choose(comm: Comm, op: str, nbytes: int, like: str | None = None) -> Algorithm:
    kind = KIND_OF[op]
    name = forced(comm, op, like)
    if name is not None:
        algorithm = ALGORITHMS.get(name)
        if algorithm is None:
            raise ConfigError(f"RINGDIST_ALGO: no algorithm {name!r} (there are {', '.join(sorted(ALGORITHMS))})")
        why = algorithm.why_not(comm, kind, nbytes)
        if why is not None:
            raise ConfigError(f"RINGDIST_ALGO forces {name} for {op}, which cannot run here: {why}")
        return algorithm
    f = facts(comm, nbytes, op)
    for row in TABLE:
        if row.kind == kind and row.when(f):
            algorithm = ALGORITHMS[row.algorithm]
            if algorithm.why_not(comm, kind, nbytes) is None:
                return algorithm
    raise AssertionError(f"the tuning table has no row for {op} on {comm!r}")  # every kind ends in the ring


# Ops that always send blocks of sizes the receivers learn from the headers: an algorithm's even
# all_to_all (all blocks one size) cannot run them.
SIZED_ALL_TO_ALL = ("gather_object", "scatter_object", "gather_uneven", "scatter_uneven")


def check_overrides(settings_algo: tuple[tuple[str, str], ...]) -> None:
    """ConfigError naming RINGDIST_ALGO if it names an algorithm that does not exist, or one that
    has no such kind of collective at all."""
    for op, name in settings_algo:
        algorithm = ALGORITHMS.get(name)
        if algorithm is None:
            raise ConfigError(f"RINGDIST_ALGO: no algorithm {name!r} (there are {', '.join(sorted(ALGORITHMS))})")
        kinds = {KIND_OF[o] for o in KIND_OF if op in (o, "*", GROUPS.get(KIND_OF[o]))}
        if not any(algorithm.runs(k) for k in kinds) or (op in SIZED_ALL_TO_ALL and algorithm.all_to_all is None):
            raise ConfigError(f"RINGDIST_ALGO: {name} cannot run {op} (it runs {', '.join(algorithm.kinds())})")
