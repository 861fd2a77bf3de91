"""Training's settings: one --help line per TrainConfig field, and the checks that turn a bad value
into one line before anything is built or written."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

from config import PRESETS, GPTConfig, TrainConfig
from slm.cli import (
    ArgumentParser,
    CLIError,
    add_model_flags,
    add_settings_flags,
    check_model_config,
    model_flags_given,
)
from slm.schedule import PROBE_TIMED_STEPS, PROBE_UNTIMED_STEPS

# One line of --help per training setting (the model's are slm.cli.MODEL_HELP); the flags are
# generated from the dataclass fields with these.
TRAIN_HELP = {
    "data_dir": "directory with train.bin, validation.bin and meta.json (from tokenization.py)",
    "out_dir": "where checkpoints, log.csv and loss.png go",
    "batch_size": "sequences per micro-batch, per process",
    "grad_accum": "micro-batches accumulated per optimizer step, per process",
    "max_iters": "optimizer steps in all; the cosine schedule ends here (with --max-minutes above "
    "0 the budget fixes it instead)",
    "learning_rate": "peak learning rate, reached at the end of warmup",
    "min_lr": "learning rate at the end of the cosine decay (at most the peak)",
    "warmup_iters": "optimizer steps of linear warmup",
    "weight_decay": "AdamW weight decay, on 2+-dimensional tensors only",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this (0 disables)",
    "ema": "keep an exponential moving average of the weights with this decay (0.99 averages the "
    "last ~100 steps): evaluations score it and best_model_params.pt saves it (0 = the "
    "weights as trained)",
    "quarter_context": "share of the optimizer steps, from the first (and at least the warmup), "
    "whose windows are cut in four: each batch of B x T tokens trains as 4B x T/4 (0 = "
    "never); --short-context's steps follow them",
    "short_context": "share of the optimizer steps, from the first (and at least the warmup), "
    "whose windows are cut in half: each batch of B x T tokens trains as 2B x T/2, the same "
    "tokens with half the context; a short context learns faster early, the full one late (0 "
    "= never)",
    "eval_interval": "optimizer steps between evaluations (each also saves ckpt.pt); the run's "
    "end evaluates too, and takes the place of one under a tenth of this before it",
    "eval_iters": "fixed batches per split in each evaluation",
    "seed": "seed for initialisation, batch sampling and dropout",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "dtype": "auto (bfloat16 on GPUs and on CPUs with native bfloat16, else float16 on GPUs, "
    "float32 on CPUs) | float32 | bfloat16 | float16",
    "compile": "torch.compile the model",
    "max_minutes": "train for this many minutes: the first warmup steps and one evaluation are "
    "timed and the step count that fills the budget, evaluations included, is fixed (printed, "
    "saved in ckpt.pt, kept by --resume); a run 5%% past the budget evaluates, saves and "
    "stops (0 = no budget: --max-iters steps)",
}


FLAG_ALIASES = {"learning_rate": ["--lr"]}


def explicit_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """The model and training settings given on the command line (the rest come from the preset)."""
    train = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if getattr(args, f.name) is not None
    }
    return model_flags_given(args), train


def check_settings(
    mc: GPTConfig, tc: TrainConfig, stop_after: int = 0, peak_flops: float | None = None
) -> None:
    """One clear CLIError for the first bad setting; nothing has been built or written yet."""
    positive = {
        "--batch-size": tc.batch_size,
        "--grad-accum": tc.grad_accum,
        "--max-iters": tc.max_iters,
        "--eval-interval": tc.eval_interval,
        "--eval-iters": tc.eval_iters,
    }
    for flag, value in positive.items():
        if value < 1:
            raise CLIError(f"{flag} {value} must be at least 1")
    if not (tc.learning_rate > 0 and math.isfinite(tc.learning_rate)):
        raise CLIError(f"--learning-rate {tc.learning_rate} must be a positive number")
    if not (0 <= tc.min_lr <= tc.learning_rate):
        raise CLIError(
            f"--min-lr {tc.min_lr} must be between 0 and the peak --learning-rate "
            f"{tc.learning_rate}, so the schedule decays"
        )
    if tc.warmup_iters < 0:
        raise CLIError(f"--warmup-iters {tc.warmup_iters} must not be negative (0 = no warmup)")
    if tc.max_minutes > 0 and tc.warmup_iters < PROBE_UNTIMED_STEPS + PROBE_TIMED_STEPS:
        raise CLIError(
            f"--warmup-iters {tc.warmup_iters} is too short for --max-minutes {tc.max_minutes}: "
            "the step count is fixed by timing the first "
            f"{PROBE_UNTIMED_STEPS + PROBE_TIMED_STEPS} warmup steps; use more warmup, or a set "
            "step count with --max-iters N --max-minutes 0"
        )
    if tc.max_minutes == 0 and tc.warmup_iters >= tc.max_iters:
        raise CLIError(f"--warmup-iters {tc.warmup_iters} must be below --max-iters {tc.max_iters}")
    if tc.weight_decay < 0:
        raise CLIError(f"--weight-decay {tc.weight_decay} must not be negative")
    for flag, beta in (("--beta1", tc.beta1), ("--beta2", tc.beta2)):
        if not 0 <= beta < 1:
            raise CLIError(f"{flag} {beta} must be in [0, 1)")
    if not 0 <= tc.ema < 1:
        raise CLIError(f"--ema {tc.ema} must be in [0, 1) (0 = no average: the weights as trained)")
    for flag, share, parts in (
        ("--quarter-context", tc.quarter_context, 4),
        ("--short-context", tc.short_context, 2),
    ):
        if not 0 <= share <= 1:
            raise CLIError(f"{flag} {share} must be in [0, 1] (a share of the steps; 0 = never)")
        if share > 0 and mc.block_size % parts:
            raise CLIError(
                f"{flag} needs a --block-size divisible by {parts} to cut each window in {parts}, "
                f"not {mc.block_size}"
            )
    if tc.grad_clip < 0:
        raise CLIError(f"--grad-clip {tc.grad_clip} must not be negative (0 disables clipping)")
    if tc.max_minutes < 0:
        raise CLIError(f"--max-minutes {tc.max_minutes} must not be negative (0 = no limit)")
    if stop_after < 0:
        raise CLIError(f"--stop-after {stop_after} must not be negative (0 = no limit)")
    if peak_flops is not None and not peak_flops > 0:
        raise CLIError(f"--peak-flops {peak_flops} must be positive")
    check_model_config(mc)


def format_settings(mc: GPTConfig, tc: TrainConfig, budget_fixes_steps: bool = False) -> str:
    model = ", ".join(f"{k}={v}" for k, v in asdict(mc).items())
    values = asdict(tc) | (
        {"max_iters": "(fixed by the time budget)"} if budget_fixes_steps else {}
    )
    train = ", ".join(f"{k}={v}" for k, v in values.items())
    return f"model: {model}\ntraining: {train}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python training.py",
        description="Step 5: train the GPT on DATA/*.bin; writes OUT/best_model_params.pt, "
        "ckpt.pt, log.csv, steps.csv, loss.png and report.md. Each model and training setting "
        "defaults to the chosen preset's value (shown in brackets).",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="named settings from config.py; default: gpu where CUDA is available, else cpu. "
        + "; ".join(f"{name}: {pr.description}" for name, pr in PRESETS.items()),
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/ckpt.pt with its settings (only device, dtype, compile, time "
        "budget and directories may change)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        metavar="N",
        help="stop this run after N optimizer steps and save ckpt.pt; the schedule still runs to "
        "--max-iters, so --resume continues it (default 0: no limit)",
    )
    p.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="peak FLOP/s of one accelerator, for the MFU on the progress bar (default: the dense "
        "bf16 peak of the GPU present, looked up by name in slm.hardware.GPU_PEAK_FLOPS: "
        "H100, H200, A100, L40S, L4, A10, RTX 4090, RTX 3090, T4, V100; another GPU shows no "
        "MFU and says so)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (on a terminal a tqdm bar; when the output is not one, a line each "
        "tenth)",
    )
    p.add_argument(
        "--no-samples",
        dest="samples",
        action="store_false",
        help="no short sample at each evaluation (by default 40 tokens from "
        '"Once upon a time", printed '
        "under the evaluation line as `sample: ...` and kept in log.csv and "
        "report.md)",
    )
    p.add_argument(
        "--plot-only",
        metavar="OUT",
        default=None,
        help="train nothing: draw OUT/loss.png again from OUT/log.csv and OUT/steps.csv, and stop",
    )
    add_model_flags(p)
    add_settings_flags(p, "train", TrainConfig, TRAIN_HELP, FLAG_ALIASES)
    return p


def check_data(mc: GPTConfig, tc: TrainConfig) -> dict:
    """DATA/meta.json, checked against the settings: the vocabulary fits and each split is longer
    than a window.
    """
    from slm.datafiles import read_meta

    if not Path(tc.data_dir).is_dir():
        raise CLIError(
            f"no data directory {tc.data_dir}; make it with: python load_dataset.py --data-dir "
            f"{tc.data_dir} && python tokenization.py --data-dir {tc.data_dir}"
        )
    meta = read_meta(tc.data_dir)
    if meta.get("vocab_size") != mc.vocab_size:
        raise CLIError(
            f"{tc.data_dir}/meta.json has a vocabulary of {meta.get('vocab_size')} tokens but the "
            f"model {mc.vocab_size}; use --vocab-size {meta.get('vocab_size')} or retokenize"
        )
    for split in ("train", "validation"):
        tokens = meta["splits"][split]["tokens"]
        if tokens < mc.block_size + 1:
            raise CLIError(
                f"--block-size {mc.block_size} is longer than the {split} data ({tokens} tokens "
                f"in {tc.data_dir}); use a smaller --block-size or more data"
            )
    return meta


def default_preset() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        return "gpu", "no --preset given and CUDA is available"
    return "cpu", "no --preset given and CUDA is not available"


def resolve(
    preset: str | None, model_over: dict, train_over: dict
) -> tuple[str, str, GPTConfig, TrainConfig]:
    """(preset name, why it was chosen, model config, training config): the preset, then the flags
    given.
    """
    why = "--preset given"
    if preset is None:
        preset, why = default_preset()
    p = PRESETS[preset]
    return preset, why, replace(p.model, **model_over), replace(p.train, **train_over)
