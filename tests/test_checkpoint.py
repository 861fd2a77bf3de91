"""Checkpoints written by older code still load, generate and resume with today's: main at 12c5a9a
(before the machinery moved into slm/, tests/data/ckpt_12c5a9a/) and at 5330673 (before the
settings were settled once, tests/data/ckpt_5330673/), whose resume must end on exactly the weights
its own code reached without a stop."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import load_dataset
import tokenization
import training
from config import EOT_ID
from model import GPT
from slm.checkpoint import CKPT_FILE, load_checkpoint
from slm.progress import read_steps

OLD = Path(__file__).parent / "data" / "ckpt_12c5a9a"


def resume_args(tmp_path, fixture: Path) -> list[str]:
    """training.main's flags to resume fixture's ckpt.pt on the data it was made on (the sample's
    first 100 stories), from a copy in tmp_path/out."""
    data, out = tmp_path / "data", tmp_path / "out"
    load_dataset.prepare(source="sample", data_dir=data, num_stories=100)
    tokenization.tokenize(data, num_proc=1)
    out.mkdir()
    shutil.copy(fixture / CKPT_FILE, out / CKPT_FILE)
    return ["--resume", "--out-dir", str(out), "--data-dir", str(data), "--no-progress"]


def test_a_best_model_from_main_12c5a9a_loads_and_generates():
    ckpt = load_checkpoint(OLD / "best_model_params.pt")
    model = GPT.from_checkpoint(ckpt).eval()
    # the best of its evaluations at 0 and 3
    assert ckpt["step"] in (0, 3) and model.config.n_embd == 4
    out = model.generate(torch.tensor([[EOT_ID]]), max_new_tokens=8, temperature=0.0)
    assert out.shape == (1, 9) and 0 <= int(out.min()) and int(out.max()) < model.config.vocab_size


def test_a_resume_state_from_main_12c5a9a_resumes_to_its_end(tmp_path):
    s = training.main([*resume_args(tmp_path, OLD), "--no-samples"])
    assert s["stopped"] == "done" and s["step"] == 6 and s["max_iters"] == 6
    assert load_checkpoint(tmp_path / "out" / CKPT_FILE)["step"] == 6


# ----------------------------------------------------------------------------- main at 5330673

AT_5330673 = Path(__file__).parent / "data" / "ckpt_5330673"


def test_a_best_model_from_main_5330673_loads_and_generates():
    model = GPT.from_checkpoint(load_checkpoint(AT_5330673 / "best_model_params.pt")).eval()
    out = model.generate(torch.tensor([[EOT_ID]]), max_new_tokens=8, temperature=0.0)
    assert out.shape == (1, 9) and int(out.max()) < model.config.vocab_size


def test_a_resume_state_from_main_5330673_ends_on_the_weights_of_its_run_never_stopped(tmp_path):
    # ckpt.pt stopped at step 3 of 6 under 5330673's code; resumed with today's, the last three
    # steps must land on exactly the weights and losses that 5330673's code reached without a stop
    out = tmp_path / "out"
    s = training.main([*resume_args(tmp_path, AT_5330673), "--no-samples"])
    assert s["stopped"] == "done" and s["step"] == 6
    resumed = load_checkpoint(out / CKPT_FILE)["model"]
    never_stopped = torch.load(AT_5330673 / "weights_at_step_6.pt", weights_only=True)["model"]
    assert resumed.keys() == never_stopped.keys()
    # Bit for bit on the CPU kind that wrote the fixture (AVX-512 with bf16); another kind's float32
    # kernels block their sums differently, so across kinds the last bits may differ: a tolerance.
    for k in resumed:
        torch.testing.assert_close(resumed[k], never_stopped[k], rtol=1e-4, atol=1e-6)
    got, want = (read_steps(d) for d in (out / "steps.csv", AT_5330673 / "steps_uninterrupted.csv"))
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["train_loss"] for r in got] == pytest.approx(
        [r["train_loss"] for r in want], rel=1e-5
    )
