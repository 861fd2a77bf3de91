"""Benchmark of the GPU plan: the gpu preset as a 16 GB T4 would run it, on a bigger GPU
(benchmarks/training.md, "On a GPU").

    python benchmarks/bench_gpu.py --data-dir data     # on a CUDA GPU: the three cases below
    python benchmarks/bench_gpu.py --device cpu --cases native -- --preset smoke   # on a CPU

Each case is `training.py --preset gpu --max-iters STEPS --max-minutes 0` (plus anything after
`--`), in a process of its own, so that its memory cap, peak-memory counters and compile cache
are its own:

    t4      float16 under a memory cap of --cap-gib (torch.cuda.set_per_process_memory_fraction),
            and the plan is told the same total: a T4's 15 GiB, as slm/plan.py fits the
            micro-batch to it
    oom     float16 under the same cap, the plan told nothing: it fits the micro-batch to the whole
            GPU, the first trial step runs out of memory, and shrink_until_it_fits halves it until
            it fits
    native  the GPU's own plan, uncapped (bfloat16 on sm80+)

One Markdown row each: the plan, the loss of the first and last tenth of the steps (it must fall
and stay finite), tokens/s of the steps after the first tenth (compile and autotuning left out;
each step ends on the loss's .item(), so the clock sees the GPU's work), MFU against the GPU's
dense bf16 peak (slm/hardware.GPU_PEAK_FLOPS; fp16's is the same on these GPUs), and the peak
memory allocated and reserved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slm.cli import CLIError, run_cli  # noqa: E402

CASES = {
    "t4": ("float16", True, True),  # dtype, capped, the plan told the cap
    "oom": ("float16", True, False),
    "native": (None, False, False),
}
MARK = "bench_gpu: "  # the line a case's process ends with: its figures as JSON


def capped_machine(machine, cap_bytes: int):
    """The machine as a GPU of cap_bytes would show itself to the plan: total and free memory at
    most the cap.
    """
    return replace(
        machine,
        total_memory=min(machine.total_memory or cap_bytes, cap_bytes),
        free_memory=min(machine.free_memory or cap_bytes, cap_bytes),
    )


def steady(times: list[float], steps: int) -> list[float]:
    """The step times after the first tenth (compile, autotuning, the allocator's growth), at least
    one.
    """
    return times[min(len(times) - 1, max(1, steps // 10)) :]


def run_case(
    name: str,
    device: str,
    steps: int,
    cap_gib: float,
    data_dir: str,
    out_dir: str,
    extra: list[str],
) -> dict:
    """One case, in this process: cap the memory, time each step, train, return the figures."""
    import torch

    import training
    from slm.progress import mfu_peak

    dtype, capped, told = CASES[name]
    cap = int(cap_gib * 2**30)
    if capped and device.startswith("cuda"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    if capped and told:
        detect = training.detect_machine
        training.detect_machine = lambda d: capped_machine(detect(d), cap)
    seen, times = {}, []
    step = training.train_step

    def timed_step(model, optimizer, scaler, batches, batch_gen, tc, dist, *rest):
        t0 = time.perf_counter()
        result = step(model, optimizer, scaler, batches, batch_gen, tc, dist, *rest)
        times.append(time.perf_counter() - t0)
        if not seen:  # the run as the plan (and shrink_until_it_fits) left it
            raw = getattr(model, "module", model)  # under DDP
            raw = getattr(raw, "_orig_mod", raw)  # compiled
            seen.update(
                flops=raw.flops_per_token(),
                tokens=tc.batch_size * tc.grad_accum * raw.config.block_size * dist.world,
                dtype=tc.dtype,
                micro=tc.batch_size,
                accum=tc.grad_accum,
                compiled=raw is not getattr(model, "module", model),
            )
        return result

    training.train_step = timed_step
    argv = [
        "--preset",
        "gpu",
        "--device",
        device,
        "--data-dir",
        data_dir,
        "--out-dir",
        out_dir,
        "--max-iters",
        str(steps),
        "--max-minutes",
        "0",
        "--no-progress",
        "--no-samples",
        *(["--dtype", dtype] if dtype else []),
        *extra,
    ]
    summary = training.main(argv)
    losses = [loss for _, loss in summary["losses"]]
    tenth = max(1, len(losses) // 10)
    timed = steady(times, steps)
    tokens_per_s = seen["tokens"] * len(timed) / sum(timed)
    peak, _ = mfu_peak(device, None)
    cuda = device.startswith("cuda")
    return {
        "case": name,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cap_gib": cap_gib if capped else None,
        "told": told,
        **seen,
        "steps": summary["step"],
        "first_loss": sum(losses[:tenth]) / tenth,
        "last_loss": sum(losses[-tenth:]) / tenth,
        "finite": all(math.isfinite(x) for x in losses),
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * seen["flops"] / peak if peak else None,
        "allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
    }


def row(r: dict) -> str:
    cap = f"{r['cap_gib']:g} GiB{' (told)' if r['told'] else ''}" if r["cap_gib"] else "none"
    plan = f"{r['dtype']}, {r['micro']} x {r['accum']}, compile {'on' if r['compiled'] else 'off'}"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    memory = (
        f"{r['allocated_gib']:.1f} / {r['reserved_gib']:.1f}"
        if r["allocated_gib"] is not None
        else "-"
    )
    falls = "yes" if r["finite"] and r["last_loss"] < r["first_loss"] else "NO"
    return (
        f"| {r['case']} | {cap} | {plan} | {r['steps']} | {r['first_loss']:.3f} -> "
        f"{r['last_loss']:.3f} ({falls}) | {r['tokens_per_s']:,.0f} | {mfu} | {memory} |"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-dir",
        default="data",
        help="tokenized data (tokenization.py's; default: %(default)s)",
    )
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: %(default)s)")
    p.add_argument(
        "--cases",
        default="t4,oom,native",
        help=f"comma-separated, of {', '.join(CASES)} (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=int, default=200, help="optimizer steps a case (default: %(default)s)"
    )
    p.add_argument(
        "--cap-gib",
        type=float,
        default=15.0,
        help="the memory cap of t4 and oom (default: %(default)s: a 16 GB T4's usable memory)",
    )
    # a case's own process: run it and print its figures
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(own)
    cases = args.cases.split(",")
    if unknown := [c for c in cases if c not in CASES]:
        raise CLIError(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.steps < 10:
        raise CLIError(
            f"--steps {args.steps}: at least 10, to time the steps after the first tenth"
        )
    if args.one:
        with tempfile.TemporaryDirectory() as out:
            figures = run_case(
                args.one, args.device, args.steps, args.cap_gib, args.data_dir, out, extra
            )
        print(MARK + json.dumps(figures), flush=True)
        return
    rows = []
    for case in cases:
        print(f"--- {case} ---", flush=True)
        cmd = [
            sys.executable,
            __file__,
            "--one",
            case,
            "--device",
            args.device,
            "--steps",
            str(args.steps),
            "--cap-gib",
            str(args.cap_gib),
            "--data-dir",
            args.data_dir,
            "--",
            *extra,
        ]
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        print(
            "".join(
                line for line in done.stdout.splitlines(keepends=True) if not line.startswith(MARK)
            ),
            end="",
        )
        figures = [line[len(MARK) :] for line in done.stdout.splitlines() if line.startswith(MARK)]
        rows.append(
            row(json.loads(figures[-1]))
            if done.returncode == 0 and figures
            else f"| {case} | failed: exit {done.returncode} (its output is above) |"
        )
    print(
        "\n| case | cap | plan: dtype, micro-batch x accumulation, compile | steps | loss, first "
        "-> last tenth (falls) | tokens/s | MFU | peak GiB allocated / reserved "
        "|\n|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    run_cli(main)
