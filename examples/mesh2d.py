"""A 2-D device mesh: split the world into rows and columns, gather over each, check.

    ringdist-launch -n 6 examples/mesh2d.py      # a 2 x 3 mesh (also 4 ranks: 2 x 2)

Rank r sits at (row, col) = (r // cols, r % cols). Gathering over a row collects the
ranks of that row; reducing over a column sums down it, as tensor- and data-parallel
programs do on the two axes of a mesh.
"""
import numpy as np

import ringdist as rd

world = rd.init()
rank, size = world.rank(), world.size()
rows_n = 2
if size % rows_n:
    raise SystemExit(f"mesh2d needs an even number of ranks, got {size}")
cols_n = size // rows_n
row, col = divmod(rank, cols_n)

row_group = world.split(color=row, key=col)  # the ranks of my row, ordered by column
col_group = world.split(color=col, key=row)  # the ranks of my column, ordered by row

x = np.array([rank], dtype=np.int64)
in_row = rd.all_gather(x, group=row_group)  # [row*cols, ..., row*cols + cols-1]
in_col = rd.all_gather(x, group=col_group)  # [col, col+cols, ...]
col_sum = rd.all_sum(x, group=col_group)  # sum of my column's ranks
everyone = rd.all_gather(x)  # the world, for comparison

assert in_row.tolist() == [row * cols_n + c for c in range(cols_n)]
assert in_col.tolist() == [r * cols_n + col for r in range(rows_n)]
assert col_sum.tolist() == [sum(r * cols_n + col for r in range(rows_n))]
assert everyone.tolist() == list(range(size))
print(f"rank {rank} at (row {row}, col {col}): row {in_row.tolist()} column {in_col.tolist()} "
      f"column sum {col_sum[0]}")
row_group.close()
col_group.close()
