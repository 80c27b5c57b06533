"""torch.distributed with the gloo backend (TCP, CPU tensors) as a peer (label torch_gloo).

Started on every rank by `torchrun --standalone --nproc_per_node N gloo_worker.py [loop options]`.
all_gather and all_to_all (all_to_all_single) go into an output made once per row
(all_gather_single; all_gather_into_tensor on a torch without it); all_reduce works in
place, so its input is copied back, untimed, before every call (reduce too). gather and
scatter (root 0) use lists of per-rank tensors made once per row.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # (output, input)


class Gloo(loop.Adapter):
    peer = "torch_gloo"
    launcher = "torchrun"
    transport = "tcp"

    def __init__(self):
        self.version = f"torch {torch.__version__}"
        dist.init_process_group(backend="gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def barrier(self):
        dist.barrier()

    def prepare(self, x, collective):
        original = torch.from_numpy(x.copy())
        work = original.clone()
        out = (torch.empty(work.numel() * self.size, dtype=work.dtype) if collective == "all_gather"
               else torch.empty_like(work) if collective == "all_to_all" else None)
        if collective == "gather":
            out = list(torch.empty(self.size, work.numel()).unbind()) if self.rank == 0 else None
        elif collective == "scatter":
            out = (torch.empty(work.numel() // self.size), list(work.chunk(self.size)) if self.rank == 0 else None)
        return collective, original, work, out

    def restore(self, state):
        collective, original, work, _ = state
        if collective in ("all_sum", "reduce"):
            work.copy_(original)

    def all_gather(self, state):
        _, _, work, out = state
        gather_into(out, work)
        return out

    def all_sum(self, state):
        _, _, work, _ = state
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work

    def all_to_all(self, state):
        _, _, work, out = state
        dist.all_to_all_single(out, work)
        return out

    def gather(self, state):
        _, _, work, out = state
        dist.gather(work, out, dst=0)
        return torch.cat(out) if self.rank == 0 else None

    def scatter(self, state):
        _, _, _, (out, parts) = state
        dist.scatter(out, parts, src=0)
        return out

    def reduce(self, state):
        _, _, work, _ = state
        dist.reduce(work, dst=0, op=dist.ReduceOp.SUM)
        return work if self.rank == 0 else None

    def as_numpy(self, result):
        return result.numpy().reshape(-1)

    def close(self):
        dist.destroy_process_group()


if __name__ == "__main__":
    loop.main(Gloo)
