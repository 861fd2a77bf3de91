"""Several processes, one run: who this process is under torchrun, the collective sums, and each rank's
slice of one global batch (so N ranks x batch B follow exactly the path of 1 process with batch N*B)."""

from __future__ import annotations

import os

import torch


class Dist:
    """Who this process is: world size 1 without torchrun; under torchrun one rank of a process group."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.ddp = self.world > 1
        if self.ddp:
            import torch.distributed as dist

            if device.startswith("cuda"):
                self.device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")

    @property
    def master(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def close(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def global_batch(batches, split: str, batch_size: int, gen: torch.Generator, dist: Dist):
    """This rank's slice of one global batch of world * batch_size windows drawn from gen.

    Every rank holds the same generator, so all draw the same global batch and each trains on its own
    rows: N ranks x B is exactly 1 process x N*B."""
    x, y = batches.get_batch(split, batch_size * dist.world, generator=gen)
    if dist.world == 1:
        return x, y
    rows = slice(dist.rank * batch_size, (dist.rank + 1) * batch_size)
    return x[rows], y[rows]
