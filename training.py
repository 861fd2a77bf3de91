"""Step 5: train the GPT on DATA/train.bin, evaluate on fixed batches, keep the best model.

    python training.py                          # preset gpu where CUDA is available, else cpu (says which)
    python training.py --preset smoke           # seconds: a tiny model, for tests
    python training.py --max-minutes 5          # train 5 minutes: warmup and cosine laid over exactly that
    python training.py --max-iters 500 --max-minutes 0 --batch-size 8   # a set step count; any setting, any preset
    python training.py --resume                 # continue OUT/ckpt.pt exactly where it stopped
    torchrun --standalone --nproc_per_node=4 training.py --preset gpu          # data parallel on 4 GPUs

Writes into OUT (--out-dir, default out/):
    best_model_params.pt   the model at its best validation loss (what model_usage.py loads)
    ckpt.pt                everything needed to resume: model, optimizer, schedule, scaler, RNG states, step
    log.csv                one row per evaluation: step, fixed-batch train and validation loss, lr, tokens, time
    loss.png               train and validation loss against step, best point marked

With --max-minutes M (the cpu preset: 10) the time budget is the schedule: the first warmup steps and
one evaluation are timed, and max_iters is fixed at the step count whose steps and evaluations fill the
rest of the M minutes; the LinearLR warmup -> CosineAnnealingLR schedule then runs over exactly those
steps, ending at --min-lr. The count is printed with the command that reproduces the run step for step
(--max-iters N --max-minutes 0), saved in ckpt.pt, and kept by --resume. A run that falls 5% behind its
budget (the machine slowed down) evaluates, saves and stops.

Both .pt files are written to a temporary file and renamed over the old one, so a crash at any moment
leaves the previous file intact. Ctrl-C (or SIGTERM) stops after the current step, saves ckpt.pt and
says how to resume. Under torchrun every rank draws the same global batch from one seeded generator
and trains on its own slice of it, so N ranks x batch B follow exactly the same path as 1 process with
batch N*B; only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import io
import math
import os
import random
import signal
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from slm.checkpoint import check_checkpoint_space, config_from_dict, config_to_dict, describe_source, load_checkpoint
from slm.cli import CLIError, add_model_flags, add_settings_flags, check_model_config, model_flags_given, run_cli
from slm.files import atomic_torch_save, atomic_write_bytes, dir_lock
from slm.hardware import autocast, gpu_peak_flops, pick_device, pick_dtype
from config import PRESETS, GPTConfig, TrainConfig

BEST_FILE = "best_model_params.pt"
CKPT_FILE = "ckpt.pt"
LOG_FILE = "log.csv"
PLOT_FILE = "loss.png"
LOG_FIELDS = ["step", "train_loss", "val_loss", "step_loss", "lr", "tokens", "elapsed_s", "best"]
WARMUP_START_FACTOR = 0.01  # the first warmup step runs at 1% of the peak learning rate
# Evaluation batches come from their own generators, seeded apart from the training one, and are drawn
# afresh from the same seed at every evaluation: each evaluation scores the very same windows.
EVAL_SEED_OFFSET = {"train": 1, "validation": 2}
# Settings that may differ when resuming: where and how the run executes, not what it computes.
RESUME_MAY_CHANGE = {"data_dir", "out_dir", "device", "dtype", "compile", "max_minutes"}
# The time budget's probe: untimed steps first (memory allocation, torch.compile, autotuning), then timed
# ones; all inside the LinearLR warmup, whose learning rates do not depend on the step count still unknown.
PROBE_UNTIMED_STEPS = 2
PROBE_TIMED_STEPS = 3  # at least; the probe goes on timing steps until PROBE_MAX_STEPS or the end of warmup:
PROBE_MAX_STEPS = 300  # on a shared machine speed drifts, and probes of 3 or 30 steps misjudged 10-minute
# runs by 6-9% (they ended after 9.1-9.4 minutes, or were cut at 10.5); the cpu preset's 300 warmup steps
# take about 2 minutes, and the learning rates during warmup do not depend on the count fixed after it.
BUDGET_OVERRUN = 0.05  # a budget run this far past its minutes (the machine slowed down) evaluates, saves, stops


# ----------------------------------------------------------------------------- settings

# One line of --help per training setting (the model's are slm.cli.MODEL_HELP); the flags are generated
# from the dataclass fields with these.
TRAIN_HELP = {
    "data_dir": "directory with train.bin, validation.bin and meta.json (from tokenization.py)",
    "out_dir": "where checkpoints, log.csv and loss.png go",
    "batch_size": "sequences per micro-batch, per process",
    "grad_accum": "micro-batches accumulated per optimizer step, per process",
    "max_iters": "optimizer steps in all; the cosine schedule ends here (with --max-minutes above 0 the budget "
                 "fixes it instead)",
    "learning_rate": "peak learning rate, reached at the end of warmup",
    "min_lr": "learning rate at the end of the cosine decay (at most the peak)",
    "warmup_iters": "optimizer steps of linear warmup",
    "weight_decay": "AdamW weight decay, on 2+-dimensional tensors only",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this (0 disables)",
    "eval_interval": "optimizer steps between evaluations (each also saves ckpt.pt)",
    "eval_iters": "fixed batches per split in each evaluation",
    "seed": "seed for initialisation, batch sampling and dropout",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "dtype": "auto (bfloat16 on GPUs and on CPUs with native bfloat16, else float16 on GPUs, float32 on CPUs) | float32 | bfloat16 | float16",
    "compile": "torch.compile the model",
    "max_minutes": "train for this many minutes: the first warmup steps and one evaluation are timed and the "
                   "step count that fills the budget, evaluations included, is fixed (printed, saved in ckpt.pt, "
                   "kept by --resume); a run 5%% past the budget evaluates, saves and stops (0 = no budget: "
                   "--max-iters steps)",
}


FLAG_ALIASES = {"learning_rate": ["--lr"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Step 5: train the GPT on DATA/*.bin; writes OUT/best_model_params.pt, ckpt.pt, log.csv, loss.png. "
        "Each model and training setting defaults to the chosen preset's value (shown in brackets)."
    )
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="named settings from config.py; default: gpu where CUDA is available, else cpu. "
                   + "; ".join(f"{name}: {pr.description}" for name, pr in PRESETS.items()))
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/ckpt.pt with its settings (only device, dtype, compile, time budget "
                        "and directories may change)")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="stop this run after N optimizer steps and save ckpt.pt; the schedule still runs to "
                        "--max-iters, so --resume continues it (default 0: no limit)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s of one accelerator, for the MFU on the progress bar (default: the dense bf16 "
                        "peak of the GPU present, looked up by name in slm.hardware.GPU_PEAK_FLOPS: H100, H200, A100, L40S, "
                        "L4, A10, RTX 4090, RTX 3090, T4, V100; another GPU shows no MFU and says so)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")
    add_model_flags(p)
    add_settings_flags(p, "train", TrainConfig, TRAIN_HELP, FLAG_ALIASES)
    return p


def explicit_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """The model and training settings given on the command line (the rest come from the preset)."""
    train = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    return model_flags_given(args), train


def default_preset() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "gpu", "no --preset given and CUDA is available"
    return "cpu", "no --preset given and CUDA is not available"


def resolve(preset: str | None, model_over: dict, train_over: dict) -> tuple[str, str, GPTConfig, TrainConfig]:
    """(preset name, why it was chosen, model config, training config): the preset, then the flags given."""
    why = "--preset given"
    if preset is None:
        preset, why = default_preset()
    p = PRESETS[preset]
    return preset, why, replace(p.model, **model_over), replace(p.train, **train_over)


def check_settings(mc: GPTConfig, tc: TrainConfig, stop_after: int = 0, peak_flops: float | None = None) -> None:
    """One clear CLIError for the first bad setting; nothing has been built or written yet."""
    positive = {
        "--batch-size": tc.batch_size, "--grad-accum": tc.grad_accum, "--max-iters": tc.max_iters,
        "--eval-interval": tc.eval_interval, "--eval-iters": tc.eval_iters,
    }
    for flag, value in positive.items():
        if value < 1:
            raise CLIError(f"{flag} {value} must be at least 1")
    if not (tc.learning_rate > 0 and math.isfinite(tc.learning_rate)):
        raise CLIError(f"--learning-rate {tc.learning_rate} must be a positive number")
    if not (0 <= tc.min_lr <= tc.learning_rate):
        raise CLIError(f"--min-lr {tc.min_lr} must be between 0 and the peak --learning-rate {tc.learning_rate}, "
                       "so the schedule decays")
    if tc.max_minutes > 0 and tc.warmup_iters < PROBE_UNTIMED_STEPS + PROBE_TIMED_STEPS:
        raise CLIError(f"--warmup-iters {tc.warmup_iters} is too short for --max-minutes {tc.max_minutes}: the step "
                       f"count is fixed by timing the first {PROBE_UNTIMED_STEPS + PROBE_TIMED_STEPS} warmup "
                       "steps; use more warmup, or a set step count with --max-iters N --max-minutes 0")
    if tc.max_minutes == 0 and not (0 <= tc.warmup_iters < tc.max_iters):
        raise CLIError(f"--warmup-iters {tc.warmup_iters} must be at least 0 and below --max-iters {tc.max_iters}")
    if tc.weight_decay < 0:
        raise CLIError(f"--weight-decay {tc.weight_decay} must not be negative")
    for flag, beta in (("--beta1", tc.beta1), ("--beta2", tc.beta2)):
        if not 0 <= beta < 1:
            raise CLIError(f"{flag} {beta} must be in [0, 1)")
    if tc.grad_clip < 0:
        raise CLIError(f"--grad-clip {tc.grad_clip} must not be negative (0 disables clipping)")
    if tc.max_minutes < 0:
        raise CLIError(f"--max-minutes {tc.max_minutes} must not be negative (0 = no limit)")
    if stop_after < 0:
        raise CLIError(f"--stop-after {stop_after} must not be negative (0 = no limit)")
    if peak_flops is not None and not peak_flops > 0:
        raise CLIError(f"--peak-flops {peak_flops} must be positive")
    check_model_config(mc)


def check_data(mc: GPTConfig, tc: TrainConfig) -> dict:
    """DATA/meta.json, checked against the settings: the vocabulary fits and each split is longer than a window."""
    from slm.datafiles import read_meta

    if not Path(tc.data_dir).is_dir():
        raise CLIError(f"no data directory {tc.data_dir}; make it with: python load_dataset.py --data-dir {tc.data_dir} "
                       f"&& python tokenization.py --data-dir {tc.data_dir}")
    meta = read_meta(tc.data_dir)
    if meta.get("vocab_size") != mc.vocab_size:
        raise CLIError(f"{tc.data_dir}/meta.json has a vocabulary of {meta.get('vocab_size')} tokens but the model "
                       f"{mc.vocab_size}; use --vocab-size {meta.get('vocab_size')} or retokenize")
    for split in ("train", "validation"):
        tokens = meta["splits"][split]["tokens"]
        if tokens < mc.block_size + 1:
            raise CLIError(f"--block-size {mc.block_size} is longer than the {split} data ({tokens} tokens in "
                           f"{tc.data_dir}); use a smaller --block-size or more data")
    return meta


def data_facts(meta: dict) -> dict:
    """What a checkpoint records about its data: the tokenizer facts and the source (from meta.json)."""
    facts = {k: meta.get(k) for k in ("tokenizer", "vocab_size", "eot_id", "eot_position")}
    facts["source"] = meta.get("source") or {}
    facts["splits"] = {s: {"tokens": v.get("tokens"), "sha256": v.get("sha256")} for s, v in meta["splits"].items()}
    return facts


def describe_data(facts: dict) -> str:
    """The data source in a few words (slm.checkpoint.describe_source)."""
    return describe_source({"data": facts})


# ----------------------------------------------------------------------------- schedule


def make_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig, at_step: int = 0):
    """Linear warmup to the optimizer's lr (the peak), then cosine down to min_lr at max_iters.

    Stepped once per optimizer step. The schedulers multiply the optimizer's lr, so the optimizer is
    built with lr = the peak; eta_min is the absolute floor. at_step > 0 builds it part way, for a time
    budget that fixes max_iters after some warmup steps: the rates go back to the peak and the new
    schedule is stepped at_step times, which leaves it exactly where it would be had it run from step 0.
    """
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])  # set by the first scheduler built on the optimizer
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, tc.max_iters - tc.warmup_iters), eta_min=tc.min_lr)
    scheduler = cosine
    if tc.warmup_iters > 0:
        warmup = LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=tc.warmup_iters)
        scheduler = SequentialLR(optimizer, [warmup, cosine], milestones=[tc.warmup_iters])
    for _ in range(at_step):
        scheduler.step()
    return scheduler


def fused_adamw(device: str) -> bool:
    """AdamW's fused kernel: one pass over each parameter instead of a dozen. CUDA has it; the CPU since
    torch 2.4 (3.3x faster than foreach for the cpu preset's 7M parameters here: 5.1 vs 17.0 ms per step)."""
    return device.startswith("cuda") or (device == "cpu" and torch.__version__ >= (2, 4))


def make_optimizer(model, tc: TrainConfig, device: str) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.optim_groups(tc.weight_decay),
        lr=tc.learning_rate,
        betas=(tc.beta1, tc.beta2),
        fused=fused_adamw(device),
    )


# ----------------------------------------------------------------------------- RNG state


def rng_state(batch_gen: torch.Generator) -> dict:
    """Every random state training draws from, as plain lists and tensors (torch.load weights_only reads it)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "batches": batch_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, batch_gen: torch.Generator) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    batch_gen.set_state(state["batches"])


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------- log and plot


def write_log(path: Path, history: list[dict]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=LOG_FIELDS)
    w.writeheader()
    w.writerows(history)
    atomic_write_bytes(path, text.getvalue().encode())


def read_log(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k in ("step", "tokens", "best") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def plot_losses(path: Path, history: list[dict], title: str) -> None:
    """Train and validation loss (fixed batches) against step; the best validation point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.plot(steps, [r["train_loss"] for r in history], "o-", ms=3, label="train (fixed batches)")
    ax.plot(steps, [r["val_loss"] for r in history], "o-", ms=3, label="validation (fixed batches)")
    best = min(history, key=lambda r: r["val_loss"])
    ax.plot([best["step"]], [best["val_loss"]], "*", ms=16, color="red", zorder=5,
            label=f"best validation {best['val_loss']:.3f} at step {best['step']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    # Wrapped to the figure's width: the data line (which files, from where) can be long.
    ax.set_title("\n".join(textwrap.fill(line, 100) for line in title.splitlines()), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


# ----------------------------------------------------------------------------- CPU memory


def keep_freed_memory() -> None:
    """Let glibc reuse freed heap memory for big tensors instead of mapping fresh zeroed pages each step.

    The (batch * block_size, vocab) logits and their gradients are 100+ MB; by default glibc hands each
    such block back to the OS when freed and page-faults a new one on the next step. Raising the mmap
    and trim thresholds made CPU training steps about 2x faster on this project's 2-core machine.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


# ----------------------------------------------------------------------------- distributed


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


# ----------------------------------------------------------------------------- evaluation


def keep_logits(device: str) -> bool:
    """Whether the loss goes through the full (B, T, vocab) logits. On a CPU model.head_loss computes the
    same loss and gradients a few rows at a time, twice as fast; on a GPU the plain path is fast (and
    torch.compile fuses it), so it stays."""
    return device != "cpu"


@torch.no_grad()
def evaluate(model, batches, tc: TrainConfig, device: str, dtype: str, dist: Dist) -> dict[str, float]:
    """Mean loss over the same eval_iters global batches of each split every time.

    Like training, each rank scores its slice of every global batch, so the result does not depend on
    how many processes share the work."""
    model.eval()
    losses = {}
    for split, offset in EVAL_SEED_OFFSET.items():
        gen = torch.Generator().manual_seed(tc.seed + offset)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for _ in range(tc.eval_iters):
            x, y = global_batch(batches, split, tc.batch_size, gen, dist)
            with autocast(device, dtype):
                _, loss = model(x, y, return_logits=keep_logits(device))
            total += loss.double()
        losses[split] = dist.all_sum(total).item() / (tc.eval_iters * dist.world)
    model.train()
    return losses


# ----------------------------------------------------------------------------- one run: build and restore


@dataclass
class Run:
    """One training run: its settings, where it runs, what it trains, and how far it has got.

    build_run() makes it (and restore() brings it to a checkpoint's step); train_step() and
    evaluate_and_save() move it on. The loop in train() only calls these."""

    mc: GPTConfig
    tc: TrainConfig
    preset: str | None
    device: str
    dtype: str
    dist: Dist
    say: Callable[[str], None]  # prints on rank 0 only, above the progress bar
    out_dir: Path
    facts: dict  # what the checkpoints record about the data (data_facts)
    batches: Any
    raw_model: torch.nn.Module  # uncompiled: its state_dict is what gets saved, so no _orig_mod. keys
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    batch_gen: torch.Generator  # draws the training batches; evaluation has its own generators
    tokens_per_step: int
    t_start: float
    model: torch.nn.Module = None  # raw_model, compiled if asked: what evaluates
    train_model: torch.nn.Module = None  # model, wrapped in DDP under torchrun: what trains
    # progress: what the checkpoints save and restore
    step: int = 0  # optimizer steps done
    best_val: float = math.inf
    best_step: int = -1
    history: list = field(default_factory=list)  # one row per evaluation, as in log.csv
    step_loss: float = math.nan  # training loss of the last step
    schedule: dict | None = None  # how max_iters was fixed; None while a time budget's probe still runs
    # this process only
    lr: float = math.nan  # learning rate the last step used
    eval_s: float = 0.0  # how long the last evaluate_and_save took
    save_s: float = 0.0  # how much of that was saving files
    step_times: list = field(default_factory=list)  # seconds per step, while the probe runs
    t_train: float = 0.0  # when the loop started

    @property
    def finished(self) -> bool:
        return self.schedule is not None and self.step >= self.tc.max_iters


def pick_hardware(tc: TrainConfig) -> tuple[str, str, Dist]:
    """(device, dtype, Dist): where this process trains, in which precision, as which rank."""
    device = pick_device(tc.device)
    dtype = pick_dtype(tc.dtype, device)
    if dtype == "float16" and not device.startswith("cuda"):
        raise CLIError(f"--dtype float16 needs a CUDA GPU (GradScaler); on {device} use float32 or bfloat16")
    dist = Dist(device)
    if dist.device == "cpu":
        keep_freed_memory()
    if dist.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dist.device, dtype, dist


def read_resume_checkpoint(out_dir: Path, tc: TrainConfig, facts: dict) -> dict:
    """OUT/ckpt.pt, checked: it holds a training state and was trained on the same data."""
    ckpt = load_checkpoint(out_dir / CKPT_FILE, map_location="cpu")
    if "optimizer" not in ckpt:
        raise CLIError(f"{out_dir / CKPT_FILE} has no optimizer state; it cannot be resumed")
    for split, v in facts["splits"].items():
        was = ckpt["data"]["splits"][split]["sha256"]
        if v["sha256"] != was:
            raise CLIError(f"the {split} data in {tc.data_dir} changed since {out_dir / CKPT_FILE} was written "
                           f"(sha256 {v['sha256'][:12]} != {was[:12]}); resume on the same data or start afresh")
    return ckpt


def build_run(mc: GPTConfig, tc: TrainConfig, *, resume: bool, preset: str | None) -> Run:
    """Everything a run needs, in order: hardware, data, seeds, model, optimizer, schedule; then the
    checkpoint's state when resuming, then compile and DDP. Nothing is written to OUT here."""
    from batches import Batches
    from model import GPT

    t_start = time.time()
    device, dtype, dist = pick_hardware(tc)
    meta = check_data(mc, tc)
    facts = data_facts(meta)
    out_dir = Path(tc.out_dir)
    ckpt = read_resume_checkpoint(out_dir, tc, facts) if resume else None

    torch.manual_seed(tc.seed + dist.rank)  # init (rank 0's copy wins under DDP) and per-rank dropout
    random.seed(tc.seed + dist.rank)
    np.random.seed(tc.seed + dist.rank)
    batches = Batches(tc.data_dir, mc.block_size, device=device)
    raw_model = GPT(mc).to(device)
    optimizer = make_optimizer(raw_model, tc, device)
    if dist.master:  # a run that cannot save its checkpoints must not train first
        check_checkpoint_space(out_dir, raw_model, BEST_FILE, CKPT_FILE)
    run = Run(
        mc=mc, tc=tc, preset=preset, device=device, dtype=dtype, dist=dist,
        say=print if dist.master else (lambda *a, **k: None), out_dir=out_dir, facts=facts, batches=batches,
        raw_model=raw_model, optimizer=optimizer, scheduler=make_scheduler(optimizer, tc),
        scaler=torch.amp.GradScaler("cuda", enabled=(dtype == "float16")),
        batch_gen=torch.Generator().manual_seed(tc.seed),
        tokens_per_step=tc.batch_size * tc.grad_accum * mc.block_size * dist.world, t_start=t_start,
        schedule=None if tc.max_minutes > 0 else {"max_iters": tc.max_iters, "fixed_by": "--max-iters"},
    )
    if ckpt is not None:
        restore(run, ckpt)
    del ckpt

    problem = compile_problem(device) if tc.compile else None
    if problem:
        run.say(f"note: {problem}; training without torch.compile (eager)")
    run.model = torch.compile(raw_model) if tc.compile and not problem else raw_model
    run.train_model = run.model
    if dist.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.train_model = DDP(run.model, device_ids=[dist.local_rank] if device.startswith("cuda") else None)
    announce(run, meta, resume)
    return run


def restore(run: Run, ckpt: dict) -> None:
    """Bring a freshly built run to the checkpoint's step: weights, optimizer, schedule, scaler, RNGs, history."""
    run.raw_model.load_state_dict(ckpt["model"], strict=True)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.best_val, run.best_step = ckpt["step"], ckpt["best_val_loss"], ckpt["best_step"]
    run.history, run.step_loss = list(ckpt["history"]), ckpt["step_loss"]
    run.schedule = ckpt.get("schedule", {"max_iters": run.tc.max_iters, "fixed_by": "--max-iters"})
    if run.schedule is None and run.tc.max_minutes == 0:
        raise CLIError(f"{run.out_dir / CKPT_FILE} stopped at step {run.step}, before its time budget fixed the step "
                       f"count; resume it with a budget (--max-minutes M)")
    rng = dict(ckpt["rng"])
    rng["python"] = _list_to_tuple(rng["python"])
    set_rng_state(rng, run.batch_gen)
    if not run.dist.master:  # only rank 0's dropout RNG was saved; the others restart theirs deterministically
        torch.manual_seed(run.tc.seed + 1000 * run.dist.rank + run.step)
    run.say(f"resuming from {run.out_dir / CKPT_FILE} at step {run.step} (best validation loss {run.best_val:.4f} "
            f"at step {run.best_step})")


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot work for this device here, or None when it can: it needs Triton on a CUDA
    GPU (not shipped for Windows), a C++ compiler on a CPU, and has no stable backend for Apple's MPS."""
    import shutil

    import torch._dynamo
    from torch.utils._triton import has_triton

    if not torch._dynamo.is_dynamo_supported():
        return (f"torch {torch.__version__} does not support torch.compile with Python {sys.version.split()[0]} "
                f"on {sys.platform}")
    if device.startswith("cuda") and not has_triton():
        return "torch.compile needs Triton for CUDA GPUs and it is not installed (Windows: pip install triton-windows)"
    if device == "mps":
        return f"torch.compile has no stable backend for MPS in torch {torch.__version__}"
    if device == "cpu" and not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++", "cl")):
        return "torch.compile on a CPU needs a C++ compiler (g++, clang++ or MSVC's cl) and none is on PATH"
    return None


def announce(run: Run, meta: dict, resume: bool) -> None:
    """Say what is about to train, on what, and make OUT (rank 0)."""
    mc, tc = run.mc, run.tc
    run.say(f"model: {run.raw_model.num_params() / 1e6:.2f}M parameters, "
            f"{run.raw_model.flops_per_token() / 1e6:.1f} MFLOPs per token")
    run.say(f"device {run.device}, dtype {run.dtype}, {run.dist.world} process(es), "
            f"compile {run.model is not run.raw_model}, "
            f"{run.tokens_per_step:,} tokens per optimizer step")
    run.say(f"data: {tc.data_dir}, {meta['splits']['train']['tokens']:,} train / "
            f"{meta['splits']['validation']['tokens']:,} validation tokens, {describe_data(run.facts)}")
    if run.dist.master:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (run.out_dir / CKPT_FILE).exists():
            run.say(f"note: starting afresh; {run.out_dir / CKPT_FILE} will be overwritten (--resume continues it)")


# ----------------------------------------------------------------------------- one run: step, evaluate, save


def train_step(run: Run, wants_stop: Callable[[], bool]) -> bool:
    """One optimizer step over grad_accum micro-batches: run.step advances, run.step_loss is its loss.

    One all-reduce per step carries the loss (for the log) and whether any rank wants_stop() (a signal,
    the time budget); returns that. A non-finite loss raises CLIError before the weights are touched."""
    tc, dist = run.tc, run.dist
    loss_sum = torch.zeros((), dtype=torch.float32, device=run.device)
    for micro in range(tc.grad_accum):
        x, y = global_batch(run.batches, "train", tc.batch_size, run.batch_gen, dist)
        sync = micro == tc.grad_accum - 1  # under DDP, only the last micro-batch all-reduces the gradients
        with (run.train_model.no_sync() if dist.ddp and not sync else contextlib.nullcontext()):
            with autocast(run.device, run.dtype):
                _, loss = run.train_model(x, y, return_logits=keep_logits(run.device))
                loss = loss / tc.grad_accum
            run.scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    stats = dist.all_sum(torch.stack([loss_sum, torch.tensor(float(bool(wants_stop())), device=run.device)]))
    run.step_loss = stats[0].item() / dist.world
    run.lr = run.optimizer.param_groups[0]["lr"]
    if not math.isfinite(run.step_loss):
        kept = (f"the checkpoints in {run.out_dir} (last saved at step {run.history[-1]['step']}) are kept"
                if run.history else "no checkpoint was written")
        raise CLIError(f"loss became {run.step_loss} at step {run.step + 1} (learning rate {run.lr:.3g}); training "
                       f"stopped, {kept}; try a lower --learning-rate, --grad-clip 1 or --dtype float32")
    if tc.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), tc.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1
    return stats[1].item() > 0


def evaluate_and_save(run: Run) -> None:
    """Score the fixed batches, add a history row; rank 0 saves best_model_params.pt when the validation loss
    is the best so far, then ckpt.pt, log.csv and loss.png."""
    t0 = time.time()
    losses = evaluate(run.model, run.batches, run.tc, run.device, run.dtype, run.dist)
    is_best = losses["validation"] < run.best_val
    if is_best:
        run.best_val, run.best_step = losses["validation"], run.step
    run.history.append({
        "step": run.step, "train_loss": losses["train"], "val_loss": losses["validation"],
        "step_loss": run.step_loss, "lr": run.optimizer.param_groups[0]["lr"],
        "tokens": run.step * run.tokens_per_step, "elapsed_s": round(time.time() - run.t_start, 2),
        "best": int(is_best),
    })
    if run.dist.master:
        t_save = time.time()
        if is_best:
            atomic_torch_save(model_file(run, losses["validation"]), run.out_dir / BEST_FILE)
        save_resume_state(run)
        write_log(run.out_dir / LOG_FILE, run.history)
        plot_losses(run.out_dir / PLOT_FILE, run.history, plot_title(run))
        run.save_s = time.time() - t_save
        run.say(f"step {run.step}: train loss {losses['train']:.4f}, validation loss {losses['validation']:.4f}"
                f"{' (best)' if is_best else ''}")
    run.eval_s = time.time() - t0


def model_file(run: Run, val_loss: float) -> dict:
    """best_model_params.pt: the weights and what they are (model config, data, step, validation loss)."""
    return {
        "model": run.raw_model.state_dict(),
        "config": config_to_dict(run.mc),
        "data": run.facts,
        "step": run.step,
        "val_loss": val_loss,
    }


def save_resume_state(run: Run) -> None:
    """ckpt.pt (rank 0): the model file plus everything --resume needs to continue exactly."""
    if not run.dist.master:
        return
    rng = rng_state(run.batch_gen)
    rng["python"] = _tuple_to_list(rng["python"])
    state = model_file(run, run.history[-1]["val_loss"] if run.history else math.nan)
    state.update(
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        rng=rng,
        train_config=asdict(run.tc),
        best_val_loss=run.best_val,
        best_step=run.best_step,
        history=run.history,
        step_loss=run.step_loss,
        schedule=run.schedule,
        preset=run.preset,
    )
    atomic_torch_save(state, run.out_dir / CKPT_FILE)


def plot_title(run: Run) -> str:
    return (f"{run.mc.n_layer} layers x {run.mc.n_embd} wide, {run.raw_model.num_params() / 1e6:.1f}M parameters, "
            f"{run.tokens_per_step:,} tokens per step\n{describe_data(run.facts)}")


# ----------------------------------------------------------------------------- the time budget


def steps_that_fit(step: int, seconds: float, step_s: float, eval_s: float, eval_interval: int) -> int:
    """The largest step count N >= step whose remaining steps and evaluations (one at each multiple of
    eval_interval after step, and the final one at N) take at most `seconds`."""
    step_s = max(step_s, 1e-9)

    def cost(n: int) -> float:
        evals = n // eval_interval - step // eval_interval + (n % eval_interval != 0)
        return (n - step) * step_s + evals * eval_s

    lo, hi = step, step + int(max(seconds, 0.0) / step_s) + 1  # cost(hi) > seconds: its steps alone exceed it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


def probe_schedule(run: Run, step_s: float) -> None:
    """Record one step's time; once the probe has its steps (or warmup ends), fix max_iters from it."""
    run.step_times.append(step_s)
    if len(run.step_times) >= PROBE_MAX_STEPS or run.step >= run.tc.warmup_iters:
        fix_schedule(run)


def fix_schedule(run: Run) -> None:
    """Fix max_iters at the steps that fill the rest of the budget, evaluations included, and rebuild the
    schedule for them at the current step (warmup so far does not depend on max_iters, so the learning rates
    already used are exactly those of a run with --max-iters N --max-minutes 0)."""
    tc, dist = run.tc, run.dist
    timed = run.step_times[PROBE_UNTIMED_STEPS:] or run.step_times
    t0 = time.time()
    evaluate(run.model, run.batches, tc, run.device, run.dtype, dist)  # timed only: the result is not used
    eval_s = time.time() - t0 + run.save_s
    measured = torch.tensor([sum(timed) / len(timed), eval_s, time.time() - run.t_train], dtype=torch.float64,
                            device=run.device)
    step_s, eval_s, elapsed = dist.all_max(measured).tolist()  # every rank fixes the same count
    max_iters = steps_that_fit(run.step, tc.max_minutes * 60 - elapsed, step_s, eval_s, tc.eval_interval)
    if max_iters <= tc.warmup_iters:
        run.say(f"note: {tc.max_minutes} minutes fit only {max_iters} steps here, fewer than the {tc.warmup_iters} "
                f"warmup steps; training {tc.warmup_iters + 1} steps (the budget cut may stop them)")
        max_iters = tc.warmup_iters + 1
    run.tc = replace(tc, max_iters=max_iters)
    run.scheduler = make_scheduler(run.optimizer, run.tc, at_step=run.step)
    run.schedule = {"max_iters": max_iters, "fixed_by": "--max-minutes", "max_minutes": tc.max_minutes,
                    "fixed_at_step": run.step, "probe_ms_per_step": round(step_s * 1000, 3),
                    "eval_s": round(eval_s, 3)}
    run.say(f"schedule: {max_iters} steps fixed from a probe of {step_s * 1000:,.0f} ms/step and {eval_s:.1f} s per "
            f"evaluation to fill {tc.max_minutes} minutes; reproduce with --max-iters {max_iters} --max-minutes 0")


def out_of_time(run: Run) -> bool:
    """The run is BUDGET_OVERRUN past its minutes (counting one more evaluation as long as the last one):
    the machine slowed down after the probe, or a resumed run had less time than it needs."""
    budget_s = run.tc.max_minutes * 60 * (1 + BUDGET_OVERRUN)
    return bool(budget_s) and time.time() - run.t_train + run.eval_s >= budget_s


# ----------------------------------------------------------------------------- the loop


class StopRequest:
    """Ctrl-C / SIGTERM set a flag that the loop reads between steps; a second Ctrl-C aborts at once."""

    def __init__(self, say):
        self.signal = None
        self.say = say
        self.old = {}

    def __enter__(self):
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        self.say(f"\n{self.signal}: stopping after this step and saving ckpt.pt (Ctrl-C again aborts at once)")

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def mfu_peak(device: str, peak_flops: float | None) -> tuple[float | None, str]:
    """The peak FLOP/s the MFU divides by (None: no MFU shown) and a line saying where it comes from."""
    if peak_flops:
        return peak_flops, f"MFU against --peak-flops {peak_flops:.4g} FLOP/s per device"
    if not device.startswith("cuda"):
        return None, ""
    name = torch.cuda.get_device_name(device)
    peak = gpu_peak_flops(name)
    if peak is None:
        return None, (f"MFU not shown: the peak FLOP/s of {name!r} is unknown here; pass --peak-flops with its "
                      "dense bf16 tensor FLOP/s")
    return peak, f"MFU against the {name}'s dense bf16 peak of {peak / 1e12:,.0f} TFLOP/s"


class Speedometer:
    """Tokens per second (a moving average) and the MFU where the peak is known, shown on the progress bar."""

    def __init__(self, run: Run, peak_flops: float | None):
        self.run, self.tok_per_s, self.steps = run, 0.0, 0
        self.peak_flops, line = mfu_peak(run.device, peak_flops)
        self.flops_per_token = run.raw_model.flops_per_token()
        if line:
            run.say(line)

    def show(self, bar, step_s: float) -> None:
        run = self.run
        rate = run.tokens_per_step / max(step_s, 1e-9)
        self.steps += 1
        self.tok_per_s = rate if self.steps == 1 else 0.9 * self.tok_per_s + 0.1 * rate
        post = f"loss {run.step_loss:.4f}, lr {run.lr:.2e}, {self.tok_per_s:,.0f} tok/s"
        if self.peak_flops:
            post += f", MFU {self.flops_per_token * self.tok_per_s / (self.peak_flops * run.dist.world):.1%}"
        bar.set_postfix_str(post, refresh=False)
        bar.update(1)


def train(
    mc: GPTConfig,
    tc: TrainConfig,
    *,
    resume: bool = False,
    stop_after: int = 0,
    peak_flops: float | None = None,
    progress: bool = True,
    preset: str | None = None,
) -> dict:
    """Train (or resume from OUT/ckpt.pt); returns a summary dict. Settings are checked first.

    summary["stopped"] is "done", "time" (past max_minutes), "stop_after" or the signal name (SIGINT, SIGTERM).
    A non-finite loss raises CLIError naming the step; the checkpoints on disk are left as they were.
    """
    from tqdm import tqdm

    check_settings(mc, tc, stop_after, peak_flops)
    run = build_run(mc, tc, resume=resume, preset=preset)
    start_step, evaluated_at, losses, stopped = run.step, (run.history[-1]["step"] if run.history else -1), [], "done"
    speed = Speedometer(run, peak_flops)
    bar = tqdm(total=run.schedule and run.tc.max_iters, initial=run.step, desc="training", unit="step",
               dynamic_ncols=True, disable=not (progress and run.dist.master), file=sys.stderr)
    run.say = bar.write if run.dist.master else run.say
    run.t_train = time.time()
    run.train_model.train()
    try:
        with StopRequest(run.say) as stop:
            while True:
                due = run.step % tc.eval_interval == 0 or run.finished or stopped == "time"
                if due and run.step != evaluated_at:
                    evaluate_and_save(run)
                    evaluated_at = run.step
                if run.finished or stopped != "done":
                    break
                t0 = time.time()
                someone_stops = train_step(run, wants_stop=lambda: stop.signal is not None or out_of_time(run))
                step_s = time.time() - t0
                losses.append((run.step, run.step_loss))
                speed.show(bar, step_s)
                if run.schedule is None:  # a time budget's probe: max_iters is fixed once its steps are timed
                    probe_schedule(run, step_s)
                    bar.total = run.schedule and run.tc.max_iters
                asked = (stop.signal or "time") if someone_stops else None
                stopped = why_stop(run, asked, stop_after, run.step - start_step)
                if stopped in ("SIGINT", "SIGTERM", "stop_after"):  # save where it is, without an evaluation
                    save_resume_state(run)
                    break
    finally:
        bar.close()
        run.dist.close()
    return summarize(run, stopped, losses, start_step)


def why_stop(run: Run, asked: str | None, stop_after: int, steps_done: int) -> str:
    """"done" to go on; else what stops the run: a signal, "time" (evaluated and saved at the top of the
    loop), or "stop_after" (--stop-after steps done)."""
    if asked == "time":
        run.say(f"\n{run.tc.max_minutes}-minute budget overrun by {BUDGET_OVERRUN:.0%} at step {run.step} (the "
                "machine is slower than the probe measured): evaluating and stopping")
    if asked:
        return asked
    return "stop_after" if stop_after and steps_done >= stop_after else "done"


def summarize(run: Run, stopped: str, losses: list[tuple[int, float]], start_step: int) -> dict:
    trained_steps = run.step - start_step
    return {
        "stopped": stopped,
        "step": run.step,
        "max_iters": run.tc.max_iters if run.schedule else None,  # None: stopped before the budget fixed it
        "schedule": run.schedule,
        "best_val_loss": run.best_val,
        "best_step": run.best_step,
        "final_train_loss": run.history[-1]["train_loss"] if run.history else math.nan,
        "final_val_loss": run.history[-1]["val_loss"] if run.history else math.nan,
        "losses": losses,
        "tokens_trained": trained_steps * run.tokens_per_step,
        "tokens_per_s": trained_steps * run.tokens_per_step / max(time.time() - run.t_train, 1e-9),
        "elapsed_s": time.time() - run.t_start,
        "out_dir": str(run.out_dir),
        "data": describe_data(run.facts),
        "world_size": run.dist.world,
        "gpu_peak_gib": torch.cuda.max_memory_allocated(run.device) / 2**30 if run.device.startswith("cuda") else None,
    }


# ----------------------------------------------------------------------------- the script


def settings_for_resume(out_dir: str, model_over: dict, train_over: dict) -> tuple[GPTConfig, TrainConfig]:
    """The settings stored in OUT/ckpt.pt; flags may only change how the run executes, not what it computes."""
    ckpt = load_checkpoint(Path(out_dir) / CKPT_FILE)
    if "train_config" not in ckpt:
        raise CLIError(f"{Path(out_dir) / CKPT_FILE} has no training state; it cannot be resumed")
    mc = config_from_dict(ckpt["config"])
    unknown = set(ckpt["train_config"]) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise CLIError(f"{Path(out_dir) / CKPT_FILE} has training settings this version does not know "
                       f"({', '.join(sorted(unknown))}); resume it with the version that wrote it")
    tc = TrainConfig(**ckpt["train_config"])
    for name, value in {**model_over, **train_over}.items():
        was = getattr(mc, name) if name in model_over else getattr(tc, name)
        if name not in RESUME_MAY_CHANGE and value != was:
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"{flag} {value} differs from the {was} that {Path(out_dir) / CKPT_FILE} was trained with; "
                           f"--resume continues with the checkpoint's settings (start afresh in another --out-dir "
                           f"to change them)")
    return mc, replace(tc, **{k: v for k, v in train_over.items() if k in RESUME_MAY_CHANGE})


def format_settings(mc: GPTConfig, tc: TrainConfig, budget_fixes_steps: bool = False) -> str:
    model = ", ".join(f"{k}={v}" for k, v in asdict(mc).items())
    values = asdict(tc) | ({"max_iters": "(fixed by the time budget)"} if budget_fixes_steps else {})
    train = ", ".join(f"{k}={v}" for k, v in values.items())
    return f"model: {model}\ntraining: {train}"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    model_over, train_over = explicit_settings(args)
    if args.resume:
        if args.preset:
            print(f"note: --preset {args.preset} is ignored with --resume; the checkpoint's settings are used")
        out_dir = train_over.get("out_dir", TrainConfig.out_dir)
        mc, tc = settings_for_resume(out_dir, model_over, train_over)
        chosen = f"settings from {Path(out_dir) / CKPT_FILE}"
    else:
        preset, why, mc, tc = resolve(args.preset, model_over, train_over)
        chosen = f"preset {preset} ({why}): {PRESETS[preset].description}"
        if "max_iters" in train_over and tc.max_minutes > 0:
            raise CLIError(f"--max-iters {tc.max_iters} and the {tc.max_minutes}-minute budget (--max-minutes) both "
                           f"set the step count; add --max-minutes 0 to train exactly {tc.max_iters} steps")
    check_settings(mc, tc, args.stop_after, args.peak_flops)
    check_data(mc, tc)
    master = int(os.environ.get("RANK", "0")) == 0
    if master:
        print(chosen)
        print(format_settings(mc, tc, budget_fixes_steps=not args.resume and tc.max_minutes > 0))
    with dir_lock(tc.out_dir) if master else contextlib.nullcontext():  # one run writes into OUT at a time
        summary = train(mc, tc, resume=args.resume, stop_after=args.stop_after, peak_flops=args.peak_flops,
                        progress=args.progress, preset=None if args.resume else preset)
    if not master:
        return summary
    out = Path(tc.out_dir)
    if summary["stopped"] in ("SIGINT", "SIGTERM", "stop_after"):
        resume_cmd = f"python training.py --out-dir {out} --resume"
        of = summary["max_iters"] or "a count the time budget has not fixed yet"
        print(f"stopped at step {summary['step']} of {of} ({summary['stopped']}): saved "
              f"{out / CKPT_FILE}; continue with: {resume_cmd}")
        if summary["stopped"] != "stop_after":
            sys.exit(130)
        return summary
    how = "finished"
    if summary["stopped"] == "time":
        how = f"cut {BUDGET_OVERRUN:.0%} past the {tc.max_minutes}-minute budget"
    print(f"{how} at step {summary['step']} of {summary['max_iters']} in {summary['elapsed_s'] / 60:.1f} min "
          f"({summary['tokens_per_s']:,.0f} tokens/s): best validation loss {summary['best_val_loss']:.4f} at step "
          f"{summary['best_step']} -> {out / BEST_FILE}; log {out / LOG_FILE}, plot {out / PLOT_FILE}; "
          f"{summary['data']}")
    if summary["gpu_peak_gib"] is not None:
        print(f"peak GPU memory {summary['gpu_peak_gib']:.1f} GiB (torch.cuda.max_memory_allocated, rank 0)")
    return summary


if __name__ == "__main__":
    run_cli(main)
