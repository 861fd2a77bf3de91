"""Several processes, one run: who this process is under torchrun, and the collective sums.
Every rank draws the same global batch and trains on its own rows of it (training.train_step),
so N ranks x batch B follow exactly the path of 1 process with batch N*B."""

from __future__ import annotations

import os

import torch


class Dist:
    """Who this process is: world size 1 without torchrun; under torchrun one rank of a process
    group.
    """

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

    def all_max_list(self, values: list[float]) -> list[float]:
        """The largest of each value over the processes (the slowest one's seconds)."""
        import torch

        return self.all_max(torch.tensor(values, device=self.device)).tolist()

    def __enter__(self) -> Dist:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(clean=exc_type is None)

    def close(self, clean: bool = True) -> None:
        """Tear the process group down; after a clean end, only once every rank has reached it (a
        rank that destroyed its gloo group while another was still in the last collective was
        seen to abort at exit). After an error no barrier: the other ranks may be gone."""
        if self.ddp:
            import torch.distributed as dist

            if dist.is_initialized():
                if clean:
                    dist.barrier()
                dist.destroy_process_group()


def launch_command(script: str = "training.py") -> str:
    """The command that started this run, to type again: `python training.py`, or under torchrun
    `torchrun --standalone --nproc_per_node=N training.py` with N and the node count read from
    the environment torchrun sets (LOCAL_WORLD_SIZE processes on each of WORLD_SIZE /
    LOCAL_WORLD_SIZE nodes), so that a run stopped under torchrun is resumed by as many processes
    as it had."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return f"python {script}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = max(1, world // max(1, per_node))
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node={per_node} {script}"
    # on every node
    return (
        f"torchrun --nnodes={nodes} --nproc_per_node={per_node} --rdzv-endpoint=HOST:PORT {script}"
    )
