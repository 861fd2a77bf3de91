"""The learning-rate schedule and the time budget that fixes its length.

LinearLR warmup then CosineAnnealingLR down to min_lr. With --max-minutes M the budget is the
schedule: the steps of this machine are timed and the step count whose steps and evaluations fill
M minutes is fixed, then the cosine is laid over exactly that many steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from config import TrainConfig

WARMUP_START_FACTOR = 0.01  # the first warmup step runs at 1% of the peak learning rate
# The time budget's probe: untimed steps first (memory allocation, torch.compile, autotuning), then
# timed ones; all inside the LinearLR warmup, whose learning rates do not depend on the step count
# still unknown.
PROBE_UNTIMED_STEPS = 2
# at least; the probe goes on timing steps until PROBE_MAX_STEPS or the end of warmup:
PROBE_TIMED_STEPS = 3
# on a shared machine speed drifts, and probes of 3 or 30 steps misjudged 10-minute
PROBE_MAX_STEPS = 300
# runs by 6-9% (they ended after 9.1-9.4 minutes, or were cut at 10.5); the cpu preset's 300 warmup
# steps take about 2 minutes, and the learning rates during warmup do not depend on the count fixed
# after it.
# a budget run this far past its minutes (the machine slowed down) evaluates, saves, stops
BUDGET_OVERRUN = 0.05
# a periodic evaluation under eval_interval // NEAR_END steps before the end is left to the final
# one
NEAR_END = 10


def evaluation_due(step: int, max_iters: int, eval_interval: int) -> bool:
    """Whether the periodic evaluation falls at this step: at step 0 and every eval_interval steps,
    except one so close before max_iters (under eval_interval // NEAR_END steps) that the final
    evaluation follows at once. A 2-core bf16 run fixed at 1,512 steps evaluated at 1,500 and
    again at 1,512: ~5 s, ~12 steps."""
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
        # set by the first scheduler built on the optimizer
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
    """Into how many pieces each window of the step's batch is cut: 4, 2 or 1 (the whole context)."""
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


def phase_costs(
    tc: TrainConfig, whole_s: float, time_passes: Callable[[list[int]], list[float]]
) -> tuple[float, tuple[float, float, float]]:
    """(seconds of a step of the run's first phase, the cost of a step with windows cut in 4, in 2
    and whole against it). A run on whole windows has one phase, whose step takes whole_s.
    Otherwise time_passes(cuts) times a step of the whole windows and of each cut the run has
    ([1, 4, 2], [1, 2] or [1, 4]) in the same rounds (recipe.calibrate), so their ratios hold on
    a machine whose speed drifts."""
    cuts = [1] + [
        parts for parts, share in ((4, tc.quarter_context), (2, tc.short_context)) if share > 0
    ]
    if len(cuts) == 1:
        return whole_s, (1.0, 1.0, 1.0)
    seconds = dict(zip(cuts, time_passes(cuts)))
    first = seconds[max(seconds)]
    return first, tuple(seconds.get(parts, first) / first for parts in (4, 2, 1))


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
        # share_steps' floor
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


def steps_that_fit(
    step: int,
    seconds: float,
    step_s: float,
    eval_s: float,
    eval_interval: int,
    ends: Callable[[int], tuple[int, int]] = lambda n: (0, 0),
    costs: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> int:
    """The largest step count N >= step whose remaining steps and evaluations (one at each multiple
    of eval_interval after step that evaluation_due keeps, and the final one at N) take at most
    `seconds`.

    A run with cut windows (--quarter-context, --short-context) has phases whose ends ends(N)
    gives (see phase_ends); a step of each phase (windows cut in 4, in 2, whole) takes costs[i] x
    step_s."""
    step_s = max(step_s, 1e-9)

    def cost(n: int) -> float:
        # the last multiple of eval_interval: the only one that can be left out
        last = n - n % eval_interval
        evals = n // eval_interval - step // eval_interval + (n % eval_interval != 0)
        evals -= last > step and not evaluation_due(last, n, eval_interval)
        quarter, half = (min(n, end) for end in ends(n))
        spans = (max(0, quarter - step), max(0, half - max(step, quarter)), n - max(step, half))
        return sum(steps * c for steps, c in zip(spans, costs)) * step_s + evals * eval_s

    # cost(hi) > seconds: its steps alone exceed it (each takes at least step_s x min(costs))
    lo, hi = step, step + int(max(seconds, 0.0) / (step_s * min(costs))) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


class Budget:
    """The bookkeeping of a time budget (tc.max_minutes): an estimated step count from the first
    steps, the count fixed once the probe's steps are timed, and whether the run has fallen past
    its minutes.

    The probe times every step from PROBE_UNTIMED_STEPS on, until the end of warmup or
    PROBE_MAX_STEPS; the estimate (shown as the progress bar's total and ETA) is refined as the
    steps come in, the fixed count is final. A run with cut windows times those of its first
    phase only (it covers the warmup): costs, timed before training, price a step of each phase
    (windows cut in 4, in 2, whole) against the probe's. Times are passed in, so it runs the same
    on a fake clock."""

    def __init__(
        self,
        tc: TrainConfig,
        step_s_guess: float | None = None,
        eval_s_guess: float = 0.0,
        costs: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ):
        self.tc, self.seconds = tc, tc.max_minutes * 60
        self.step_times: list[float] = []
        self.step_s_guess, self.eval_s_guess, self.costs = step_s_guess, eval_s_guess, costs

    def record(self, step_s: float) -> None:
        self.step_times.append(step_s)

    def ready(self, step: int) -> bool:
        """Whether the probe has its steps: fix the count now."""
        return len(self.step_times) >= PROBE_MAX_STEPS or step >= self.tc.warmup_iters

    def step_s(self) -> float | None:
        """Mean seconds per step so far (the untimed first steps left out), else the guess given."""
        timed = self.step_times[PROBE_UNTIMED_STEPS:]
        return sum(timed) / len(timed) if timed else self.step_s_guess

    def probe_s(self) -> float:
        """Seconds per step that fix the count (once ready): step_s(), or for a run resumed just
        before its warmup ends, which has no guess and only steps the probe would leave out, the
        mean of those."""
        return self.step_s() or sum(self.step_times) / len(self.step_times)

    def estimate(self, step: int, elapsed: float) -> int | None:
        """The step count the budget will probably fix, for the progress bar; None with nothing to
        go on.
        """
        step_s = self.step_s()
        if step_s is None:
            return None
        return max(step + 1, self.fix(step, elapsed, step_s, self.eval_s_guess))

    def priced(self, max_iters: int, block_size: int) -> str:
        """What the schedule line adds for a run with cut windows fixed at max_iters steps (""
        otherwise).
        """
        switches = context_switches(replace(self.tc, max_iters=max_iters), block_size)
        if not switches or set(self.costs) == {1.0}:
            return ""
        cost = dict(zip((block_size // 4, block_size // 2, block_size), self.costs))
        later = ", ".join(
            f"from step {step} those at {after} {cost[after]:.2f}x" for step, _, after in switches
        )
        return f" (steps at context {switches[0][1]}; {later} as long, timed before training)"

    def fix(self, step: int, elapsed: float, step_s: float, eval_s: float) -> int:
        """The step count whose remaining steps and evaluations fill the rest of the budget."""
        return steps_that_fit(
            step,
            self.seconds - elapsed,
            step_s,
            eval_s,
            self.tc.eval_interval,
            lambda n: phase_ends(replace(self.tc, max_iters=n)),
            self.costs,
        )


def past_budget(minutes: float, elapsed: float, eval_s: float) -> bool:
    """Whether a run is BUDGET_OVERRUN past its minutes, counting one more evaluation as long as the
    last one: the machine slowed down after the probe, or a resumed run had less time than it
    needs."""
    return minutes > 0 and elapsed + eval_s >= minutes * 60 * (1 + BUDGET_OVERRUN)
