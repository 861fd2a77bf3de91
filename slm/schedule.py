"""The learning-rate schedule and the time budget that fixes its length.

LinearLR warmup then CosineAnnealingLR down to min_lr. With --max-minutes M the budget is the schedule:
the steps of this machine are timed and the step count whose steps and evaluations fill M minutes is
fixed, then the cosine is laid over exactly that many steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from config import TrainConfig

WARMUP_START_FACTOR = 0.01  # the first warmup step runs at 1% of the peak learning rate
# The time budget's probe: untimed steps first (memory allocation, torch.compile, autotuning), then timed
# ones; all inside the LinearLR warmup, whose learning rates do not depend on the step count still unknown.
PROBE_UNTIMED_STEPS = 2
PROBE_TIMED_STEPS = 3  # at least; the probe goes on timing steps until PROBE_MAX_STEPS or the end of warmup:
PROBE_MAX_STEPS = 300  # on a shared machine speed drifts, and probes of 3 or 30 steps misjudged 10-minute
# runs by 6-9% (they ended after 9.1-9.4 minutes, or were cut at 10.5); the cpu preset's 300 warmup steps
# take about 2 minutes, and the learning rates during warmup do not depend on the count fixed after it.
BUDGET_OVERRUN = 0.05  # a budget run this far past its minutes (the machine slowed down) evaluates, saves, stops


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


def short_context_steps(tc: TrainConfig) -> int:
    """How many optimizer steps, from the first, train on windows cut in half (--short-context): the share of
    max_iters, and at least the warmup. A time budget fixes max_iters at the end of its probe, which lies
    within warmup; every step before it is short whatever the count, so the run is step for step the one its
    printed --max-iters command repeats."""
    if tc.short_context <= 0:
        return 0
    return max(tc.warmup_iters, round(tc.short_context * tc.max_iters))


def halve_windows(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A short-phase batch: (B, T) -> (2B, T/2), the same tokens, each predicted from at most T/2 before it."""
    return x.reshape(-1, x.shape[1] // 2), y.reshape(-1, y.shape[1] // 2)


def short_phase(tc: TrainConfig, block_size: int) -> tuple[int, int] | None:
    """(steps, context) of a --short-context run's first phase, for what the user reads; None without one."""
    steps = short_context_steps(tc)
    return (steps, block_size // 2) if steps else None


def short_context_note(tc: TrainConfig, block_size: int, step: int) -> str:
    """What an evaluation line adds while a --short-context run is in its short phase ("" otherwise)."""
    short = short_phase(tc, block_size)
    if not short or step >= short[0]:
        return ""
    return f" (context {short[1]} until step {short[0]}: the validation windows' later positions are not trained yet)"


def steps_that_fit(step: int, seconds: float, step_s: float, eval_s: float, eval_interval: int,
                   short_until: Callable[[int], int] = lambda n: 0, full_over_short: float = 1.0) -> int:
    """The largest step count N >= step whose remaining steps and evaluations (one at each multiple of
    eval_interval after step, and the final one at N) take at most `seconds`.

    A --short-context run's steps before short_until(N) take step_s (the probe times them), the rest
    full_over_short times as long (the whole context: slower attention)."""
    step_s = max(step_s, 1e-9)

    def cost(n: int) -> float:
        evals = n // eval_interval - step // eval_interval + (n % eval_interval != 0)
        short = max(0, min(n, short_until(n)) - step)
        return (short + (n - step - short) * full_over_short) * step_s + evals * eval_s

    # cost(hi) > seconds: its steps alone exceed it (each takes at least step_s x min(1, full_over_short))
    lo, hi = step, step + int(max(seconds, 0.0) / (step_s * min(1.0, full_over_short))) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


class Budget:
    """The bookkeeping of a time budget (tc.max_minutes): an estimated step count from the first steps, the
    count fixed once the probe's steps are timed, and whether the run has fallen past its minutes.

    The probe times every step from PROBE_UNTIMED_STEPS on, until the end of warmup or PROBE_MAX_STEPS; the
    estimate (shown as the progress bar's total and ETA) is refined as the steps come in, the fixed count
    is final. A --short-context run's probe times short steps only (its short phase covers the warmup):
    full_over_short, timed before training, prices the whole-context steps after it. Times are passed in,
    so it runs the same on a fake clock."""

    def __init__(self, tc: TrainConfig, step_s_guess: float | None = None, eval_s_guess: float = 0.0,
                 full_over_short: float = 1.0):
        self.tc, self.seconds = tc, tc.max_minutes * 60
        self.step_times: list[float] = []
        self.step_s_guess, self.eval_s_guess, self.full_over_short = step_s_guess, eval_s_guess, full_over_short

    def record(self, step_s: float) -> None:
        self.step_times.append(step_s)

    def ready(self, step: int) -> bool:
        """Whether the probe has its steps: fix the count now."""
        return len(self.step_times) >= PROBE_MAX_STEPS or step >= self.tc.warmup_iters

    def step_s(self) -> float | None:
        """Mean seconds per step so far (the untimed first steps left out), else the guess given."""
        timed = self.step_times[PROBE_UNTIMED_STEPS:]
        return sum(timed) / len(timed) if timed else self.step_s_guess

    def estimate(self, step: int, elapsed: float) -> int | None:
        """The step count the budget will probably fix, for the progress bar; None with nothing to go on."""
        step_s = self.step_s()
        if step_s is None:
            return None
        return max(step + 1, self.fix(step, elapsed, step_s, self.eval_s_guess))

    def priced(self, max_iters: int) -> str:
        """What the schedule line adds for a --short-context run fixed at max_iters steps ("" otherwise)."""
        short_steps = short_context_steps(replace(self.tc, max_iters=max_iters))
        if not short_steps or self.full_over_short == 1.0:
            return ""
        return (f" (short steps; the whole context's from step {short_steps} on, timed before training, "
                f"take {self.full_over_short:.2f}x as long)")

    def fix(self, step: int, elapsed: float, step_s: float, eval_s: float) -> int:
        """The step count whose remaining steps and evaluations fill the rest of the budget."""
        return steps_that_fit(step, self.seconds - elapsed, step_s, eval_s, self.tc.eval_interval,
                              lambda n: short_context_steps(replace(self.tc, max_iters=n)), self.full_over_short)


def past_budget(minutes: float, elapsed: float, eval_s: float) -> bool:
    """Whether a run is BUDGET_OVERRUN past its minutes, counting one more evaluation as long as the last one:
    the machine slowed down after the probe, or a resumed run had less time than it needs."""
    return minutes > 0 and elapsed + eval_s >= minutes * 60 * (1 + BUDGET_OVERRUN)
