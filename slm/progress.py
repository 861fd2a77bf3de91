"""What the user sees of a run: progress bars (whole lines when the output is not a terminal),
tokens/s and MFU on the bar, log.csv and steps.csv, the last lines. The loss plot is slm/plot.py,
the report slm/report.py."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

from tqdm import tqdm

from slm.checkpoint import BEST_FILE, CKPT_FILE, describe_source
from slm.files import atomic_write_bytes
from slm.hardware import gpu_peak_flops

LOG_FILE = "log.csv"  # one row per evaluation, with the sample written then
STEPS_FILE = "steps.csv"  # one row per optimizer step: its train loss and learning rate
PLOT_FILE = "loss.png"  # drawn by slm/plot.py
REPORT_FILE = "report.md"  # written by slm/report.py
LOG_FIELDS = [
    "step",
    "train_loss",
    "val_loss",
    "step_loss",
    "lr",
    "tokens",
    "elapsed_s",
    "best",
    "sample",
]
STEP_FIELDS = ["step", "train_loss", "lr"]
_INTS = ("step", "tokens", "best")


def write_log(path: Path, history: list[dict]) -> None:
    write_csv(path, LOG_FIELDS, history)


def read_log(path: str | os.PathLike) -> list[dict]:
    """log.csv's rows; a log from before samples were kept has no sample column (read as "")."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {
                k: (v if k == "sample" else int(v) if k in _INTS else float(v))
                for k, v in row.items()
            }
            | {"sample": row.get("sample") or ""}
            for row in csv.DictReader(f)
        ]


def write_steps(path: Path, steps: list[tuple[int, float, float]]) -> None:
    """steps.csv: (step, train loss, learning rate) of every optimizer step so far."""
    write_csv(path, STEP_FIELDS, [dict(zip(STEP_FIELDS, row, strict=True)) for row in steps])


def read_steps(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: int(v) if k == "step" else float(v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fieldnames, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


# ----------------------------------------------------------------------------- progress bars

# on a stream that is not a terminal a bar writes a line at its start, at most once a minute, and
# at its end (tqdm's mininterval; maxinterval makes its monitor thread write a stalled count)
LOG_LINE_SECONDS = 60.0
LOG_NCOLS = 100


class _Lines:
    """The stream under a bar in a log: each of tqdm's redraws becomes one whole line. By hand:
    tqdm has no option for that, it redraws in place with carriage returns."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        line = s.replace("\r", "").rstrip()
        if line:  # tqdm's wipes (spaces) and its closing newline are dropped
            sys.stdout.flush()  # what was printed before this line comes before it in a shared log
            self.stream.write(line + "\n")
            self.flush()

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar. On a terminal, as ever; on a stream that is not one (a log file, a pipe, CI), an
    ASCII line now and then (LOG_LINE_SECONDS) instead of a flood of carriage-return updates."""
    stream = kwargs.get("file") or sys.stderr
    if not is_terminal(stream):
        kwargs.update(
            file=_Lines(stream),
            mininterval=LOG_LINE_SECONDS,
            maxinterval=LOG_LINE_SECONDS,
            ascii=True,
            ncols=LOG_NCOLS,
            dynamic_ncols=False,
        )
    return tqdm(iterable, **kwargs)


def quiet_library_bars() -> None:
    """datasets and huggingface_hub draw their own tqdm bars (saving, loading, downloading): off
    when stderr is not a terminal, where each would be a flood of carriage returns. On a terminal
    they stay."""
    if is_terminal(sys.stderr):
        return
    import datasets
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


def mfu_peak(device: str, peak_flops: float | None) -> tuple[float | None, str]:
    """The peak FLOP/s the MFU divides by (None: no MFU shown) and a line saying where it comes
    from.
    """
    if peak_flops:
        return peak_flops, f"MFU against --peak-flops {peak_flops:.4g} FLOP/s per device"
    if not device.startswith("cuda"):
        return None, ""
    import torch

    name = torch.cuda.get_device_name(device)
    peak = gpu_peak_flops(name)
    if peak is None:
        return None, (
            f"MFU not shown: the peak FLOP/s of {name!r} is unknown here; pass --peak-flops with "
            "its dense bf16 tensor FLOP/s"
        )
    return peak, f"MFU against the {name}'s dense bf16 peak of {peak / 1e12:,.0f} TFLOP/s"


class Speedometer:
    """Tokens per second (a moving average) and the MFU where the peak is known, shown on the
    progress bar.
    """

    def __init__(
        self,
        device: str,
        flops_per_token: float,
        tokens_per_step: int,
        world: int,
        peak_flops: float | None,
        say,
    ):
        self.tokens_per_step, self.world, self.flops_per_token = (
            tokens_per_step,
            world,
            flops_per_token,
        )
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
        """Model FLOPs utilisation at tok_per_s (all ranks together), or None where the peak is
        unknown.
        """
        if not self.peak_flops:
            return None
        return self.flops_per_token * tok_per_s / (self.peak_flops * self.world)


def print_end(summary: dict, out: Path, max_minutes: float) -> None:
    """The run's last lines: where it stopped and how to go on, or what it reached and where the
    files are.
    """
    from slm.budget import BUDGET_OVERRUN
    from slm.distributed import launch_command

    if summary["stopped"] in ("SIGINT", "SIGTERM", "stop_after"):
        of = summary["max_iters"] or "a count the time budget has not fixed yet"
        print(
            f"stopped at step {summary['step']} of {of} ({summary['stopped']}): saved "
            f"{out / CKPT_FILE}; continue with: {launch_command()} --out-dir {out} --resume"
        )
        return
    how = (
        f"cut {BUDGET_OVERRUN:.0%} past the {max_minutes}-minute budget"
        if summary["stopped"] == "time"
        else "finished"
    )
    # no count: the budget ended inside warmup, before it fixed the count; the rate never decayed
    of = (
        f"of {summary['max_iters']}"
        if summary["max_iters"]
        else "before its warmup ended (the learning rate never decayed: give more minutes or "
        "fewer --warmup-iters)"
    )
    print(
        f"{how} at step {summary['step']} {of} in {summary['elapsed_s'] / 60:.1f} min "
        f"({summary['tokens_per_s']:,.0f} tokens/s): best validation loss "
        f"{summary['best_val_loss']:.4f} at step {summary['best_step']} -> {out / BEST_FILE}; "
        f"report {out / REPORT_FILE}, plot {out / PLOT_FILE}; {summary['data']}"
    )
    if summary["gpu_peak_gib"] is not None:
        print(
            f"peak GPU memory {summary['gpu_peak_gib']:.1f} GiB (torch.cuda.max_memory_allocated, "
            "rank 0)"
        )


def announce(say, model, device: str, world: int, tc, facts: dict, flops: float,
             head_rows: int | None) -> None:  # fmt: skip
    """Say what is about to train, on what: flops per training token, over head_rows of the LM
    head (None: all)."""
    tokens = tc.batch_size * tc.grad_accum * model.config.block_size * world
    rows = "" if head_rows is None else f", the head over {head_rows:,} rows"
    say(
        f"model: {model.num_params() / 1e6:.2f}M parameters, {flops / 1e6:.1f} MFLOPs per "
        f"training token{rows}"
    )
    say(
        f"device {device}, dtype {tc.dtype}, {world} process(es), compile {tc.compile}, "
        f"{tokens:,} tokens per optimizer step"
    )
    splits = facts["splits"]
    say(
        f"data: {tc.data_dir}, {splits['train']['tokens']:,} train / "
        f"{splits['validation']['tokens']:,} validation tokens, {describe_source({'data': facts})}"
    )
