"""Benchmark of the CPU's cheapest wins for Step 5: bfloat16 against float32, and the chunked head
loss against the plain logits path, on the `cpu` preset's model and shape.

    .venv/bin/python benchmarks/bench_dtype.py --data-dir data

Part 1, speed: one training step (forward, backward, AdamW) of the preset's model on random
tokens at its batch shape, in the four combinations of dtype (float32, bfloat16 autocast) and
head (full logits then F.cross_entropy, or slm.head_loss's chunks), interleaved round by round so
that a change in the machine's load hits all four alike; the best round of each counts. Part 2,
the loss: training.py's preset for --steps steps (--max-minutes 0, warmup at most half of them)
three times: float32 and bfloat16 with one seed, float32 with another. The loss per step of bf16
against fp32 is then set beside the gap that a different seed alone makes (the noise), both as
the mean absolute difference of the losses averaged over windows of --window steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import training  # noqa: E402
from benchmarks.bench_cpu_step import add_preset_flag  # noqa: E402
from config import PRESETS  # noqa: E402
from model import GPT  # noqa: E402
from slm.cli import run_cli  # noqa: E402
from slm.hardware import cpu_has_native_bf16  # noqa: E402


def step_speeds(preset: str, rounds: int, steps: int) -> dict[tuple[str, str], float]:
    """Best tokens/s of a training step for each (dtype, head), the four measured in turn each
    round.
    """
    mc, tc = PRESETS[preset].model, PRESETS[preset].train
    torch.manual_seed(0)
    combos = [(d, h) for d in ("float32", "bfloat16") for h in ("logits", "chunked")]
    runs = {}
    for combo in combos:
        model = GPT(mc)
        runs[combo] = (model, torch.optim.AdamW(model.optim_groups(tc.weight_decay), lr=1e-4))
    x = torch.randint(0, mc.vocab_size, (tc.batch_size, mc.block_size))
    y = torch.randint(0, mc.vocab_size, (tc.batch_size, mc.block_size))
    best = {c: 0.0 for c in combos}
    for r in range(rounds):
        for (dtype, head), (model, opt) in runs.items():
            for k in range(steps + 1):  # the first step is untimed (allocations, oneDNN kernels)
                if k == 1:
                    t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    _, loss = model(x, y, return_logits=head == "logits")
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            rate = steps * x.numel() / (time.perf_counter() - t0)
            best[(dtype, head)] = max(best[(dtype, head)], rate)
            print(
                f"  round {r + 1}: {dtype:>8} {head:>7} head: {rate:8,.0f} tokens/s  (load "
                f"{os.getloadavg()[0]:.2f})",
                flush=True,
            )
    return best


def train_losses(
    data_dir: str, preset: str, steps: int, warmup: int, dtype: str, seed: int
) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        summary = training.main(
            [
                "--preset",
                preset,
                "--data-dir",
                data_dir,
                "--out-dir",
                out,
                "--no-progress",
                "--max-minutes",
                "0",
                "--max-iters",
                str(steps),
                "--eval-interval",
                str(steps),
                "--warmup-iters",
                str(warmup),
                "--dtype",
                dtype,
                "--seed",
                str(seed),
            ]
        )
    return [loss for _, loss in summary["losses"]]


def windows(losses: list[float], width: int) -> list[float]:
    return [sum(losses[i : i + width]) / width for i in range(0, len(losses) - width + 1, width)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default="data", help="tokenized data for part 2")
    add_preset_flag(p)
    p.add_argument(
        "--rounds", type=int, default=3, help="part 1: rounds over the four combinations"
    )
    p.add_argument(
        "--timed-steps", type=int, default=5, help="part 1: timed steps per combination and round"
    )
    p.add_argument(
        "--steps", type=int, default=300, help="part 2: training steps of each run (0 skips part 2)"
    )
    p.add_argument("--window", type=int, default=25, help="part 2: steps per averaged window")
    args = p.parse_args(argv)

    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}; load average "
        f"{os.getloadavg()}"
    )
    mc, tc = PRESETS[args.preset].model, PRESETS[args.preset].train
    print(
        f"part 1: a training step of the {args.preset} preset's model at {tc.batch_size} x "
        f"{mc.block_size}"
    )
    best = step_speeds(args.preset, args.rounds, args.timed_steps)
    base = best[("float32", "logits")]
    for (dtype, head), rate in best.items():
        print(
            f"  best {dtype:>8} {head:>7} head: {rate:8,.0f} tokens/s = {rate / base:.2f}x "
            "float32 with logits"
        )

    if args.steps:
        warmup = min(tc.warmup_iters, args.steps // 2)  # the peak rate is reached within the run
        print(
            f"part 2: {args.steps} steps of training.py --preset {args.preset} --warmup-iters "
            f"{warmup}, loss per step"
        )
        fp32, bf16, other = (
            train_losses(args.data_dir, args.preset, args.steps, warmup, dtype, seed)
            for dtype, seed in (("float32", 1), ("bfloat16", 1), ("float32", 2))
        )
        w32, w16, wo = (windows(x, args.window) for x in (fp32, bf16, other))
        print(f"  {'steps':>9} {'fp32 seed 1':>12} {'bf16 seed 1':>12} {'fp32 seed 2':>12}")
        for i, (a, b, c) in enumerate(zip(w32, w16, wo)):
            print(
                f"  {i * args.window + 1:>4}-{(i + 1) * args.window:<4} {a:12.4f} {b:12.4f} "
                f"{c:12.4f}"
            )
        later = slice(len(w32) // 2, None)  # the first windows fall too fast to compare
        gap_dtype = sum(abs(a - b) for a, b in zip(w32[later], w16[later])) / len(w32[later])
        gap_seed = sum(abs(a - c) for a, c in zip(w32[later], wo[later])) / len(w32[later])
        print(
            f"  second half, mean |difference| of the window means: bf16 vs fp32 {gap_dtype:.4f}; "
            f"fp32 seed 1 vs seed 2 (the noise) {gap_seed:.4f}"
        )
        print(
            f"  last window: fp32 {w32[-1]:.4f}, bf16 {w16[-1]:.4f}, fp32 other seed {wo[-1]:.4f}"
        )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    run_cli(main)
