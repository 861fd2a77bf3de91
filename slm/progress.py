"""What the user sees of a run: tokens/s and MFU on the progress bar, log.csv, the loss plot, the last lines."""

from __future__ import annotations

import csv
import io
import os
import textwrap
from pathlib import Path

import torch

from slm.checkpoint import BEST_FILE, CKPT_FILE, describe_source
from slm.files import atomic_write_bytes
from slm.hardware import gpu_peak_flops

LOG_FILE = "log.csv"  # one row per evaluation
PLOT_FILE = "loss.png"
LOG_FIELDS = ["step", "train_loss", "val_loss", "step_loss", "lr", "tokens", "elapsed_s", "best"]


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

    def __init__(self, device: str, flops_per_token: float, tokens_per_step: int, world: int,
                 peak_flops: float | None, say):
        self.tokens_per_step, self.world, self.flops_per_token = tokens_per_step, world, flops_per_token
        self.tok_per_s, self.steps = 0.0, 0
        self.peak_flops, line = mfu_peak(device, peak_flops)
        if line:
            say(line)

    def show(self, bar, step_s: float, loss: float, lr: float) -> None:
        rate = self.tokens_per_step / max(step_s, 1e-9)
        self.steps += 1
        self.tok_per_s = rate if self.steps == 1 else 0.9 * self.tok_per_s + 0.1 * rate
        post = f"loss {loss:.4f}, lr {lr:.2e}, {self.tok_per_s:,.0f} tok/s"
        if self.peak_flops:
            post += f", MFU {self.mfu(self.tok_per_s):.1%}"
        bar.set_postfix_str(post, refresh=False)
        bar.update(1)

    def mfu(self, tok_per_s: float) -> float | None:
        """Model FLOPs utilisation at tok_per_s (all ranks together), or None where the peak is unknown."""
        if not self.peak_flops:
            return None
        return self.flops_per_token * tok_per_s / (self.peak_flops * self.world)


def print_end(summary: dict, out: Path, max_minutes: float) -> None:
    """The run's last lines: where it stopped and how to go on, or what it reached and where the files are."""
    from slm.schedule import BUDGET_OVERRUN

    if summary["stopped"] in ("SIGINT", "SIGTERM", "stop_after"):
        of = summary["max_iters"] or "a count the time budget has not fixed yet"
        print(f"stopped at step {summary['step']} of {of} ({summary['stopped']}): saved {out / CKPT_FILE}; continue "
              f"with: python training.py --out-dir {out} --resume")
        return
    how = f"cut {BUDGET_OVERRUN:.0%} past the {max_minutes}-minute budget" if summary["stopped"] == "time" else "finished"
    print(f"{how} at step {summary['step']} of {summary['max_iters']} in {summary['elapsed_s'] / 60:.1f} min "
          f"({summary['tokens_per_s']:,.0f} tokens/s): best validation loss {summary['best_val_loss']:.4f} at step "
          f"{summary['best_step']} -> {out / BEST_FILE}; log {out / LOG_FILE}, plot {out / PLOT_FILE}; "
          f"{summary['data']}")
    if summary["gpu_peak_gib"] is not None:
        print(f"peak GPU memory {summary['gpu_peak_gib']:.1f} GiB (torch.cuda.max_memory_allocated, rank 0)")


def announce(say, model, device: str, world: int, compiled: bool, tokens_per_step: int, tc, facts: dict) -> None:
    """Say what is about to train, on what."""
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.flops_per_token() / 1e6:.1f} MFLOPs per token")
    say(f"device {device}, dtype {tc.dtype}, {world} process(es), compile {compiled}, "
        f"{tokens_per_step:,} tokens per optimizer step")
    splits = facts["splits"]
    say(f"data: {tc.data_dir}, {splits['train']['tokens']:,} train / {splits['validation']['tokens']:,} validation "
        f"tokens, {describe_source({'data': facts})}")
