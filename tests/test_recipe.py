"""The step budget chooses the recipe (slm/recipe.py) and the time budget shows its estimate at once
(slm/budget.Budget): on a fake clock, so each count is known exactly and takes no real time."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
from test_training import fake_clock

import training
from config import TrainConfig
from slm import recipe
from slm.budget import BUDGET_OVERRUN, PROBE_UNTIMED_STEPS, Budget
from slm.checkpoint import load_checkpoint

# A rule for the smoke preset, in the shape of the cpu preset's: a short step budget gets a small
# batch, a shorter context (cut in half again for its first half) and its own schedule; a long one
# the preset as it is.
SMOKE_RULE = [
    (
        100,
        {
            "batch_size": 4,
            "block_size": 32,
            "warmup_iters": 6,
            "learning_rate": 2e-3,
            "min_lr": 2e-4,
            "short_context": 0.5,
        },
    ),
    (math.inf, {}),
]
# the smoke preset (batch 8, warmup 5) under a one-minute budget
FLAGS = [
    "--preset",
    "smoke",
    "--max-minutes",
    "1",
    "--eval-interval",
    "20",
    "--eval-iters",
    "1",
    "--no-progress",
]


def test_choose_takes_the_row_of_the_step_budget_and_leaves_what_was_given(monkeypatch):
    monkeypatch.setattr(recipe, "RULES", {"smoke": SMOKE_RULE})
    assert recipe.choose("smoke", 60, set()) == SMOKE_RULE[0][1]
    assert recipe.choose("smoke", 100, set()) == {}
    assert recipe.choose("smoke", 60, {"batch_size", "learning_rate"}) == {
        "block_size": 32,
        "warmup_iters": 6,
        "min_lr": 2e-4,
        "short_context": 0.5,
    }
    assert recipe.choose("gpu", 60, set()) == {} and not recipe.has_rule("gpu")


def test_calibrate_times_its_passes_in_rounds_and_keeps_each_ones_median():
    # Two shapes, 1 s and 2 s a pass, their first passes slow (allocations); a slow spell of the
    # machine doubles whatever runs in the first timed round. Timed one after another, the spell
    # would fall on one shape only.
    now, calls = [0.0], []

    def shape(name: str, seconds: float):
        def one_pass():
            calls.append(name)
            untimed = calls.count(name) <= recipe.CALIBRATE_UNTIMED
            spell = len(calls) <= 2 * recipe.CALIBRATE_UNTIMED + 2
            now[0] += 9.0 if untimed else seconds * (2 if spell else 1)

        return one_pass

    assert recipe.calibrate(
        shape("a", 1.0), shape("b", 2.0), clock=lambda: now[0]
    ) == pytest.approx([1.0, 2.0])
    assert (
        calls
        == ["a"] * recipe.CALIBRATE_UNTIMED
        + ["b"] * recipe.CALIBRATE_UNTIMED
        + ["a", "b"] * recipe.CALIBRATE_TIMED
    )


def test_the_budget_estimates_a_step_count_before_it_fixes_one():
    tc = TrainConfig(max_minutes=1.0, warmup_iters=30, eval_interval=20)
    guessed = Budget(tc, step_s_guess=1.0, eval_s_guess=3.0)
    assert guessed.estimate(0, 0.0) == 51  # 60 s: 51 steps + evaluations at 20, 40 and 51 (3 x 3 s)
    blind = Budget(tc)
    for _ in range(PROBE_UNTIMED_STEPS):
        assert blind.estimate(0, 0.0) is None
        blind.record(4.0)  # the first, slow steps are not timed
    blind.record(2.0)
    # 50 s left: 25 steps at 2 s, no evaluation
    assert blind.step_s() == 2.0 and blind.estimate(3, 10.0) == 3 + 25
    assert not blind.ready(3) and blind.ready(30)


def fake_calibration(monkeypatch, preset_s: float, *chosen_s: float) -> None:
    """SMOKE_RULE in place of the real rules, and a calibration that runs its passes and says
    preset_s per pass of the preset's shape, then chosen_s per pass of the chosen row: its whole
    windows, then its windows cut (in four, then in half)."""
    monkeypatch.setattr(recipe, "RULES", {"smoke": SMOKE_RULE})
    real, timed = recipe.calibrate, iter([[preset_s], list(chosen_s)])
    monkeypatch.setattr(recipe, "calibrate", lambda *passes: (real(*passes), next(timed))[1])


def run_main(monkeypatch, capsys, argv, step_s=1.0):
    """training.main on a fake clock (1 s per step, 3 s per evaluation), with a calibration that
    measures step_s per pass of the preset's shape and a quarter of it per pass of the rule's
    row, whole or cut (4 x 32 tokens to the preset's 8 x 64: every step priced alike); returns
    (summary, printed lines)."""
    fake_clock(monkeypatch, step_s=1.0, eval_s=3.0)
    fake_calibration(monkeypatch, step_s, step_s / 4, step_s / 4)
    summary = training.main(argv)
    return summary, capsys.readouterr().out.splitlines()


def test_a_budget_run_takes_its_recipe_and_the_printed_command_repeats_it(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "budget"
    s, lines = run_main(
        monkeypatch, capsys, [*FLAGS, "--data-dir", str(tiny_data_dir), "--out-dir", str(out)]
    )
    said = [line for line in lines if line.startswith("recipe: ")]
    assert said == [
        "recipe: 1.0 minutes fit about 60 steps of the smoke preset's shape here (1,000 ms per "
        "step, timed): --batch-size 4 --block-size 32 --warmup-iters 6 --learning-rate 0.002 "
        "--min-lr 0.0002 --short-context 0.5 (the rule in slm/recipe.py)"
    ]
    ckpt = load_checkpoint(out / training.CKPT_FILE)
    assert ckpt["train_config"]["batch_size"] == 4 and ckpt["train_config"]["warmup_iters"] == 6
    assert (
        ckpt["schedule"]["recipe"]["reference_steps"] == 60
        and ckpt["schedule"]["recipe"]["batch_size"] == 4
    )
    assert s["stopped"] == "done" and s["step"] == s["max_iters"]
    command = next(line for line in lines if line.startswith("schedule: ")).split(
        "reproduce with: "
    )[1]
    assert ckpt["config"]["block_size"] == 32
    assert command.startswith(
        "python training.py --preset smoke --block-size 32 --batch-size 4 --learning-rate 0.002 "
        "--min-lr 0.0002 --warmup-iters 6 --short-context 0.5 --eval-interval 20 --eval-iters 1 "
        "--max-iters "
    )
    monkeypatch.undo()

    # The printed command, on the real clock, gives the same losses step for step.
    argv = command.split()[2:] + [
        "--data-dir",
        str(tiny_data_dir),
        "--out-dir",
        str(tmp_path / "steps"),
        "--no-progress",
    ]
    steps = training.main(argv)
    assert [loss for _, loss in s["losses"]] == pytest.approx(
        [loss for _, loss in steps["losses"]], abs=1e-6
    )


@pytest.mark.parametrize("quarter", [False, True])
def test_a_budget_of_cut_windows_prices_the_steps_it_did_not_time(
    tiny_data_dir, tmp_path, monkeypatch, capsys, quarter
):
    # The rule's row trains its first half on windows cut in half: on this clock those steps take 1
    # s and the whole-context ones 2 s, as the calibration says (the row's whole step a quarter of
    # the preset's 1 s, its short step an eighth). The probe times short steps only; priced alike,
    # the rest would run ~13 s over. With --quarter-context 0.25 too, the first quarter takes 1 s,
    # the second 1.5 s, the rest 2 s.
    cost = {4: 1.0, 2: 1.5, 1: 2.0} if quarter else {2: 1.0, 1: 2.0}

    def charge(*args):  # train_step(model, ..., tc, dist, parts, wants_stop)
        clock.now += cost[args[7]]
        return real_step(*args)

    clock = fake_clock(monkeypatch, step_s=0.0, eval_s=3.0)
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", charge)
    fake_calibration(monkeypatch, 1.0, *((0.25, 0.125, 0.1875) if quarter else (0.25, 0.125)))
    start = clock.now
    s = training.main(
        [
            *FLAGS,
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(tmp_path / "out"),
            *(["--quarter-context", "0.25"] if quarter else []),
        ]
    )
    said = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("schedule: ")
    )
    half, n = round(s["max_iters"] / 2), s["max_iters"]
    assert s["stopped"] == "done"
    if quarter:
        assert s["schedule"]["step_costs"] == pytest.approx([1.0, 1.5, 2.0])
        assert (
            f"(steps at context 8; from step {max(6, round(n / 4))} those at 16 1.50x, from step "
            f"{half} those at 32 2.00x as long, timed before training)"
        ) in said
    else:
        assert s["schedule"]["step_costs"] == pytest.approx([1.0, 1.0, 2.0])
        assert (
            f"(steps at context 16; from step {half} those at 32 2.00x as long, timed before "
            "training)" in said
        )
    assert 60 - 2.0 - 3.0 < clock.now - start <= 60, (
        "the run fills its minute: no room for one more step"
    )


def test_flags_given_by_hand_win_over_the_rule_and_resume_keeps_what_it_chose(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    s, lines = run_main(
        monkeypatch,
        capsys,
        [
            *FLAGS,
            "--lr",
            "1e-3",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(out),
            "--stop-after",
            "8",
        ],
    )
    said = next(line for line in lines if line.startswith("recipe: "))
    chose, overruled = said.split("; the flags given win over its ")
    assert "--learning-rate" not in chose and "--batch-size 4" in chose
    # the row's rate, not taken
    assert overruled.startswith("--learning-rate ") and "--batch-size" not in overruled
    ckpt = load_checkpoint(out / training.CKPT_FILE)
    assert ckpt["train_config"]["learning_rate"] == 1e-3 and ckpt["train_config"]["batch_size"] == 4

    # A slow machine would choose differently now; --resume keeps what was fixed and times nothing.
    s, lines = run_main(
        monkeypatch, capsys, ["--resume", "--out-dir", str(out), "--no-progress"], step_s=100.0
    )
    assert not [line for line in lines if line.startswith("recipe: ")]
    assert load_checkpoint(out / training.CKPT_FILE)["train_config"]["batch_size"] == 4
    assert s["stopped"] == "done"


def test_a_long_step_budget_keeps_the_preset(tiny_data_dir, tmp_path, monkeypatch, capsys):
    s, lines = run_main(
        monkeypatch,
        capsys,
        [*FLAGS, "--data-dir", str(tiny_data_dir), "--out-dir", str(tmp_path / "out")],
        step_s=0.1,
    )
    said = next(line for line in lines if line.startswith("recipe: "))
    assert re.search(r"about 600 steps .*: the preset as it is", said)
    assert load_checkpoint(tmp_path / "out" / training.CKPT_FILE)["train_config"]["batch_size"] == 8


def test_a_budget_too_short_for_the_rows_warmup_cuts_it_to_half_the_steps_that_fit():
    """A minute on an AVX2 CPU (~63 reference steps of the cpu preset: 1-minute run, measured) takes
    the first row, whose 200 warmup steps would outlast the ~250 steps of 8 x 64 that fit: warmup
    becomes half of those, said in the recipe line and recorded with the rule's choice. Given by
    hand, it stays."""
    from config import PRESETS

    base = PRESETS["cpu"]
    step_s = 60 / 63  # a reference step, timed
    short = replace(base.train, max_minutes=1.0)
    mc, tc, chosen, guess, line = recipe.apply("cpu", base.model, short, step_s, frozenset())
    expected = 60 / guess  # 8 x 64 steps: a quarter of a reference step's tokens each
    assert (tc.batch_size, mc.block_size) == (8, 64) and expected == pytest.approx(252)
    assert tc.warmup_iters == chosen["warmup_iters"] == int(expected / 2) == 126
    assert line.endswith(
        "(the rule in slm/recipe.py; warmup 200 cut to 126, half the ~252 steps that fit)"
    )
    assert "--warmup-iters 126" in line

    _, tc, chosen, _, line = recipe.apply(
        "cpu", base.model, replace(short, warmup_iters=200), step_s, frozenset({"warmup_iters"})
    )
    assert tc.warmup_iters == 200 and "warmup_iters" not in chosen and "cut" not in line
    # 10 minutes, ~500 steps
    _, tc, *_ = recipe.apply("cpu", base.model, base.train, 600 / 500, frozenset())
    assert tc.warmup_iters == 200


def test_a_row_whose_settings_were_all_given_says_so_and_what_it_would_have_set():
    """Flags given by hand that cover the whole row leave nothing for the rule to set: the line does
    not call that "the preset as it is", it names the row's values that the flags overruled."""
    from config import PRESETS

    base = PRESETS["cpu"]
    row = recipe.choose("cpu", 500, frozenset())  # the middle row: ~500 reference steps
    assert row and "block_size" in row
    mc, tc, chosen, _, line = recipe.apply("cpu", base.model, base.train, 600 / 500, frozenset(row))
    assert (mc.block_size, tc.batch_size) == (base.model.block_size, base.train.batch_size)
    assert set(chosen) == {"reference_steps", "calibrated_s"}
    assert "the preset as it is" not in line and ": the preset with the flags given (" in line
    assert line.endswith(f"; the flags given win over its {recipe.flags(row)})")
    _, _, _, _, line = recipe.apply(
        "cpu", base.model, base.train, 600 / 500, frozenset({"block_size"})
    )
    assert (
        f"the flags given win over its --block-size {row['block_size']})" in line
        and "--batch-size" in line
    )


def test_a_row_that_shortens_the_context_counts_its_tokens(monkeypatch):
    """A row may set the context as well as the batch: 16 x 64 is half the tokens of the preset's 16
    x 128, so a step of it is expected to take half the time (the cost per token is the same) and
    twice the steps fit."""
    from config import PRESETS

    base = PRESETS["cpu"]
    monkeypatch.setattr(recipe, "RULES", {"cpu": [(math.inf, {"block_size": 64})]})
    mc, tc, chosen, guess, line = recipe.apply("cpu", base.model, base.train, 0.5, frozenset())
    assert (
        mc.block_size == 64
        and tc.batch_size == base.train.batch_size
        and chosen["block_size"] == 64
    )
    assert guess == pytest.approx(0.25) and "--block-size 64" in line


def test_a_budget_that_ends_inside_warmup_says_the_rate_never_decayed(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    """Warmup given by hand (100 steps) longer than the minute's ~55: the run is cut past its budget
    before the step count was fixed, and its last line says why, not 'of None'."""
    s, lines = run_main(
        monkeypatch,
        capsys,
        [
            *FLAGS,
            "--warmup-iters",
            "100",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(tmp_path / "out"),
        ],
    )
    assert s["stopped"] == "time" and s["max_iters"] is None and s["step"] < 100
    cut = f"cut {BUDGET_OVERRUN:.0%} past the 1.0-minute budget"
    end = next(line for line in lines if line.startswith(cut))
    assert (
        f"at step {s['step']} before its warmup ended (the learning rate never decayed: give more "
        "minutes or fewer --warmup-iters)"
        in end
        and "None" not in end
    )


@pytest.mark.parametrize("preset", sorted(recipe.RULES))
def test_the_shipped_rules_are_ordered_and_each_row_builds_a_valid_run(preset):
    """Each preset's table: limits rising to an open-ended last row; every setting a model or
    training field; each row applied to its preset passes training's own checks
    (slm/settings.check_settings) both under the time budget and as the fixed step count its
    smallest budget gives, with warmup under half of those steps."""
    from dataclasses import fields, replace

    from config import PRESETS, GPTConfig, TrainConfig
    from slm.settings import check_settings

    rows = recipe.RULES[preset]
    limits = [limit for limit, _ in rows]
    assert limits == sorted(set(limits)) and limits[-1] == math.inf
    names = {f.name for f in fields(GPTConfig)} | {f.name for f in fields(TrainConfig)}
    base = PRESETS[preset]
    for lower, (limit, settings) in zip([limits[0] / 2] + limits, rows):
        assert set(settings) <= names, settings
        ref = lower * 1.01  # the row's smallest budget (the first row's: half its limit)
        # the seconds per reference step that give that budget
        step_s = base.train.max_minutes * 60 / ref
        mc, tc, *_ = recipe.apply(preset, base.model, base.train, step_s, frozenset())
        # its steps
        steps = (
            ref * recipe.tokens_per_step(base.model, base.train) / recipe.tokens_per_step(mc, tc)
        )
        check_settings(mc, tc)
        check_settings(mc, replace(tc, max_iters=int(steps), max_minutes=0))
        assert tc.warmup_iters < steps / 2, (limit, settings)
        assert recipe.choose(preset, ref, set()) == settings
