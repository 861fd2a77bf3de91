"""Every benchmark script runs: each at its smallest size, on the tiny real-text data, and prints
its figures. A benchmark that no test runs breaks silently when the code under it changes
(bench_attention and bench_head_loss once called make_step with a signature it no longer had),
and then the command recorded beside its figures in BENCHMARKS.md no longer reproduces them. The
figures here mean nothing; that each script gets to its table does."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import config
from benchmarks import (
    bench_attention,
    bench_batches,
    bench_cpu_step,
    bench_dtype,
    bench_gpu,
    bench_head_loss,
    bench_head_rows,
    bench_model,
    bench_plot,
    bench_tokenization,
    bench_training,
    ema_decays,
    recipe_search,
    same_numbers,
    story_names,
)
from slm.cli import CLIError

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"[\d,]+(\.\d+)?"


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """Some scripts set torch's thread count for their own process (bench_batches, bench_model): put
    it back.
    """
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_benchmarks_md_indexes_every_write_up_and_links_only_files_that_exist():
    """BENCHMARKS.md is the index of benchmarks/*.md: a write-up it does not link is a figure no
    reader finds, and a link to a file that is gone is a figure no reader can check."""
    index = (REPO / "BENCHMARKS.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", index)
    local = [link for link in links if "://" not in link]
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"BENCHMARKS.md links files that do not exist: {missing}"
    linked = {(REPO / link).resolve() for link in local}
    unlinked = [
        p.name for p in sorted((REPO / "benchmarks").glob("*.md")) if p.resolve() not in linked
    ]
    assert not unlinked, f"benchmarks/ write-ups BENCHMARKS.md does not link: {unlinked}"


@pytest.fixture(scope="module")
def few_stories(shared_tinystories, tmp_path_factory) -> Path:
    """The first stories of the real sample's validation.txt, in its format: enough to score a model
    on.
    """
    stories = (shared_tinystories / "validation.txt").read_text().split("<|endoftext|>")[:6]
    path = tmp_path_factory.mktemp("text") / "few.txt"
    path.write_text("<|endoftext|>".join(stories))
    return path


@pytest.fixture(scope="module")
def benched_run(tiny_data_dir, tmp_path_factory):
    """bench_training.py's own training run (the smoke preset, 4 steps): its out dir and what it
    printed.
    """
    out = tmp_path_factory.mktemp("bench") / "out"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        bench_training.main(
            [
                "--data-dir",
                str(tiny_data_dir),
                "--out-dir",
                str(out),
                "--stories",
                "1",
                "--max-new-tokens",
                "6",
                "--",
                "--preset",
                "smoke",
                "--max-iters",
                "4",
                "--warmup-iters",
                "1",
                "--eval-interval",
                "2",
                "--no-progress",
            ]
        )
    return out, printed.getvalue()


def test_bench_training_trains_a_preset_and_reports_it(benched_run, capsys):
    out, report = benched_run
    assert re.search(r"stopped: .* at step 4 of 4", report)
    assert re.search(rf"validation loss: {NUMBER} at step 0 -> best {NUMBER} at step [24]", report)
    assert "--- story 1 ---" in report
    bench_training.main(
        ["--no-train", "--out-dir", str(out), "--stories", "1", "--max-new-tokens", "6"]
    )
    again = capsys.readouterr().out
    assert f"report of the finished run in {out}" in again and "--- story 1 ---" in again


def test_story_names_counts_who_stays_who_comes_and_what_repeats():
    words = "Lily went out with Tom and Tom said hi to Mia then Lily came home to Lily".split()
    assert story_names.measure(words) == (True, 2, 0.0)  # Tom, Mia; no 4-word run twice
    looping = "Tom ran and ran and ran and ran home".split()
    keeps, names, repeated = story_names.measure(looping)
    # 6 runs of 4 words, 4 of them different: "ran and ran and" and "and ran and ran" come twice
    assert (keeps, names) == (False, 1) and repeated == pytest.approx(1 - 4 / 6)
    # too short for a 4-word run: none repeat
    assert story_names.measure("Tom saw Lily".split()) == (True, 1, 0.0)
    assert story_names.measure([]) == (False, 0, 0.0)  # a story that ends at once


@pytest.mark.parametrize("flags", [["--stories", "0"], ["--max-new-tokens", "0"]])
def test_story_names_refuses_nothing_to_sample_in_one_line(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        story_names.main(["--checkpoint", "unused.pt", *flags])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("error: --stories and --max-new-tokens must be at least 1")


def test_story_names_measures_real_stories_that_open_with_lily(tmp_path, capsys):
    stories = [
        # kept to the end
        "Lily had a red ball. She played with it all day. At night, Lily went to bed.",
        "Lily saw a cat. The cat ran up a tree. Tom came and helped the cat down. Tom was happy "
        "and sang loud.",
        # too late
        "Once upon a time there was a big old tree in a quiet park near the sea, and one day Lily "
        "came.",
        "Tom had a dog.",
    ]
    path = tmp_path / "stories.txt"
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    chosen, total = story_names.real_stories(path)
    assert total == 4 and [words[0] for words in chosen] == ["Lily", "Lily"]
    story_names.main(["--text-file", str(path)])
    line = capsys.readouterr().out.strip()
    assert line.startswith(
        "2 of 4 stories name Lily in their first 15 words: Lily in the last third 1/2, other "
        "capitalised names 0.50 a story"
    )  # the second brings in Tom
    assert line.endswith(f"{(17 + 22) / 2:.0f} words a story")


def test_story_names_refuses_a_missing_text_file_in_one_line(tmp_path, capsys):
    with pytest.raises(
        CLIError, match=r"^--text-file .*nothing\.txt does not exist or is " r"not a file$"
    ):
        story_names.main(["--text-file", str(tmp_path / "nothing.txt")])


def test_story_names_reads_a_setting_and_refuses_a_bad_one_in_one_line(capsys):
    assert story_names.setting("0.8,20,none") == (0.8, 20, None)
    assert story_names.setting("1, None, 0.9") == (1.0, None, 0.9)
    with pytest.raises(SystemExit) as exit_:
        story_names.main(["--checkpoint", "unused.pt", "--setting", "0.8,20"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("argument --setting: '0.8,20' is not TEMPERATURE,TOP_K,TOP_P (e.g. 0.8,20,none)")
    )
    for bad in ("-1,20,none", "0.8,0,none", "1,none,1.5"):
        with pytest.raises(SystemExit) as exit_:
            story_names.main(["--checkpoint", "unused.pt", f"--setting={bad}"])
        assert exit_.value.code == 2
        assert (
            f"'{bad}': the temperature must be 0 or more"
            in capsys.readouterr().err.strip().splitlines()[-1]
        )
    for flag, value in (
        ("--setting", "0.8,20,none"),
        ("--stories", "80"),
        ("--max-new-tokens", "100"),
    ):
        with pytest.raises(SystemExit) as exit_:
            story_names.main(["--text-file", "unused.txt", flag, value])
        assert exit_.value.code == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .splitlines()[-1]
            .endswith(f"{flag} samples a model: give it with --checkpoint, not --text-file")
        )


def test_story_names_samples_every_setting(benched_run, capsys):
    out, _ = benched_run
    story_names.main(
        [
            "--checkpoint",
            str(out / "best_model_params.pt"),
            "--stories",
            "2",
            "--max-new-tokens",
            "8",
        ]
    )
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(story_names.SETTINGS)
    for line, (temperature, _, _) in zip(printed, story_names.SETTINGS):
        assert re.match(
            rf"temperature {temperature}, .*: Lily in the last third [012]/2, "
            r"other capitalised names "
            rf"{NUMBER} a story, repeated 4-word runs {NUMBER}, {NUMBER} tokens "
            r"a story",
            line,
        )
    story_names.main(
        [
            "--checkpoint",
            str(out / "best_model_params.pt"),
            "--stories",
            "1",
            "--max-new-tokens",
            "8",
            "--setting",
            "0.5,20,none",
        ]
    )
    assert re.fullmatch(
        r"temperature 0.5, top-k 20, top-p None: Lily in the last third "
        r"[01]/1, .* tokens a story",
        # the one setting given, instead of the four built in
        capsys.readouterr().out.strip(),
    )


@pytest.mark.skipif(
    not (REPO / ".git").exists(), reason="compares with a git revision: needs the repository"
)
def test_bench_plot_times_today_against_a_revision(benched_run, capsys):
    out, _ = benched_run
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    bench_plot.main(["--out", str(out), "--rounds", "1", "--against", head])
    printed = capsys.readouterr().out
    for case in ("finished run", "smoke run, 2 evaluations"):
        assert re.search(
            rf"{case}: now {NUMBER} s, {head} {NUMBER} s .*median ratio " rf"{NUMBER}x", printed
        )


def test_ema_decays_scores_the_trained_weights_and_each_average(
    tiny_data_dir, few_stories, tmp_path, capsys
):
    ema_decays.main(
        [
            "--decays",
            "0.5,0.9",
            "--text-file",
            str(few_stories),
            "--",
            "--preset",
            "smoke",
            "--data-dir",
            str(tiny_data_dir),
            "--out-dir",
            str(tmp_path / "out"),
            "--max-iters",
            "3",
            "--warmup-iters",
            "1",
            "--eval-interval",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert re.search(rf"trained weights \(best_model_params.pt\) +3 +{NUMBER}", printed)
    for decay in ("0.5", "0.9"):
        assert (tmp_path / "out" / f"ema-{decay}.pt").is_file()
        assert re.search(rf"average, decay {decay} +3 +{NUMBER}", printed)


def test_recipe_search_runs_a_trial_skips_it_when_done_and_tables_it(
    tiny_data_dir, few_stories, tmp_path, capsys
):
    trials = tmp_path / "trials.tsv"
    trials.write_text(
        "# a comment line\nsmall\t--preset smoke --max-iters 2 --warmup-iters 1 --eval-interval 2\n"
    )
    table = tmp_path / "out.tsv"
    args = [
        str(trials),
        "--data-dir",
        str(tiny_data_dir),
        "--text-file",
        str(few_stories),
        "--out",
        str(table),
        "--runs",
        str(tmp_path / "runs"),
        "--threads",
        "1",
    ]
    recipe_search.main(args)
    rows = table.read_text().splitlines()
    assert rows[0].split("\t") == recipe_search.FIELDS and len(rows) == 2
    row = dict(zip(recipe_search.FIELDS, rows[1].split("\t")))
    assert row["name"] == "small" and row["steps"] == "2" and float(row["text_loss"]) > 0
    capsys.readouterr()
    recipe_search.main(args)
    assert "0 trials to run (1 already in" in capsys.readouterr().out
    recipe_search.main(["--markdown", str(table)])
    assert re.search(
        rf"\| small \| `\(none\)` \| 2 \| .*\| {row['text_loss']} " r"\|", capsys.readouterr().out
    )


def test_bench_cpu_step_times_and_profiles_a_float32_step(tiny_data_dir, capsys):
    bench_cpu_step.main(
        [
            "--data-dir",
            str(tiny_data_dir),
            "--preset",
            "smoke",
            "--dtypes",
            "float32",
            "--rounds",
            "1",
            "--steps",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert re.search(rf"^float32 +False +{NUMBER} +{NUMBER} +1\.00x$", printed, re.M)
    assert "profile of float32 steps:" in printed and "aten::mm" in printed


def test_bench_cpu_step_compares_shapes_as_shares_of_the_first(tiny_data_dir, capsys):
    bench_cpu_step.main(
        [
            "--data-dir",
            str(tiny_data_dir),
            "--preset",
            "smoke",
            "--dtypes",
            "float32",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--shapes",
            "2x32,4x16",
        ]
    )
    printed = capsys.readouterr().out
    assert re.search(rf"2x32 +{NUMBER} +{NUMBER} +1\.000$", printed, re.M)
    assert re.search(rf"4x16 +{NUMBER} +{NUMBER} +{NUMBER}$", printed, re.M)
    with pytest.raises(CLIError, match="--shapes '16x'"):
        bench_cpu_step.parse_shapes("16x")


def test_bench_cpu_step_times_the_padded_head_against_the_plain_one_with_the_same_losses(
    tiny_data_dir, capsys
):
    bench_cpu_step.main(
        [
            "--data-dir",
            str(tiny_data_dir),
            "--preset",
            "smoke",
            "--dtypes",
            "float32",
            "--rounds",
            "2",
            "--steps",
            "1",
            "--head-pad",
            "--shapes",
            "2x32",
        ]
    )
    printed = capsys.readouterr().out
    assert re.search(rf"^float32 +2x32 +{NUMBER} +{NUMBER} +{NUMBER}x " r"+same$", printed, re.M), (
        printed
    )
    assert bench_cpu_step.head_loss.HEAD_PAD == 64  # put back


def test_bench_attention_compares_the_kernels_in_whole_steps(tiny_data_dir, capsys):
    bench_attention.main(
        ["--data-dir", str(tiny_data_dir), "--preset", "smoke", "--rounds", "1", "--steps", "1"]
    )
    printed = capsys.readouterr().out
    assert re.search(
        rf"^float32 +flash +{NUMBER} ms/step, model's choice +{NUMBER} " r"ms/step", printed, re.M
    )


def test_bench_head_loss_checks_and_times_both_heads(tiny_data_dir, capsys):
    bench_head_loss.main(
        ["--data-dir", str(tiny_data_dir), "--preset", "smoke", "--rounds", "1", "--steps", "1"]
    )
    printed = capsys.readouterr().out
    assert re.search(r"float32: the two heads' loss and gradients: [\d.e+-]+ apart", printed)
    assert re.search(
        rf"^float32 +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER}x " rf"+{NUMBER}x", printed, re.M
    )


def test_bench_dtype_times_each_combination_and_trains_in_each_dtype(
    tiny_data_dir, monkeypatch, capsys
):
    # bfloat16 on a CPU without it is emulated, ~10x slower than float32: the smoke preset at 2 x 16
    # tokens a step
    smoke = config.PRESETS["smoke"]
    monkeypatch.setitem(
        config.PRESETS,
        "smoke",
        replace(
            smoke,
            model=replace(smoke.model, block_size=16),
            train=replace(smoke.train, batch_size=2, eval_iters=1),
        ),
    )
    bench_dtype.main(
        [
            "--data-dir",
            str(tiny_data_dir),
            "--preset",
            "smoke",
            "--rounds",
            "1",
            "--timed-steps",
            "1",
            "--steps",
            "2",
            "--window",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert len(re.findall(r"best +(float32|bfloat16) +\w+ head: +[\d,]+ tokens/s", printed)) == 4
    assert re.search(
        rf"last window: fp32 {NUMBER}, bf16 {NUMBER}, fp32 other seed " rf"{NUMBER}", printed
    )


def test_bench_batches_measures_memory_and_time_per_call(capsys):
    bench_batches.main(
        [
            "--calls",
            "40",
            "--tokens",
            "50000",
            "--block-size",
            "32",
            "--batch-size",
            "4",
            "--compare-calls",
            "10",
        ]
    )
    printed = capsys.readouterr().out
    assert re.search(r"growth over 40 calls: RssAnon [+-][\d,]+ KiB", printed)
    assert re.search(rf"nanoGPT / Batches: {NUMBER}x", printed)


def test_bench_model_times_generation_and_a_training_step(capsys):
    bench_model.main(
        [
            "--prompt-len",
            "4",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
            "--batch-size",
            "1",
            "--seq-len",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert re.search(r"model: default GPTConfig, [\d,]+ parameters", printed)
    assert "generation: batch 1, 4-token prompt, 4 new tokens" in printed
    assert "training step" in printed


@pytest.mark.slow
def test_bench_tokenization_compares_the_contenders_on_a_small_corpus(tmp_path, capsys):
    bench_tokenization.main(
        ["--mb", "0.2", "--num-proc", "1", "--repeats", "1", "--work-dir", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    for contender in ("limit", "limit/procs", "common", "end to end"):
        assert re.search(rf"^{re.escape(contender)} +{NUMBER} +{NUMBER}", printed, re.M)
    assert re.search(r"largest worker +[\d.]+ MiB", printed)


def test_bench_gpu_caps_what_the_plan_sees_as_a_t4_would_show_it():
    from config import PRESETS
    from slm.hardware import Machine
    from slm.plan import make_plan

    gib, gpu = 2**30, PRESETS["gpu"]
    h200 = Machine("cuda", "NVIDIA H200", (9, 0), 139 * gib, 138 * gib)
    t4 = Machine("cuda", "Tesla T4", (7, 5), 15 * gib, 15 * gib)
    capped = bench_gpu.capped_machine(h200, 15 * gib)
    assert (capped.total_memory, capped.free_memory, capped.capability) == (
        15 * gib,
        15 * gib,
        (9, 0),
    )
    fp16 = replace(gpu.train, dtype="float16")
    plans = [make_plan(m, gpu.model, fp16, given={"dtype"}) for m in (capped, t4, h200)]
    # fitted to the cap, not the H200
    assert plans[0].batch_size == plans[1].batch_size < plans[2].batch_size
    assert (
        plans[0].grad_scaler
        and plans[0].batch_size * plans[0].grad_accum == fp16.batch_size * fp16.grad_accum
    )


def test_bench_gpu_runs_a_case_in_its_own_process_and_reports_it(tiny_data_dir, capsys):
    bench_gpu.main(
        [
            "--device",
            "cpu",
            "--cases",
            "native",
            "--steps",
            "10",
            "--data-dir",
            str(tiny_data_dir),
            "--",
            "--preset",
            "smoke",
            "--dtype",
            "float32",
            "--warmup-iters",
            "2",
            "--eval-iters",
            "1",
        ]
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| native |")]
    assert len(rows) == 1 and "| none | float32, " in rows[0] and "(yes)" in rows[0], out
    assert re.search(rf"\| 10 \| {NUMBER} -> {NUMBER} \(yes\) \| {NUMBER} \| - \| - \|$", rows[0])
    assert "plan for CPU" in out  # the case's own output comes through
    with pytest.raises(CLIError, match="unknown t5"):
        bench_gpu.main(["--cases", "t4,t5"])


def test_same_numbers_finds_a_changed_loss_or_weight_and_nothing_else(tmp_path):
    runs = []
    for name in ("old", "new"):
        d = tmp_path / name
        d.mkdir()
        (d / "steps.csv").write_text("step,loss,lr\n1,10.5,0.001\n2,10.25,0.002\n")
        weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
        torch.save({"model": weights, "step": 2}, d / "best_model_params.pt")
        runs.append(d)
    assert same_numbers.differences(*runs) == []
    (runs[1] / "steps.csv").write_text("step,loss,lr\n1,10.5,0.001\n2,10.250001,0.002\n")
    weights["w"][1, 2] += 1e-6
    torch.save({"model": weights, "step": 2}, runs[1] / "best_model_params.pt")
    found = same_numbers.differences(*runs)
    assert len(found) == 2 and found[0].startswith("steps.csv differs") and "tensor w" in found[1]


def test_bench_head_rows_times_both_heads_in_paired_runs_and_counts_distinct_tokens(
    tiny_data_dir, capsys
):
    bench_head_rows.main(
        [
            "--data-dir",
            str(tiny_data_dir),
            "--rounds",
            "1",
            "--",
            "--preset",
            "smoke",
            "--max-iters",
            "8",
            "--warmup-iters",
            "2",
            "--eval-iters",
            "1",
        ]  # fmt: skip
    )
    out = capsys.readouterr().out
    assert re.search(rf"used rows {NUMBER}, full head {NUMBER}: {NUMBER}x", out), out
    assert "load average" in out
    bench_head_rows.main(["--data-dir", str(tiny_data_dir), "--growth"])
    out = capsys.readouterr().out
    assert re.search(rf"\| 58,558 \| {NUMBER} \|", out) and "Heaps' law" in out, out
