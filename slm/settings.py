"""Training's settings, settled once before the run is built.

The preset and the flags give the settings (from_command_line); with a time budget its recipe,
then this machine's plan (dtype, micro-batch, accumulation, compile) resolve them into the final,
frozen GPTConfig and TrainConfig (settle). After that only the step count a time budget fixes may
change. The flags and their --help are generated from config.py's fields, and every bad value is
one line before anything is built or written.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

from config import PRESETS, GPTConfig, TrainConfig
from slm.cli import ArgumentParser, CLIError, UsageError

FLAG_ALIASES = {"learning_rate": ["--lr"]}


# ----------------------------------------------------------------------------- flags


def preset_values(group: str, name: str) -> str:
    """A setting's value in every preset, for --help; group is "model" or "train"."""
    values = [getattr(getattr(PRESETS[p], group), name) for p in PRESETS]
    if len(set(map(str, values))) == 1:
        return f"all presets: {values[0]}"
    return "presets " + ", ".join(f"{p} {v}" for p, v in zip(PRESETS, values, strict=True))


def add_settings_flags(parser: argparse.ArgumentParser, group: str, cls) -> None:
    """One flag per field of the dataclass cls (--n-layer for n_layer), its help from the field's
    metadata followed by the presets' values; booleans get --x / --no-x. Every flag defaults to
    None, which means "the preset's value"."""
    arg_group = parser.add_argument_group(f"{group} settings")
    for f in fields(cls):
        flags = ["--" + f.name.replace("_", "-")] + FLAG_ALIASES.get(f.name, [])
        help_text = f"{f.metadata['help']} [{preset_values(group, f.name)}]".replace("%", "%%")
        if isinstance(f.default, bool):
            action = argparse.BooleanOptionalAction
            arg_group.add_argument(*flags, action=action, default=None, help=help_text)
        else:
            arg_group.add_argument(
                *flags, type=type(f.default), default=None, metavar=f.name.upper(), help=help_text
            )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--vocab-size, --block-size, --n-layer, --n-head, --n-embd, --dropout, --bias/--no-bias."""
    add_settings_flags(parser, "model", GPTConfig)


def flags_given(args: argparse.Namespace, cls) -> dict:
    """The fields of cls set on the command line (the others keep the preset's values)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name) is not None}


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
        help="peak FLOP/s of one accelerator, for the MFU on the progress bar (default: the "
        "dense bf16 peak of the GPU present, looked up by name in slm.hardware.GPU_PEAK_FLOPS)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (on a terminal a tqdm bar; when the output is not one, a line now "
        "and then)",
    )
    p.add_argument(
        "--no-samples",
        dest="samples",
        action="store_false",
        help='no short sample at each evaluation (by default 40 tokens from "Once upon a time", '
        "printed under the evaluation line and kept in log.csv and report.md)",
    )
    p.add_argument(
        "--plot-only",
        metavar="OUT",
        default=None,
        help="train nothing: draw OUT/loss.png again from OUT/log.csv and OUT/steps.csv, and stop",
    )
    add_model_flags(p)
    add_settings_flags(p, "train", TrainConfig)
    return p


# ----------------------------------------------------------------------------- checks


# what each `valid` of config.setting() allows, and how a value outside it is said
VALID = {
    ">= 1": (lambda v: v >= 1, "must be at least 1"),
    ">= 0": (lambda v: v >= 0, "must not be negative"),
    "> 0": (lambda v: v > 0 and math.isfinite(v), "must be a positive number"),
    "[0, 1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0, 1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
}


def check_fields(config) -> None:
    """One UsageError for the first field of a settings dataclass outside the values its
    config.setting() allows."""
    for f in fields(config):
        valid, value = f.metadata.get("valid"), getattr(config, f.name)
        if valid and not VALID[valid][0](value):
            zero = f" ({f.metadata['zero']})" if f.metadata.get("zero") else ""
            raise UsageError(f"--{f.name.replace('_', '-')} {value} {VALID[valid][1]}{zero}")


def check_model_config(mc: GPTConfig) -> None:
    """One clear UsageError for the first model setting a GPT cannot be built with."""
    check_fields(mc)
    if mc.n_embd % mc.n_head:
        raise UsageError(
            f"--n-embd {mc.n_embd} is not divisible by --n-head {mc.n_head}; pick a head count "
            f"that divides it (e.g. {math.gcd(mc.n_embd, mc.n_head)})"
        )


def check_settings(
    mc: GPTConfig, tc: TrainConfig, stop_after: int = 0, peak_flops: float | None = None
) -> None:
    """One clear UsageError for the first bad setting; nothing has been built or written yet. Each
    field's own range comes from config.py; what follows are the settings that must agree."""
    from slm.budget import PROBE_TIMED_STEPS, PROBE_UNTIMED_STEPS

    check_fields(tc)
    if not 0 <= tc.min_lr <= tc.learning_rate:
        raise UsageError(
            f"--min-lr {tc.min_lr} must be between 0 and the peak --learning-rate "
            f"{tc.learning_rate}, so the schedule decays"
        )
    probe = PROBE_UNTIMED_STEPS + PROBE_TIMED_STEPS
    if tc.max_minutes > 0 and tc.warmup_iters < probe:
        raise UsageError(
            f"--warmup-iters {tc.warmup_iters} is too short for --max-minutes {tc.max_minutes}: "
            f"the step count is fixed by timing the first {probe} warmup steps; use more warmup, "
            "or a set step count with --max-iters N --max-minutes 0"
        )
    if tc.max_minutes == 0 and tc.warmup_iters >= tc.max_iters:
        raise UsageError(
            f"--warmup-iters {tc.warmup_iters} must be below --max-iters {tc.max_iters}"
        )
    for flag, share, parts in (
        ("--quarter-context", tc.quarter_context, 4),
        ("--short-context", tc.short_context, 2),
    ):
        if share > 0 and mc.block_size % parts:
            raise UsageError(
                f"{flag} needs a --block-size divisible by {parts} to cut each window in {parts}, "
                f"not {mc.block_size}"
            )
    if stop_after < 0:
        raise UsageError(f"--stop-after {stop_after} must not be negative (0 = no limit)")
    if peak_flops is not None and not peak_flops > 0:
        raise UsageError(f"--peak-flops {peak_flops} must be positive")
    check_model_config(mc)


def check_data(mc: GPTConfig, tc: TrainConfig) -> dict:
    """DATA/meta.json, checked against the settings: the vocabulary fits and each split is longer
    than a window."""
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
                f"--block-size {mc.block_size} is longer than the {split} data ({tokens} tokens in "
                f"{tc.data_dir}); use a smaller --block-size or more data"
            )
    return meta


def format_settings(mc: GPTConfig, tc: TrainConfig, budget_fixes_steps: bool = False) -> str:
    model = ", ".join(f"{k}={v}" for k, v in asdict(mc).items())
    values = asdict(tc) | (
        {"max_iters": "(fixed by the time budget)"} if budget_fixes_steps else {}
    )
    train = ", ".join(f"{k}={v}" for k, v in values.items())
    return f"model: {model}\ntraining: {train}"


# ----------------------------------------------------------------------------- resolving


def default_preset() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        return "gpu", "no --preset given and CUDA is available"
    return "cpu", "no --preset given and CUDA is not available"


def resolve(
    preset: str | None, model_over: dict, train_over: dict
) -> tuple[str, str, GPTConfig, TrainConfig]:
    """(preset name, why it was chosen, model config, training config): the preset, then the flags
    given."""
    why = "--preset given"
    if preset is None:
        preset, why = default_preset()
    p = PRESETS[preset]
    return preset, why, replace(p.model, **model_over), replace(p.train, **train_over)


def from_command_line(
    args: argparse.Namespace,
) -> tuple[str | None, GPTConfig, TrainConfig, frozenset, str]:
    """(preset, model settings, training settings, the names set by hand, a line saying where the
    settings come from): the preset and the flags, or with --resume the checkpoint's settings."""
    from slm.checkpoint import CKPT_FILE, settings_for_resume

    model_over, train_over = flags_given(args, GPTConfig), flags_given(args, TrainConfig)
    given = frozenset(model_over) | frozenset(train_over)
    if args.resume:
        out_dir = train_over.get("out_dir", TrainConfig.out_dir)
        mc, tc = settings_for_resume(out_dir, model_over, train_over)
        ignored = f" (--preset {args.preset} is ignored with --resume)" if args.preset else ""
        return None, mc, tc, given, f"settings from {Path(out_dir) / CKPT_FILE}{ignored}"
    preset, why, mc, tc = resolve(args.preset, model_over, train_over)
    if "max_iters" in train_over and tc.max_minutes > 0:
        raise UsageError(
            f"--max-iters {tc.max_iters} and the {tc.max_minutes}-minute budget (--max-minutes) "
            f"both set the step count; add --max-minutes 0 to train exactly {tc.max_iters} steps"
        )
    return preset, mc, tc, given, f"preset {preset} ({why}): {PRESETS[preset].description}"


def settle(
    preset: str | None,
    mc: GPTConfig,
    tc: TrainConfig,
    machine,
    given: frozenset,
    *,
    resume: bool,
    trial: Callable,
    all_max: Callable[[list[float]], list[float]],
    say,
):
    """The final settings, frozen from here on: the time budget's recipe (timed on throwaway
    models, slm/budget.py), then the machine's plan (slm/plan.py). Returns (mc, tc, what the recipe
    chose or None, the time budget's Budget or None). trial(mc, compiled) gives the TrialPass of a
    throwaway model of that shape."""
    from slm import recipe
    from slm.budget import Budget, choose_recipe
    from slm.plan import make_plan, shrink_until_it_fits

    if tc.dtype == "float16" and machine.kind != "cuda":  # before the calibration: it would crawl
        raise CLIError(
            f"--dtype float16 needs a CUDA GPU (GradScaler); on {machine.device} use float32 or "
            "bfloat16"
        )
    chosen = budget = None
    if tc.max_minutes > 0 and not resume:
        budget = Budget(tc)
        if recipe.has_rule(preset):
            mc, tc, chosen, budget = choose_recipe(
                preset, mc, tc, machine, given, trial, all_max, say
            )
    plan = make_plan(machine, mc, tc, given)
    say(plan.line(machine))
    if tc.compile and not plan.compile:
        say(f"note: {machine.compile_problem}; training without torch.compile (eager)")
    if machine.total_memory:  # a GPU: trial steps prove the micro-batch fits, or halve it
        passes = trial(mc, compiled=plan.compile)
        plan = shrink_until_it_fits(plan, lambda b: passes(b, plan.dtype), say, given)
        del passes
    return mc, plan.apply(tc), chosen, budget
