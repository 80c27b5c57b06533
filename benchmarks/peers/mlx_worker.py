"""MLX's distributed "ring" backend (TCP, CPU arrays) as a peer (label mlx_ring).

Started on every rank by `mlx.launch --backend ring -n N --python PY -- mlx_worker.py [loop options]`.
mx.distributed has no barrier: the barrier is an all_sum of one float (PEER_MLX_BARRIER=all_gather
makes it an all_gather of one float). Every call returns a new array, evaluated before it returns.
mx.distributed has no all_to_all: that collective is skipped, with a line saying so.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop  # noqa: E402

import mlx.core as mx  # noqa: E402


class MLXRing(loop.Adapter):
    peer = "mlx_ring"
    launcher = "mlx.launch --backend ring"
    transport = "tcp"
    missing = {"all_to_all": "mx.distributed has no all_to_all", "gather": "mx.distributed has no gather",
               "scatter": "mx.distributed has no scatter", "reduce": "mx.distributed has no rooted reduce"}

    def __init__(self):
        self.version = f"mlx {mx.__version__}"
        self.group = mx.distributed.init(strict=True, backend="ring")
        self.rank, self.size = self.group.rank(), self.group.size()
        self.token = mx.zeros((1,), dtype=mx.float32)
        mx.eval(self.token)
        gather = os.environ.get("PEER_MLX_BARRIER", "all_sum") == "all_gather"
        self.token_op = mx.distributed.all_gather if gather else mx.distributed.all_sum

    def barrier(self):
        mx.eval(self.token_op(self.token, group=self.group))

    def prepare(self, x, collective):
        array = mx.array(x)
        mx.eval(array)
        return array

    def all_gather(self, x):
        y = mx.distributed.all_gather(x, group=self.group)
        mx.eval(y)
        return y

    def all_sum(self, x):
        y = mx.distributed.all_sum(x, group=self.group)
        mx.eval(y)
        return y


if __name__ == "__main__":
    loop.main(MLXRing)
