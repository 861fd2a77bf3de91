"""Checkpoints written before the machinery moved into slm/ (main at 12c5a9a,
tests/data/ckpt_12c5a9a/) still load, generate and resume with today's code: the format did not
change."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import load_dataset
import tokenization
import training
from config import EOT_ID
from model import GPT
from slm.checkpoint import CKPT_FILE, load_checkpoint

OLD = Path(__file__).parent / "data" / "ckpt_12c5a9a"


def test_a_best_model_from_main_12c5a9a_loads_and_generates():
    ckpt = load_checkpoint(OLD / "best_model_params.pt")
    model = GPT.from_checkpoint(ckpt).eval()
    # the best of its evaluations at 0 and 3
    assert ckpt["step"] in (0, 3) and model.config.n_embd == 4
    out = model.generate(torch.tensor([[EOT_ID]]), max_new_tokens=8, temperature=0.0)
    assert out.shape == (1, 9) and 0 <= int(out.min()) and int(out.max()) < model.config.vocab_size


def test_a_resume_state_from_main_12c5a9a_resumes_to_its_end(tmp_path):
    # the data it was made on: the sample's first 100 stories
    data, out = tmp_path / "data", tmp_path / "out"
    load_dataset.prepare(source="sample", data_dir=data, num_stories=100)
    tokenization.tokenize(data, num_proc=1)
    out.mkdir()
    shutil.copy(OLD / CKPT_FILE, out / CKPT_FILE)
    s = training.main(
        [
            "--resume",
            "--out-dir",
            str(out),
            "--data-dir",
            str(data),
            "--no-progress",
            "--no-samples",
        ]
    )
    assert s["stopped"] == "done" and s["step"] == 6 and s["max_iters"] == 6
    assert load_checkpoint(out / CKPT_FILE)["step"] == 6
