"""evaluate.py: scores checked by hand (uniform logits give exactly ln 50257) and against direct
computation.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_model_usage import (
    LA,
    REPO,
    call_cli,
    constant_logits,
    env_with_repo,
    save_checkpoint,
    tiny_model,
)

import evaluate
from config import EOT_ID

STORIES = [
    "Tom had a red ball. He liked to throw it high.",
    "Mia saw a bird.\n\nIt sang a song about the sun: café, naïve, 🙂.",
    "The sign said <|endoftext|> in big letters, and Sam laughed.",
]


def raw_txt(stories: list[str]) -> str:
    """TinyStories' raw .txt format: stories separated by lines holding only <|endoftext|>."""
    return "\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n"


@pytest.fixture(scope="module")
def enc():
    from slm.encoding import get_encoding

    return get_encoding()


def run_eval(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    code, out, err = call_cli(evaluate.main, argv, capsys)
    return code, (json.loads(out) if code == 0 else None), err


def test_uniform_logits_give_ln_vocab_and_hand_counted_bits_per_byte(tmp_path, enc, capsys):
    # all logits 0
    ckpt = save_checkpoint(constant_logits(tiny_model(), {}), tmp_path / "uniform.pt")
    text = tmp_path / "held_out.txt"
    text.write_text(raw_txt(STORIES), encoding="utf-8")

    code, result, err = run_eval(
        ["--checkpoint", str(ckpt), "--text-file", str(text), "--num-samples", "0", "--quiet"],
        capsys,
    )
    assert code == 0, err
    story_tokens = [enc.encode_ordinary(s) for s in STORIES]
    n = sum(len(t) + 1 for t in story_tokens)  # [EOT] story [EOT] story [EOT] story
    assert result["scored"]["stories"] == 3
    # every token but the first, once
    assert result["tokens"] == n and result["tokens_scored"] == n - 1
    assert result["loss"] == pytest.approx(math.log(50257), abs=1e-6)
    assert result["perplexity"] == pytest.approx(50257, rel=1e-5)
    # bits per byte: story tokens only (the 2 EOTs among the targets are separators, not text).
    text_bytes = sum(len(s.encode("utf-8")) for s in STORIES)
    assert result["bytes"] == text_bytes
    expected_bpb = (n - 1 - 2) * math.log(50257) / math.log(2) / text_bytes
    assert result["bits_per_byte"] == pytest.approx(expected_bpb, rel=1e-6)
    assert result["samples"] is None
    assert "non-overlapping" in result["windowing"]


def test_windows_match_direct_computation(enc):
    """Non-overlapping and strided scores equal the loss computed by hand, window by window."""
    model = tiny_model(seed=3, block_size=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial model: no two tokens alike
    tokens = np.asarray([EOT_ID] + enc.encode_ordinary(" ".join(STORIES)), dtype=np.int64)
    n, T = len(tokens), model.config.block_size
    assert n > 3 * T
    lengths = evaluate.token_byte_lengths(enc)

    def ce(context: np.ndarray, target: int) -> float:
        logits, _ = model(torch.from_numpy(context)[None])
        return F.cross_entropy(logits[0, -1:], torch.tensor([target])).item()

    with torch.no_grad():
        # Stride 1: every target predicted from the longest context the model allows.
        expected = [ce(tokens[max(0, p - T) : p], int(tokens[p])) for p in range(1, n)]
        got = evaluate.score_tokens(model, tokens, lengths, stride=1, batch_size=7)
        assert got["tokens_scored"] == n - 1
        assert got["loss"] == pytest.approx(np.mean(expected), rel=1e-5)

        # Non-overlapping: chunks of T targets, each from the start of its own chunk; the last
        # window ends at the final token and scores only what the previous windows left.
        expected = []
        for start in range(0, n - 1, T):
            window_start = min(start, n - 1 - T)
            for p in range(start + 1, min(start + T, n - 1) + 1):
                expected.append(ce(tokens[window_start:p], int(tokens[p])))
        got = evaluate.score_tokens(model, tokens, lengths, batch_size=2)
        assert got["loss"] == pytest.approx(np.mean(expected), rel=1e-5)
        assert got["stride"] == T and got["windows"] == math.ceil((n - 1) / T)

        # Shorter than the context: one window, the model's own loss.
        short = tokens[:10]
        _, loss = model(torch.from_numpy(short[:-1])[None], torch.from_numpy(short[1:])[None])
        assert evaluate.score_tokens(model, short, lengths)["loss"] == pytest.approx(
            loss.item(), rel=1e-6
        )


@pytest.mark.parametrize(
    "n,length,stride", [(2, 1, 1), (11, 10, 10), (12, 10, 10), (100, 10, 3), (33, 32, 32)]
)
def test_window_starts_cover_every_target(n, length, stride):
    starts = evaluate.window_starts(n, length, stride)
    covered = {s + 1 + j for s in starts for j in range(length)}
    assert (
        covered == set(range(1, n))
        and starts[-1] + length == n - 1
        and starts == sorted(set(starts))
    )


def test_story_metrics_by_hand():
    stories = [[1, 2, 3, 1, 2, 3, 1], [5, 6]]
    # 2-grams: (1,2)(2,3)(3,1)(1,2)(2,3)(3,1) + (5,6): 4 distinct of 7
    assert evaluate.distinct_n(stories, 2) == pytest.approx(4 / 7)
    # 3-grams: (1,2,3)(2,3,1)(3,1,2)(1,2,3)(2,3,1): 3 distinct of 5
    assert evaluate.distinct_n(stories, 3) == pytest.approx(3 / 5)
    # 4-grams of story 1: (1,2,3,1)(2,3,1,2)(3,1,2,3)(1,2,3,1): one repeat of 4; story 2 has none
    assert evaluate.repeated_ngram_rate(stories, 4) == pytest.approx(1 / 4)
    assert (
        evaluate.distinct_n([[1]], 2) is None and evaluate.repeated_ngram_rate([[1, 2]], 4) is None
    )
    m = evaluate.story_metrics(stories, [True, False])
    assert m["mean_length_tokens"] == 4.5 and m["frac_ended_with_eot"] == 0.5


def test_generated_story_figures_of_programmed_models(tmp_path, capsys):
    """A model that always says " la" never ends; one that always says EOT ends at once."""
    text = tmp_path / "t.txt"
    text.write_text(raw_txt(STORIES[:1]), encoding="utf-8")
    la = save_checkpoint(constant_logits(tiny_model(), {LA: 30.0}), tmp_path / "la.pt")
    code, result, err = run_eval(
        [
            "--checkpoint",
            str(la),
            "--text-file",
            str(text),
            "--num-samples",
            "2",
            "--max-new-tokens",
            "10",
            "--seed",
            "0",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    s = result["samples"]
    assert s["num_samples"] == 2 and s["seed"] == 0
    assert s["mean_length_tokens"] == 10 and s["frac_ended_with_eot"] == 0
    assert s["distinct_2"] == pytest.approx(1 / 18) and s["distinct_3"] == pytest.approx(1 / 16)
    assert s["repeated_4gram_rate"] == pytest.approx(12 / 14)
    assert s["example"] == " la" * 10

    eot = save_checkpoint(constant_logits(tiny_model(), {EOT_ID: 30.0}), tmp_path / "eot.pt")
    code, result, err = run_eval(
        ["--checkpoint", str(eot), "--text-file", str(text), "--num-samples", "3", "--quiet"],
        capsys,
    )
    assert code == 0, err
    s = result["samples"]
    assert (
        s["mean_length_tokens"] == 0 and s["frac_ended_with_eot"] == 1.0 and s["distinct_2"] is None
    )


def test_split_scores_every_token_of_the_bin_and_matches_the_text_file(
    tiny_data_dir, tmp_path, capsys
):
    """--split validation reads DATA/validation.bin; the same stories as .txt score the same."""
    from slm.datafiles import load_raw, read_meta

    ckpt = save_checkpoint(tiny_model(seed=1), tmp_path / "m.pt")
    code, by_split, err = run_eval(
        [
            "--checkpoint",
            str(ckpt),
            "--data-dir",
            str(tiny_data_dir),
            "--split",
            "validation",
            "--num-samples",
            "0",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    meta = read_meta(tiny_data_dir)["splits"]["validation"]
    assert by_split["tokens"] == meta["tokens"] and by_split["tokens_scored"] == meta["tokens"] - 1
    assert by_split["scored"] == {
        "split": "validation",
        "data_dir": str(tiny_data_dir),
        "stories": meta["stories"],
    }

    text = tmp_path / "validation.txt"
    text.write_text(raw_txt(list(load_raw(tiny_data_dir)["validation"]["text"])), encoding="utf-8")
    code, by_file, err = run_eval(
        ["--checkpoint", str(ckpt), "--text-file", str(text), "--num-samples", "0", "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert by_file["tokens"] == by_split["tokens"]
    assert by_file["loss"] == pytest.approx(by_split["loss"], rel=1e-9)


def test_errors_are_one_line(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n<|endoftext|>\n\n", encoding="utf-8")
    cases = [
        ["--checkpoint", str(tmp_path / "missing.pt")],
        ["--checkpoint", str(ckpt), "--text-file", str(tmp_path / "missing.txt")],
        ["--checkpoint", str(ckpt), "--text-file", str(empty)],
        ["--checkpoint", str(ckpt), "--data-dir", str(tmp_path / "no_data")],
    ]
    for argv in cases:
        code, _, err = run_eval(argv + ["--quiet"], capsys)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, argv


def test_cli_prints_one_json_object(tmp_path):
    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    text = tmp_path / "t.txt"
    text.write_text(raw_txt(STORIES), encoding="utf-8")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "evaluate.py"),
            "--checkpoint",
            str(ckpt),
            "--text-file",
            str(text),
            "--num-samples",
            "2",
            "--max-new-tokens",
            "5",
            "--stride",
            "16",
        ],
        cwd=tmp_path,
        env=env_with_repo(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert {"loss", "perplexity", "bits_per_byte", "windowing", "samples"} <= set(result)
    assert result["stride"] == 16 and "overlapping" in result["windowing"]
    assert 0 < result["loss"] < 20 and set(result["samples"]) >= {
        "distinct_2",
        "distinct_3",
        "repeated_4gram_rate",
    }
