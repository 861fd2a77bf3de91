"""The learning-rate schedule, when evaluations fall, and the phases of a cut context.

LinearLR warmup then CosineAnnealingLR down to min_lr. With --max-minutes M the time budget
(slm/budget.py) fixes the step count whose steps and evaluations fill M minutes, and the cosine is
then laid over exactly that many steps (make_scheduler's at_step).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from config import TrainConfig

WARMUP_START_FACTOR = 0.01  # the first warmup step runs at 1% of the peak learning rate
# a periodic evaluation due less than eval_interval // NEAR_END steps before the end is left to
# the final one
NEAR_END = 10


def evaluation_due(step: int, max_iters: int, eval_interval: int) -> bool:
    """Whether the periodic evaluation falls at this step: at step 0 and every eval_interval steps,
    except one so close before max_iters (under eval_interval // NEAR_END steps) that the final
    evaluation follows at once (two evaluations a few steps apart cost a few seconds of steps)."""
    if step % eval_interval:
        return False
    return step == 0 or not 0 < max_iters - step < eval_interval // NEAR_END


def make_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig, at_step: int = 0):
    """Linear warmup to the optimizer's lr (the peak), then cosine down to min_lr at max_iters.

    Stepped once per optimizer step. The schedulers multiply the optimizer's lr, so the optimizer
    is built with lr = the peak; eta_min is the absolute floor. at_step > 0 builds it part way,
    for a time budget that fixes max_iters after some warmup steps: the rates go back to the peak
    and the new schedule is stepped at_step times, which leaves it exactly where it would be had
    it run from step 0.
    """
    for group in optimizer.param_groups:
        # initial_lr: the peak, set by the first scheduler built on the optimizer
        group["lr"] = group.get("initial_lr", group["lr"])
    cosine = CosineAnnealingLR(
        optimizer, T_max=max(1, tc.max_iters - tc.warmup_iters), eta_min=tc.min_lr
    )
    scheduler = cosine
    if tc.warmup_iters > 0:
        warmup = LinearLR(
            optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=tc.warmup_iters
        )
        scheduler = SequentialLR(optimizer, [warmup, cosine], milestones=[tc.warmup_iters])
    for _ in range(at_step):
        scheduler.step()
    return scheduler


def share_steps(share: float, tc: TrainConfig) -> int:
    """Steps, from the first, of a phase that takes `share` of max_iters: at least the warmup (0 for
    no share). A time budget fixes max_iters at the end of its probe, which lies within warmup;
    every step before it is then of the first phase whatever the count, so the run is step for
    step the one its printed --max-iters command repeats."""
    return max(tc.warmup_iters, round(share * tc.max_iters)) if share > 0 else 0


def phase_ends(tc: TrainConfig) -> tuple[int, int]:
    """(end of the windows cut in four, end of those cut in half): steps [0, q) train at a quarter
    of the context (--quarter-context), [q, h) at half (--short-context, counted from step 0),
    [h, max_iters) whole."""
    quarter = share_steps(tc.quarter_context, tc)
    return quarter, max(quarter, share_steps(tc.short_context, tc))


def window_cut(tc: TrainConfig, step: int) -> int:
    """Into how many pieces each window of the step's batch is cut: 4, 2 or 1 (whole context)."""
    quarter, half = phase_ends(tc)
    return 4 if step < quarter else 2 if step < half else 1


def cut_windows(x: torch.Tensor, y: torch.Tensor, parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A short-phase batch: (B, T) -> (parts x B, T / parts), the same tokens, each predicted from
    at most T / parts before it."""
    return x.reshape(-1, x.shape[1] // parts), y.reshape(-1, y.shape[1] // parts)


def context_switches(tc: TrainConfig, block_size: int) -> list[tuple[int, int, int]]:
    """(step, context before it, context from it) at each change of context, for what the user
    reads; [] for a run on the whole context throughout."""
    quarter, half = phase_ends(tc)
    ends = [(quarter, block_size // 4), (half, block_size // 2)]
    phases = [
        (end, context)
        for i, (end, context) in enumerate(ends)
        if end > (ends[i - 1][0] if i else 0)
    ]
    return [
        (end, context, phases[i + 1][1] if i + 1 < len(phases) else block_size)
        for i, (end, context) in enumerate(phases)
    ]


def short_context_note(
    tc: TrainConfig, block_size: int, step: int, count_fixed: bool = True
) -> str:
    """What an evaluation line adds while a run trains on cut windows ("" otherwise). Before a time
    budget has fixed the step count (count_fixed False: step 0's evaluation) the phases' ends are
    not known yet, so the note gives their shares of the steps, not steps that would change once
    the count is fixed."""
    why = ": the validation windows' later positions are not trained yet)"
    if not count_fixed:
        quarter, half = tc.quarter_context, tc.short_context
        # warmup is share_steps' floor
        warmup = f" and at least warmup's {tc.warmup_iters}" if tc.warmup_iters else ""
        parts = (
            [f"context {block_size // 4} for the first {quarter:.0%} of the steps{warmup}"]
            if quarter > 0
            else []
        )
        if half > quarter:
            parts.append(
                f"{block_size // 2} until {half:.0%}"
                if parts
                else f"context {block_size // 2} for the first {half:.0%} of the steps{warmup}"
            )
        return (
            f" ({', '.join(parts)}, of the count the time budget fixes after warmup{why}"
            if parts
            else ""
        )
    ahead = [
        f"context {before} until step {end}"
        for end, before, _ in context_switches(tc, block_size)
        if step < end
    ]
    if not ahead:
        return ""
    return f" ({', '.join(ahead)}{why}"
