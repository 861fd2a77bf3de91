"""The chunked head loss today against an earlier one: full optimizer steps of the cpu preset
(forward, backward, fused AdamW, 16 x 128 tokens, real batches), in float32 (CPUs without native
bfloat16) and bfloat16 (where native). By default the earlier head is the one before its softmax
became one fused in-place kernel (amax, sub, exp, sum, mul over each float32 chunk, five passes,
and a bfloat16 chunk cast to a fresh float32 tensor); --against REV takes
slm/head_loss.py as it was at git revision REV instead. Each round times both, in alternating
order, so a change in the machine's load hits both alike; it prints the best round of each, the
median of the rounds' ratios, and each head's minor page faults a step (memory mapped on first
touch; --malloc-as-it-comes leaves glibc returning big freed blocks to the OS, as other platforms
do). First, how far apart the two heads' loss and gradients are, and how far each is from float64
on the same (bfloat16-rounded) inputs.

    .venv/bin/python benchmarks/bench_head_loss.py --data-dir data [--rounds 3] [--steps 5]
        [--against REV] [--malloc-as-it-comes]"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import model as model_module  # noqa: E402
import slm.head_loss as head_loss_module  # noqa: E402
from benchmarks.bench_cpu_step import (  # noqa: E402
    add_preset_flag,
    make_step,
    median_ratio,
    module_at,
    setup,
    time_steps,
)
from slm.cli import run_cli  # noqa: E402

TODAY = model_module.head_loss


# The head loss's forward as it was at fcb0383 (model._HeadLoss.forward), returning the loss and the
# saved gradients of h and w.
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
    grads = (
        (torch.mm(grad_logits, wl).to(h.dtype), torch.mm(grad_logits.t(), hl).to(w.dtype))
        if grad_enabled
        else ()
    )
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


def head_loss_at(rev: str):
    """slm/head_loss.py's head_loss as it was at git revision rev."""
    return module_at(rev, "slm/head_loss.py", "head_loss_then").head_loss


def page_faults() -> int | None:
    """Minor page faults of this process so far (pages mapped on first touch); None where not
    counted (Windows).
    """
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def check_same(dtype: torch.dtype, then) -> str:
    """How far apart the two heads' loss, grad h and grad w are (the largest relative difference),
    and how far each is from float64 on the same inputs rounded to dtype (random data, 300
    positions: not a power of 2)."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(300, 128, generator=gen, requires_grad=True)
    w = (torch.randn(50257, 128, generator=gen) * 0.05).requires_grad_()
    t = torch.randint(0, 50257, (300,), generator=gen)
    hr, wr = (x.detach().to(dtype).double().requires_grad_() for x in (h, w))
    exact = F.cross_entropy(hr @ wr.T, t)
    exact.backward()
    out = []
    for head in (then, TODAY):
        h.grad = w.grad = None
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = head(h, w, t)
        loss.backward()
        out.append((loss.detach().double(), h.grad.double(), w.grad.double()))

    def apart(a, b):
        return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))

    exact = (exact.detach(), hr.grad, wr.grad)
    return (
        f"{apart(*out):.1e} apart; from float64: earlier {apart(out[0], exact):.1e}, "
        f"today {apart(out[1], exact):.1e}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    p.add_argument(
        "--against", metavar="REV", help="the head loss of slm/head_loss.py at this git revision"
    )
    p.add_argument(
        "--malloc-as-it-comes",
        action="store_true",
        help="leave glibc's malloc thresholds alone (big freed blocks go back to the OS, as on "
        "macOS, Windows and musl), where training raises them (slm.hardware.keep_freed_memory)",
    )
    add_preset_flag(p)
    args = p.parse_args(argv)
    then = head_loss_at(args.against) if args.against else before
    machine, mc, tc, batches = setup(
        args.data_dir, keep_freed=not args.malloc_as_it_comes, preset=args.preset
    )
    malloc = "as it comes" if args.malloc_as_it_comes else "thresholds raised, as training does"
    print(f"malloc: {malloc}")
    dtypes = ["float32"] + (["bfloat16"] if machine.native_bf16 else [])
    for d in dtypes:
        print(
            f"{d}: the two heads' loss and gradients: {check_same(getattr(torch, d), then)} "
            "(relative)"
        )
    steps = {d: make_step(mc, tc.batch_size, d, False, batches) for d in dtypes}
    times: dict = {}
    faults: dict = {}  # (dtype, head) -> minor page faults a step, in the last round
    for r in range(args.rounds):
        for d, step in steps.items():
            heads = (("earlier", then), ("today", TODAY))
            # alternating: first or second, alike
            for name, head in heads if r % 2 == 0 else heads[::-1]:
                model_module.head_loss = head
                before_faults, untimed = page_faults(), 2
                times.setdefault((d, name), []).append(time_steps(step, args.steps, untimed))
                if before_faults is not None:
                    faults[(d, name)] = (
                        f"{(page_faults() - before_faults) // (args.steps + untimed):,}"
                    )
    model_module.head_loss = TODAY
    tokens = tc.batch_size * mc.block_size
    print(
        f"\n{'dtype':<9} {'earlier ms':>10} {'today ms':>9} {'tokens/s today':>15} "
        f"{'best rounds':>12} {'median of rounds':>17} {'page faults a step':>19}"
    )
    for d in dtypes:
        b, t = times[(d, "earlier")], times[(d, "today")]
        print(
            f"{d:<9} {min(b) * 1000:>10.0f} {min(t) * 1000:>9.0f} {tokens / min(t):>15,.0f} "
            f"{min(b) / min(t):>11.3f}x {median_ratio(b, t):>16.3f}x "
            f"{faults.get((d, 'earlier'), '-'):>9} -> {faults.get((d, 'today'), '-')}"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    run_cli(main)
