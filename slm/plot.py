"""The loss plot, out/loss.png: the train loss of every step (raw, faint, and smoothed), the
evaluations as points, the best checkpoint marked, a tokens-seen axis, and the learning rate in a
small panel beneath.

The y-axis is logarithmic and starts where the first tenth of the steps is over: the first steps
fall from ln(vocab) ~ 10.8 so fast that, drawn whole, they would flatten everything learned
afterwards into a line at the bottom. A note on the plot says what was left above it. `python
training.py --plot-only OUT` redraws it from OUT/log.csv and OUT/steps.csv (redraw below).
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import fields
from pathlib import Path

from config import TrainConfig
from slm.checkpoint import BEST_FILE, CKPT_FILE, config_from_dict, describe_source, load_checkpoint
from slm.cli import CLIError
from slm.files import atomic_write_bytes
from slm.progress import LOG_FILE, PLOT_FILE, STEPS_FILE, read_log, read_steps
from slm.schedule import context_switches

CLIP_FRACTION = 0.1  # the y-axis's top is the highest smoothed loss after this share of the steps
NICE_TICKS = [
    1,
    1.25,
    1.5,
    1.75,
    2,
    2.25,
    2.5,
    2.75,
    3,
    3.5,
    4,
    4.5,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    14,
    16,
]


def smooth(values: list[float]) -> list[float]:
    """Exponential moving average, bias-corrected (as nanochat's), over about 2% of the steps (1 to
    100).
    """
    window = min(100, max(1, len(values) // 50))
    beta, ema, out = 1 - 1 / window, 0.0, []
    for i, v in enumerate(values, 1):
        ema = beta * ema + (1 - beta) * v
        out.append(ema / (1 - beta**i) if beta else v)
    return out


def y_range(
    steps: list[dict], smoothed: list[float], history: list[dict]
) -> tuple[float, float, int]:
    """(bottom, top, first step shown whole): the top leaves out the first CLIP_FRACTION of the
    steps.
    """
    values = [r["val_loss"] for r in history] + [r["train_loss"] for r in history]
    if not steps:
        return min(values) * 0.95, max(values) * 1.05, 0
    skip = int(len(steps) * CLIP_FRACTION)
    after = steps[skip]["step"]
    later = smoothed[skip:] + [r["val_loss"] for r in history if r["step"] >= after]
    bottom = min(values + [min(r["train_loss"] for r in steps)]) * 0.97
    highest = max(values + smoothed)
    if highest <= max(later) * 1.08:  # nothing to leave out
        return bottom, highest * 1.03, 0
    return bottom, max(later) * 1.08, after


def loss_ticks(bottom: float, top: float) -> list[float]:
    ticks = [t for t in NICE_TICKS if bottom <= t <= top]
    while len(ticks) > 8:
        ticks = ticks[::2]
    return ticks


def plot_run(
    path: Path,
    history: list[dict],
    steps: list[dict],
    title: str,
    ema: float = 0.0,
    switches: list[tuple[int, int, int]] | None = None,
) -> None:
    """Draw loss.png (see the module's docstring) and write it atomically. history: log.csv's rows;
    steps: steps.csv's rows (may be empty: then the evaluations alone, as older runs logged
    them); ema: the run's --ema (above 0 its evaluations scored the weights' average, and the
    legend says so); switches: (step, context before, context from it) of a run with cut windows
    (--quarter-context, --short-context), each marked by a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(9, 6.5), dpi=100, sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    smoothed = smooth([r["train_loss"] for r in steps])
    draw_train_loss(ax, steps, smoothed)
    draw_evaluations(ax, history, ema)
    loss_axis(ax, steps, smoothed, history)
    mark_switches(ax, switches or [])
    title = "\n".join(textwrap.fill(line, 110) for line in title.splitlines())
    # pad: clears the tokens axis and its label above the plot (a pad of 30 touched them)
    ax.set_title(title, fontsize=9, y=1, pad=38)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    tokens_axis(ax, history)
    draw_lr(ax_lr, steps or history)
    fixed_margins(fig, title.count("\n") + 1)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


def draw_train_loss(ax, steps: list[dict], smoothed: list[float]) -> None:
    """Each step's train loss, faint, and its smoothed curve over it."""
    if not steps:
        return
    xs = [r["step"] for r in steps]
    ax.plot(
        xs,
        [r["train_loss"] for r in steps],
        color="C0",
        alpha=0.25,
        lw=0.7,
        label="train loss, each step",
    )
    ax.plot(xs, smoothed, color="C0", lw=1.8, label="train loss, smoothed")


def loss_axis(ax, steps: list[dict], smoothed: list[float], history: list[dict]) -> None:
    """A log loss axis over the interesting range, and a note when the first steps lie above it."""
    import matplotlib

    bottom, top, after = y_range(steps, smoothed, history)
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.set_yticks(loss_ticks(bottom, top), minor=False)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    # the nice ticks alone: no unlabelled minor ones
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylabel("cross-entropy loss (log scale)")
    if after:
        first = history[0] if history else steps[0]
        ax.text(
            0.99,
            0.97,
            f"before step {after:,} the loss is above this axis (from "
            f"{first.get('val_loss', first['train_loss']):.2f} at step {first['step']})",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="0.35",
        )


def mark_switches(ax, switches: list[tuple[int, int, int]]) -> None:
    """A dotted line at each change of context. Before the last one the validation loss is high:
    the windows' later positions are not trained yet."""
    for i, (step, before, after) in enumerate(switches):
        ax.axvline(step, color="0.45", ls=":", lw=1.2)
        ax.text(
            step,
            0.88 - 0.06 * i,
            f" context {before} before step {step:,}, {after} from it",
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
            fontsize=8,
            color="0.35",
        )


def draw_lr(ax_lr, rows: list[dict]) -> None:
    """The learning rate at each step (or each evaluation, for runs that logged no steps)."""
    ax_lr.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="C2", lw=1.2)
    ax_lr.set_ylabel("learning rate", fontsize=8)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(True, alpha=0.3)
    ax_lr.set_xlabel("optimizer step")


def fixed_margins(fig, title_lines: int) -> None:
    """Margins in inches for the tick labels, the axis labels and the title's lines above the
    tokens axis. fig.tight_layout() would measure every text, and the plot is redrawn at every
    evaluation (the cost: benchmarks/training.md, "Drawing loss.png")."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.2 / width,
        bottom=0.5 / height,
        hspace=0.13,
        top=1 - (0.55 + 0.17 * title_lines) / height,
    )


def draw_evaluations(ax, history: list[dict], ema: float = 0.0) -> None:
    """The fixed-batch evaluations as points, the best validation loss (the saved model) as a
    star."""
    if not history:
        return
    xs = [r["step"] for r in history]
    of = (
        f"the weights' average (--ema {ema}), fixed batches"
        if ema > 0
        else "evaluation (fixed batches)"
    )
    ax.plot(
        xs,
        [r["train_loss"] for r in history],
        "o",
        ms=5,
        color="C0",
        mec="white",
        label=f"train loss, {of}",
    )
    ax.plot(
        xs,
        [r["val_loss"] for r in history],
        "s--",
        ms=5,
        lw=0.8,
        color="C1",
        mec="white",
        label=f"validation loss, {of}",
    )
    best = min(history, key=lambda r: r["val_loss"])
    ax.plot(
        [best["step"]],
        [best["val_loss"]],
        "*",
        ms=17,
        color="red",
        mec="darkred",
        zorder=5,
        label=f"best checkpoint: validation {best['val_loss']:.3f} at step {best['step']:,}",
    )


def tokens_axis(ax, history: list[dict]) -> None:
    """A second x-axis on top: tokens seen, from the tokens per step log.csv records."""
    per_step = next((r["tokens"] / r["step"] for r in history if r["step"] > 0), None)
    if not per_step:
        return
    total = per_step * history[-1]["step"]
    scale, unit = (
        (1e9, "billions")
        if total >= 5e9
        else (1e6, "millions")
        if total >= 5e6
        else (1e3, "thousands")
    )
    top = ax.secondary_xaxis(
        "top", functions=(lambda s: s * per_step / scale, lambda t: t * scale / per_step)
    )
    top.set_xlabel(f"tokens seen ({unit}; {per_step:,.0f} per step)", fontsize=8)
    top.tick_params(labelsize=8)


def plot_title(mc, n_params: int | None, tokens_per_step: int | None, facts: dict | None) -> str:
    """The model, the batch and the data, in the words of the plot's title."""
    parts = [f"{mc.n_layer} layers x {mc.n_embd} wide, context {mc.block_size}"]
    if n_params:
        parts.append(f"{n_params / 1e6:.1f}M parameters")
    if tokens_per_step:
        parts.append(f"{tokens_per_step:,} tokens per step")
    return ", ".join(parts) + (f"\n{describe_source({'data': facts})}" if facts else "")


def redraw(out_dir: str | Path) -> Path:
    """`python training.py --plot-only OUT`: draw OUT/loss.png again from OUT/log.csv and
    OUT/steps.csv.
    """
    out = Path(out_dir)
    if not (out / LOG_FILE).is_file():
        raise CLIError(
            f"no {out / LOG_FILE} to plot; train first (python training.py --out-dir {out})"
        )
    history = read_log(out / LOG_FILE)
    steps = read_steps(out / STEPS_FILE) if (out / STEPS_FILE).is_file() else []
    if not history:
        raise CLIError(f"{out / LOG_FILE} has no evaluation yet; nothing to plot")
    title = saved_title(out, history)
    ckpt = load_checkpoint(out / CKPT_FILE, mmap=True) if (out / CKPT_FILE).is_file() else {}
    # the run's settings (absent ones at TrainConfig's defaults)
    saved = ckpt.get("train_config") or {}
    tc = TrainConfig(
        **{k: v for k, v in saved.items() if k in {f.name for f in fields(TrainConfig)}}
    )
    # schedule None: stopped in a time budget's probe, the count (so the switches) not fixed yet
    fixed = ckpt.get("schedule", {}) is not None
    switches = context_switches(tc, ckpt["config"]["block_size"]) if saved and fixed else None
    plot_run(out / PLOT_FILE, history, steps, title, tc.ema, switches=switches)
    return out / PLOT_FILE


def saved_title(out: Path, history: list[dict]) -> str:
    """The plot's title for the run saved in out (its best model's config, size and data; log.csv's
    tokens per step), or the log's path where there is no best model."""
    if not (out / BEST_FILE).is_file():
        return f"{out / LOG_FILE}"
    best = load_checkpoint(out / BEST_FILE, mmap=True)  # config and shapes, not the weights
    per_step = next((r["tokens"] // r["step"] for r in history if r["step"] > 0), None)
    return plot_title(
        config_from_dict(best["config"]),
        count_parameters(best["model"]),
        per_step,
        best.get("data"),
    )


def count_parameters(state_dict: dict) -> int:
    """The weights in a saved state_dict, a tensor shared by two names (the tied embedding) counted
    once.
    """
    seen, total = set(), 0
    for t in state_dict.values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel()
    return total
