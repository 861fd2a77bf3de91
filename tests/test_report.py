"""What a run leaves for a reader: steps.csv (a row per step, kept whole across --resume), the
sample at each evaluation (which must not change the run), loss.png and --plot-only, report.md,
and a redirected log that is whole lines (slm/report.py, slm/plot.py, slm/progress.py,
slm/sampling.py's Glimpse)."""

from __future__ import annotations

import csv
import io
import math
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import tqdm.std
from test_training import lr_curve, smoke

import training
from config import PRESETS
from slm import plot, report
from slm.hardware import Machine
from slm.progress import LOG_LINE_SECONDS, STEPS_FILE, progress_bar, read_log, read_steps
from slm.sampling import GLIMPSE_PROMPT, Glimpse

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(max_iters=8, eval_interval=4, eval_iters=1, batch_size=2, warmup_iters=2)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished(tiny_data_dir, tmp_path_factory):
    """One small smoke run to its end: (summary, out dir, its settings)."""
    mc, tc = smoke(tiny_data_dir, tmp_path_factory.mktemp("run") / "out", **SMALL)
    return training.train(mc, tc, progress=False, preset="smoke"), Path(tc.out_dir), tc


# ----------------------------------------------------------------------------- steps.csv and the
# samples


def test_steps_csv_has_a_row_per_step_with_its_loss_and_learning_rate(finished):
    summary, out, tc = finished
    steps = read_steps(out / STEPS_FILE)
    assert [r["step"] for r in steps] == list(range(1, 9))
    # exactly what trained
    assert [r["train_loss"] for r in steps] == [loss for _, loss in summary["losses"]]
    # the rate each step used
    assert [r["lr"] for r in steps] == pytest.approx(lr_curve(tc)[:8], rel=1e-12)
    log = read_log(out / "log.csv")
    assert [r["step"] for r in log] == [0, 4, 8]
    for row in log[1:]:  # log.csv's step_loss is the loss of the step just done
        assert row["step_loss"] == steps[row["step"] - 1]["train_loss"]


def test_every_evaluation_keeps_a_one_line_sample_from_the_fixed_prompt(finished):
    _, out, _ = finished
    samples = [r["sample"] for r in read_log(out / "log.csv")]
    assert len(samples) == 3 and all(
        s.startswith(GLIMPSE_PROMPT) and len(s) > len(GLIMPSE_PROMPT) for s in samples
    )
    assert all("\n" not in s for s in samples)


def test_samples_change_nothing_in_the_run_and_no_samples_turns_them_off(
    tiny_data_dir, tmp_path, finished
):
    summary, out, _ = finished
    mc, tc = smoke(tiny_data_dir, tmp_path / "quiet", **SMALL)
    quiet = training.train(mc, tc, progress=False, samples=False)
    assert quiet["losses"] == summary["losses"], "the sample drew from the run's random numbers"
    assert [r["sample"] for r in read_log(Path(tc.out_dir) / "log.csv")] == ["", "", ""]
    assert "## Samples" not in (Path(tc.out_dir) / "report.md").read_text()
    a = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(Path(tc.out_dir) / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_glimpse_leaves_the_random_state_and_the_mode_as_they_were():
    from model import GPT

    torch.manual_seed(0)
    model = GPT(PRESETS["smoke"].model).train()
    glimpse = Glimpse("cpu", "float32", seed=3)
    before = torch.get_rng_state()
    first = glimpse(model)
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert glimpse(model) == first, "the same model writes the same sample"
    assert first.startswith(GLIMPSE_PROMPT) and "\n" not in first
    assert 'from "Once upon a time", seed 3' in glimpse.describe()


def test_stop_then_resume_keeps_steps_csv_and_the_samples_whole(tiny_data_dir, tmp_path, finished):
    _, straight, _ = finished
    mc, tc = smoke(tiny_data_dir, tmp_path / "halves", **SMALL)
    first = training.train(mc, tc, progress=False, stop_after=6)
    out = Path(tc.out_dir)
    assert [r["step"] for r in read_steps(out / STEPS_FILE)] == list(range(1, 7)), (
        "written at a clean stop too"
    )
    text = (out / "report.md").read_text()
    assert first["stopped"] == "stop_after" and "Stopped by --stop-after at step 6 of 8" in text
    assert f"python training.py --out-dir {out} --resume" in text
    training.main(["--resume", "--out-dir", str(out), "--no-progress"])
    assert read_steps(out / STEPS_FILE) == read_steps(straight / STEPS_FILE)
    assert [r["sample"] for r in read_log(out / "log.csv")] == [
        r["sample"] for r in read_log(straight / "log.csv")
    ]
    assert "resumed at step 6" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------- report.md


def test_the_report_holds_settings_command_data_losses_plot_and_a_sample_per_evaluation(finished):
    summary, out, _ = finished
    text = (out / "report.md").read_text(encoding="utf-8")
    log = read_log(out / "log.csv")
    assert text.startswith("# Training run: 2 layers x 32 wide, context 64")
    assert "Finished at step 8 of 8" in text
    assert (
        f"Best validation loss **{summary['best_val_loss']:.4f}** at step {summary['best_step']}"
        in text
    )
    assert f"`{out / 'best_model_params.pt'}`" in text
    assert (
        re.search(r"\| machine \| CPU .*; \d+ cores " r"\|", text)
        and f"torch {torch.__version__}" in text
    )
    assert "| data | trained on the TinyStories sample bundled in sample_data/tinystories" in text
    assert "train 300 stories" in text and "tokens" in text
    assert re.search(
        r"\| this session \| [\d.]+ min, 1,024 tokens trained, [\d,]+ " r"tokens/s, MFU not known",
        text,
    )
    assert f"| validation (fixed batches) | {log[0]['val_loss']:.4f} (step 0) |" in text
    assert f"{log[-1]['train_loss']:.4f} (step 8) |" in text
    assert (
        "![train and validation loss](loss.png)" in text
        and (out / "loss.png").read_bytes()[:8] == PNG
    )
    assert (
        "- model: vocab_size=50257, block_size=64, n_layer=2" in text and "eval_interval=4" in text
    )
    for row in log:  # one sample per evaluation, escaped for Markdown
        assert f"- **step {row['step']}** (validation {row['val_loss']:.3f}): " in text
    assert text.count("- **step ") == len(log)


def test_the_reported_command_repeats_the_run_step_for_step(finished, tiny_data_dir, tmp_path):
    _, out, _ = finished
    command = re.search(r"```bash\n(.*)\n```", (out / "report.md").read_text()).group(1)
    args = shlex.split(command)
    assert args[:4] == ["python", "training.py", "--preset", "smoke"] and "--max-minutes" in args
    training.main(
        args[2:]
        + ["--data-dir", str(tiny_data_dir), "--out-dir", str(tmp_path / "again"), "--no-progress"]
    )
    assert read_steps(tmp_path / "again" / STEPS_FILE) == read_steps(out / STEPS_FILE)


def test_reproduce_names_the_model_settings_too():
    mc = replace(PRESETS["smoke"].model, n_layer=3, bias=False)
    tc = replace(PRESETS["smoke"].train, beta2=0.9)
    command = report.reproduce("smoke", mc, tc)
    assert command.startswith("python training.py --preset smoke ")
    assert " --n-layer 3" in command and " --no-bias" in command and " --beta2 0.9" in command
    assert "--n-embd" not in command, "the preset's own values go without saying"
    unknown = report.reproduce(None, mc, tc)  # no preset recorded: every model setting
    assert (
        " --n-embd 32" in unknown
        and " --block-size 64" in unknown
        and " --max-minutes 0" in unknown
    )


def test_the_machine_line_names_the_gpu_and_its_memory_or_the_cpu_flags():
    h100 = Machine(
        device="cuda", name="NVIDIA H100 80GB HBM3", capability=(9, 0), total_memory=80 * 2**30
    )
    assert report.machine_line(h100, 8) == "8 x NVIDIA H100 80GB HBM3, sm90, 80 GiB"
    cpu = Machine(device="cpu", name="Intel Xeon", cpu_flags=frozenset({"avx2", "fma", "sse4_2"}))
    assert report.machine_line(cpu, 1).startswith(
        "CPU Intel Xeon (AVX2, no bf16); flags: avx2, fma; "
    )


def test_model_text_cannot_become_markdown():
    assert (
        report.escape("a *b* <|endoftext|> [x](y) `c`")
        == r"a \*b\* \<\|endoftext\|\> \[x\](y) \`c\`"
    )


# ----------------------------------------------------------------------------- loss.png and
# --plot-only


def test_plot_only_redraws_loss_png_from_the_logs(finished, capsys):
    _, out, _ = finished
    (out / "loss.png").unlink()
    assert training.main(["--plot-only", str(out)]) == {}
    assert (out / "loss.png").read_bytes()[:8] == PNG
    assert f"drew {out / 'loss.png'}" in capsys.readouterr().out


def test_the_plot_is_drawn_at_each_evaluation_and_at_the_end_only_when_steps_came_after_it(
    tiny_data_dir, tmp_path, monkeypatch
):
    drawn = []  # the (evaluations, steps) each drawing showed
    real = report.plot_run
    monkeypatch.setattr(
        report,
        "plot_run",
        lambda path, history, steps, *a, **k: (
            drawn.append((len(history), len(steps))),
            real(path, history, steps, *a, **k),
        ),
    )
    # evaluations at steps 0, 4 and 8, the last step
    mc, tc = smoke(tiny_data_dir, tmp_path / "out", **SMALL)
    training.train(mc, tc, progress=False)
    assert drawn == [(1, 0), (2, 4), (3, 8)]  # the report's save found the plot up to date
    drawn.clear()
    mc, tc = smoke(tiny_data_dir, tmp_path / "stopped", **SMALL)
    # stopped between evaluations: the end draws steps 5, 6
    training.train(mc, tc, progress=False, stop_after=6)
    assert drawn == [(1, 0), (2, 4), (2, 6)]
    assert read_steps(tmp_path / "stopped" / STEPS_FILE)[-1]["step"] == 6


def test_the_plots_legend_says_when_the_evaluations_scored_the_weights_average():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm.plot import draw_evaluations

    history = [
        {"step": 0, "train_loss": 10.8, "val_loss": 10.9},
        {"step": 10, "train_loss": 5.0, "val_loss": 5.2},
    ]
    labels = {}
    for ema in (0.0, 0.99):
        fig, ax = plt.subplots()
        draw_evaluations(ax, history, ema)
        labels[ema] = ax.get_legend_handles_labels()[1]
        plt.close(fig)
    assert labels[0.0][:2] == [
        "train loss, evaluation (fixed batches)",
        "validation loss, evaluation (fixed batches)",
    ]
    assert labels[0.99][:2] == [
        "train loss, the weights' average (--ema 0.99), fixed batches",
        "validation loss, the weights' average (--ema 0.99), fixed batches",
    ]


@pytest.mark.parametrize(
    "source",
    [
        "",
        "trained on TinyStories from the Hugging Face hub",
        "trained on the TinyStories sample bundled in sample_data/tinystories (real stories, "
        "4,042 train stories; the hub could not be reached)",
    ],
)
def test_the_plots_title_stands_clear_above_the_tokens_axis_and_inside_the_figure(
    tmp_path, monkeypatch, source
):
    """A cpu run's title wraps to three lines; at the old pad (30 points) its last line sat 2 pixels
    above the tokens axis's label, and read as touching it."""
    import matplotlib.pyplot as plt

    drawn = []
    # keep the figure plot_run draws, to measure its texts
    monkeypatch.setattr(plt, "close", drawn.append)
    history = [
        {
            "step": s,
            "train_loss": 10.8 / (1 + s / 100),
            "val_loss": 10.9 / (1 + s / 100),
            "tokens": 2048 * s,
            "lr": 1e-3,
        }
        for s in (0, 500, 1000, 1601)
    ]
    steps = [{"step": s, "train_loss": 10.8 / (1 + s / 100), "lr": 1e-3} for s in range(1, 1602)]
    title = "4 layers x 128 wide, context 128, 7.2M parameters, 2,048 tokens per step" + (
        f"\n{source}" if source else ""
    )
    plot.plot_run(
        tmp_path / "loss.png", history, steps, title, 0.99, switches=[(400, 32, 64), (800, 64, 128)]
    )
    (fig,) = drawn
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    (tokens,) = ax.child_axes
    title_box = ax.title.get_window_extent(renderer)
    label_box = tokens.xaxis.label.get_window_extent(renderer)
    assert tokens.xaxis.label.get_text().startswith("tokens seen")
    half_line = ax.title.get_fontsize() * fig.dpi / 72 / 2  # pixels
    assert title_box.y0 - label_box.y1 >= half_line, (
        "the title's last line stands clear of the tokens axis's label"
    )
    assert title_box.y1 < fig.bbox.y1 and 0 < title_box.x0 and title_box.x1 < fig.bbox.x1, (
        "the title is whole"
    )
    plt.close(fig)


def test_plot_only_without_a_log_is_one_line_and_exit_1(tmp_path):
    r = subprocess.run(
        [sys.executable, "training.py", "--plot-only", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 1
        and r.stderr
        == f"error: no {tmp_path}/log.csv to plot; train first (python training.py --out-dir "
        f"{tmp_path})\n"
    )


def test_the_y_axis_leaves_out_the_first_steps_only_when_they_would_flatten_the_rest():
    steps = [
        {"step": s, "train_loss": 2.5 + 8.3 * math.exp(-s / 30), "lr": 1e-3} for s in range(1, 1001)
    ]
    history = [
        {"step": 0, "train_loss": 10.8, "val_loss": 10.8},
        {"step": 1000, "train_loss": 2.5, "val_loss": 2.6},
    ]
    bottom, top, after = plot.y_range(steps, plot.smooth([r["train_loss"] for r in steps]), history)
    assert after == 101 and 2.6 < top < 4.0 and bottom < 2.5, (
        "from step 101 on, the curve fills the height"
    )
    flat = [{"step": s, "train_loss": 7.0 - s / 100, "lr": 1e-3} for s in range(1, 61)]
    history = [
        {"step": 0, "train_loss": 7.0, "val_loss": 7.0},
        {"step": 60, "train_loss": 6.4, "val_loss": 6.4},
    ]
    assert plot.y_range(flat, plot.smooth([r["train_loss"] for r in flat]), history)[2] == 0, (
        "nothing left out"
    )


def test_smoothing_is_an_unbiased_moving_average():
    assert plot.smooth([3.0] * 500) == pytest.approx([3.0] * 500)
    noisy = plot.smooth([1.0, 3.0] * 250)
    assert noisy[0] == 1.0 and abs(noisy[-1] - 2.0) < 0.2


# ----------------------------------------------------------------------------- output that is not a
# terminal


def test_a_bar_on_a_stream_that_is_not_a_terminal_writes_a_line_now_and_then(monkeypatch):
    """A 1,000-step run at one step a second (tqdm's clock faked): a line at the start, each
    minute and the end, whole and ASCII, with a message printed in between."""
    now = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    stream = io.StringIO()
    bar = progress_bar(total=1000, desc="training", unit="step", file=stream, mininterval=0.5)
    for i in range(1000):
        now[0] += 1.0
        bar.update(1)
        if i == 499:
            bar.write("step 500: a message", file=stream)
    bar.close()
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    minutes = int(1000 // LOG_LINE_SECONDS)
    assert len(lines) == 1 + minutes + 1 + 1, lines  # the start, each minute, the message, the end
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("training:   0%") and lines[-1].startswith("training: 100%|#####")
    assert lines[1].startswith("training:   6%") and "60/1000 [01:00<" in lines[1]
    assert "step 500: a message" in lines


def test_a_fast_bar_on_a_stream_that_is_not_a_terminal_writes_its_start_and_end():
    stream = io.StringIO()
    for _ in progress_bar(range(100_000), desc="tokenizing", file=stream, mininterval=0):
        pass
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("tokenizing: 100%"), lines


def test_a_bar_on_a_terminal_is_tqdm_as_ever():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = progress_bar(total=3, file=stream, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in stream.getvalue()


@pytest.mark.slow  # a subprocess that trains
def test_a_redirected_training_log_is_the_evaluations_and_their_samples_and_a_few_progress_lines(
    tiny_data_dir, tmp_path
):
    log = tmp_path / "run.log"
    with open(log, "w") as f:  # stdout and stderr both into one file, as `make run > run.log 2>&1`
        r = subprocess.run(
            [
                sys.executable,
                "training.py",
                "--preset",
                "smoke",
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(tmp_path / "out"),
                "--max-iters",
                "40",
                "--eval-interval",
                "10",
                "--eval-iters",
                "1",
                "--batch-size",
                "2",
            ],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    text = log.read_text(encoding="utf-8")
    assert r.returncode == 0, text
    lines = text.splitlines()
    assert "\r" not in text
    evaluations = [i for i, line in enumerate(lines) if re.match(r"step \d+: train loss", line)]
    assert len(evaluations) == 5
    assert all(lines[i + 1].startswith(f"sample: {GLIMPSE_PROMPT}") for i in evaluations)
    bar_lines = [line for line in lines if re.match(r"training: +\d+%\|", line)]
    assert 2 <= len(bar_lines) <= 12
    assert len(lines) <= 2 * len(evaluations) + len(bar_lines) + 12


@pytest.mark.slow  # two subprocesses
def test_steps_1_and_2_redirected_write_no_carriage_returns(tmp_path):
    data = tmp_path / "data"
    for script in (
        ["load_dataset.py", "--source", "sample", "--num-stories", "50"],
        ["tokenization.py"],
    ):
        r = subprocess.run(
            [sys.executable, *script, "--data-dir", str(data)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        assert "\r" not in r.stdout + r.stderr, script[0]


def test_read_log_reads_a_log_from_before_the_sample_column(tmp_path):
    path = tmp_path / "log.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["step", "train_loss", "val_loss", "step_loss", "lr", "tokens", "elapsed_s", "best"]
        )
        w.writerow([0, 10.8, 10.8, "nan", 1e-4, 0, 1.5, 1])
    assert read_log(path)[0]["sample"] == "" and read_log(path)[0]["step"] == 0
