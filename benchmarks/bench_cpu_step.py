"""Where a CPU training step of the cpu preset goes, and what makes it faster: torch.compile of the
model and the thread count, in float32 (what CPUs without native bfloat16 train in) and bfloat16
(where the CPU has it). A training step computes its logits in the gradient buffer as one
chunk, so there is no chunk size to time (the --rows of benchmarks/machines.md's older commands
is gone; HEAD_LOSS_ROWS sizes evaluation's chunks only).

    P=".venv/bin/python benchmarks/bench_cpu_step.py --data-dir data"
    $P [--dtypes float32,bfloat16] [--rounds 3]
    $P --dtypes float32 --shapes 16x128,16x64,32x64
    $P --head-pad --shapes 16x64 --rounds 12

Each variant runs full optimizer steps (forward, backward, fused AdamW) of the cpu preset's model
on real batches at the preset's shape; variants are interleaved round by round so a change in the
machine's load hits all alike, and the best round of each counts. Then one float32 step is
profiled (torch.profiler, the top operators by self time). Prints the CPU kind (AVX2 only, or
AVX512_BF16) and the load average.

--shapes times other batch x context shapes of the same model beside the preset's, for the recipe
search's equal-time comparisons (benchmarks/recipe_rule.md): each shape's tokens/s as a share of
the first one's, so a shape at 0.94 of it is given 0.94 x its tokens in the same minutes.

--head-pad times the head loss's rows as they are (50,257) against padded to a multiple of 64
(slm.head_loss.HEAD_PAD), in paired rounds at the preset's shape (or each of --shapes), and
checks that both give the same losses. On an AVX512 host, MKL_ENABLE_INSTRUCTIONS=AVX2
ATEN_CPU_CAPABILITY=avx2 in the environment holds MKL's and ATen's kernels to those an AVX2-only
CPU runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batches import Batches  # noqa: E402
from config import PRESETS  # noqa: E402
from model import GPT  # noqa: E402
from slm import head_loss  # noqa: E402
from slm.cli import CLIError, run_cli  # noqa: E402
from slm.hardware import autocast, detect_machine, keep_freed_memory  # noqa: E402


def make_step(mc, batch_size: int, dtype: str, compiled: bool, batches: Batches):
    torch.manual_seed(0)
    raw = GPT(mc)
    model = torch.compile(raw) if compiled else raw
    opt = torch.optim.AdamW(raw.optim_groups(0.1), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)

    def step():
        x, y = batches.get_batch("train", batch_size, generator=gen)
        with autocast("cpu", dtype):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def time_steps(step, steps: int, untimed: int = 2) -> float:
    """Seconds per step of `steps` calls of step(), after `untimed` calls that warm it up."""
    for _ in range(untimed):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def best_of_rounds(variants: dict, rounds: int, steps: int) -> dict:
    """Each variant's best seconds per step over `rounds` rounds, every round timing all variants in
    turn (so a change in the machine's load hits all alike)."""
    best: dict = {}
    for _ in range(rounds):
        for key, step in variants.items():
            s = time_steps(step, steps)
            best[key] = min(best.get(key, s), s)
    return best


def module_at(rev: str, relpath: str, name: str):
    """The file relpath as it was at git revision rev, loaded as a module of its own (named
    name)."""
    text = subprocess.run(
        ["git", "show", f"{rev}:{relpath}"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paired_rounds(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """a() and b() (each returns the time it measured) once a round, in alternating order, so going
    first or second is no advantage and a change in the machine's load hits both alike: their
    times, round by round."""
    times_a, times_b = [], []
    for r in range(rounds):
        for timing, times in (
            ((a, times_a), (b, times_b)) if r % 2 == 0 else ((b, times_b), (a, times_a))
        ):
            times.append(timing())
    return times_a, times_b


def median_ratio(slower: list[float], faster: list[float]) -> float:
    """The median over rounds of slower[i] / faster[i]: two variants timed side by side in each
    round.
    """
    ratios = sorted(a / b for a, b in zip(slower, faster))
    return ratios[len(ratios) // 2]


def profile_step(step) -> str:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


def add_preset_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="cpu",
        choices=sorted(PRESETS),
        help="whose model and batch shape are timed (default: %(default)s; smoke takes seconds)",
    )


def setup(data_dir: str, keep_freed: bool = True, preset: str = "cpu"):
    """A preset (the cpu one unless said) on this CPU, its real batches, and a line that says what
    machine and load this is. keep_freed=False leaves glibc's malloc as it comes (big freed
    blocks go back to the OS), as training finds it where slm.hardware.keep_freed_memory cannot
    act: macOS, Windows, musl."""
    if keep_freed:
        keep_freed_memory()
    machine = detect_machine("cpu")
    mc, tc = PRESETS[preset].model, PRESETS[preset].train
    print(
        f"{preset} preset, {tc.batch_size} x {mc.block_size}; {machine.describe()}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average "
        f"{os.getloadavg()[0]:.2f} at the start"
    )
    return machine, mc, tc, Batches(data_dir, mc.block_size)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """ "16x128,16x64" -> [(16, 128), (16, 64)]: sequences x context."""
    try:
        shapes = [tuple(int(n) for n in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise CLIError(f"--shapes {text!r}: give batch x context pairs such as 16x128,16x64")
    return shapes


def compare_shapes(
    mc, data_dir: str, dtype: str, shapes: list[tuple[int, int]], rounds: int, steps: int
) -> None:
    """Each shape's best-round tokens/s, and its share of the first shape's, timed interleaved round
    by round.
    """
    variants = {
        (b, t): make_step(replace(mc, block_size=t), b, dtype, False, Batches(data_dir, t))
        for b, t in shapes
    }
    best = best_of_rounds(variants, rounds, steps)
    first = shapes[0][0] * shapes[0][1] / best[shapes[0]]
    print(f"\n{dtype}: {'shape':<9} {'ms/step':>8} {'tokens/s':>9} {'share':>6}")
    for (b, t), s in best.items():
        print(
            f"{'':<{len(dtype) + 2}}{f'{b}x{t}':<9} {s * 1000:>8.0f} {b * t / s:>9,.0f} "
            f"{b * t / s / first:>6.3f}"
        )


def compare_head_pad(
    mc, data_dir: str, dtypes: list[str], shapes: list[tuple[int, int]], rounds: int, steps: int
) -> None:
    """For each dtype and shape: ms per step with the head as it is and padded (HEAD_PAD), two
    models from the same seed on the same batches, in paired rounds; the median ratio, and
    whether their losses agreed."""
    pad = head_loss.HEAD_PAD
    print(f"\n{'dtype':<9} {'shape':<7} {'ms/step':>8} {'padded':>8} {'ratio':>6} {'losses':>8}")
    for dtype in dtypes:
        for b, t in shapes:
            shaped = replace(mc, block_size=t)
            losses: dict[int, list[float]] = {1: [], pad: []}

            # timed() and its run() are called within this iteration (paired_rounds just below),
            # so the loop variables they read are this iteration's
            def timed(rows: int):
                step = make_step(shaped, b, dtype, False, Batches(data_dir, t))  # noqa: B023

                def run() -> float:
                    head_loss.HEAD_PAD = rows
                    try:
                        return time_steps(lambda: losses[rows].append(step()), steps)  # noqa: B023
                    finally:
                        head_loss.HEAD_PAD = pad

                return run

            plain, padded = paired_rounds(timed(1), timed(pad), rounds)
            same = (
                "same"
                if losses[1] == losses[pad]
                else f"{max(abs(a - c) for a, c in zip(losses[1], losses[pad])):.0e}"
            )
            print(
                f"{dtype:<9} {f'{b}x{t}':<7} {sorted(plain)[len(plain) // 2] * 1000:>8.0f} "
                f"{sorted(padded)[len(padded) // 2] * 1000:>8.0f} "
                f"{median_ratio(plain, padded):>5.3f}x {same:>8}"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (a minute or two to compile)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    p.add_argument(
        "--shapes", help="batch x context shapes to compare instead, e.g. 16x128,16x64,32x64"
    )
    p.add_argument(
        "--head-pad",
        action="store_true",
        help="time the head loss's rows as they are against padded to a multiple of 64 instead",
    )
    add_preset_flag(p)
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes) if args.shapes else None
    machine, mc, tc, batches = setup(args.data_dir, preset=args.preset)
    if args.head_pad:
        compare_head_pad(
            mc,
            args.data_dir,
            args.dtypes.split(","),
            shapes or [(tc.batch_size, mc.block_size)],
            args.rounds,
            args.steps,
        )
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return
    if shapes:
        for dtype in args.dtypes.split(","):
            compare_shapes(mc, args.data_dir, dtype, shapes, args.rounds, args.steps)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return
    variants = {}
    for dtype in args.dtypes.split(","):
        if dtype == "bfloat16" and not machine.native_bf16:
            print("bfloat16 skipped: not native on this CPU")
            continue
        for compiled in [False, True] if args.compile else [False]:
            variants[(dtype, compiled)] = make_step(mc, tc.batch_size, dtype, compiled, batches)
    best = best_of_rounds(variants, args.rounds, args.steps)
    tokens = tc.batch_size * mc.block_size
    print(f"\n{'dtype':<9} {'compile':<8} {'ms/step':>8} {'tokens/s':>9} {'vs eager':>9}")
    for (dtype, compiled), s in best.items():
        print(
            f"{dtype:<9} {str(compiled):<8} {s * 1000:>8.0f} {tokens / s:>9,.0f} "
            f"{best[(dtype, False)] / s:>8.2f}x"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if ("float32", False) in variants:
        print("\nprofile of float32 steps:")
        print(profile_step(variants[("float32", False)]))


if __name__ == "__main__":
    run_cli(main)
