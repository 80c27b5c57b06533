"""The names of the element-wise reductions a call takes as `op` (MPI_SUM ... MPI_BXOR): what
`arrays` maps to numpy's ufuncs, and what `settings` checks RINGDIST_ALGO's ops against
(numpy-free, as the launcher reads the settings)."""

REDUCE_OPS = ("sum", "max", "min", "prod", "band", "bor", "bxor")
