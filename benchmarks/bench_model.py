"""Benchmark of Step 4: the default GPT's generation speed with the KV cache against recomputing the
whole context at each step, and its training speed (forward + backward + AdamW step).

    .venv/bin/python benchmarks/bench_model.py                  # CPU, float32
    .venv/bin/python benchmarks/bench_model.py --device cuda    # bf16, eager and compiled, MFU

Generation: batch 1, a random --prompt-len prompt, --new-tokens greedy tokens, (a) model.generate
with its KV cache, (b) nanoGPT's loop: the whole cropped context through the model at every step,
logits of the last position only. Both must give the same tokens; the script checks that.
Training: --steps timed steps after --warmup ones at a fixed --batch-size x --seq-len. On CUDA
the training figures come in bf16 autocast, eager and compiled, with model FLOPs utilisation =
flops_per_token x tokens/s / --peak-flops, followed by the largest batch (eager, at --seq-len)
whose training step fits in memory. Timings on a shared machine are
noisy: compare figures of one run with each other, and read them with the load average printed
beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import GPTConfig  # noqa: E402
from model import GPT  # noqa: E402
from slm.cli import CLIError, run_cli  # noqa: E402
from slm.hardware import autocast, gpu_peak_flops, pick_device  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument(
        "--prompt-len", type=int, default=16, help="generation prompt length (default: %(default)s)"
    )
    p.add_argument(
        "--new-tokens", type=int, default=256, help="tokens to generate (default: %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="generation runs of each kind, alternating; the best counts (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="training batch in sequences (default: 2 on CPU, 64 on CUDA)",
    )
    p.add_argument(
        "--seq-len", type=int, default=None, help="training sequence length (default: block_size)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps (default: 3 on CPU, 20 on CUDA)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed training steps first (default: 1 on CPU, 5 on CUDA; compile happens here)",
    )
    p.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="accelerator's dense bf16 peak FLOP/s for MFU (default: the GPU's, by name, from "
        "slm.hardware.GPU_PEAK_FLOPS; no MFU for a GPU not listed there)",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="CUDA: skip the torch.compile measurement"
    )
    p.add_argument(
        "--no-max-batch", action="store_true", help="CUDA: skip the search for the largest batch"
    )
    p.add_argument("--skip-generation", action="store_true", help="measure training only")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 0 = torch's choice (default: %(default)s: on the shared 2-core "
        "machine two threads ran 6x slower than one, waiting for each other)",
    )
    args = p.parse_args(argv)
    for name in ("prompt_len", "new_tokens", "repeats", "batch_size", "seq_len", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def say(*parts) -> None:
    print(*parts, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_recompute(model: GPT, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """nanoGPT's generate, greedy: the whole context (last block_size tokens) through the model
    every step.
    """
    block = model.config.block_size
    for _ in range(new_tokens):
        h = model.hidden_states(idx[:, -block:])  # (B, T, C)
        nxt = model.lm_head(h[:, -1, :]).argmax(dim=-1)  # (B,) the last position's logits only
        idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T+1)
    return idx


def bench_generation(model: GPT, args, device: str, dtype: str) -> dict:
    """Each way --repeats times, alternating, so both see the same load; the best time of each
    counts.
    """
    model.eval()
    prompt = torch.randint(
        0,
        model.config.vocab_size,
        (1, args.prompt_len),
        device=device,
        generator=torch.Generator(device=device).manual_seed(0),
    )  # (1, P)
    runs = {
        "kv_cache": lambda: model.generate(prompt, args.new_tokens, temperature=0.0),
        "recompute": lambda: generate_recompute(model, prompt, args.new_tokens),
    }
    seconds = {name: [] for name in runs}
    tokens = {}
    with autocast(device, dtype):
        model.generate(prompt, 8, temperature=0.0)  # warm-up: allocator, kernels
        for _ in range(args.repeats):
            for name, run in runs.items():
                sync(device)
                t0 = time.perf_counter()
                tokens[name] = run()
                sync(device)
                seconds[name].append(time.perf_counter() - t0)
                say(
                    f"  generation {name:9s}: {args.new_tokens} tokens in "
                    f"{seconds[name][-1]:7.2f} s = {args.new_tokens / seconds[name][-1]:8.1f} "
                    f"tokens/s   ({load()})"
                )
    best = {name: args.new_tokens / min(times) for name, times in seconds.items()}
    same = torch.equal(tokens["kv_cache"], tokens["recompute"])
    speedup = best["kv_cache"] / best["recompute"]
    say(
        f"  best of {args.repeats}: KV cache {best['kv_cache']:.1f} tokens/s, recompute "
        f"{best['recompute']:.1f} tokens/s: speed-up {speedup:.1f}x (target >= 5x); same tokens: "
        f"{same}"
    )
    if not same and dtype == "float32":
        raise SystemExit("KV-cached and recomputed greedy generation disagree in float32: a bug")
    return {"speedup": speedup, "same_tokens": same, "tokens_per_s": best}


# ----------------------------------------------------------------------------- training


def train_step(model, opt, x, y, device, dtype) -> None:
    with autocast(device, dtype):
        _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def make_optimizer(model: GPT, device: str) -> torch.optim.Optimizer:
    fused = device.startswith("cuda")
    return torch.optim.AdamW(model.optim_groups(0.1), lr=3e-4, betas=(0.9, 0.95), fused=fused)


def bench_training(raw: GPT, args, device: str, dtype: str, compiled: bool) -> dict:
    raw.train()
    model = torch.compile(raw) if compiled else raw
    opt = make_optimizer(raw, device)
    B, T = args.batch_size, args.seq_len
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, raw.config.vocab_size, (B, T), device=device, generator=gen)  # (B, T)
    y = torch.randint(0, raw.config.vocab_size, (B, T), device=device, generator=gen)  # (B, T)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        train_step(model, opt, x, y, device, dtype)
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(model, opt, x, y, device, dtype)
    sync(device)
    seconds = (time.perf_counter() - t0) / args.steps
    tok_s = B * T / seconds
    # 6N + attention at the length actually trained (flops_per_token() assumes T = block_size)
    c = raw.config
    flops_tok = raw.flops_per_token() - 12 * c.n_layer * c.n_embd * (c.block_size - T)
    label = f"{dtype}{' compiled' if compiled else ''}"
    line = (
        f"  training {label:18s}: batch {B} x {T}, {seconds * 1e3:8.1f} ms/step = {tok_s:10.0f} "
        f"tokens/s, {flops_tok * tok_s / 1e12:7.3f} TFLOP/s"
    )
    mfu = None
    if device.startswith("cuda") and args.peak_flops:
        mfu = flops_tok * tok_s / args.peak_flops
        line += f", MFU {mfu:.1%} of {args.peak_flops / 1e12:.0f} TFLOP/s"
    if device.startswith("cuda"):
        line += f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    say(line + f"  (warm-up {warm:.1f} s; {load()})")
    del opt
    return {"tokens_per_s": tok_s, "ms_per_step": seconds * 1e3, "mfu": mfu}


def fits(raw: GPT, batch: int, T: int, device: str, dtype: str) -> bool:
    """One training step at this batch on the GPU: True when it fits in memory."""
    opt = x = y = None
    try:
        opt = make_optimizer(raw, device)
        x = torch.randint(0, raw.config.vocab_size, (batch, T), device=device)
        y = torch.randint(0, raw.config.vocab_size, (batch, T), device=device)
        train_step(raw, opt, x, y, device, dtype)
        sync(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del opt, x, y
        raw.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def largest_batch(raw: GPT, T: int, device: str, dtype: str, step: int = 8) -> int:
    """Double the batch until a step runs out of memory, then bisect to a multiple of `step`."""
    raw.train()
    good, bad = 0, step
    while fits(raw, bad, T, device, dtype):
        good, bad = bad, bad * 2
    while bad - good > step:
        mid = (good + bad) // 2 // step * step
        if fits(raw, mid, T, device, dtype):
            good = mid
        else:
            bad = mid
    return good


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    cuda = device.startswith("cuda")
    if not cuda and device != "cpu":
        raise CLIError(f"--device {device}: this benchmark measures cpu or cuda")
    dtype = "bfloat16" if cuda else "float32"
    if args.threads and not cuda:
        torch.set_num_threads(args.threads)
    config = GPTConfig()
    args.batch_size = args.batch_size or (64 if cuda else 2)
    args.seq_len = args.seq_len or config.block_size
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.seq_len > config.block_size:
        raise CLIError(f"--seq-len {args.seq_len} is longer than block_size {config.block_size}")
    if args.prompt_len + args.new_tokens > config.block_size:
        say(
            f"note: {args.prompt_len} + {args.new_tokens} tokens pass block_size "
            f"{config.block_size}: the KV cache then recomputes the window at every step, like "
            "the reference"
        )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = GPT(config).to(device)
    name = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    )
    say(
        f"device: {name}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {dtype}"
    )
    if cuda and args.peak_flops is None:
        args.peak_flops = gpu_peak_flops(name)
        if args.peak_flops is None:
            say(f"MFU not shown: the peak FLOP/s of {name!r} is unknown here; pass --peak-flops")
    say(
        f"model: default GPTConfig, {model.num_params():,} parameters, "
        f"{model.flops_per_token() / 1e6:.1f} MFLOPs per training token at T={config.block_size}"
    )
    say(load())

    if not args.skip_generation:
        say(
            f"generation: batch 1, {args.prompt_len}-token prompt, {args.new_tokens} new tokens, "
            "greedy"
        )
        bench_generation(model, args, device, dtype)

    say(f"training step (forward + backward + AdamW), dropout {config.dropout}:")
    bench_training(model, args, device, dtype, compiled=False)
    if cuda and not args.no_compile:
        bench_training(model, args, device, dtype, compiled=True)
    if cuda and not args.no_max_batch:
        say(
            f"largest batch at T={args.seq_len} that fits ({dtype}, eager, one step, multiple of "
            f"8): {largest_batch(model, args.seq_len, device, dtype)}"
        )
    say(load())


if __name__ == "__main__":
    run_cli(main)
