"""Step 5: the schedule's shape, settings checked before any work, loss falling, exact resume, crash
safety of the checkpoint files (full disk, SIGKILL, Ctrl-C), free space checked before the first
step, one run per out dir, non-finite loss, and torchrun data parallelism matching one process.
Tiny models, a few dozen steps each, CPU only."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from conftest import fake_free_space
from test_files import torch_save_on_a_full_disk
from test_model_usage import call_cli

import training
from config import PRESETS, GPTConfig, TrainConfig
from model import GPT
from slm import budget, hardware, schedule, settings
from slm.checkpoint import config_to_dict, load_checkpoint
from slm.cli import CLIError
from slm.progress import LOG_FILE, PLOT_FILE, mfu_peak, read_log
from slm.schedule import context_switches, phase_ends, window_cut
from slm.settings import check_settings, flags_given, resolve

REPO = Path(__file__).resolve().parent.parent
BEST = "best_model_params.pt"
MODEL_FIELDS = {f.name for f in fields(GPTConfig)}


def smoke(data_dir, out_dir, **over) -> tuple[GPTConfig, TrainConfig]:
    """The smoke preset pointed at data_dir/out_dir, with some settings changed."""
    p = PRESETS["smoke"]
    mc = replace(p.model, **{k: v for k, v in over.items() if k in MODEL_FIELDS})
    tc = replace(
        p.train,
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        **{k: v for k, v in over.items() if k not in MODEL_FIELDS},
    )
    return mc, tc


def run_training(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "training.py", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        **kw,
    )


def start_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "training.py", "--no-progress", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_log_step(proc: subprocess.Popen, log: Path, step: int, timeout: float = 60) -> None:
    """Block until OUT/log.csv has a row at or past step (ckpt.pt is saved just before that row)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended early (rc {proc.returncode}):\n{out}\n{err}")
        if log.exists():
            rows = read_log(log)
            if rows and rows[-1]["step"] >= step:
                return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no evaluation at step {step} within {timeout} s")


def assert_same_rows(
    a: list[dict], b: list[dict], tol: float, keys=("train_loss", "val_loss", "step_loss")
):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            if math.isnan(ra[k]) and math.isnan(rb[k]):
                continue
            assert ra[k] == pytest.approx(rb[k], abs=tol), (k, ra["step"], ra[k], rb[k])


# ----------------------------------------------------------------------------- schedule


def lr_curve(tc: TrainConfig) -> list[float]:
    """The learning rate each optimizer step uses, then the one after the last step."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=tc.learning_rate)
    sched = training.make_scheduler(opt, tc)
    lrs = []
    for _ in range(tc.max_iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs + [opt.param_groups[0]["lr"]]


def test_schedule_warms_up_to_the_peak_then_decays_to_the_minimum():
    tc = replace(TrainConfig(), max_iters=100, warmup_iters=10, learning_rate=1e-3, min_lr=1e-4)
    lrs = lr_curve(tc)
    warm, decay = lrs[: tc.warmup_iters + 1], lrs[tc.warmup_iters :]
    assert lrs[0] == pytest.approx(1e-3 * schedule.WARMUP_START_FACTOR)
    assert all(a < b for a, b in zip(warm, warm[1:])), "warmup must rise every step"
    assert lrs[tc.warmup_iters] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(decay, decay[1:])), "cosine must fall every step after warmup"
    assert lrs[-1] == pytest.approx(1e-4) and min(decay) == pytest.approx(1e-4)
    # Half way through the cosine, the rate is half way between peak and floor.
    assert lrs[tc.warmup_iters + 45] == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-6)


def test_schedule_without_warmup_starts_at_the_peak():
    lrs = lr_curve(
        replace(TrainConfig(), max_iters=20, warmup_iters=0, learning_rate=2e-3, min_lr=0.0)
    )
    assert lrs[0] == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


# ----------------------------------------------------------------------------- settings


def test_flags_override_the_preset_and_the_default_preset_is_cpu_without_cuda():
    preset, why, mc, tc = resolve(None, {"n_layer": 3}, {"batch_size": 2})
    assert (preset, "CUDA is not available" in why) == (
        ("gpu", False) if torch.cuda.is_available() else ("cpu", True)
    )
    assert mc.n_layer == 3 and tc.batch_size == 2
    assert (
        mc.n_embd == PRESETS[preset].model.n_embd
        and tc.max_iters == PRESETS[preset].train.max_iters
    )
    args = settings.build_parser().parse_args(["--lr", "0.01", "--no-bias", "--dropout", "0"])
    model_over, train_over = flags_given(args, GPTConfig), flags_given(args, TrainConfig)
    assert model_over == {"bias": False, "dropout": 0.0} and train_over == {"learning_rate": 0.01}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--learning-rate", "-0.001"], "--learning-rate -0.001 must be a positive number"),
        (["--min-lr", "0.1"], "--min-lr 0.1 must be between 0 and the peak"),
        (["--n-embd", "30", "--n-head", "4"], "--n-embd 30 is not divisible by --n-head 4"),
        (["--block-size", "100000"], "--block-size 100000 is longer than the train data"),
        (["--warmup-iters", "30"], "--warmup-iters 30 must be below --max-iters 30"),
        (["--warmup-iters", "-5"], "--warmup-iters -5 must not be negative"),
        (["--warmup-iters", "-5", "--max-minutes", "1"], "--warmup-iters -5 must not be negative"),
        (["--dropout", "1.5"], "--dropout 1.5 must be in [0, 1)"),
        (["--ema", "1"], "--ema 1.0 must be in [0, 1)"),
        (["--ema", "-0.5"], "--ema -0.5 must be in [0, 1)"),
        (["--short-context", "1.5"], "--short-context 1.5 must be in [0, 1]"),
        (
            ["--short-context", "0.5", "--block-size", "33"],
            "--short-context needs a --block-size divisible by 2",
        ),
        (["--quarter-context", "-0.1"], "--quarter-context -0.1 must be in [0, 1]"),
        (
            ["--quarter-context", "0.25", "--block-size", "34"],
            "--quarter-context needs a --block-size divisible by 4",
        ),
    ],
)
def test_bad_settings_stop_before_any_work(tiny_data_dir, tmp_path, flags, message):
    out = tmp_path / "out"
    with pytest.raises(CLIError) as e:
        training.main(
            ["--preset", "smoke", "--data-dir", str(tiny_data_dir), "--out-dir", str(out), *flags]
        )
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not out.exists(), "nothing may be written before the settings are checked"


def test_data_dir_without_meta_json_stops_with_the_command_that_makes_it(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(CLIError, match="tokenization.py --data-dir"):
        training.main(
            ["--preset", "smoke", "--data-dir", str(empty), "--out-dir", str(tmp_path / "out")]
        )
    assert not (tmp_path / "out").exists()


def test_bad_setting_is_one_line_on_stderr_and_exit_status_2(tiny_data_dir, tmp_path):
    r = run_training(
        [
            "--preset",
            "smoke",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(tmp_path / "o"),
            "--batch-size",
            "0",
        ]
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --batch-size 0 must be at least 1"]


# ----------------------------------------------------------------------------- training


def test_loss_falls_and_the_outputs_are_complete(tiny_data_dir, tmp_path):
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out", max_iters=30, eval_interval=15, eval_iters=2, batch_size=4
    )
    s = training.train(mc, tc, progress=False)
    out = Path(tc.out_dir)
    rows = read_log(out / LOG_FILE)
    assert [r["step"] for r in rows] == [0, 15, 30]
    # untrained: ~uniform
    assert rows[0]["val_loss"] == pytest.approx(math.log(mc.vocab_size), abs=0.5)
    assert (
        rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.5
        and rows[-1]["train_loss"] < rows[0]["train_loss"] - 1.5
    )
    assert (
        s["stopped"] == "done"
        and s["step"] == 30
        and s["best_val_loss"] == min(r["val_loss"] for r in rows)
    )
    assert "TinyStories sample bundled" in s["data"]
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = torch.load(out / training.BEST_FILE, weights_only=True)  # plain data only
    assert best["config"] == config_to_dict(mc) and best["step"] == s["best_step"]
    assert best["data"]["source"]["source"] == "sample" and best["data"]["eot_id"] == 50256
    assert best["val_loss"] == pytest.approx(s["best_val_loss"])
    model = GPT.from_checkpoint(best).eval()
    assert not any(k.startswith("_orig_mod.") for k in best["model"])
    ckpt = load_checkpoint(out / training.CKPT_FILE)
    assert ckpt["step"] == 30 and {
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "train_config",
    } <= set(ckpt)
    # The best model scores its recorded validation loss on the same fixed batches.
    from batches import Batches

    again = training.evaluate(model, Batches(tc.data_dir, mc.block_size), tc, training.Dist("cpu"))
    assert again["validation"] == pytest.approx(best["val_loss"], rel=1e-5)


@pytest.mark.slow  # tokenizes the 0.9M-token sample first
def test_real_tinystories_sample_loss_falls(shared_tinystories, tmp_path):
    import load_dataset
    import tokenization

    data = tmp_path / "data"
    load_dataset.prepare(
        source="local",
        data_dir=data,
        data_files={
            "train": str(shared_tinystories / "train.txt"),
            "validation": str(shared_tinystories / "validation.txt"),
        },
    )
    tokenization.tokenize(data, num_proc=1)
    mc, tc = smoke(data, tmp_path / "out", max_iters=40)
    training.train(mc, tc, progress=False)
    rows = read_log(Path(tc.out_dir) / LOG_FILE)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 2.0


# quarter: steps 0-4 (the warmup: see share_steps), short: to step 9 of 12; stopped at 6, between
# the two switches
@pytest.mark.parametrize(
    "ema, quarter, short", [(0.0, 0.0, 0.0), (0.8, 0.0, 0.0), (0.0, 0.0, 0.75), (0.0, 0.25, 0.75)]
)
def test_resume_continues_exactly(tiny_data_dir, tmp_path, ema, quarter, short):
    over = dict(
        max_iters=12,
        eval_interval=4,
        dropout=0.1,
        batch_size=2,
        eval_iters=1,
        ema=ema,
        quarter_context=quarter,
        short_context=short,
    )
    mc, tc = smoke(tiny_data_dir, tmp_path / "straight", **over)
    straight = training.train(mc, tc, progress=False)

    mc, tc = smoke(tiny_data_dir, tmp_path / "halves", **over)
    first = training.train(mc, tc, progress=False, stop_after=6)  # between evaluations
    assert (
        first["stopped"] == "stop_after"
        and load_checkpoint(Path(tc.out_dir) / "ckpt.pt")["step"] == 6
    )
    # The second half through the command line, as a user would: settings come from ckpt.pt.
    second = training.main(["--resume", "--out-dir", tc.out_dir, "--no-progress"])
    assert second["stopped"] == "done"

    assert [s for s, _ in first["losses"] + second["losses"]] == list(range(1, 13))
    got = [loss for _, loss in first["losses"] + second["losses"]]
    assert got == pytest.approx([loss for _, loss in straight["losses"]], abs=1e-6)
    assert_same_rows(
        read_log(Path(tc.out_dir) / "log.csv"),
        read_log(tmp_path / "straight" / "log.csv"),
        tol=1e-6,
    )
    # with --ema, the best model is the average: resumed too
    for name in ("ckpt.pt", "best_model_params.pt"):
        a = torch.load(tmp_path / "straight" / name, weights_only=True)["model"]
        b = torch.load(Path(tc.out_dir) / name, weights_only=True)["model"]
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_cut_phases_are_shares_of_the_run_each_at_least_the_warmup():
    tc = replace(TrainConfig(), max_iters=1000, warmup_iters=200)
    assert phase_ends(tc) == (0, 0) and context_switches(tc, 128) == []
    assert phase_ends(replace(tc, short_context=0.5)) == (0, 500)
    # the warmup: see share_steps's docstring
    assert phase_ends(replace(tc, short_context=0.1)) == (0, 200)
    assert phase_ends(replace(tc, short_context=1.0)) == (0, 1000)
    both = replace(tc, quarter_context=0.25, short_context=0.5)
    assert phase_ends(both) == (250, 500)
    assert [window_cut(both, s) for s in (0, 249, 250, 499, 500, 999)] == [4, 4, 2, 2, 1, 1]
    assert context_switches(both, 128) == [(250, 32, 64), (500, 64, 128)]
    assert phase_ends(replace(tc, quarter_context=0.1, short_context=0.5)) == (200, 500)
    # no half phase
    assert phase_ends(replace(tc, quarter_context=0.5, short_context=0.25)) == (500, 500)
    assert context_switches(replace(tc, quarter_context=0.5, short_context=0.25), 128) == [
        (500, 32, 128)
    ]
    assert context_switches(replace(tc, quarter_context=0.3), 64) == [(300, 16, 64)]


@pytest.mark.parametrize("quarter", [0.0, 0.25])
def test_cut_windows_train_the_first_steps_on_the_same_tokens_with_less_context(
    tiny_data_dir, tmp_path, monkeypatch, capsys, quarter
):
    import model as model_module
    import slm.plot
    import slm.report

    seen = []  # (training?, shape of x) for every forward pass with targets

    class Recording(model_module.GPT):
        def forward(self, idx, targets=None, **kw):
            if targets is not None:
                seen.append((self.training, tuple(idx.shape)))
            return super().forward(idx, targets, **kw)

    drawn = []  # the context switches each loss.png marks
    real_plot = slm.plot.plot_run
    monkeypatch.setattr(
        slm.report,
        "plot_run",
        lambda *a, switches=None: (drawn.append(switches), real_plot(*a, switches=switches)),
    )
    monkeypatch.setattr(training, "GPT", Recording)
    mc, tc = smoke(
        tiny_data_dir,
        tmp_path / "out",
        max_iters=20,
        warmup_iters=5,
        quarter_context=quarter,
        short_context=0.5,
        eval_interval=10,
        eval_iters=1,
    )
    summary = training.train(mc, tc, progress=False)
    trained = [shape for training_mode, shape in seen if training_mode]
    B, T = tc.batch_size, mc.block_size
    if quarter:  # steps 0-4 at a quarter of the context, 5-9 at half, 10-19 the whole
        assert trained == [(4 * B, T // 4)] * 5 + [(2 * B, T // 2)] * 5 + [(B, T)] * 10
        switches, note = (
            [(5, T // 4, T // 2), (10, T // 2, T)],
            f"(context {T // 4} until step 5, context {T // 2} until step 10",
        )
    else:  # steps 0-9 short, 10-19 the full context
        assert trained == [(2 * B, T // 2)] * 10 + [(B, T)] * 10
        switches, note = [(10, T // 2, T)], f"(context {T // 2} until step 10"
    assert {shape for training_mode, shape in seen if not training_mode} == {(B, T)}, (
        "evaluation: full windows"
    )
    assert summary["stopped"] == "done" and all(
        math.isfinite(loss) for _, loss in summary["losses"]
    )

    # What the user reads: the evaluations inside the short phase say why their validation loss is
    # high, and loss.png marks each switch, also when --plot-only draws it again from the files.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    note += ": the validation windows' later positions are not trained yet)"
    assert [note in line for line in lines] == [True, False, False]  # steps 0, 10, 20
    assert drawn and all(d == switches for d in drawn)  # every save of loss.png
    monkeypatch.setattr(slm.plot, "plot_run", lambda *a, switches=None: drawn.append(switches))
    training.main(["--plot-only", tc.out_dir])
    assert drawn[-1] == switches


def test_the_weights_average_weighs_each_steps_weights_by_the_decay_and_swaps_in_and_out_exactly():
    from slm.averaging import WeightAverage

    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.7)
    seen = []
    for _ in range(4):  # four "steps": new weights each time, mixed into the average
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        seen.append([p.detach().clone() for p in model.parameters()])
        average.update()
    # the last step 1, the one before 0.7, ...
    weights = [0.7 ** (len(seen) - 1 - i) for i in range(len(seen))]
    expected = [sum(w * s[j] for w, s in zip(weights, seen)) / sum(weights) for j in range(2)]
    trained = [p.detach().clone() for p in model.parameters()]
    pointers = [p.data_ptr() for p in model.parameters()]
    with average.swapped_in():
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach(), e)  # the initial weights count for nothing
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))  # bit for bit
    # the same tensors: compile and AdamW hold them
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_ema_keeps_the_average_as_the_best_model_and_leaves_the_training_itself_untouched(
    tiny_data_dir, tmp_path, monkeypatch
):
    over = dict(max_iters=12, eval_interval=6, dropout=0.1, batch_size=2, eval_iters=2)
    plain = training.train(*smoke(tiny_data_dir, tmp_path / "plain", **over), progress=False)
    averaged = training.train(
        *smoke(tiny_data_dir, tmp_path / "ema", ema=0.8, **over), progress=False
    )
    # the same steps, to the last bit: the average only watches
    assert averaged["losses"] == plain["losses"]
    trained = torch.load(tmp_path / "plain" / "ckpt.pt", weights_only=True)
    ckpt = torch.load(tmp_path / "ema" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(ckpt["model"][k], v) for k, v in trained["model"].items())
    best = torch.load(tmp_path / "ema" / "best_model_params.pt", weights_only=True)
    names = [n for n, p in GPT(smoke(tiny_data_dir, tmp_path)[0]).named_parameters()]
    assert (
        best["step"] == 12 and ckpt["average"]["updates"] == 12 and ckpt["average"]["decay"] == 0.8
    )
    for name, a in zip(names, ckpt["average"]["average"]):
        # what is kept as the best model is the average ...
        assert torch.equal(best["model"][name], a)
    # ... not the trained weights
    assert not torch.equal(best["model"][names[0]], trained["model"][names[0]])
    # ... and what evaluation scored: another loss than the trained weights' at the same step
    rows, plain_rows = (
        read_log(tmp_path / "ema" / "log.csv"),
        read_log(tmp_path / "plain" / "log.csv"),
    )
    assert (
        rows[0]["val_loss"] == plain_rows[0]["val_loss"]
        and rows[-1]["val_loss"] != plain_rows[-1]["val_loss"]
    )
    GPT.from_checkpoint(best)  # a model file like any other: strict load of every key
    assert (
        "moving average of the weights (`--ema 0.8`)"
        in (tmp_path / "ema" / "report.md").read_text()
    )
    assert "moving average" not in (tmp_path / "plain" / "report.md").read_text()
    # --plot-only finds the run's --ema in ckpt.pt, for the legend (test_report.py checks its words)
    import slm.plot

    drawn = {}
    monkeypatch.setattr(
        slm.plot,
        "plot_run",
        lambda path, history, steps, title, ema=0.0, switches=None: drawn.update(ema=ema),
    )
    training.main(["--plot-only", str(tmp_path / "ema")])
    assert drawn == {"ema": 0.8}


def unused_rows(data_dir) -> torch.Tensor:
    """(vocab,) True at the token ids DATA/train.bin never uses."""
    from slm.datafiles import read_meta

    unused = torch.ones(50257, dtype=torch.bool)
    unused[read_meta(data_dir)["splits"]["train"]["used_ids"]] = False
    return unused


def test_the_rows_train_bin_never_uses_start_at_zero_and_stay_equal_and_full_head_trains_all(
    tiny_data_dir, tmp_path
):
    """By default the head's rows of the tokens train.bin never uses start at zero and move as one
    shared row: after 50 steps (AdamW, weight decay 0.1, clipping) they are all equal, and not
    zero, in both files (best_model_params.pt holds the weights' average, --ema). ckpt.pt keeps the
    used ids, and the state_dict is an ordinary GPT's. --full-head trains every row and keeps
    none."""
    unused = unused_rows(tiny_data_dir)
    files = {}
    for name, over in (("used", {}), ("full", {"full_head": True})):
        mc, tc = smoke(
            tiny_data_dir, tmp_path / name, max_iters=50, eval_interval=50, ema=0.9, **over
        )
        training.train(mc, tc, progress=False, samples=False)
        files[name] = {f: load_checkpoint(tmp_path / name / f) for f in ("ckpt.pt", BEST)}
    used, full = files["used"], files["full"]
    assert torch.equal(used["ckpt.pt"]["head_rows"], torch.nonzero(~unused)[:, 0])
    assert full["ckpt.pt"]["head_rows"] is None
    for f in ("ckpt.pt", BEST):
        assert set(used[f]["model"]) == set(full[f]["model"]) == set(GPT(mc).state_dict())
        wte = used[f]["model"]["transformer.wte.weight"]
        shared = wte[unused][0]
        assert torch.equal(wte[unused], shared.expand(int(unused.sum()), -1))
        assert shared.abs().gt(0).all() and wte[~unused].abs().amin(dim=1).gt(0).all()
        assert full[f]["model"]["transformer.wte.weight"][unused].abs().amin(dim=1).gt(0).all()


def test_the_mfu_counts_the_flops_of_the_head_rows_the_run_multiplies(
    tiny_data_dir, tmp_path, capsys
):
    """The used-rows head multiplies the used rows and the shared one: the announced FLOPs and the
    report's MFU count those, not the 50,257 rows --full-head multiplies."""
    head_rows = int((~unused_rows(tiny_data_dir)).sum()) + 1
    for name, rows in (("used", head_rows), ("full", None)):
        mc, tc = smoke(tiny_data_dir, tmp_path / name, max_iters=8, full_head=rows is None)
        s = training.train(mc, tc, progress=False, samples=False, peak_flops=1e9)
        flops = GPT(mc).flops_per_token(rows)
        out = capsys.readouterr().out
        said = "" if rows is None else f", the head over {rows:,} rows"
        assert f"{flops / 1e6:.1f} MFLOPs per training token{said}\n" in out
        report = (tmp_path / name / "report.md").read_text()
        assert f"MFU {flops * s['tokens_per_s'] / 1e9:.1%}" in report


def test_resume_keeps_the_checkpoints_head_and_an_old_checkpoint_resumes_with_the_full_head(
    tiny_data_dir, tmp_path
):
    """A checkpoint from before head_rows (its unused rows are not zero) resumes with the full
    head and finishes as a straight --full-head run does; resuming on other data is refused in
    one line, as ever."""
    over = dict(max_iters=8, eval_interval=4, batch_size=2, eval_iters=1, full_head=True)
    mc, tc = smoke(tiny_data_dir, tmp_path / "straight", **over)
    straight = training.train(mc, tc, progress=False, samples=False)
    mc, tc = smoke(tiny_data_dir, tmp_path / "old", **over)
    training.train(mc, tc, progress=False, samples=False, stop_after=4)
    ckpt = torch.load(tmp_path / "old" / "ckpt.pt", weights_only=True)
    del ckpt["head_rows"], ckpt["train_config"]["full_head"]  # as written before this change
    torch.save(ckpt, tmp_path / "old" / "ckpt.pt")
    second = training.main(["--resume", "--out-dir", tc.out_dir, "--no-progress", "--no-samples"])
    assert [loss for _, loss in second["losses"]] == pytest.approx(
        [loss for _, loss in straight["losses"][4:]], abs=1e-6
    )
    assert load_checkpoint(tmp_path / "old" / "ckpt.pt")["head_rows"] is None

    other = tmp_path / "other"
    shutil.copytree(tiny_data_dir, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["splits"]["train"]["sha256"] = "0" * 64  # another train.bin, as meta.json describes it
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CLIError, match="the train data in .* changed since"):
        training.main(["--resume", "--out-dir", tc.out_dir, "--data-dir", str(other)])


def test_resume_refuses_changed_settings(tiny_data_dir, tmp_path):
    mc, tc = smoke(
        tiny_data_dir,
        tmp_path / "out",
        max_iters=4,
        warmup_iters=1,
        eval_interval=2,
        batch_size=2,
        eval_iters=1,
    )
    training.train(mc, tc, progress=False, stop_after=2)
    with pytest.raises(CLIError, match="--max-iters 100 differs from the 4"):
        training.main(["--resume", "--out-dir", tc.out_dir, "--max-iters", "100"])
    with pytest.raises(CLIError, match="no checkpoint at"):
        training.main(["--resume", "--out-dir", str(tmp_path / "nowhere")])


def test_a_full_disk_at_a_save_is_one_line_and_keeps_the_previous_checkpoints(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out", max_iters=8, eval_interval=4, batch_size=2, eval_iters=1
    )
    training.train(mc, tc, progress=False, stop_after=4)
    out = Path(tc.out_dir)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # after the run started: 5 MiB left, then ENOSPC as torch reports it
    def disk_fills_up(obj, f, *args, **kwargs):
        fake_free_space(monkeypatch, 5 << 20)
        torch_save_on_a_full_disk(obj, f)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    code, _, err = call_cli(
        training.main, ["--resume", "--out-dir", str(out), "--no-progress"], capsys
    )
    monkeypatch.undo()
    assert code == 1
    assert re.fullmatch(
        r"error: no space left on device writing "
        rf"{re.escape(str(out))}/(best_model_params|ckpt)\.pt "
        r"\(about (6.3|19) MiB needed, 5.0 MiB free on .+\); free space or "
        r"pass another --out-dir; "
        r"the previous (best_model_params|ckpt)\.pt is intact\n",
        err,
    ), err
    # byte-identical, no .tmp, lock released
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_checkpoint(out / "ckpt.pt")["step"] == 4


def test_too_little_space_refuses_before_the_first_step(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    fake_free_space(monkeypatch, 3 << 20)  # the smoke model's two files need about 26 MiB
    code, stdout, err = call_cli(
        training.main,
        [
            "--preset",
            "smoke",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 1
    assert re.fullmatch(
        rf"error: not enough space in {re.escape(str(out))} for "
        r"best_model_params.pt and ckpt.pt "
        r"\([\d.]+ MiB and [\d.]+ MiB\): about [\d.]+ MiB needed \([\d.]+ "
        r"MiB with a margin\), 3.0 MiB "
        r"free on .+; free space or pass another --out-dir \(nothing was "
        r"started\)\n",
        err,
    ), err
    assert "step 0" not in stdout and not out.exists()


def test_a_second_run_on_the_same_out_dir_is_refused(tiny_data_dir, tmp_path, lock_holder, capsys):
    out = tmp_path / "out"
    holder = lock_holder(out)
    code, _, err = call_cli(
        training.main,
        [
            "--preset",
            "smoke",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 1
    assert (
        err.startswith(f"error: another run is writing into {out} (pid {holder.pid}: ")
        and err.count("\n") == 1
    )
    assert os.listdir(out) == [".lock"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoints(
    tiny_data_dir, tmp_path, monkeypatch
):
    import model as model_module

    class BreaksAtStep6(model_module.GPT):
        calls = 0

        def forward(self, idx, targets=None, **kw):
            logits, loss = super().forward(idx, targets, **kw)
            if self.training:
                BreaksAtStep6.calls += 1
                if BreaksAtStep6.calls >= 6:
                    loss = loss * float("nan")
            return logits, loss

    monkeypatch.setattr(training, "GPT", BreaksAtStep6)
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out", max_iters=10, eval_interval=4, batch_size=2, eval_iters=1
    )
    with pytest.raises(CLIError, match=r"loss became nan at step 6 .*last saved at step 4"):
        training.train(mc, tc, progress=False)
    assert load_checkpoint(Path(tc.out_dir) / "ckpt.pt")["step"] == 4
    assert load_checkpoint(Path(tc.out_dir) / "best_model_params.pt")["step"] in (0, 4)


# ----------------------------------------------------------------------------- processes


@pytest.mark.slow  # a subprocess and three runs
def test_sigkill_at_a_random_step_then_resume_finishes_like_a_straight_run(tiny_data_dir, tmp_path):
    over = dict(max_iters=24, eval_interval=3, batch_size=2, eval_iters=1)
    mc, tc = smoke(tiny_data_dir, tmp_path / "straight", **over)
    training.train(mc, tc, progress=False)

    out = tmp_path / "killed"
    args = ["--preset", "smoke", "--data-dir", str(tiny_data_dir), "--out-dir", str(out)]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in over.items()]
    seed = random.randrange(10**6)
    target = random.Random(seed).choice([3, 6, 9, 12, 15])
    proc = start_training(args)
    wait_for_log_step(proc, out / "log.csv", target)
    # land anywhere in the steps after it, even mid-save
    time.sleep(random.Random(seed).uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (
        f"seed {seed}: the run finished before it could be killed"
    )
    killed_at = load_checkpoint(out / "ckpt.pt")["step"]
    assert killed_at >= target
    assert (out / ".lock").exists()  # left by the killed run; it must not block the resume

    resumed = training.main(["--out-dir", str(out), "--resume", "--no-progress"])
    assert resumed["stopped"] == "done" and resumed["step"] == 24
    assert resumed["losses"][0][0] == killed_at + 1
    assert_same_rows(
        read_log(out / "log.csv"), read_log(tmp_path / "straight" / "log.csv"), tol=1e-5
    )
    assert not (out / ".lock").exists()


def test_ctrl_c_saves_the_checkpoint_and_says_how_to_resume_and_a_second_run_is_refused(
    tiny_data_dir, tmp_path
):
    out = tmp_path / "out"
    proc = start_training(
        [
            "--preset",
            "smoke",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(out),
            "--max-iters",
            "100000",
            "--eval-interval",
            "3",
            "--eval-iters",
            "1",
            "--batch-size",
            "2",
        ]
    )
    wait_for_log_step(proc, out / "log.csv", 3)
    second = run_training(
        ["--preset", "smoke", "--data-dir", str(tiny_data_dir), "--out-dir", str(out)], timeout=120
    )
    # one writer per out dir: refused at once, in one line
    assert second.returncode == 1, second.stderr
    assert second.stderr.startswith(
        f"error: another run is writing into {out} (pid {proc.pid}: training.py --no-progress "
        f"--preset smoke --data-dir {tiny_data_dir} --out-dir {out} "
    )
    assert second.stderr.endswith(
        "); wait for it to finish or stop it, or pass another --out-dir\n"
    )
    assert second.stderr.count("\n") == 1
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] >= 3
    assert f"stopped at step {ckpt['step']} of 100000 (SIGINT)" in stdout
    assert f"python training.py --out-dir {out} --resume" in stdout


@pytest.mark.slow  # three processes
@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(tiny_data_dir, tmp_path):
    common = [
        "--preset",
        "smoke",
        "--data-dir",
        str(tiny_data_dir),
        "--max-iters",
        "5",
        "--eval-interval",
        "1",
        "--eval-iters",
        "2",
        "--warmup-iters",
        "1",
        "--dropout",
        "0",
    ]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "training.py",
            "--no-progress",
            *common,
            "--batch-size",
            "2",
            "--out-dir",
            str(tmp_path / "two"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # only rank 0 speaks
    assert "2 process(es)" in r.stdout and r.stdout.count("finished at step 5") == 1

    one = training.main(
        [*common, "--batch-size", "4", "--out-dir", str(tmp_path / "one"), "--no-progress"]
    )
    assert one["world_size"] == 1
    two_rows = read_log(tmp_path / "two" / "log.csv")
    one_rows = read_log(tmp_path / "one" / "log.csv")
    assert len(one_rows) == 6
    assert_same_rows(two_rows, one_rows, tol=1e-4)
    assert one_rows[-1]["val_loss"] < one_rows[0]["val_loss"]  # the curve being compared does move


# ----------------------------------------------------------------------------- the time budget is
# the schedule


class FakeClock:
    """Stands in for training.py's `time` module: the clock moves only by what the test charges for
    each training step and each evaluation, so a run's timing is known exactly and takes no real
    time."""

    def __init__(self, step_s, eval_s: float):
        self.now, self.step_s, self.eval_s = 1000.0, step_s, eval_s
        self.steps = 0  # train_step calls so far: a fresh run's step

    def time(self) -> float:
        return self.now


def fake_clock(monkeypatch, step_s, eval_s: float) -> FakeClock:
    """Patch training.py's clock; step_s is seconds per step, or a function of the step about to
    run (of a run from step 0)."""
    clock = FakeClock(step_s, eval_s)
    real_step, real_evaluate = training.train_step, training.evaluate

    def timed_step(*args):
        step_s = clock.step_s(clock.steps) if callable(clock.step_s) else clock.step_s
        clock.now, clock.steps = clock.now + step_s, clock.steps + 1
        return real_step(*args)

    def timed_evaluate(*a, **k):
        clock.now += clock.eval_s
        return real_evaluate(*a, **k)

    monkeypatch.setattr(training, "time", clock)
    monkeypatch.setattr(training, "train_step", timed_step)
    monkeypatch.setattr(training, "evaluate", timed_evaluate)
    return clock


# 1 minute, 1 s per step, 3 s per evaluation, an evaluation every 20 steps, warmup 5 (smoke). Before
# the count is fixed: the step-0 evaluation (3 s, which also prices the later ones) and the 5 probe
# steps (5 s): 8 s. The 52 s left hold N = 48 steps: 43 more steps and evaluations at 20, 40 and 48
# = 43 + 9 = 52 s (N = 49 would need 44 + 9 = 53 s).
BUDGET = dict(
    max_minutes=1.0, eval_interval=20, eval_iters=1, batch_size=2, warmup_iters=5, max_iters=30
)


def test_the_time_budget_fixes_the_step_count_and_the_cosine_ends_at_min_lr(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    clock = fake_clock(monkeypatch, step_s=1.0, eval_s=3.0)
    mc, tc = smoke(tiny_data_dir, tmp_path / "out", **BUDGET)
    start = clock.now
    s = training.train(mc, tc, progress=False)
    assert s["stopped"] == "done" and s["step"] == s["max_iters"] == 48
    assert clock.now - start == pytest.approx(60.0), "the run fills its minute exactly"
    assert (
        s["schedule"]["probe_ms_per_step"] == pytest.approx(1000)
        and s["schedule"]["fixed_at_step"] == 5
    )
    assert s["schedule"]["eval_s"] == pytest.approx(3.0), (
        "the step-0 evaluation's time, not a second one's"
    )
    assert "schedule: 48 steps fixed from a probe of 1,000 ms/step" in capsys.readouterr().out
    rows = read_log(tmp_path / "out" / LOG_FILE)
    assert [r["step"] for r in rows] == [0, 20, 40, 48]
    assert rows[-1]["lr"] == pytest.approx(tc.min_lr, rel=1e-9), (
        "the cosine ends at min_lr at the last step"
    )
    ckpt = load_checkpoint(tmp_path / "out" / training.CKPT_FILE)
    assert ckpt["schedule"]["max_iters"] == ckpt["train_config"]["max_iters"] == 48


def test_the_budget_counts_the_time_before_the_first_step(tiny_data_dir, tmp_path, monkeypatch):
    # 10 s pass while the run is built (on a CPU: the calibration's passes, the model, the files):
    # the budget's minute is train()'s, so fewer steps fit. 18 s before the count is fixed (10 s,
    # the step-0 evaluation, 5 probe steps) leave 42 s: N = 41 steps (36 more steps and the
    # evaluations at 20 and 41; the one at 40 is left to the final one) = 36 + 6 s.
    clock = fake_clock(monkeypatch, step_s=1.0, eval_s=3.0)
    real_build = training.build

    def slow_build(*args):
        clock.now += 10.0
        return real_build(*args)

    monkeypatch.setattr(training, "build", slow_build)
    mc, tc = smoke(tiny_data_dir, tmp_path / "out", **BUDGET)
    start = clock.now
    s = training.train(mc, tc, progress=False)
    assert s["stopped"] == "done" and s["step"] == s["max_iters"] == 41
    assert clock.now - start == pytest.approx(60.0), "the run, its build included, fills a minute"


def test_before_the_budget_fixes_the_count_the_short_phases_are_told_as_shares_not_steps(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    """Step 0's evaluation comes before the count is fixed: it used to name the phases' ends from
    the preset's unused max_iters (a cpu run read "context 32 until step 375", then had the
    switch at 400)."""
    import slm.plot
    import slm.report

    fake_clock(monkeypatch, step_s=1.0, eval_s=3.0)
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out", **BUDGET, quarter_context=0.25, short_context=0.5
    )
    s = training.train(mc, tc, progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    T, why = mc.block_size, ": the validation windows' later positions are not trained yet)"
    assert lines[0].endswith(
        f"(context {T // 4} for the first 25% of the steps and at least warmup's 5, {T // 2} "
        f"until 50%, of the count the time budget fixes after warmup{why}"
    )
    fixed = replace(tc, max_iters=s["max_iters"])
    _, half = phase_ends(fixed)
    assert lines[1].startswith("step 20:") and 20 < half, (
        "the second evaluation still trains on cut windows"
    )
    assert (
        lines[1].endswith(schedule.short_context_note(fixed, T, 20))
        and f"until step {half}" in lines[1]
    )
    alone = replace(tc, quarter_context=0.0)
    assert schedule.short_context_note(alone, T, 0, count_fixed=False).startswith(
        f" (context {T // 2} for the first 50% of the steps and at least warmup's 5, of the count"
    )
    assert (
        schedule.short_context_note(replace(alone, short_context=0.0), T, 0, count_fixed=False)
        == ""
    )

    # Nor does loss.png mark the switches where the unused count would put them, as drawn then or
    # redrawn from a run stopped inside the probe; once the count is fixed, it marks them where they
    # are.
    drawn = []
    monkeypatch.setattr(slm.report, "plot_run", lambda *a, switches=None: drawn.append(switches))
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "probe", **BUDGET, quarter_context=0.25, short_context=0.5
    )
    assert training.train(mc, tc, progress=False, stop_after=3)["schedule"] is None
    assert drawn and all(d is None for d in drawn)
    monkeypatch.setattr(slm.plot, "plot_run", lambda *a, switches=None: drawn.append(switches))
    training.main(["--plot-only", tc.out_dir])
    assert drawn[-1] is None
    training.main(["--plot-only", str(tmp_path / "out")])
    assert drawn[-1] == context_switches(fixed, T)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_step_count_is_fixed_without_an_evaluation_of_its_own_where_step_0s_time_will_do(
    tiny_data_dir, tmp_path, monkeypatch, compiled
):
    """Eager, the step-0 evaluation prices the later ones: no evaluation only to time one (48 steps,
    as above). Compiled, step 0's first call also compiled the graphs, so one more is timed when
    the count is fixed: 3 s less for steps (45). A run resumed before its count was fixed has no
    evaluation of its own to go by: it times one too. (torch.compile stands in as the identity:
    what is checked is the timing, not the compiler.)"""
    monkeypatch.setattr(torch, "compile", lambda model, **k: model)
    monkeypatch.setattr(hardware, "compile_problem", lambda device: None)
    clock = fake_clock(monkeypatch, step_s=1.0, eval_s=3.0)
    real_evaluate, scored = training.evaluate, []
    monkeypatch.setattr(
        training, "evaluate", lambda *a, **k: (scored.append(clock.now), real_evaluate(*a, **k))[1]
    )
    mc, tc = smoke(tiny_data_dir, tmp_path / "out", **BUDGET, compile=compiled)
    s = training.train(mc, tc, progress=False)
    assert s["max_iters"] == (45 if compiled else 48) and s["schedule"]["eval_s"] == pytest.approx(
        3.0
    )
    assert len(scored) == len(read_log(tmp_path / "out" / LOG_FILE)) + compiled

    mc, tc = smoke(tiny_data_dir, tmp_path / "resumed", **BUDGET)
    # stopped inside the probe
    assert training.train(mc, tc, progress=False, stop_after=3)["schedule"] is None
    scored.clear()
    s = training.main(["--resume", "--out-dir", tc.out_dir, "--no-progress"])
    assert s["schedule"]["fixed_at_step"] == 5 and s["schedule"]["eval_s"] == pytest.approx(3.0)
    rows = read_log(tmp_path / "resumed" / LOG_FILE)
    assert [r["step"] for r in rows] == [0, 20, 40, s["max_iters"]]
    assert len(scored) == len(rows[1:]) + 1, (
        "the evaluations after the resume, and one only to time it"
    )


def test_the_probe_times_steps_until_warmup_ends_so_slow_first_steps_do_not_shrink_the_run(
    tiny_data_dir, tmp_path, monkeypatch
):
    # A CPU's first steps are slow: 4 s for the first two, 2 s for the next three, then 1 s. The
    # probe times every step after the first two until warmup ends (mean of 3 x 2 s and 35 x 1 s),
    # not only the first three (2 s, which would fix about half the steps that fit); a warmup longer
    # than PROBE_MAX_STEPS stops it there.
    step_s = lambda step: 4.0 if step < 2 else 2.0 if step < 5 else 1.0  # noqa: E731
    fake_clock(monkeypatch, step_s=step_s, eval_s=3.0)
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out", **{**BUDGET, "max_minutes": 2.0, "warmup_iters": 40}
    )
    s = training.train(mc, tc, progress=False, stop_after=40)
    assert s["schedule"]["fixed_at_step"] == 40
    assert s["schedule"]["probe_ms_per_step"] == pytest.approx(1000 * (3 * 2 + 35 * 1) / 38)

    monkeypatch.setattr(budget, "PROBE_MAX_STEPS", 10)
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out2", **{**BUDGET, "max_minutes": 2.0, "warmup_iters": 40}
    )
    assert training.train(mc, tc, progress=False, stop_after=10)["schedule"]["fixed_at_step"] == 10


def test_a_budget_run_resumes_with_its_step_count_and_matches_the_printed_reproduction(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    fake_clock(monkeypatch, step_s=1.0, eval_s=3.0)
    mc, tc = smoke(tiny_data_dir, tmp_path / "budget", **BUDGET)
    first = training.train(mc, tc, progress=False, stop_after=20)
    assert first["stopped"] == "stop_after" and first["max_iters"] == 48
    capsys.readouterr()
    # The resumed run is much slower, which would fix a smaller count, but it keeps the
    # checkpoint's.
    fake_clock(monkeypatch, step_s=0.5, eval_s=1.0)
    second = training.main(["--resume", "--out-dir", tc.out_dir, "--no-progress"])
    assert second["stopped"] == "done" and second["step"] == second["max_iters"] == 48
    assert "schedule:" not in capsys.readouterr().out, "no second probe on --resume"
    monkeypatch.undo()

    # The printed reproduction: the same steps, step-based, on the real clock.
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "steps", **{**BUDGET, "max_minutes": 0.0, "max_iters": 48}
    )
    steps = training.train(mc, tc, progress=False)
    assert [s for s, _ in first["losses"] + second["losses"]] == list(range(1, 49))
    assert [loss for _, loss in first["losses"] + second["losses"]] == pytest.approx(
        [loss for _, loss in steps["losses"]], abs=1e-6
    )
    assert_same_rows(
        read_log(tmp_path / "budget" / "log.csv"),
        read_log(tmp_path / "steps" / "log.csv"),
        tol=1e-6,
        keys=("train_loss", "val_loss", "step_loss", "lr"),
    )


def test_a_machine_that_slows_down_is_cut_just_past_the_budget_with_everything_saved(
    tiny_data_dir, tmp_path, monkeypatch
):
    # The probe measures 1 s per step and fixes 48 steps; then each step takes 3 s. Step 21 ends at
    # 59 s (8 s to step 5, 16 steps of 3 s, the evaluation at 20), and 59 s + the last evaluation's
    # 3 s passes 1.02 minutes (61.2 s): evaluate at step 21, save, stop. (Step 20 ended at 53 s:
    # 56 s with an evaluation, still inside.)
    fake_clock(monkeypatch, step_s=lambda step: 1.0 if step < 5 else 3.0, eval_s=3.0)
    mc, tc = smoke(tiny_data_dir, tmp_path / "out", **BUDGET)
    s = training.train(mc, tc, progress=False)
    assert s["stopped"] == "time" and s["step"] == 21 and s["max_iters"] == 48
    assert [r["step"] for r in read_log(tmp_path / "out" / "log.csv")] == [0, 20, 21]
    assert load_checkpoint(tmp_path / "out" / training.CKPT_FILE)["step"] == 21


def test_the_help_of_max_minutes_names_the_cut_the_budget_makes():
    """config.py cannot import slm/budget.py (imports point one way), so its help repeats the cut's
    share: this keeps the two equal."""
    help_text = next(f.metadata["help"] for f in fields(TrainConfig) if f.name == "max_minutes")
    assert f"falls {budget.BUDGET_OVERRUN:.0%} behind" in help_text


def test_a_run_whose_last_step_ends_past_the_budget_is_done_not_cut(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    # The probe measures 1 s per step and fixes 48 steps; then each step takes 1.04 s. Step 47 ends
    # at 57.68 s (60.68 s with an evaluation: inside 1.02 minutes, 61.2 s), step 48, the last, at
    # 58.72 s (61.72 s: past it).
    fake_clock(monkeypatch, step_s=lambda step: 1.0 if step < 5 else 1.04, eval_s=3.0)
    mc, tc = smoke(tiny_data_dir, tmp_path / "out", **BUDGET)
    s = training.train(mc, tc, progress=False)
    assert s["stopped"] == "done" and s["step"] == s["max_iters"] == 48
    assert "overrun" not in capsys.readouterr().out
    assert [r["step"] for r in read_log(tmp_path / "out" / "log.csv")] == [0, 20, 40, 48]


@pytest.mark.skipif(torch.__version__ < (2, 4), reason="fused AdamW on CPU needs torch 2.4")
def test_cpu_training_uses_fused_adamw_with_the_same_steps_as_foreach():
    from model import GPT

    mc = replace(PRESETS["smoke"].model, n_layer=1)
    tc = PRESETS["smoke"].train
    models = [GPT(mc), GPT(mc)]
    models[1].load_state_dict(models[0].state_dict())
    fused = training.make_optimizer(models[0], tc, "cpu")
    foreach = torch.optim.AdamW(
        models[1].optim_groups(tc.weight_decay),
        lr=tc.learning_rate,
        betas=(tc.beta1, tc.beta2),
        foreach=True,
    )
    assert fused.defaults["fused"] is True
    x = torch.randint(0, mc.vocab_size, (2, 16))
    for _ in range(3):
        for model, opt in zip(models, (fused, foreach)):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # steps of ~3e-3: agree to 0.3%


def test_an_evaluation_just_before_the_end_is_left_to_the_final_one(tiny_data_dir, tmp_path):
    due = lambda step, n: schedule.evaluation_due(step, n, 500)  # noqa: E731
    # the one at 1,500 is 12 steps before the end: left to the final one
    assert [s for s in range(0, 1600, 250) if due(s, 1512)] == [0, 500, 1000]
    # 50 steps (a tenth) apart: both run
    assert due(1500, 1550) and due(1500, 1500) and not due(1500, 1549)
    assert due(0, 30)  # the first evaluation always runs
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out", max_iters=21, eval_interval=20, eval_iters=1, batch_size=2
    )
    training.train(mc, tc, progress=False)
    assert [r["step"] for r in read_log(Path(tc.out_dir) / LOG_FILE)] == [0, 21]
    mc, tc = smoke(
        tiny_data_dir, tmp_path / "out2", max_iters=22, eval_interval=20, eval_iters=1, batch_size=2
    )
    training.train(mc, tc, progress=False)
    assert [r["step"] for r in read_log(Path(tc.out_dir) / LOG_FILE)] == [0, 20, 22]


def test_steps_that_fit_counts_every_evaluation():
    # From step 0, 10 s: steps of 1 s, evaluations of 2 s every 4 steps and at the end.
    # N=6: 6 steps + evaluations at 4 and 6 = 10 s; N=7: 7 + 4 = 11 s.
    assert budget.steps_that_fit(0, 10.0, 1.0, 2.0, 4) == 6
    assert budget.steps_that_fit(4, 10.0, 1.0, 2.0, 4) == 10  # 6 steps + evaluations at 8 and 10
    assert budget.steps_that_fit(3, 0.5, 1.0, 2.0, 4) == 3  # not even one step fits
    # Evaluations of 5 s every 100 steps, from step 95: N=105 leaves the one at 100 to the final
    # one, so its 10 steps and one evaluation take 15 s; N=106 16 s. Counting the one at 100 would
    # give N=100 (10 s).
    assert budget.steps_that_fit(95, 15.0, 1.0, 5.0, 100) == 105
    # 110 is a tenth past 100: 15 + 2 x 5 = 25 s
    assert budget.steps_that_fit(95, 24.9, 1.0, 5.0, 100) == 109
    assert budget.steps_that_fit(95, 25.0, 1.0, 5.0, 100) == 110
    # Short steps (1 s) before half the count, whole-context ones at 2 s after, evaluations free:
    # N=13 takes 6 x 1 + 7 x 2 = 20 s (round(6.5) is 6), N=14 takes 7 + 14 = 21 s.
    half = lambda n: (0, round(n / 2))  # noqa: E731
    assert budget.steps_that_fit(0, 20.0, 1.0, 0.0, 100, ends=half, costs=(1.0, 1.0, 2.0)) == 13
    # N=26 takes 13 + 6.5 s; N=27 takes 14 + 6.5 s
    assert budget.steps_that_fit(0, 20.0, 1.0, 0.0, 100, ends=half, costs=(1.0, 1.0, 0.5)) == 26
    # Three phases, the first quarter at 1 s, to the half at 2 s, then 3 s; from step 2 (the first
    # two are done): N=12 takes (3-2) x 1 + 3 x 2 + 6 x 3 = 25 s, N=13 (ends 3 and 6) 1 + 6 + 21 =
    # 28 s.
    thirds = lambda n: (round(n / 4), round(n / 2))  # noqa: E731
    assert budget.steps_that_fit(2, 25.0, 1.0, 0.0, 100, ends=thirds, costs=(1.0, 2.0, 3.0)) == 12
    assert budget.steps_that_fit(2, 27.9, 1.0, 0.0, 100, ends=thirds, costs=(1.0, 2.0, 3.0)) == 12
    assert budget.steps_that_fit(2, 28.0, 1.0, 0.0, 100, ends=thirds, costs=(1.0, 2.0, 3.0)) == 13


def test_max_iters_with_a_time_budget_is_refused_in_one_line(tiny_data_dir, tmp_path):
    with pytest.raises(CLIError, match="add --max-minutes 0 to train exactly 50 steps"):
        training.main(
            [
                "--preset",
                "cpu",
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(tmp_path / "o"),
                "--max-iters",
                "50",
            ]
        )
    with pytest.raises(CLIError, match="--warmup-iters 2 is too short for --max-minutes 1.0"):
        training.main(
            [
                "--preset",
                "smoke",
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(tmp_path / "o"),
                "--max-minutes",
                "1",
                "--warmup-iters",
                "2",
            ]
        )
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the gpu preset's
# settings, on a CPU

# The gpu preset's training settings (bfloat16, torch.compile, grad_accum 2, dropout 0.1) on a tiny
# model (one
# block: compiling two took 57 s of the suite's time here, one 41 s). bfloat16 is given by hand: a
# CPU without native bf16 (AVX2 only) would plan float32 for it (tests/test_machines.py).
TINY_GPU = [
    "--preset",
    "gpu",
    "--device",
    "cpu",
    "--dtype",
    "bfloat16",
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "64",
    "--batch-size",
    "2",
    "--max-iters",
    "6",
    "--warmup-iters",
    "2",
    "--eval-interval",
    "3",
    "--eval-iters",
    "1",
    "--no-progress",
]


@pytest.mark.slow  # the first torch.compile of a run takes 20-50 s on 2 cores
def test_gpu_preset_settings_compile_on_cpu_save_plain_keys_and_resume_exactly(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    # compiled kernels stay in tmp_path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    args = TINY_GPU + ["--data-dir", str(tiny_data_dir)]
    straight = training.main(args + ["--out-dir", str(tmp_path / "straight")])
    out = capsys.readouterr().out
    # 2 x 2 x 64
    assert (
        "dtype bfloat16" in out and "compile True" in out and "256 tokens per optimizer step" in out
    )
    first = training.main(args + ["--out-dir", str(tmp_path / "halves"), "--stop-after", "4"])
    second = training.main(["--resume", "--out-dir", str(tmp_path / "halves"), "--no-progress"])
    assert "compile True" in capsys.readouterr().out

    for name in ("ckpt.pt", "best_model_params.pt"):
        keys = load_checkpoint(tmp_path / "halves" / name)["model"]
        assert not any("_orig_mod" in k for k in keys), name
    assert [s for s, _ in first["losses"] + second["losses"]] == list(range(1, 7))
    assert [loss for _, loss in first["losses"] + second["losses"]] == pytest.approx(
        [loss for _, loss in straight["losses"]], abs=1e-6
    )
    a = load_checkpoint(tmp_path / "straight" / "ckpt.pt")["model"]
    b = load_checkpoint(tmp_path / "halves" / "ckpt.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bfloat16_on_cpu_trains_resumes_exactly_and_its_model_loads_in_evaluate_and_model_usage(
    tiny_data_dir, tmp_path, capsys
):
    import evaluate
    import model_usage

    # batch 2: on a CPU without native bfloat16 (AVX2) its matmuls are emulated, 10-40x slower than
    # float32
    over = dict(dtype="bfloat16", max_iters=16, eval_interval=8, eval_iters=2, batch_size=2)
    mc, tc = smoke(tiny_data_dir, tmp_path / "straight", **over)
    straight = training.train(mc, tc, progress=False)
    mc, tc = smoke(tiny_data_dir, tmp_path / "halves", **over)
    first = training.train(mc, tc, progress=False, stop_after=5)
    second = training.train(mc, tc, progress=False, resume=True)
    assert [loss for _, loss in first["losses"] + second["losses"]] == pytest.approx(
        [loss for _, loss in straight["losses"]], abs=1e-6
    )
    rows = read_log(tmp_path / "halves" / "log.csv")
    # 10.83 -> 10.68 in 16 steps with the used head rows (10.09 with --full-head: rows held at
    # zero keep logit 0, so the used logits must climb above them; benchmarks/training.md)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.1

    best = tmp_path / "halves" / training.BEST_FILE
    GPT.from_checkpoint(load_checkpoint(best))
    capsys.readouterr()
    scored = evaluate.main(
        [
            "--checkpoint",
            str(best),
            "--data-dir",
            str(tiny_data_dir),
            "--num-samples",
            "0",
            "--quiet",
        ]
    )
    # all windows vs the fixed batches
    assert scored["loss"] == pytest.approx(rows[-1]["val_loss"], abs=0.5)
    model_usage.main(
        ["--checkpoint", str(best), "--prompt", "Once", "--max-new-tokens", "5", "--seed", "0"]
    )
    assert f"[{best} (step 16" in capsys.readouterr().out


def test_grad_accum_2_with_batch_b_equals_grad_accum_1_with_batch_2b(tiny_data_dir, tmp_path):
    over = dict(max_iters=4, eval_interval=4, eval_iters=1, warmup_iters=1, dropout=0.0)
    mc, tc = smoke(tiny_data_dir, tmp_path / "accum", grad_accum=2, batch_size=2, **over)
    accum = training.train(mc, tc, progress=False)
    mc, tc = smoke(tiny_data_dir, tmp_path / "wide", grad_accum=1, batch_size=4, **over)
    wide = training.train(mc, tc, progress=False)
    assert [loss for _, loss in accum["losses"]] == pytest.approx(
        [loss for _, loss in wide["losses"]], abs=1e-5
    )
    a = load_checkpoint(tmp_path / "accum" / "ckpt.pt")["model"]
    b = load_checkpoint(tmp_path / "wide" / "ckpt.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not torch.equal(a["transformer.wte.weight"], training_start_weights(mc)), (
        "the weights did move"
    )


def training_start_weights(mc: GPTConfig) -> torch.Tensor:
    from model import GPT

    torch.manual_seed(PRESETS["smoke"].train.seed)
    return GPT(mc).state_dict()["transformer.wte.weight"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_passes_its_checks_and_builds_its_model(name):
    from model import GPT

    p = PRESETS[name]
    check_settings(p.model, p.train)
    model = GPT(p.model)
    _, loss = model(torch.zeros((1, 8), dtype=torch.long), torch.zeros((1, 8), dtype=torch.long))
    assert math.isfinite(loss.item())
    if name == "gpu":
        # dtype auto: the machine's plan picks bfloat16 where native, float16 + GradScaler on older
        # GPUs
        assert model.num_params() == 51_213_824 and p.train.compile and p.train.dtype == "auto"


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_float16_without_cuda_is_a_one_line_refusal(tiny_data_dir, tmp_path, capsys, preset):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: float16 is allowed")
    with pytest.raises(CLIError) as e:
        training.main(
            [
                "--preset",
                preset,
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(tmp_path / "o"),
                "--dtype",
                "float16",
            ]
        )
    assert "--dtype float16 needs a CUDA GPU" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()
    # refused before the time budget's calibration (cpu), whose float16 passes on a CPU took ~30 s
    # each here
    out = capsys.readouterr().out
    assert "recipe:" not in out and "plan for" not in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float16_with_grad_scaler_and_pinned_batches_trains_and_resumes(
    tiny_data_dir, tmp_path
):
    over = dict(
        device="cuda", dtype="float16", max_iters=12, eval_interval=6, eval_iters=1, batch_size=4
    )
    mc, tc = smoke(tiny_data_dir, tmp_path / "straight", **over)
    straight = training.train(mc, tc, progress=False)
    mc, tc = smoke(tiny_data_dir, tmp_path / "halves", **over)
    first = training.train(mc, tc, progress=False, stop_after=6)
    second = training.train(mc, tc, progress=False, resume=True)
    scaler = load_checkpoint(tmp_path / "halves" / "ckpt.pt")["scaler"]
    assert scaler and scaler["scale"] > 0, "float16 runs save the GradScaler's state"
    assert [loss for _, loss in first["losses"] + second["losses"]] == pytest.approx(
        [loss for _, loss in straight["losses"]], abs=1e-4
    )
    rows = read_log(tmp_path / "halves" / "log.csv")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs for NCCL")
def test_torchrun_nccl_two_gpus_match_one_gpu_with_the_same_global_batch(tiny_data_dir, tmp_path):
    common = [
        "--preset",
        "smoke",
        "--device",
        "cuda",
        "--data-dir",
        str(tiny_data_dir),
        "--max-iters",
        "5",
        "--eval-interval",
        "1",
        "--eval-iters",
        "2",
        "--warmup-iters",
        "1",
        "--dropout",
        "0",
    ]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    r = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "training.py",
            "--no-progress",
            *common,
            "--batch-size",
            "2",
            "--out-dir",
            str(tmp_path / "two"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    training.main(
        [*common, "--batch-size", "4", "--out-dir", str(tmp_path / "one"), "--no-progress"]
    )
    assert_same_rows(
        read_log(tmp_path / "two" / "log.csv"), read_log(tmp_path / "one" / "log.csv"), tol=1e-3
    )


# ----------------------------------------------------------------------------- what a GPU user
# trips on


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA GeForce RTX 3090", 71e12),
        ("Tesla T4", 65e12),
        ("Tesla V100-SXM2-16GB", 125e12),
        ("Tesla V100-PCIE-32GB", 112e12),
        # not in the table: said so, never another GPU's peak
        ("NVIDIA A10G", None),
        ("NVIDIA GeForce RTX 3090 Ti", None),
        ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
        ("NVIDIA GeForce RTX 4090 D", None),
        ("NVIDIA B200", None),
        ("Radeon RX 7900 XTX", None),
    ],
)
def test_gpu_peak_flops_by_device_name(name, peak):
    from slm.hardware import gpu_peak_flops

    assert gpu_peak_flops(name) == peak


def test_mfu_uses_the_peak_of_the_gpu_detected_and_says_when_it_is_unknown(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    peak, line = mfu_peak("cuda", None)
    assert peak == 121e12 and "NVIDIA L4's dense bf16 peak of 121 TFLOP/s" in line
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Hypothetical X1")
    peak, line = mfu_peak("cuda", None)
    assert (
        peak is None
        and "MFU not shown" in line
        and "'NVIDIA Hypothetical X1'" in line
        and "--peak-flops" in line
    )
    assert mfu_peak("cuda", 2e14)[0] == 2e14, "--peak-flops wins over the table"
    assert mfu_peak("cpu", None) == (None, "")


def test_compile_problem_names_what_is_missing(monkeypatch):
    import shutil

    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "needs Triton" in hardware.compile_problem("cuda")
    assert "MPS" in hardware.compile_problem("mps")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "needs a C++ compiler" in hardware.compile_problem("cpu")
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert "does not support torch.compile" in hardware.compile_problem("cpu")


def test_without_a_compiler_compile_says_so_in_one_line_and_trains_eager(
    tiny_data_dir, tmp_path, monkeypatch, capsys
):
    import shutil

    def no_compile(*a, **k):
        raise AssertionError("torch.compile called where it cannot work")

    # no C++ compiler on PATH: inductor cannot build
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch, "compile", no_compile)
    mc, tc = smoke(
        tiny_data_dir,
        tmp_path / "out",
        compile=True,
        max_iters=2,
        eval_interval=2,
        eval_iters=1,
        batch_size=2,
        warmup_iters=1,
    )
    s = training.train(mc, tc, progress=False)
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "torch.compile" in line]
    assert notes == [
        "note: torch.compile on a CPU needs a C++ compiler (g++, clang++ or MSVC's cl) and none "
        "is on PATH; training without torch.compile (eager)"
    ]
    assert "compile False" in out and s["stopped"] == "done" and s["step"] == 2


def test_training_does_not_import_model_usage():
    import ast

    tree = ast.parse((REPO / "training.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "model_usage" not in imported and "slm.cli" in imported
