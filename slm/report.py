"""What a run leaves for a reader: log.csv, steps.csv and loss.png at each evaluation, and at the
end (or a clean stop) OUT/report.md, a short report card readable on GitHub: the machine, the
settings with the command that repeats the run, the data, time and speed, the losses, the plot,
the samples, the best model.

Everything here is rank 0's and is written atomically (slm.files), so a report is whole or not
there.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from config import GPTConfig, TrainConfig
from slm import recipe
from slm.checkpoint import BEST_FILE, CKPT_FILE, describe_source
from slm.files import atomic_write_bytes
from slm.plot import plot_run, plot_title
from slm.progress import (
    LOG_FILE,
    PLOT_FILE,
    REPORT_FILE,
    STEP_FIELDS,
    STEPS_FILE,
    write_log,
    write_steps,
)
from slm.run import Progress
from slm.schedule import context_switches

CPU_FLAGS_SHOWN = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "amx_bf16",
    "amx_tile",
    "bf16",
    "sve",
    "asimd",
)
HOW_IT_ENDED = {
    "done": "finished",
    "time": "cut by the time budget",
    "stop_after": "stopped by --stop-after",
    "SIGINT": "stopped by Ctrl-C (SIGINT)",
    "SIGTERM": "stopped by SIGTERM",
}


def save_progress(
    out_dir: Path, progress: Progress, mc: GPTConfig, tc: TrainConfig, title: str
) -> None:
    """log.csv, steps.csv and loss.png as the run stands (rank 0); nothing when they show it already
    (a run that ends on an evaluation: its report would redraw the same plot). title is the plot's
    (slm.plot.plot_title)."""
    if progress.shown == (len(progress.history), len(progress.steps)):
        return
    write_log(out_dir / LOG_FILE, progress.history)
    write_steps(out_dir / STEPS_FILE, progress.steps)
    if progress.history:
        # while a time budget's probe runs, the phases' ends are not known yet: none drawn
        fixed = progress.schedule is not None
        plot_run(
            out_dir / PLOT_FILE,
            progress.history,
            [dict(zip(STEP_FIELDS, r, strict=True)) for r in progress.steps],
            title,
            tc.ema,
            switches=context_switches(tc, mc.block_size) if fixed else None,
        )
    progress.shown = (len(progress.history), len(progress.steps))


def summarize(
    progress: Progress,
    stopped: str,
    start_step: int,
    tc: TrainConfig,
    tokens_per_step: int,
    dist,
    facts: dict,
    t_start: float,
    t_train: float,
) -> dict:
    """train()'s summary of a run, now: how it ended, its losses, speed and files.
    summary["losses"] holds (step, train loss) of the steps this session trained."""
    import torch

    now = time.time()
    trained_steps, seconds = progress.step - start_step, max(now - t_train, 1e-9)
    last = progress.history[-1] if progress.history else {}
    session = progress.steps[len(progress.steps) - trained_steps :]
    return {
        "stopped": stopped,
        "step": progress.step,
        "start_step": start_step,
        "schedule": progress.schedule,
        "losses": [(step, loss) for step, loss, _ in session],
        # None: stopped before the budget fixed it
        "max_iters": tc.max_iters if progress.schedule else None,
        "best_val_loss": progress.best_val,
        "best_step": progress.best_step,
        "final_train_loss": last.get("train_loss", math.nan),
        "final_val_loss": last.get("val_loss", math.nan),
        "tokens_per_step": tokens_per_step,
        "tokens_trained": trained_steps * tokens_per_step,
        "tokens_per_s": trained_steps * tokens_per_step / seconds,
        "elapsed_s": now - t_start,
        "out_dir": str(tc.out_dir),
        "data": describe_source({"data": facts}),
        "world_size": dist.world,
        "gpu_peak_gib": torch.cuda.max_memory_allocated(dist.device) / 2**30
        if dist.device.startswith("cuda")
        else None,
    }


def reproduce(preset: str | None, mc: GPTConfig, tc: TrainConfig) -> str:
    """The command that repeats the run step for step (recipe.reproduce_command)."""
    return recipe.reproduce_command(preset, mc, tc)


def machine_line(machine, world: int) -> str:
    """The hardware, as it identifies itself: the CPU and its flags that matter here, or the GPU and
    its memory.
    """
    if machine is None:
        return "not recorded"
    if machine.kind == "cpu":
        flags = [f for f in CPU_FLAGS_SHOWN if f in machine.cpu_flags]
        return (
            f"{machine.describe()}; flags: "
            f"{', '.join(flags) or 'none of ' + '/'.join(CPU_FLAGS_SHOWN[:4])}; {os.cpu_count()} "
            "cores"
        )
    return f"{world} x {machine.describe()}" if world > 1 else machine.describe()


def data_line(facts: dict, data_dir: str) -> str:
    splits = facts.get("splits") or {}
    stories = (facts.get("source") or {}).get("splits") or {}
    counts = []
    for split in ("train", "validation"):
        n, tokens = (
            (stories.get(split) or {}).get("stories"),
            (splits.get(split) or {}).get("tokens"),
        )
        story_part = f"{n:,} stories, " if isinstance(n, int) else ""
        counts.append(
            f"{split} {story_part}{tokens:,} tokens" if isinstance(tokens, int) else f"{split} ?"
        )
    return f"{describe_source({'data': facts})}; `{data_dir}`: {'; '.join(counts)}"


def loss_rows(history: list[dict], steps: list) -> list[str]:
    """The losses table: first, best and final of the fixed-batch evaluations, and the per-step
    train loss.
    """
    first, last = history[0], history[-1]
    best = min(history, key=lambda r: r["val_loss"])
    rows = ["| | first | best | final |", "|---|---|---|---|"]
    for key, name in (
        ("val_loss", "validation (fixed batches)"),
        ("train_loss", "train (fixed batches)"),
    ):
        rows.append(
            f"| {name} | {first[key]:.4f} (step {first['step']:,}) | {best[key]:.4f} (step "
            f"{best['step']:,}) | {last[key]:.4f} (step {last['step']:,}) |"
        )
    if steps:
        low = min(steps, key=lambda r: r[1])
        rows.append(
            f"| train, one step's batch | {steps[0][1]:.4f} (step {steps[0][0]:,}) | {low[1]:.4f} "
            f"(step {low[0]:,}) | {steps[-1][1]:.4f} (step {steps[-1][0]:,}) |"
        )
    return rows


def report_text(
    summary: dict,
    progress: Progress,
    mc: GPTConfig,
    tc: TrainConfig,
    *,
    preset: str | None,
    machine,
    facts: dict,
    num_params: int,
    mfu: float | None,
    glimpse: str | None,
) -> str:
    """report.md's text (see the module's docstring)."""
    lines = opening(summary, progress, mc, tc, num_params)
    lines += facts_table(summary, progress, tc, machine, facts, mfu)
    if progress.history:
        lines += losses_section(progress)
    lines += settings_section(progress.schedule, preset, mc, tc)
    lines += samples_section(progress.history, glimpse)
    return "\n".join(lines)


def opening(
    summary: dict, progress: Progress, mc: GPTConfig, tc: TrainConfig, num_params: int
) -> list[str]:
    """The title, how and when the run ended, where its best model is, and how to continue it."""
    out = Path(tc.out_dir)
    ended = HOW_IT_ENDED.get(summary["stopped"], summary["stopped"])
    of = f" of {summary['max_iters']:,}" if summary.get("max_iters") else ""
    resumed = f", resumed at step {summary['start_step']:,}" if summary.get("start_step") else ""
    lines = [
        "# Training run: " + plot_title(mc, num_params, summary["tokens_per_step"], None),
        "",
        f"{ended.capitalize()} at step {progress.step:,}{of} on "
        f"{datetime.date.today().isoformat()}{resumed}.",
    ]
    if progress.history:
        lines.append(
            f"Best validation loss **{progress.best_val:.4f}** at step {progress.best_step:,}: "
            f"`{out / BEST_FILE}` (what `model_usage.py --checkpoint {out / BEST_FILE}` loads)."
        )
        if tc.ema > 0:
            lines.append(
                f"It holds the moving average of the weights (`--ema {tc.ema}`), which every "
                f"evaluation scored; `{out / CKPT_FILE}` holds the weights as trained, to resume."
            )
    if summary["stopped"] in ("SIGINT", "SIGTERM", "stop_after"):
        lines.append(
            f"Continue with `python training.py --out-dir {out} --resume` (from "
            f"`{out / CKPT_FILE}`)."
        )
    return lines


def facts_table(
    summary: dict, progress: Progress, tc: TrainConfig, machine, facts: dict, mfu: float | None
) -> list[str]:
    """The table of the machine, the software, the data, this session's speed and the totals."""
    import torch

    tokens_per_step = summary["tokens_per_step"]
    mfu_text = (
        f"MFU {mfu:.1%}"
        if mfu
        else "MFU not known (no peak FLOP/s for this device; --peak-flops sets it)"
    )
    gpu_mem = (
        f", peak GPU memory {summary['gpu_peak_gib']:.1f} GiB"
        if summary.get("gpu_peak_gib") is not None
        else ""
    )
    return [
        "",
        "| | |",
        "|---|---|",
        f"| machine | {machine_line(machine, summary['world_size'])} |",
        f"| software | torch {torch.__version__}, Python {platform.python_version()} |",
        f"| data | {data_line(facts, tc.data_dir)} |",
        f"| this session | {summary['elapsed_s'] / 60:.1f} min, {summary['tokens_trained']:,} "
        f"tokens trained, {summary['tokens_per_s']:,.0f} tokens/s, {mfu_text}{gpu_mem} |",
        f"| in all | {progress.step:,} steps, {progress.step * tokens_per_step:,} tokens "
        f"({tokens_per_step:,} per step) |",
        "",
    ]


def losses_section(progress: Progress) -> list[str]:
    """The loss table at each evaluation, the plot, and where every figure is."""
    return [
        "## Losses",
        "",
        *loss_rows(progress.history, progress.steps),
        "",
        f"![train and validation loss]({PLOT_FILE})",
        "",
        f"Every evaluation is in `{LOG_FILE}`, every step's loss and learning rate in "
        f"`{STEPS_FILE}`.",
        "",
    ]


def samples_section(history: list[dict], glimpse: str | None) -> list[str]:
    """The glimpse written at each evaluation, when there are any."""
    samples = [r for r in history if r.get("sample")]
    if not samples:
        return []
    lines = ["## Samples at each evaluation", "", f"{glimpse or 'One sample per evaluation'}:", ""]
    lines += [
        f"- **step {r['step']:,}** (validation {r['val_loss']:.3f}): {escape(r['sample'])}"
        for r in samples
    ]
    lines.append("")
    return lines


def settings_section(
    schedule: dict | None, preset: str | None, mc: GPTConfig, tc: TrainConfig
) -> list[str]:
    fixed = schedule
    schedule = schedule or {}
    how = {
        "--max-minutes": f"fixed by the {schedule.get('max_minutes')}-minute budget at step "
        f"{schedule.get('fixed_at_step')}",
        "--max-iters": "set by --max-iters",
    }
    steps = (
        f"{tc.max_iters:,} steps, {how.get(schedule.get('fixed_by'), 'not fixed yet')}"
        if fixed
        else "not fixed yet (the time budget was still timing its first steps)"
    )
    return [
        "## Settings",
        "",
        f"The same steps again (add `--data-dir {tc.data_dir}` and an `--out-dir`; device, "
        "dtype and compile are the machine's choice):",
        "",
        "```bash",
        reproduce(preset, mc, tc),
        "```",
        "",
        f"- preset: {preset or 'not recorded'}; steps: {steps}",
        f"- model: {', '.join(f'{k}={v}' for k, v in asdict(mc).items())}",
        f"- training: {', '.join(f'{k}={v}' for k, v in asdict(tc).items())}",
        "",
    ]


def escape(text: str) -> str:
    """Model text shown as text on GitHub: no Markdown or HTML from it."""
    for ch in "\\`*_[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return text


def write_report(
    summary: dict, progress: Progress, mc: GPTConfig, tc: TrainConfig, **about
) -> None:
    """OUT/report.md (rank 0), written atomically, with log.csv, steps.csv and loss.png brought up
    to date. about: report_text's keyword arguments."""
    title = plot_title(mc, about["num_params"], summary["tokens_per_step"], about["facts"])
    save_progress(Path(tc.out_dir), progress, mc, tc, title)
    text = report_text(summary, progress, mc, tc, **about)
    atomic_write_bytes(Path(tc.out_dir) / REPORT_FILE, text.encode("utf-8"))
