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
# the step budget, the last one open-ended. Measured on the real TinyStories sample, scored on
# validation.txt, at equal tokens (width 128: 16 x 128, 8 x 128 and 16 x 64 run at the same float32
# tokens/s within 2%, the head being ~90% of the FLOPs): benchmarks/recipe_rule.md.
RULES: dict[str, list[tuple[float, dict]]] = {
    "cpu": [
        # ~250 steps (a CPU half as fast as an AVX2 laptop): 512 tokens per step, 3e-3 -> 1.2e-3 and
        # the weights' average (decay 0.98). 4 x 128 at 3e-3 -> 3e-4 scored 3.678 / 3.681 (two
        # seeds) against 3.731 / 3.736 at 8 x 128 and 3.824 for the preset's shape (warmup 200); at
        # ~500 steps 8 x 128 was ahead (3.315 against 3.326): the two cross at ~440 steps
        # (log-interpolated), the boundary. The average with the floor at 1.2e-3 gave 4 x 128 3.652
        # at 1,000 steps (3.687 at the floor of 3e-4), a higher peak no better (4e-3: 3.661, 5e-3:
        # 3.689), and a context of 64, 8 x 64, 3.477 / 3.453 against 3.652 / 3.640 (two seeds;
        # recipe_rule.md, "A shorter context").
        (
            440,
            {
                "batch_size": 8,
                "block_size": 64,
                "learning_rate": 3e-3,
                "min_lr": 1.2e-3,
                "warmup_iters": 200,
                "ema": 0.98,
                "quarter_context": 0.0,
                "short_context": 0.0,
            },
        ),
        # ~500 steps (a CPU without native bf16, float32): 1,024 tokens per step and a shorter
        # warmup. Without the weights' average, 8 x 128 at 3e-3 -> 3e-4 scored 3.315 / 3.343 (two
        # seeds) against the preset's 3.354 / 3.380 at the same 1.02M tokens; at 1,000 steps (2.05M
        # tokens) the preset is ahead (2.966 against 2.982): the two cross at ~800 steps
        # (interpolated in log steps), the boundary. With the average (decay 0.98) the preset's own
        # rates win here, and a context of 64 more so: 16 x 64 at 5e-3 -> 2e-3 scored 3.092 / 3.082
        # (two seeds) at 1,150 steps (the AVX2 kind's count) and 3.189 at 900, against 3.155 / 3.200
        # and 3.282 for 8 x 128 at the same rates, and 3.178 / 3.216 and 3.310 for 8 x 128 at 3e-3
        # -> 1.2e-3. 32 x 32 (3.102), 4 x 256 (3.431), 16 x 64 at 3e-3 (3.103), other peaks, floors
        # and warmups were no better (recipe_rule.md, "The batch-8 row's rates" and "A shorter
        # context"). At equal time at 1,050 steps (3.119 / 3.120, two seeds) it beat 8, 12, 24 and
        # 32 sequences of 64, 6 layers, width 160, 7e-3, a floor of 3e-3 and warmup 100
        # (3.130-3.201); halving its context for the first third or half of the steps moved it by
        # under 0.01, so both short rows keep the whole context throughout (recipe_rule.md, "The
        # AVX2 kind at equal time"). Its upper boundary is where the preset as it is now (the
        # 3-phase, the average at 0.99) catches up, at equal time on a CPU with AVX2 only (float32,
        # 16 x 64 making 1.95x the preset's steps): at 800 reference steps 16 x 64 led it by 0.014
        # and 0.034 (two seeds: 2.986 / 2.992 against 3.000 / 3.027), at 1,000 it trailed by 0.033
        # and 0.016; interpolated in log steps, they cross at ~855 and ~930, ~890 with the two
        # seeds' means (recipe_rule.md, "Where the middle row ends" and "Where the quarter is the
        # warmup").
        (
            890,
            {
                "batch_size": 16,
                "block_size": 64,
                "warmup_iters": 200,
                "ema": 0.98,
                "quarter_context": 0.0,
                "short_context": 0.0,
            },
        ),
        # 890 steps and up (AVX512_BF16 makes ~1,100-1,650, AMX ~2,400): the preset, the earlier
        # search's winner (recipe_search.md). At 1,600 steps it beats batch 8, warmup 200 and a
        # higher floor (2.777 against 2.792-2.804). Batch 32 at equal tokens trails it at 2,200
        # steps (2.702 / 2.711 against 2.700 / 2.703, two seeds) and leads at 3,000 (2.644 / 2.644
        # against 2.648 / 2.653): they cross at ~2,600, within 0.01 either side, and nothing above
        # 3,000 is measured, so batch 32 has no row. (Those comparisons predate the preset's floor
        # of 2e-3 with --ema 0.99, measured at 1,550 steps only: 2.746 against 2.781.) At 1,450
        # steps 16 x 64 throughout, at equal time, trails it (2.804 against 2.786); the preset's
        # first half at context 64 (--short-context 0.5) leads it (recipe_rule.md, "Half the context
        # first"), and a first quarter at context 32 before that (--quarter-context 0.25) leads the
        # short half by 0.016-0.024 at 1,450 and 2,400 steps (two seeds each; recipe_rule.md, "A
        # quarter of the context first"), and by 0.017 / 0.010 at 1,000, where the quarter is the
        # warmup's 300 steps (a third of the run; "Where the quarter is the warmup").
        (math.inf, {}),
    ],
}
# A budget too short for its row's warmup (a minute or two: under ~100 reference steps) would end
# before the warmup does: its learning rate never decays and its step count is never fixed. There
# the warmup is cut to this share of the steps the budget is expected to fit. Half is not worse than
# less: at 500 fixed steps the preset's warmup of 300 scored 3.349 and 150 3.368 (the table,
# recipe_rule.md); the rows use 20-30%.
WARMUP_MAX_SHARE = 0.5
CALIBRATE_UNTIMED = 2  # first passes allocate memory and warm caches: not timed
CALIBRATE_TIMED = 3


def calibrate(
    *passes: Callable[[], None], clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Seconds of each pass (a forward and backward of one shape): the median of its timed passes,
    taken in rounds that run every pass once. A slow spell of a shared machine then falls on all
    the shapes alike, not on one, and their ratios (what the time budget prices a run's phases
    by) are not skewed by it: timed one shape after another, the ratio of a half-context pass to
    a quarter-context one ranged 0.960-1.132 over six processes on one host, in rounds
    0.976-1.048 over twelve (benchmarks/machines.md, "The phases' prices, timed in rounds"). A
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
