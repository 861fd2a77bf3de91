"""The time budget (--max-minutes): it picks the recipe, times the first steps, fixes the step
count that fills the budget, and says when a run has fallen past it.

How it goes, in order:
1. choose_recipe: before the run is built, a few forward/backward passes of the preset's shape are
   timed on a throwaway model; the steps that fit the budget pick the recipe (slm/recipe.py).
2. Budget: the run's first warmup steps are timed (the probe); the progress bar shows an estimate.
   The clock is train()'s, from its start: the calibration and the model's build count.
3. fix: at the end of the probe the count is fixed, once (training.fix_step_count calls it): the
   warmup -> cosine schedule is laid over exactly those steps, and the command that repeats the
   run step for step is printed.
4. stop_reason: a run that falls BUDGET_OVERRUN past its minutes evaluates, saves and stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from config import GPTConfig, TrainConfig
from slm import recipe
from slm.cli import CLIError
from slm.hardware import Machine
from slm.plan import TrialPass, resolve_dtype
from slm.schedule import context_switches, evaluation_due, phase_ends

# The probe: untimed steps first (memory allocation, torch.compile, autotuning), then timed ones,
# all inside the LinearLR warmup, whose learning rates do not depend on the step count (unknown).
PROBE_UNTIMED_STEPS = 2
# At least this many timed steps; the probe goes on timing until PROBE_MAX_STEPS or the end of
# warmup, because a shared machine's speed drifts and a short probe misjudges a long run
# (benchmarks/machines.md).
PROBE_TIMED_STEPS = 3
PROBE_MAX_STEPS = 300
# A budget run this far past its minutes (the machine slowed down) evaluates, saves and stops. The
# minutes are training.py's own, from train()'s start (the calibration counts); 2% leaves room for
# `make run`'s other steps (the data, the story) inside 10 minutes +5% (benchmarks/training.md,
# "Ten minutes ±5%"). The steps it cuts are the cosine's last, at its floor.
BUDGET_OVERRUN = 0.02


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


# ----------------------------------------------------------------------------- the run's side


def choose_recipe(
    preset: str | None,
    mc: GPTConfig,
    tc: TrainConfig,
    machine: Machine,
    given: frozenset,
    trial: Callable[[GPTConfig], TrialPass],
    all_max: Callable[[list[float]], list[float]],
    say,
) -> tuple[GPTConfig, TrainConfig, dict, Budget]:
    """Time a few passes of the preset's shape on a throwaway model, and let the step budget pick
    the recipe (slm/recipe.py): the settings it gives, what it chose (for the checkpoint), and the
    Budget priced by those passes. The passes change nothing the run keeps (TrialPass), so a run
    started with the printed flags is the same run. all_max takes the slowest rank's seconds."""
    dtype = resolve_dtype(machine, tc)
    sequences = tc.batch_size * tc.grad_accum
    passes = trial(mc)
    step_s = all_max(recipe.calibrate(lambda: passes(sequences, dtype)))[0]
    new_mc, new_tc, chosen, guess, line = recipe.apply(preset, mc, tc, step_s, given)
    if new_mc != mc:  # another shape (a shorter context): its passes are timed on its own model
        passes = trial(new_mc)
    sequences = new_tc.batch_size * new_tc.grad_accum

    def time_cuts(cuts: list[int]) -> list[float]:
        timers = [lambda parts=parts: passes(sequences, dtype, parts) for parts in cuts]
        return all_max(recipe.calibrate(*timers))

    # a step of the first phase (windows cut shortest) is what the probe times; the other phases'
    # steps are priced against it
    first, costs = phase_costs(new_tc, guess, time_cuts)
    say(line)
    return new_mc, new_tc, chosen, Budget(new_tc, first, guess * new_tc.eval_iters * 2 / 3, costs)


def fix(
    budget: Budget,
    tc: TrainConfig,
    step: int,
    elapsed: float,
    eval_s: float,
    chosen: dict | None,
    preset: str | None,
    mc: GPTConfig,
    *,
    all_max: Callable[[list[float]], list[float]],
    say,
) -> tuple[TrainConfig, dict, str]:
    """Fix the step count at this step: (the settings with it, how it was fixed as ckpt.pt and
    report.md keep it, the line that says so with the command that repeats the run). Every
    process fixes the same count: the slowest one's times count. A budget too short for the
    warmup trains one step past it (the budget's cut may stop them)."""
    step_s, eval_s, elapsed = all_max([budget.probe_s(), eval_s, elapsed])
    max_iters = budget.fix(step, elapsed, step_s, eval_s)
    if max_iters <= tc.warmup_iters:
        say(
            f"note: {tc.max_minutes} minutes fit only {max_iters} steps here, fewer than the "
            f"{tc.warmup_iters} warmup steps; training {tc.warmup_iters + 1} steps (the budget "
            "cut may stop them)"
        )
        max_iters = tc.warmup_iters + 1
    tc = replace(tc, max_iters=max_iters)
    schedule = {
        "max_iters": max_iters,
        "fixed_by": "--max-minutes",
        "max_minutes": tc.max_minutes,
        "fixed_at_step": step,
        "probe_ms_per_step": round(step_s * 1000, 3),
        "eval_s": round(eval_s, 3),
        "recipe": chosen,
        "step_costs": [round(c, 4) for c in budget.costs],
    }
    line = (
        f"schedule: {max_iters} steps fixed from a probe of {step_s * 1000:,.0f} ms/step"
        f"{budget.priced(max_iters, mc.block_size)} and {eval_s:.1f} s per evaluation to fill "
        f"{tc.max_minutes} minutes; reproduce with: {recipe.reproduce_command(preset, mc, tc)}"
    )
    return tc, schedule, line


def resumed(tc: TrainConfig, path, step: int) -> Budget:
    """The budget of a run resumed before its time budget fixed the step count: the probe goes
    on."""
    if tc.max_minutes == 0:
        raise CLIError(
            f"{path} stopped at step {step}, before its time budget fixed the step count; resume "
            "it with a budget (--max-minutes M)"
        )
    return Budget(tc)


def bar_total(budget: Budget | None, tc: TrainConfig, step: int, elapsed: float) -> int | None:
    """The progress bar's total: the fixed step count, or while the probe runs its estimate."""
    if budget is None:
        return tc.max_iters
    return budget.estimate(step, elapsed)


def stop_reason(asked: str | None, state, tc: TrainConfig, stop_after: int, start_step, say) -> str:
    """ "done" to go on; else what stops the run: a signal, "time" (evaluated and saved at the top
    of the loop), or "stop_after" (--stop-after steps done)."""
    finished = state.finished(tc.max_iters)
    asked = None if asked == "time" and finished else asked  # the last step ran past: done, not cut
    if asked == "time":
        say(
            f"\n{tc.max_minutes}-minute budget overrun by {BUDGET_OVERRUN:.0%} at step "
            f"{state.step} (the machine is slower than the probe measured): evaluating and stopping"
        )
    if asked:
        return asked
    return "stop_after" if stop_after and state.step - start_step >= stop_after else "done"
