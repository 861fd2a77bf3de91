"""Shared test fixtures. Tests are hermetic: no network, CPU only, everything written under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A real TinyStories sample in the dataset's raw .txt format, beside the checkout when present.
SHARED_TINYSTORIES = REPO.parent / "shared" / "data" / "tinystories"

# Never let a test reach the network, even on a machine that has it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_tinystories() -> Path:
    """Directory holding train.txt / validation.txt of the real sample; skips the test when absent."""
    if not (SHARED_TINYSTORIES / "train.txt").is_file():
        pytest.skip(f"real TinyStories sample not found at {SHARED_TINYSTORIES}")
    return SHARED_TINYSTORIES


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data directory with raw/, train.bin, validation.bin and meta.json from a slice of the bundled real
    TinyStories sample (its first 300 train stories and the same share of validation: small, so quick)."""
    import load_dataset
    import tokenization

    data_dir = tmp_path_factory.mktemp("data")
    load_dataset.prepare(source="sample", data_dir=data_dir, num_stories=300)
    tokenization.tokenize(data_dir, num_proc=1)
    return data_dir
