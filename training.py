"""Step 5: train the GPT on DATA/train.bin, evaluate on fixed batches, keep the best model.

    python training.py                    # the cpu preset (10 minutes) on a CPU, gpu on a GPU
    python training.py --preset smoke     # seconds: a tiny model, for tests
    python training.py --max-minutes 5    # warmup and cosine laid over exactly 5 minutes
    python training.py --max-iters 500 --max-minutes 0    # a set step count
    python training.py --resume           # continue OUT/ckpt.pt exactly where it stopped
    torchrun --standalone --nproc_per_node=4 training.py --preset gpu    # 4 GPUs, data parallel

Read it top-down: train() settles the settings, builds the run (build) and runs the loop (loop);
train_step() is one optimizer step; evaluate_and_save() scores the fixed batches and keeps the
best model. Writes into OUT (--out-dir, default out/): best_model_params.pt (the model at its
best validation loss), ckpt.pt (everything --resume needs), log.csv (one row per evaluation),
steps.csv (one row per step), loss.png and report.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from batches import Batches
from config import GPTConfig, TrainConfig
from model import GPT
from slm import budget as time_budget
from slm import checkpoint, settings
from slm.averaging import WeightAverage, averaged_weights
from slm.budget import past_budget
from slm.checkpoint import BEST_FILE, CKPT_FILE
from slm.cli import CLIError, StopRequest, run_cli
from slm.distributed import Dist
from slm.files import atomic_torch_save, dir_lock
from slm.hardware import autocast, detect_machine, fused_adamw, keep_freed_memory, pick_device
from slm.head_loss import with_shared_row
from slm.plan import TrialPass
from slm.plot import plot_title, redraw
from slm.progress import Speedometer, announce, print_end, progress_bar
from slm.recipe import tokens_per_step
from slm.report import save_progress, summarize, write_report
from slm.run import Progress
from slm.sampling import Glimpse
from slm.schedule import evaluation_due, make_scheduler, short_context_note, window_cut

# Evaluation batches come from their own generators, seeded apart from the training one and drawn
# afresh from the same seed at every evaluation: each evaluation scores the very same windows.
EVAL_SEED_OFFSET = {"train": 1, "validation": 2}


class Run(NamedTuple):
    """What build() makes: the settled settings, the data and the objects that train. Read-only:
    a time budget replaces tc and scheduler once, when it fixes the step count (run._replace)."""

    preset: str | None
    mc: GPTConfig
    tc: TrainConfig
    facts: dict  # what the checkpoints record about the data (slm.checkpoint.data_facts)
    dist: Dist
    batches: Batches
    raw_model: GPT  # uncompiled: its state_dict is what gets saved (no _orig_mod. keys)
    model: torch.nn.Module  # raw_model, compiled if asked: what evaluates
    train_model: torch.nn.Module  # model, wrapped in DDP under torchrun: what trains
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    average: WeightAverage | None  # the weights' moving average (--ema): what is scored and kept
    batch_gen: torch.Generator  # draws the training batches; evaluation has its own generators
    glimpse: Glimpse | None  # writes the sample shown at each evaluation (rank 0)
    head_rows: torch.Tensor | None  # the LM head rows the training loss computes; None: all

    @property
    def out_dir(self) -> Path:
        return Path(self.tc.out_dir)

    @property
    def tokens_per_step(self) -> int:  # every process's
        return tokens_per_step(self.mc, self.tc) * self.dist.world


def keep_logits(device: str) -> bool:
    """Whether the loss goes through the full (B, T, vocab) logits. On a CPU slm/head_loss.py
    computes the same loss and gradients without them, faster; on a GPU torch.compile fuses the
    plain path."""
    return device != "cpu"


# ----------------------------------------------------------------------------- train


def train(mc: GPTConfig, tc: TrainConfig, *, resume=False, stop_after=0, peak_flops=None,
          progress=True, preset=None, given=frozenset(), samples=True) -> dict:  # fmt: skip
    """Train (or resume from OUT/ckpt.pt) and return a summary dict.

    summary["stopped"] is "done", "time" (past the time budget), "stop_after" or the signal's name
    (SIGINT, SIGTERM). A non-finite loss raises CLIError naming the step; the checkpoints on disk
    are left as they were. Rank 0 writes OUT/report.md at the end and at a clean stop."""
    settings.check_settings(mc, tc, stop_after, peak_flops)
    meta = settings.check_data(mc, tc)
    facts = checkpoint.data_facts(meta)
    t_start = time.time()
    dist = Dist(pick_device(tc.device))
    say = print if dist.master else (lambda *a, **k: None)
    if dist.master:  # the settings as given; the budget and the machine may settle them further
        print(settings.format_settings(mc, tc, not resume and tc.max_minutes > 0))
    lock = dir_lock(tc.out_dir) if dist.master else contextlib.nullcontext()  # one run per OUT
    with dist, lock:
        machine = detect_machine(dist.device)
        ckpt = checkpoint.read_resume_checkpoint(Path(tc.out_dir), tc, facts) if resume else None
        # the LM head rows the training loss computes: the tokens train.bin uses, then one row that
        # every unused row equals (None: every row)
        used = checkpoint.head_rows(ckpt, tc.full_head, tc.data_dir, meta)
        rows = None if used is None else with_shared_row(used.to(dist.device), mc.vocab_size)

        def trial(shape: GPTConfig, compiled: bool = False) -> TrialPass:  # a throwaway model
            return trial_pass(shape, tc, dist.device, compiled, rows)

        # the time budget's recipe and this machine's plan: mc and tc are final from here
        mc, tc, recipe, budget = settings.settle(preset, mc, tc, machine, given, resume=resume,
                                                 say=say, trial=trial,
                                                 all_max=dist.all_max_list)  # fmt: skip
        run = build(preset, mc, tc, dist, facts, samples, rows)
        state, budget = start(run, ckpt, budget, say)
        del ckpt
        head_rows = None if rows is None else len(rows)
        flops = run.raw_model.flops_per_token(head_rows)  # the FLOPs a step does: the MFU's
        announce(say, run.raw_model, dist.device, dist.world, tc, facts, flops, head_rows)
        if dist.master and not resume and (run.out_dir / CKPT_FILE).exists():
            say(f"note: starting afresh; {run.out_dir / CKPT_FILE} will be overwritten")
        speed = Speedometer(dist.device, flops, run.tokens_per_step, dist.world, peak_flops, say)
        run, stopped, start_step, t_train = loop(
            run, state, budget, recipe, speed, stop_after, progress, t_start, say
        )
        summary = summarize(state, stopped, start_step, run.tc, run.tokens_per_step, dist, facts,
                            t_start, t_train)  # fmt: skip
        if dist.master:
            write_report(summary, state, run.mc, run.tc, preset=preset, machine=machine,
                         facts=facts, num_params=run.raw_model.num_params(),
                         mfu=speed.mfu(summary["tokens_per_s"]),
                         glimpse=run.glimpse and run.glimpse.describe())  # fmt: skip
    return summary


def trial_pass(mc: GPTConfig, tc: TrainConfig, device: str, compiled: bool, rows=None) -> TrialPass:
    """Forward and backward passes of a throwaway model of shape mc, for settle() to time a step or
    to prove that a micro-batch fits a GPU. They change nothing the run keeps."""
    model = GPT(mc).to(device)
    batches = Batches(tc.data_dir, mc.block_size, device=device)
    model = torch.compile(model) if compiled else model
    return TrialPass(model, batches, device, return_logits=keep_logits(device), rows=rows)


def make_optimizer(model: GPT, tc: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (model.optim_groups), its fused kernel where
    there is one."""
    betas = (tc.beta1, tc.beta2)
    groups = model.optim_groups(tc.weight_decay)
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=betas, fused=fused_adamw(device))


def build(preset, mc: GPTConfig, tc: TrainConfig, dist: Dist, facts: dict, samples: bool,
          rows: torch.Tensor | None) -> Run:  # fmt: skip
    """The run, from the seed: data, model, optimizer, schedule. Nothing is written."""
    device = dist.device
    if device == "cpu":
        keep_freed_memory()  # big tensors reuse freed heap memory instead of fresh zeroed pages
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(tc.seed + dist.rank)  # the init (rank 0's copy wins under DDP) and dropout
    random.seed(tc.seed + dist.rank)
    np.random.seed(tc.seed + dist.rank)
    raw_model = GPT(mc).to(device)
    raw_model.share_unused_rows(rows, zero=True)  # the unused rows start equal, at zero
    optimizer = make_optimizer(raw_model, tc, device)
    average = WeightAverage(raw_model, tc.ema) if tc.ema > 0 else None
    if dist.master:  # a run that cannot save its checkpoints must not train first
        checkpoint.check_checkpoint_space(
            tc.out_dir, raw_model, BEST_FILE, CKPT_FILE, average is not None
        )
    model = torch.compile(raw_model) if tc.compile else raw_model
    train_model = model
    if dist.ddp:  # one process per GPU; DDP averages the gradients across them
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(
            model, device_ids=[dist.local_rank] if device.startswith("cuda") else None
        )
    batches = Batches(tc.data_dir, mc.block_size, device=device)
    scheduler = make_scheduler(optimizer, tc)  # LinearLR warmup, then CosineAnnealingLR
    scaler = torch.amp.GradScaler("cuda", enabled=tc.dtype == "float16")  # float16 underflows
    glimpse = Glimpse(device, tc.dtype, tc.seed) if samples and dist.master else None
    return Run(preset, mc, tc, facts, dist, batches, raw_model, model, train_model, optimizer,
               scheduler, scaler, average, torch.Generator().manual_seed(tc.seed), glimpse,
               rows)  # fmt: skip


def start(run: Run, ckpt: dict | None, budget, say) -> tuple[Progress, object]:
    """How far the run has got, and its time budget while the count is not fixed: from step 0, or
    with --resume the checkpoint's weights, optimizer, schedule, RNGs and history."""
    if ckpt is None:
        fixed = {"max_iters": run.tc.max_iters, "fixed_by": "--max-iters"}
        return Progress(schedule=None if budget else fixed), budget
    state = checkpoint.restore_progress(
        ckpt, run.raw_model, run.optimizer, run.scheduler, run.scaler, run.batch_gen, run.average
    )
    if state.schedule is None:  # stopped while the time budget timed its first steps
        budget = time_budget.resumed(run.tc, run.out_dir / CKPT_FILE, state.step)
    if not run.dist.master:  # only rank 0's dropout RNG was saved; the others restart theirs
        torch.manual_seed(run.tc.seed + 1000 * run.dist.rank + state.step)
    say(f"resuming from {run.out_dir / CKPT_FILE} at step {state.step} (best validation loss "
        f"{state.best_val:.4f} at step {state.best_step})")  # fmt: skip
    return state, budget


# ----------------------------------------------------------------------------- the loop


def loop(run: Run, state: Progress, budget, recipe, speed, stop_after, progress, t_start, say):
    """Evaluate when due, take one optimizer step, stop when done: (the run, as a time budget may
    have fixed its step count, how it stopped, its first step, when training began)."""
    t_train, start_step, stopped = time.time(), state.step, "done"
    evaluated_at = state.history[-1]["step"] if state.history else -1
    total = time_budget.bar_total(budget, run.tc, state.step, elapsed=t_train - t_start)
    bar = progress_bar(total=total, initial=state.step, desc="training", unit="step",
                       dynamic_ncols=True, disable=not (progress and run.dist.master),
                       file=sys.stderr)  # fmt: skip
    say = bar.write if run.dist.master else say
    eval_s = save_s = 0.0  # the last evaluation's seconds, and its files' (0: none yet)
    run.train_model.train()
    with bar, StopRequest(say) as stop:
        while True:
            done = state.finished(run.tc.max_iters)
            due = evaluation_due(state.step, run.tc.max_iters, run.tc.eval_interval)
            if (due or done or stopped == "time") and state.step != evaluated_at:
                t0 = time.time()
                save_s = evaluate_and_save(run, state, t_start, say)
                eval_s, evaluated_at = time.time() - t0, state.step
            if done or stopped != "done":
                break

            def wants_stop() -> bool:  # a signal, or the time budget overrun
                # the budget's clock is train()'s: the calibration and the build count too
                late = past_budget(run.tc.max_minutes, time.time() - t_start, eval_s)  # noqa: B023
                return stop.signal is not None or late

            t0 = time.time()
            lr = run.optimizer.param_groups[0]["lr"]  # this step's learning rate
            try:
                loss, stops = train_step(run.train_model, run.optimizer, run.scaler, run.batches,
                                         run.batch_gen, run.tc, run.dist,
                                         window_cut(run.tc, state.step), wants_stop,
                                         run.head_rows)  # fmt: skip
            except FloatingPointError as e:
                raise diverged(e.args[0], lr, state, run.out_dir) from None
            if run.average is not None:
                run.average.update()  # mix the new weights into their moving average
            run.scheduler.step()
            step_s = time.time() - t0
            state.step, state.step_loss = state.step + 1, loss
            state.steps.append((state.step, loss, lr))
            speed.show(bar, step_s, loss, lr)
            if budget is not None:  # the time budget's probe: the count is fixed once
                budget.record(step_s)
                if budget.ready(state.step):
                    run = fix_step_count(run, state, budget, recipe, eval_s, save_s, t_start, say)
                    budget = None
                bar.total = time_budget.bar_total(budget, run.tc, state.step, time.time() - t_start)
            asked = (stop.signal or "time") if stops else None
            stopped = time_budget.stop_reason(asked, state, run.tc, stop_after, start_step, say)
            if stopped in ("SIGINT", "SIGTERM", "stop_after"):  # saved, not evaluated
                save_checkpoint(run, state)
                break
    return run, stopped, start_step, t_train


def diverged(loss: float, lr: float, state: Progress, out_dir: Path) -> CLIError:
    kept = "no checkpoint was written"
    if state.history:
        last = state.history[-1]["step"]
        kept = f"the checkpoints in {out_dir} (last saved at step {last}) are kept"
    return CLIError(
        f"loss became {loss} at step {state.step + 1} (learning rate {lr:.3g}); training "
        f"stopped, {kept}; try a lower --learning-rate, --grad-clip 1 or --dtype float32"
    )


def fix_step_count(run: Run, state: Progress, budget, recipe, eval_s, save_s, t_start, say) -> Run:
    """The time budget's one change: max_iters fixed at the steps that fill the rest of the
    budget, evaluations included, and the schedule rebuilt at this step (warmup's rates do not
    depend on max_iters: they are those of --max-iters N --max-minutes 0)."""
    if not eval_s or run.tc.compile:  # none yet (resumed), or its first call compiled the graphs
        t0 = time.time()
        evaluate(run.model, run.batches, run.tc, run.dist)  # timed only: the result is unused
        eval_s = time.time() - t0 + save_s
    tc, state.schedule, line = time_budget.fix(budget, run.tc, state.step, time.time() - t_start,
                                               eval_s, recipe, run.preset, run.mc,
                                               all_max=run.dist.all_max_list, say=say)  # fmt: skip
    say(line)
    return run._replace(tc=tc, scheduler=make_scheduler(run.optimizer, tc, at_step=state.step))


# ----------------------------------------------------------------------------- one step


def train_step(model, optimizer, scaler, batches, batch_gen, tc, dist, parts, wants_stop,
               head_rows=None):  # fmt: skip
    """One optimizer step over grad_accum micro-batches, windows cut in `parts`, the loss over the
    head's rows head_rows (None: all): (mean loss, whether any process wants_stop()). A non-finite
    loss raises FloatingPointError before the weights are touched."""
    rows = slice(dist.rank * tc.batch_size, (dist.rank + 1) * tc.batch_size)
    device_type = dist.device.split(":")[0]
    loss_sum = torch.zeros((), dtype=torch.float32, device=dist.device)
    for micro in range(tc.grad_accum):
        # every process draws the same global batch and trains on its own rows of it
        x, y = batches.get_batch("train", tc.batch_size * dist.world, generator=batch_gen)
        x, y = x[rows], y[rows]  # (B, T)
        # a short-context phase cuts each window in parts: (parts x B, T / parts), the same tokens
        x, y = x.reshape(-1, x.shape[1] // parts), y.reshape(-1, y.shape[1] // parts)
        last = micro == tc.grad_accum - 1  # under DDP only the last micro-batch syncs gradients
        with model.no_sync() if dist.ddp and not last else contextlib.nullcontext():
            # bfloat16 or float16 matmuls, float32 weights (float32: autocast off)
            half = tc.dtype != "float32"
            with torch.autocast(device_type, dtype=getattr(torch, tc.dtype), enabled=half):
                _, loss = model(x, y, return_logits=keep_logits(dist.device), rows=head_rows)
                loss = loss / tc.grad_accum  # the gradients add up over the micro-batches
            scaler.scale(loss).backward()  # float16: scaled up so small gradients survive
        loss_sum += loss.detach().float()
    # one all-reduce carries the loss (for the log) and whether any process wants to stop
    stats = torch.stack([loss_sum, torch.tensor(float(wants_stop()), device=dist.device)])
    if dist.ddp:
        torch.distributed.all_reduce(stats)
    loss = stats[0].item() / dist.world
    if not math.isfinite(loss):
        raise FloatingPointError(loss)
    if tc.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)  # free the gradients until the next backward
    return loss, stats[1].item() > 0


# ----------------------------------------------------------------------------- evaluate and save


@torch.no_grad()
def evaluate(model, batches, tc: TrainConfig, dist: Dist) -> dict[str, float]:
    """Mean loss over the same eval_iters global batches of each split every time. Like
    training, each process scores its rows of every global batch, so the result does not depend
    on how many processes share the work."""
    rows = slice(dist.rank * tc.batch_size, (dist.rank + 1) * tc.batch_size)
    model.eval()  # no dropout
    losses = {}
    for split, offset in EVAL_SEED_OFFSET.items():
        gen = torch.Generator().manual_seed(tc.seed + offset)
        total = torch.zeros((), dtype=torch.float32, device=dist.device)  # MPS has no float64
        for _ in range(tc.eval_iters):
            x, y = batches.get_batch(split, tc.batch_size * dist.world, generator=gen)
            with autocast(dist.device, tc.dtype):
                _, loss = model(x[rows], y[rows], return_logits=keep_logits(dist.device))
            total += loss.float()
        losses[split] = dist.all_sum(total).item() / (tc.eval_iters * dist.world)
    model.train()
    return losses


def evaluate_and_save(run: Run, state: Progress, t_start: float, say) -> float:
    """Score the fixed batches and add a history row; rank 0 writes a short sample, saves
    best_model_params.pt when the validation loss is the best so far, then ckpt.pt, log.csv,
    steps.csv and loss.png. With --ema the weights scored and kept are the average. Returns the
    seconds the sample and the files took (the time budget counts them)."""
    with averaged_weights(run.average):
        run.raw_model.share_unused_rows(run.head_rows)  # the unused rows, as training left them
        losses = evaluate(run.model, run.batches, run.tc, run.dist)
        elapsed = round(time.time() - t_start, 2)
        is_best = losses["validation"] < state.best_val
        if is_best:
            state.best_val, state.best_step = losses["validation"], state.step
        t_save = time.time()
        sample = run.glimpse(run.raw_model) if run.glimpse else ""  # (rank 0 only has a glimpse)
        if is_best and run.dist.master:
            best = checkpoint.model_file(
                run.raw_model, run.mc, run.facts, state.step, state.best_val
            )
            atomic_torch_save(best, run.out_dir / BEST_FILE)
    state.history.append({
        "step": state.step, "train_loss": losses["train"], "val_loss": losses["validation"],
        "step_loss": state.step_loss, "lr": run.optimizer.param_groups[0]["lr"],
        "tokens": state.step * run.tokens_per_step, "elapsed_s": elapsed, "best": int(is_best),
        "sample": sample,
    })  # fmt: skip
    if run.dist.master:
        save_checkpoint(run, state)
        title = plot_title(run.mc, run.raw_model.num_params(), run.tokens_per_step, run.facts)
        save_progress(run.out_dir, state, run.mc, run.tc, title)
        note = short_context_note(run.tc, run.mc.block_size, state.step, state.schedule is not None)
        best = " (best)" if is_best else ""
        say(
            f"step {state.step}: train loss {losses['train']:.4f}, validation loss "
            f"{losses['validation']:.4f}{best}{note}" + (f"\nsample: {sample}" if sample else "")
        )
    return time.time() - t_save


def save_checkpoint(run: Run, state: Progress) -> None:
    """ckpt.pt: everything --resume needs to continue exactly (rank 0)."""
    if run.dist.master:
        run.raw_model.share_unused_rows(run.head_rows)
        used = None if run.head_rows is None else run.head_rows[:-1]  # the last is the shared row
        checkpoint.save_resume_state(run.out_dir / CKPT_FILE, model=run.raw_model,
                                     optimizer=run.optimizer, scheduler=run.scheduler,
                                     scaler=run.scaler, average=run.average,
                                     batch_gen=run.batch_gen, mc=run.mc, tc=run.tc, progress=state,
                                     facts=run.facts, preset=run.preset,
                                     head_rows=used)  # fmt: skip


# ----------------------------------------------------------------------------- the script


def main(argv: list[str] | None = None) -> dict:
    args = settings.build_parser().parse_args(argv)
    if args.plot_only:
        print(f"drew {redraw(args.plot_only)} from its log.csv and steps.csv")
        return {}
    preset, mc, tc, given, chosen = settings.from_command_line(args)
    master = int(os.environ.get("RANK", "0")) == 0
    if master:
        print(chosen)
    summary = train(mc, tc, resume=args.resume, stop_after=args.stop_after, preset=preset,
                    peak_flops=args.peak_flops, progress=args.progress, given=given,
                    samples=args.samples)  # fmt: skip
    if master:
        print_end(summary, Path(tc.out_dir), tc.max_minutes)
        if summary["stopped"] in ("SIGINT", "SIGTERM"):
            sys.exit(130)
    return summary


if __name__ == "__main__":
    run_cli(main)
