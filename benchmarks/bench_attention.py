"""The attention kernel on a CPU: SDPA's flash kernel against its math kernel (q @ k.T, softmax, @
v), the choice behind model.CPU_BF16_MATH_ATTENTION_MAX_T.

    .venv/bin/python benchmarks/bench_attention.py --data-dir data [--rounds 12] [--steps 3]

First the kernels alone, in bfloat16: causal attention forward (and backward, with gradients) at
the cpu preset's heads (128 tokens x 32) and at longer windows and wider heads, best of 3 rounds.
Then whole optimizer steps of the cpu preset (forward, backward, fused AdamW on real batches)
with the model's choice against the flash kernel everywhere (CPU_BF16_MATH_ATTENTION_MAX_T = 0),
in each dtype this CPU trains in: the two side by side in each round, in alternating order, so a
change in the machine's load hits both alike. It prints the best round of each and the median of
the rounds' ratios. In float32 both are the same code: its ratio is the noise of the measurement.
Prints the CPU kind and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import model  # noqa: E402
from benchmarks.bench_cpu_step import (  # noqa: E402
    add_preset_flag,
    make_step,
    median_ratio,
    paired_rounds,
    setup,
    time_steps,
)
from slm.cli import run_cli  # noqa: E402

SHAPES = [
    (16, 4, 128, 32),
    (8, 4, 128, 32),
    (16, 8, 128, 64),
    (16, 8, 256, 64),
    (4, 4, 512, 32),
    (8, 8, 512, 64),
]


def kernel_ms(shape: tuple[int, int, int, int], backend, grad: bool, reps: int = 5) -> float:
    """Best-of-3 milliseconds of one causal bfloat16 attention (forward, and backward when grad) on
    the backend.
    """
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=grad) for _ in range(3))
    g = torch.randn(shape, dtype=torch.bfloat16)

    def once():
        with sdpa_kernel(backend):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if grad:
            y.backward(g)

    once()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            once()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1000


def step_ms(step, math_max_t: int, steps: int) -> float:
    model.CPU_BF16_MATH_ATTENTION_MAX_T = math_max_t
    return time_steps(step, steps, untimed=0) * 1000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument(
        "--steps", type=int, default=3, help="timed optimizer steps per variant per round"
    )
    add_preset_flag(p)
    args = p.parse_args(argv)
    machine, mc, tc, batches = setup(args.data_dir, preset=args.preset)

    if machine.native_bf16:
        print(
            f"\n{'B x heads x T x head size':<26} {'gradients':<10} {'flash ms':>9} "
            f"{'math ms':>8} {'flash/math':>11}"
        )
        for shape in SHAPES:
            for grad in (True, False):
                flash = kernel_ms(shape, SDPBackend.FLASH_ATTENTION, grad)
                math_ = kernel_ms(shape, SDPBackend.MATH, grad)
                print(
                    f"{' x '.join(map(str, shape)):<26} {str(grad):<10} {flash:>9.1f} "
                    f"{math_:>8.1f} {flash / math_:>10.2f}x"
                )

    chosen = model.CPU_BF16_MATH_ATTENTION_MAX_T
    print(
        f"\n{args.preset} preset steps ({tc.batch_size} x {mc.block_size}): the model's choice "
        f"(math up to {chosen} tokens in bfloat16) against flash everywhere, {args.rounds} rounds "
        f"of {args.steps} steps"
    )
    for dtype in (["bfloat16"] if machine.native_bf16 else []) + ["float32"]:
        step = make_step(mc, tc.batch_size, dtype, False, batches)
        for _ in range(2):
            step()
        times = dict(
            zip(
                (0, chosen),
                paired_rounds(
                    partial(step_ms, step, 0, args.steps),
                    partial(step_ms, step, chosen, args.steps),
                    args.rounds,
                ),
            )
        )
        print(
            f"{dtype:<9} flash {min(times[0]):>5.0f} ms/step, model's choice "
            f"{min(times[chosen]):>5.0f} ms/step (best rounds: "
            f"{min(times[0]) / min(times[chosen]):.3f}x); median of the rounds' ratios "
            f"{median_ratio(times[0], times[chosen]):.3f}x"
        )
    model.CPU_BF16_MATH_ATTENTION_MAX_T = chosen
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    run_cli(main)
