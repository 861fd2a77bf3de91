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
    log.csv                one row per evaluation: step, fixed-batch train and validation loss, lr, tokens, time, sample
    steps.csv              one row per optimizer step: its train loss and learning rate
    loss.png               each step's train loss (raw, smoothed), the evaluations, the best model, the learning rate
    report.md              at the end or a clean stop: machine, settings, the command that repeats the run, data,
                           speed, losses, plot and samples (slm/report.py); --plot-only OUT redraws loss.png

How a run is set up, in order: the preset and the flags give the settings; with a time budget
(--max-minutes, the cpu preset: 10) a few passes of the preset's shape are timed and the step
budget picks the recipe (slm/recipe.py); the machine picks dtype, micro-batch and compile
(slm/plan.py). Each choice is printed in one line, and flags given by hand always win. The budget
then times the first steps, shows an estimated step count and ETA at once, and fixes the count at
the end of warmup (slm/schedule.py): the warmup -> cosine schedule runs over exactly those steps
and the command that repeats the run step for step (--max-iters N --max-minutes 0) is printed,
saved in ckpt.pt and kept by --resume.

Both .pt files are written to a temporary file and renamed over the old one, so a crash at any
moment leaves the previous file intact. Ctrl-C (or SIGTERM) stops after the current step, saves
ckpt.pt and says how to resume. Under torchrun every rank draws the same global batch from one
seeded generator and trains on its own slice of it, so N ranks x batch B follow exactly the same
path as 1 process with batch N*B; only rank 0 prints and writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from batches import Batches
from config import PRESETS, GPTConfig, TrainConfig
from model import GPT
from slm import recipe
from slm.averaging import WeightAverage, averaged_weights
from slm.checkpoint import (
    BEST_FILE,
    CKPT_FILE,
    check_checkpoint_space,
    data_facts,
    model_file,
    read_resume_checkpoint,
    restore_progress,
    save_resume_state,
    settings_for_resume,
)
from slm.cli import CLIError, StopRequest, run_cli
from slm.distributed import Dist, global_batch
from slm.files import atomic_torch_save, dir_lock
from slm.hardware import (
    Machine,
    autocast,
    compile_problem,
    detect_machine,
    fork_rng,
    fused_adamw,
    keep_freed_memory,
    pick_device,
    synchronize,
)
from slm.plan import make_plan, resolve_dtype, shrink_until_it_fits
from slm.plot import redraw
from slm.progress import Speedometer, announce, print_end, progress_bar
from slm.report import save_progress, summarize, write_report
from slm.run import Run
from slm.sampling import Glimpse
from slm.schedule import (
    BUDGET_OVERRUN,
    Budget,
    cut_windows,
    evaluation_due,
    make_scheduler,
    past_budget,
    phase_costs,
    short_context_note,
    window_cut,
)
from slm.settings import (
    build_parser,
    check_data,
    check_settings,
    explicit_settings,
    format_settings,
    resolve,
)

# Evaluation batches come from their own generators, seeded apart from the training one, and are
# drawn afresh from the same seed at every evaluation: each evaluation scores the very same windows.
EVAL_SEED_OFFSET = {"train": 1, "validation": 2}


# ----------------------------------------------------------------------------- the run's parts


def make_optimizer(model, tc: TrainConfig, device: str) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.optim_groups(tc.weight_decay),
        lr=tc.learning_rate,
        betas=(tc.beta1, tc.beta2),
        fused=fused_adamw(device),
    )


# ----------------------------------------------------------------------------- evaluation


def keep_logits(device: str) -> bool:
    """Whether the loss goes through the full (B, T, vocab) logits. On a CPU slm.head_loss computes
    the same loss and gradients twice as fast; on a GPU the plain path is fast (torch.compile
    fuses it), so it stays."""
    return device != "cpu"


@torch.no_grad()
def evaluate(
    model, batches, tc: TrainConfig, device: str, dtype: str, dist: Dist
) -> dict[str, float]:
    """Mean loss over the same eval_iters global batches of each split every time.

    Like training, each rank scores its slice of every global batch, so the result does not
    depend on how many processes share the work."""
    model.eval()
    losses = {}
    for split, offset in EVAL_SEED_OFFSET.items():
        gen = torch.Generator().manual_seed(tc.seed + offset)
        total = torch.zeros((), dtype=torch.float32, device=device)  # not float64: MPS has none
        for _ in range(tc.eval_iters):
            x, y = global_batch(batches, split, tc.batch_size, gen, dist)
            with autocast(device, dtype):
                _, loss = model(x, y, return_logits=keep_logits(device))
            total += loss.float()
        losses[split] = dist.all_sum(total).item() / (tc.eval_iters * dist.world)
    model.train()
    return losses


# ----------------------------------------------------------------------------- one run: build and
# restore


def build_run(
    mc: GPTConfig,
    tc: TrainConfig,
    *,
    resume: bool,
    preset: str | None,
    given: frozenset = frozenset(),
    samples: bool = True,
) -> Run:
    """Everything a run needs, in order: hardware, data, seeds, model; the recipe and the machine's
    plan; optimizer and schedule; the checkpoint's state when resuming; then compile and DDP.
    Nothing is written."""
    t_start = time.time()
    device = pick_device(tc.device)
    # before the calibration: float16 on a CPU crawls
    if tc.dtype == "float16" and not device.startswith("cuda"):
        raise CLIError(
            f"--dtype float16 needs a CUDA GPU (GradScaler); on {device} use float32 or bfloat16"
        )
    dist = Dist(device)
    if dist.device == "cpu":
        keep_freed_memory()
    if dist.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    machine = detect_machine(dist.device)
    facts = data_facts(check_data(mc, tc))
    ckpt = read_resume_checkpoint(Path(tc.out_dir), tc, facts) if resume else None
    # init (rank 0's copy wins under DDP) and per-rank dropout
    torch.manual_seed(tc.seed + dist.rank)
    random.seed(tc.seed + dist.rank)
    np.random.seed(tc.seed + dist.rank)
    run = Run(
        mc=mc,
        tc=tc,
        preset=preset,
        dist=dist,
        say=print if dist.master else (lambda *a, **k: None),
        out_dir=Path(tc.out_dir),
        facts=facts,
        batches=Batches(tc.data_dir, mc.block_size, device=dist.device),
        raw_model=GPT(mc).to(dist.device),
        machine=machine,
        t_start=t_start,
        t_train=time.time(),
    )
    if tc.max_minutes > 0 and not resume and recipe.has_rule(preset):
        choose_recipe(run, machine, given)
    plan = make_plan(machine, run.mc, run.tc, given)
    run.tc = plan.apply(run.tc)
    run.say(plan.line(machine))
    run.glimpse = Glimpse(run.device, run.tc.dtype, tc.seed) if samples and dist.master else None
    run.optimizer = make_optimizer(run.raw_model, run.tc, run.device)
    run.average = WeightAverage(run.raw_model, run.tc.ema) if run.tc.ema > 0 else None
    if dist.master:  # a run that cannot save its checkpoints must not train first
        check_checkpoint_space(
            run.out_dir, run.raw_model, BEST_FILE, CKPT_FILE, averaged=run.average is not None
        )
    run.scheduler = make_scheduler(run.optimizer, run.tc)
    run.scaler = torch.amp.GradScaler("cuda", enabled=plan.grad_scaler)
    run.batch_gen = torch.Generator().manual_seed(tc.seed)
    if run.tc.max_minutes > 0 and not resume:
        run.budget = run.budget or Budget(run.tc)
    else:
        run.schedule = {"max_iters": run.tc.max_iters, "fixed_by": "--max-iters"}
    if ckpt is not None:
        restore(run, ckpt)
    del ckpt
    compile_and_wrap(run, wanted=tc.compile)
    # a GPU: a trial step proves the planned micro-batch fits, or halves it until it does
    if machine.total_memory:
        plan = shrink_until_it_fits(
            plan, lambda b: trial_pass(run, run.model, b, run.dtype), run.say, given
        )
        run.tc = plan.apply(run.tc)
    announce(
        run.say,
        run.raw_model,
        run.device,
        run.dist.world,
        run.model is not run.raw_model,
        run.tokens_per_step,
        run.tc,
        run.facts,
    )
    if dist.master and not resume and (run.out_dir / CKPT_FILE).exists():
        run.say(
            f"note: starting afresh; {run.out_dir / CKPT_FILE} will be overwritten (--resume "
            "continues it)"
        )
    return run


def choose_recipe(run: Run, machine: Machine, given: frozenset) -> None:
    """Time a few passes of the preset's shape, and let the step budget pick the recipe
    (slm/recipe.py).

    The passes (trial_pass) change no weight and draw no random number the run uses: a run
    started with the printed flags is the same run."""
    tc, dtype = run.tc, resolve_dtype(machine, run.tc)

    # seconds of a trial pass per cut, on the slowest rank
    def pass_s(sequences: int, cuts=(1,)) -> list[float]:
        passes = [
            lambda parts=parts: trial_pass(run, run.raw_model, sequences, dtype, parts)
            for parts in cuts
        ]
        return run.dist.all_max(torch.tensor(recipe.calibrate(*passes), device=run.device)).tolist()

    mc, run.tc, run.recipe, guess, line = recipe.apply(
        run.preset, run.mc, tc, pass_s(tc.batch_size * tc.grad_accum)[0], given
    )
    # another shape (a shorter context): built afresh from the seed, as the printed flags would
    if mc != run.mc:
        if mc.block_size != run.mc.block_size:
            run.batches = Batches(tc.data_dir, mc.block_size, device=run.device)
        torch.manual_seed(tc.seed + run.dist.rank)
        run.mc, run.raw_model = mc, GPT(mc).to(run.device)
    # a probe of cut windows times its first phase's steps: the other phases' steps are priced
    # against them
    first, costs = phase_costs(
        run.tc, guess, lambda cuts: pass_s(run.tc.batch_size * run.tc.grad_accum, cuts)
    )
    run.budget = Budget(run.tc, first, guess * run.tc.eval_iters * 2 / 3, costs)
    run.say(line)


def trial_pass(run: Run, model, batch_size: int, dtype: str, parts: int = 1) -> None:
    """One forward and backward of batch_size sequences (each cut in `parts`) that changes nothing
    the run
    keeps: no optimizer step, the gradients dropped, the batch from a generator of its own, and
    dropout's draws inside fork_rng (the global CPU, CUDA and MPS generators come back as they
    were)."""
    x, y = run.batches.get_batch("train", batch_size, generator=torch.Generator().manual_seed(0))
    x, y = cut_windows(x, y, parts)
    with fork_rng(run.device):
        with autocast(run.device, dtype):
            _, loss = model(x, y, return_logits=keep_logits(run.device))
        loss.backward()
    run.raw_model.zero_grad(set_to_none=True)
    # the calibration times this pass: on a GPU or MPS, its work, not its queueing
    synchronize(run.device)


def compile_and_wrap(run: Run, wanted: bool) -> None:
    """torch.compile where the plan wants it (one line and eager where it cannot run), DDP under
    torchrun.
    """
    if wanted and not run.tc.compile:
        run.say(f"note: {compile_problem(run.device)}; training without torch.compile (eager)")
    run.model = torch.compile(run.raw_model) if run.tc.compile else run.raw_model
    run.train_model = run.model
    if run.dist.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.train_model = DDP(
            run.model, device_ids=[run.dist.local_rank] if run.device.startswith("cuda") else None
        )


def restore(run: Run, ckpt: dict) -> None:
    """Bring a freshly built run to the checkpoint's step: weights, optimizer, schedule, scaler,
    RNGs, history.
    """
    for name, value in restore_progress(
        ckpt, run.raw_model, run.optimizer, run.scheduler, run.scaler, run.batch_gen, run.average
    ).items():
        setattr(run, name, value)
    if run.schedule is None:
        if run.tc.max_minutes == 0:
            raise CLIError(
                f"{run.out_dir / CKPT_FILE} stopped at step {run.step}, before its time budget "
                "fixed the step count; resume it with a budget (--max-minutes M)"
            )
        run.budget = Budget(run.tc)
    # only rank 0's dropout RNG was saved; the others restart theirs deterministically
    if not run.dist.master:
        torch.manual_seed(run.tc.seed + 1000 * run.dist.rank + run.step)
    run.say(
        f"resuming from {run.out_dir / CKPT_FILE} at step {run.step} (best validation loss "
        f"{run.best_val:.4f} at step {run.best_step})"
    )


# ----------------------------------------------------------------------------- one run: step,
# evaluate, save


def train_step(run: Run, wants_stop: Callable[[], bool]) -> bool:
    """One optimizer step over grad_accum micro-batches: run.step advances, run.step_loss is its
    loss.

    One all-reduce per step carries the loss (for the log) and whether any rank wants_stop() (a
    signal, the time budget); returns that. A non-finite loss raises CLIError before the weights
    are touched."""
    tc, dist = run.tc, run.dist
    loss_sum = torch.zeros((), dtype=torch.float32, device=run.device)
    for micro in range(tc.grad_accum):
        x, y = global_batch(run.batches, "train", tc.batch_size, run.batch_gen, dist)
        # --quarter-context, --short-context: 4 or 2; else 1
        x, y = cut_windows(x, y, window_cut(tc, run.step))
        # under DDP, only the last micro-batch all-reduces the gradients
        sync = micro == tc.grad_accum - 1
        with run.train_model.no_sync() if dist.ddp and not sync else contextlib.nullcontext():
            with autocast(run.device, run.dtype):
                _, loss = run.train_model(x, y, return_logits=keep_logits(run.device))
                loss = loss / tc.grad_accum
            run.scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    stats = dist.all_sum(
        torch.stack([loss_sum, torch.tensor(float(bool(wants_stop())), device=run.device)])
    )
    run.step_loss = stats[0].item() / dist.world
    run.lr = run.optimizer.param_groups[0]["lr"]
    if not math.isfinite(run.step_loss):
        kept = (
            f"the checkpoints in {run.out_dir} (last saved at step {run.history[-1]['step']}) are "
            "kept"
            if run.history
            else "no checkpoint was written"
        )
        raise CLIError(
            f"loss became {run.step_loss} at step {run.step + 1} (learning rate {run.lr:.3g}); "
            f"training stopped, {kept}; try a lower --learning-rate, --grad-clip 1 or --dtype "
            "float32"
        )
    if tc.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), tc.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.average is not None:
        run.average.update()
    run.scheduler.step()
    run.step += 1
    return stats[1].item() > 0


def evaluate_and_save(run: Run) -> None:
    """Score the fixed batches, add a history row; rank 0 writes a short sample (the glimpse), saves
    best_model_params.pt when the validation loss is the best so far, then ckpt.pt, log.csv,
    steps.csv and loss.png. With --ema the weights scored, sampled and saved as the best are the
    average; ckpt.pt keeps both."""
    t0 = time.time()
    with averaged_weights(run.average):
        losses = evaluate(run.model, run.batches, run.tc, run.device, run.dtype, run.dist)
        elapsed = round(time.time() - run.t_start, 2)
        is_best = losses["validation"] < run.best_val
        if is_best:
            run.best_val, run.best_step = losses["validation"], run.step
        # the sample, then the files: save_s counts both, as the time budget must
        t_save = time.time()
        sample = run.glimpse(run.raw_model) if run.glimpse else ""  # (rank 0 only has a glimpse)
        if is_best and run.dist.master:
            atomic_torch_save(model_file(run, losses["validation"]), run.out_dir / BEST_FILE)
    run.history.append(
        {
            "step": run.step,
            "train_loss": losses["train"],
            "val_loss": losses["validation"],
            "step_loss": run.step_loss,
            "lr": run.optimizer.param_groups[0]["lr"],
            "tokens": run.step * run.tokens_per_step,
            "elapsed_s": elapsed,
            "best": int(is_best),
            "sample": sample,
        }
    )
    if run.dist.master:
        save_resume_state(run)
        save_progress(run)
        run.save_s = time.time() - t_save
        note = short_context_note(
            run.tc, run.mc.block_size, run.step, count_fixed=run.schedule is not None
        )
        run.say(
            f"step {run.step}: train loss {losses['train']:.4f}, validation loss "
            f"{losses['validation']:.4f}{' (best)' if is_best else ''}{note}"
            + (f"\nsample: {sample}" if sample else "")
        )
    run.eval_s = time.time() - t0


def fix_schedule(run: Run) -> None:
    """Fix max_iters at the steps that fill the rest of the budget, evaluations included, and
    rebuild the schedule at this step (warmup's rates do not depend on max_iters: they are those
    of --max-iters N --max-minutes 0)."""
    # the step-0 evaluation's, files included: a first call scores as fast as later ones (eager)
    eval_s = run.eval_s
    # none in this process (resumed), or its first call compiled the graphs
    if not eval_s or run.tc.compile:
        t0 = time.time()
        # timed only: the result is unused
        evaluate(run.model, run.batches, run.tc, run.device, run.dtype, run.dist)
        eval_s = time.time() - t0 + run.save_s
    measured = torch.tensor(
        [run.budget.probe_s(), eval_s, time.time() - run.t_train], device=run.device
    )
    step_s, eval_s, elapsed = run.dist.all_max(measured).tolist()  # every rank fixes the same count
    max_iters = run.budget.fix(run.step, elapsed, step_s, eval_s)
    if max_iters <= run.tc.warmup_iters:
        run.say(
            f"note: {run.tc.max_minutes} minutes fit only {max_iters} steps here, fewer than the "
            f"{run.tc.warmup_iters} warmup steps; training {run.tc.warmup_iters + 1} steps (the "
            "budget cut may stop them)"
        )
        max_iters = run.tc.warmup_iters + 1
    run.tc = replace(run.tc, max_iters=max_iters)
    run.scheduler = make_scheduler(run.optimizer, run.tc, at_step=run.step)
    run.schedule = {
        "max_iters": max_iters,
        "fixed_by": "--max-minutes",
        "max_minutes": run.tc.max_minutes,
        "fixed_at_step": run.step,
        "probe_ms_per_step": round(step_s * 1000, 3),
        "eval_s": round(eval_s, 3),
        "recipe": run.recipe,
        "step_costs": [round(c, 4) for c in run.budget.costs],
    }
    run.say(
        f"schedule: {max_iters} steps fixed from a probe of {step_s * 1000:,.0f} "
        f"ms/step{run.budget.priced(max_iters, run.mc.block_size)} and {eval_s:.1f} s per "
        f"evaluation to fill {run.tc.max_minutes} minutes; reproduce with: "
        f"{recipe.reproduce_command(run.preset, run.mc, run.tc)}"
    )
    run.budget = None


# ----------------------------------------------------------------------------- the loop


def train(
    mc: GPTConfig,
    tc: TrainConfig,
    *,
    resume: bool = False,
    stop_after: int = 0,
    peak_flops: float | None = None,
    progress: bool = True,
    preset: str | None = None,
    given: frozenset = frozenset(),
    samples: bool = True,
) -> dict:
    """Train (or resume from OUT/ckpt.pt); returns a summary dict. Settings are checked first.

    summary["stopped"] is "done", "time" (past max_minutes), "stop_after" or the signal name
    (SIGINT, SIGTERM). A non-finite loss raises CLIError naming the step; the checkpoints on disk
    are left as they were. Rank 0 writes OUT/report.md at the end and at a clean stop (a signal,
    --stop-after, the time budget).
    """
    check_settings(mc, tc, stop_after, peak_flops)
    run = build_run(mc, tc, resume=resume, preset=preset, given=given, samples=samples)
    start_step, evaluated_at, stopped = (
        run.step,
        (run.history[-1]["step"] if run.history else -1),
        "done",
    )
    speed = Speedometer(
        run.device,
        run.raw_model.flops_per_token(),
        run.tokens_per_step,
        run.dist.world,
        peak_flops,
        run.say,
    )
    bar = progress_bar(
        total=bar_total(run),
        initial=run.step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=not (progress and run.dist.master),
        file=sys.stderr,
    )
    run.say = bar.write if run.dist.master else run.say
    run.train_model.train()
    ended = False  # the loop ran to its end (done, time, a signal, --stop-after), no exception
    try:
        with StopRequest(run.say) as stop:
            while True:
                due = (
                    evaluation_due(run.step, run.tc.max_iters, run.tc.eval_interval)
                    or run.finished
                    or stopped == "time"
                )
                if due and run.step != evaluated_at:
                    evaluate_and_save(run)
                    evaluated_at = run.step
                if run.finished or stopped != "done":
                    break
                t0 = time.time()
                someone_stops = train_step(
                    run, wants_stop=lambda: stop.signal is not None or out_of_time(run)
                )
                step_s = time.time() - t0
                run.steps.append((run.step, run.step_loss, run.lr))
                speed.show(bar, step_s, run.step_loss, run.lr)
                # a time budget's probe: max_iters is fixed once its steps are timed
                if run.budget is not None:
                    run.budget.record(step_s)
                    if run.budget.ready(run.step):
                        fix_schedule(run)
                    bar.total = bar_total(run)
                asked = (stop.signal or "time") if someone_stops else None
                stopped = why_stop(run, asked, stop_after, run.step - start_step)
                # save where it is, without an evaluation
                if stopped in ("SIGINT", "SIGTERM", "stop_after"):
                    save_resume_state(run)
                    break
        ended = True
    finally:
        bar.close()
        run.dist.close(clean=ended)
    summary = summarize(run, stopped, start_step, time.time())
    if run.dist.master:
        write_report(
            run, summary, speed.mfu(summary["tokens_per_s"]), run.glimpse and run.glimpse.describe()
        )
    return summary


def bar_total(run: Run) -> int | None:
    """The progress bar's total: the fixed step count, or while the budget probes, its estimate."""
    if run.budget is None:
        return run.tc.max_iters
    return run.budget.estimate(run.step, time.time() - run.t_train)


def out_of_time(run: Run) -> bool:
    return past_budget(run.tc.max_minutes, time.time() - run.t_train, run.eval_s)


def why_stop(run: Run, asked: str | None, stop_after: int, steps_done: int) -> str:
    """ "done" to go on; else what stops the run: a signal, "time" (evaluated and saved at the top of
    the loop), or "stop_after" (--stop-after steps done)."""
    # the last step ran past the budget: done, not cut
    asked = None if asked == "time" and run.finished else asked
    if asked == "time":
        run.say(
            f"\n{run.tc.max_minutes}-minute budget overrun by {BUDGET_OVERRUN:.0%} at step "
            f"{run.step} (the machine is slower than the probe measured): evaluating and stopping"
        )
    if asked:
        return asked
    return "stop_after" if stop_after and steps_done >= stop_after else "done"


# ----------------------------------------------------------------------------- the script


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.plot_only:
        print(f"drew {redraw(args.plot_only)} from its log.csv and steps.csv")
        return {}
    model_over, train_over = explicit_settings(args)
    preset = None
    if args.resume:
        if args.preset:
            print(
                f"note: --preset {args.preset} is ignored with --resume; the checkpoint's "
                "settings are used"
            )
        out_dir = train_over.get("out_dir", TrainConfig.out_dir)
        mc, tc = settings_for_resume(out_dir, model_over, train_over)
        chosen = f"settings from {Path(out_dir) / CKPT_FILE}"
    else:
        preset, why, mc, tc = resolve(args.preset, model_over, train_over)
        chosen = f"preset {preset} ({why}): {PRESETS[preset].description}"
        if "max_iters" in train_over and tc.max_minutes > 0:
            raise CLIError(
                f"--max-iters {tc.max_iters} and the {tc.max_minutes}-minute budget "
                "(--max-minutes) both set the step count; add --max-minutes 0 to train exactly "
                f"{tc.max_iters} steps"
            )
    check_settings(mc, tc, args.stop_after, args.peak_flops)
    check_data(mc, tc)
    master = int(os.environ.get("RANK", "0")) == 0
    if master:
        print(chosen)
        print(format_settings(mc, tc, budget_fixes_steps=not args.resume and tc.max_minutes > 0))
    # one run writes into OUT at a time
    with dir_lock(tc.out_dir) if master else contextlib.nullcontext():
        summary = train(
            mc,
            tc,
            resume=args.resume,
            stop_after=args.stop_after,
            peak_flops=args.peak_flops,
            progress=args.progress,
            preset=preset,
            given=frozenset(train_over) | frozenset(model_over),
            samples=args.samples,
        )
    if master:
        print_end(summary, Path(tc.out_dir), tc.max_minutes)
        if summary["stopped"] in ("SIGINT", "SIGTERM"):
            sys.exit(130)
    return summary


if __name__ == "__main__":
    run_cli(main)
