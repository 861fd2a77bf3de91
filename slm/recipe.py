"""The step budget chooses the recipe: how many optimizer steps this machine can make in the time
budget picks the batch and the schedule of a preset that has a recipe table.

A machine with few steps (a CPU without native bfloat16 makes about a third of the steps of one
with it) needs a run shaped for a short run: fewer tokens per step, so more steps. Before
training, a few forward/backward passes of the preset's own shape are timed (calibrate); the
budget divided by that time is the step budget in the preset's steps ("reference steps"), and the
first row of the preset's table whose limit it is under gives the recipe. The rows come from a
recipe search on real TinyStories at fixed step counts, compared at equal time:
benchmarks/recipe_rule.md has the table and every trial.

Flags given by hand always win over the rule, and the values chosen are printed with the flags
that reproduce them, stored in ckpt.pt, and kept by --resume.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace

from config import PRESETS, GPTConfig, TrainConfig

# preset -> rows of (reference steps below which the row applies, the settings it sets), in order of
# the step budget, the last one open-ended. A machine that makes few steps in the budget needs fewer
# tokens per step (so more steps), a shorter context and the weights' average; every row and its
# boundary was measured on real TinyStories at equal steps and at equal time:
# benchmarks/recipe_rule.md ("The rule's rows" lists the trials behind each).
RULES: dict[str, list[tuple[float, dict]]] = {
    "cpu": [
        # under ~440 steps (a CPU half as fast as an AVX2 laptop): 512 tokens per step
        (440, dict(batch_size=8, block_size=64, learning_rate=3e-3, min_lr=1.2e-3,
                   warmup_iters=200, ema=0.98, quarter_context=0.0, short_context=0.0,
                   weight_decay=0.1)),
        # under ~890 steps (a CPU without native bf16, float32): 1,024 tokens per step, the
        # whole (short) context throughout
        (890, dict(batch_size=16, block_size=64, warmup_iters=200, ema=0.98, quarter_context=0.0,
                   short_context=0.0, weight_decay=0.1)),
        # 890 steps and up: the preset as it is (recipe_search.md's winner; with the used head rows
        # ~4,000 steps on a bf16 CPU: training.md, "The freed steps")
        (math.inf, {}),
    ],
}  # fmt: skip
# A budget too short for its row's warmup (a minute or two: under ~100 reference steps) would end
# before the warmup does: its learning rate never decays and its step count is never fixed. There
# the warmup is cut to this share of the steps the budget is expected to fit (recipe_rule.md: half
# was no worse than less; the rows use 20-30%).
WARMUP_MAX_SHARE = 0.5
CALIBRATE_UNTIMED = 2  # first passes allocate memory and warm caches: not timed
CALIBRATE_TIMED = 3


def calibrate(
    *passes: Callable[[], None], clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Seconds of each pass (a forward and backward of one shape): the median of its timed passes,
    taken in rounds that run every pass once. A slow spell of a shared machine then falls on all
    the shapes alike, not on one, and their ratios (what the time budget prices a run's phases
    by) are not skewed by it (benchmarks/machines.md, "The phases' prices, timed in rounds"). A
    drift of the machine's speed after the calibration is another matter: the time budget's cut
    catches it."""
    for one_pass in passes:
        for _ in range(CALIBRATE_UNTIMED):
            one_pass()
    timed: list[list[float]] = [[] for _ in passes]
    for _ in range(CALIBRATE_TIMED):
        for one_pass, seconds in zip(passes, timed):
            t0 = clock()
            one_pass()
            seconds.append(clock() - t0)
    return [statistics.median(seconds) for seconds in timed]


def reference_steps(minutes: float, step_s: float) -> float:
    """Steps of the preset's shape that fit the budget (evaluations aside: the rule's rows allow for
    them).
    """
    return minutes * 60 / max(step_s, 1e-9)


def choose(preset: str | None, ref_steps: float, given: set[str] | frozenset[str]) -> dict:
    """The training settings the rule sets for this step budget, less those given by hand ({} when
    the preset has no table)."""
    for limit, settings in RULES.get(preset or "", []):
        if ref_steps < limit:
            return {k: v for k, v in settings.items() if k not in given}
    return {}


def has_rule(preset: str | None) -> bool:
    return bool(RULES.get(preset or ""))


def flags(settings: dict) -> str:
    """--batch-size 8 --warmup-iters 150 ...: the settings as the flags that set them."""

    def flag(k, v):
        name = k.replace("_", "-")
        return (f"--{name}" if v else f"--no-{name}") if isinstance(v, bool) else f"--{name} {v}"

    return " ".join(flag(k, v) for k, v in settings.items())


def apply(
    preset: str | None, mc: GPTConfig, tc: TrainConfig, step_s: float, given
) -> tuple[GPTConfig, TrainConfig, dict, float, str]:
    """The rule's recipe for the budget tc.max_minutes at step_s seconds per step of the preset's
    shape: (the model and training settings with it applied, what it chose for the checkpoint,
    the seconds a step of it should take, the line that says so). A batch the rule sets is the
    sequences per optimizer step: the machine's plan splits it into micro-batches."""
    ref_steps = reference_steps(tc.max_minutes, step_s)
    settings = choose(preset, ref_steps, given)
    overruled = {k: v for k, v in choose(preset, ref_steps, frozenset()).items() if k in given}
    model_fields = {f.name for f in fields(GPTConfig)}
    new_mc = replace(mc, **{k: v for k, v in settings.items() if k in model_fields})
    new_tc = replace(tc, **{k: v for k, v in settings.items() if k not in model_fields})
    if "batch_size" in settings and "grad_accum" not in given:
        new_tc = replace(new_tc, grad_accum=1)
    # a chosen step, in reference steps
    tokens = tokens_per_step(new_mc, new_tc) / tokens_per_step(mc, tc)
    guess = step_s * tokens * token_cost(new_mc) / token_cost(mc)
    # steps of the chosen shape that fit, evaluations aside
    expected = tc.max_minutes * 60 / max(guess, 1e-9)
    cut = max(1, int(WARMUP_MAX_SHARE * expected))
    why = ""
    if "warmup_iters" not in given and new_tc.warmup_iters > cut:
        why = (
            f"; warmup {new_tc.warmup_iters} cut to {cut}, half the ~{expected:,.0f} steps that fit"
        )
        settings = {**settings, "warmup_iters": cut}
        new_tc = replace(new_tc, warmup_iters=cut)
    chosen = {"reference_steps": round(ref_steps), "calibrated_s": round(step_s, 4), **settings}
    kept = "the preset with the flags given" if overruled else "the preset as it is"
    by_hand = f"; the flags given win over its {flags(overruled)}" if overruled else ""
    line = (
        f"recipe: {tc.max_minutes} minutes fit about {ref_steps:,.0f} steps of the {preset} "
        f"preset's shape here ({step_s * 1000:,.0f} ms per step, timed): "
        f"{flags(settings) or kept} (the rule in slm/recipe.py{why}{by_hand})"
    )
    return new_mc, new_tc, chosen, guess, line


def tokens_per_step(mc: GPTConfig, tc: TrainConfig) -> int:
    """Tokens in one optimizer step (per process): sequences x accumulation x context."""
    return tc.batch_size * tc.grad_accum * mc.block_size


def token_cost(mc: GPTConfig) -> float:
    """A token's training cost, up to a constant: the head's vocab x width and the blocks' 12
    width^2 per layer (at width 128 the head is ~90% of it, which is why a narrower model makes
    more steps in a minute)."""
    return mc.vocab_size * mc.n_embd + 12 * mc.n_layer * mc.n_embd**2


def reproduce_command(preset: str | None, mc: GPTConfig, tc: TrainConfig) -> str:
    """The training.py command that repeats a run step for step: the preset, every model and
    training setting that differs from it (what the rule and the flags chose), and the fixed step
    count. Where and how the run executes (device, dtype, compile, directories) is left to the
    machine that repeats it."""
    base = PRESETS[preset] if preset in PRESETS else None
    base_mc, base_tc = (
        (asdict(base.model), asdict(base.train))
        if base
        else (asdict(GPTConfig()), asdict(TrainConfig()))
    )
    machine_fields = {
        "data_dir",
        "out_dir",
        "device",
        "dtype",
        "compile",
        "max_minutes",
        "max_iters",
    }
    settings = {k: v for k, v in asdict(mc).items() if base_mc.get(k) != v}
    settings |= {
        k: v for k, v in asdict(tc).items() if k not in machine_fields and base_tc.get(k) != v
    }
    start = f"python training.py --preset {preset} " if preset else "python training.py "
    return f"{start}{flags(settings)} --max-iters {tc.max_iters} --max-minutes 0".replace("  ", " ")
