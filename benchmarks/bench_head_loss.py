"""The chunked head loss before and after its softmax became one fused in-place kernel (2026-12-01):
full optimizer steps of the cpu preset (forward, backward, fused AdamW, 16 x 128 tokens, real batches), the
head as it was (amax, sub, exp, sum, mul over each float32 chunk: five passes, and a bfloat16 chunk cast to
a fresh float32 tensor) against model.head_loss today, in float32 (CPUs without native bfloat16) and
bfloat16 (where native). Variants interleaved round by round, the best round of each counts; the same
loss and gradients are checked first.

    .venv/bin/python benchmarks/bench_head_loss.py --data-dir data [--rounds 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import model as model_module  # noqa: E402
import slm.head_loss as head_loss_module  # noqa: E402
from benchmarks.bench_cpu_step import make_step, setup  # noqa: E402
from slm.cli import run_cli  # noqa: E402

TODAY = model_module.head_loss


# The head loss's forward as it was at fcb0383 (model._HeadLoss.forward), returning the loss and the saved
# gradients of h and w.
def before_forward(h, w, targets, grad_enabled=True):
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else h.dtype
    hl, wl = h.to(dtype), w.to(dtype)
    keep = targets != -1
    n = keep.sum().clamp(min=1).float()
    grad_logits = torch.empty(h.size(0), w.size(0), dtype=dtype) if grad_enabled else None
    total = torch.zeros((), dtype=torch.float32)
    in_place = grad_enabled and dtype == torch.float32
    for s in range(0, h.size(0), head_loss_module.HEAD_LOSS_ROWS):
        rows = slice(s, s + head_loss_module.HEAD_LOSS_ROWS)
        if in_place:
            e = torch.mm(hl[rows], wl.t(), out=grad_logits[rows])
        else:
            e = torch.mm(hl[rows], wl.t()).float()
        m = e.amax(dim=1, keepdim=True)
        e.sub_(m).exp_()
        z = e.sum(dim=1, keepdim=True)
        k = keep[rows, None].float()
        t = targets[rows, None].clamp(min=0)
        total += ((z.log() - e.gather(1, t).log()) * k).sum()
        if grad_enabled:
            e.mul_(k / (n * z))
            e.scatter_add_(1, t, -k / n)
            if not in_place:
                grad_logits[rows] = e
    grads = (torch.mm(grad_logits, wl).to(h.dtype), torch.mm(grad_logits.t(), hl).to(w.dtype)) if grad_enabled else ()
    return total / n, grads


class _Before(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, targets, grad_enabled):
        loss, grads = before_forward(h, w, targets, grad_enabled)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None


def before(h, w, targets):
    return _Before.apply(h, w, targets, torch.is_grad_enabled())


def check_same(dtype: torch.dtype) -> float:
    """The largest relative difference of loss, grad h and grad w between the two heads (random data)."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(300, 128, generator=gen, requires_grad=True)
    w = (torch.randn(50257, 128, generator=gen) * 0.05).requires_grad_()
    t = torch.randint(0, 50257, (300,), generator=gen)
    out = []
    for head in (before, TODAY):
        h.grad = w.grad = None
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = head(h, w, t)
        loss.backward()
        out.append((loss.detach(), h.grad.clone(), w.grad.clone()))
    return max(float((a - b).norm() / b.norm()) for a, b in zip(*out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    args = p.parse_args(argv)
    machine, mc, tc, batches = setup(args.data_dir)
    dtypes = ["float32"] + (["bfloat16"] if machine.native_bf16 else [])
    for d in dtypes:
        print(f"{d}: the two heads' loss and gradients differ by {check_same(getattr(torch, d)):.1e} (relative)")
    steps = {d: make_step(mc, tc, d, False, batches) for d in dtypes}
    best: dict = {}
    for _ in range(args.rounds):
        for d, step in steps.items():
            for name, head in (("before", before), ("today", TODAY)):
                model_module.head_loss = head
                for _ in range(2):
                    step()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                s = (time.perf_counter() - t0) / args.steps
                best[(d, name)] = min(best.get((d, name), s), s)
    model_module.head_loss = TODAY
    tokens = tc.batch_size * mc.block_size
    print(f"\n{'dtype':<9} {'before ms':>9} {'today ms':>9} {'tokens/s today':>15} {'speed-up':>9}")
    for d in dtypes:
        b, t = best[(d, "before")], best[(d, "today")]
        print(f"{d:<9} {b * 1000:>9.0f} {t * 1000:>9.0f} {tokens / t:>15,.0f} {b / t:>8.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    run_cli(main)
