"""The files of the data directory, described and located: what Step 1 leaves in DATA/raw (a saved
DatasetDict and raw/source.json) and what Step 2 leaves beside it (DATA/<split>.bin, uint16 GPT-2
tokens, and DATA/meta.json, which describes them). Each reader checks what it reads and says in
one line how to make or rebuild a missing or damaged file; batches.py, evaluate.py, training.py
and tokenization.py read the data through here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from config import EOT_ID, EOT_POSITION, TOKENIZER_NAME, VOCAB_SIZE, Paths
from slm.cli import CLIError

SPLITS = ("train", "validation")
DTYPE = "uint16"  # GPT-2 ids (< 50257) fit in 16 bits: half the disk of int32


# ----------------------------------------------------------------------------- DATA/raw (Step 1)


def load_raw(data_dir: str | os.PathLike = Paths.data_dir):
    """The DatasetDict in DATA/raw; a CLIError saying how to make it when it is missing or
    unreadable.
    """
    import datasets

    raw = Path(data_dir) / "raw"
    if not (raw / "source.json").is_file():
        raise CLIError(
            f"no dataset in {raw}; make it first with: python load_dataset.py --data-dir {data_dir}"
        )
    try:
        dd = datasets.load_from_disk(str(raw))
    except Exception as e:
        raise CLIError(
            f"{raw} is not readable ({type(e).__name__}); rebuild it with: python load_dataset.py "
            f"--data-dir {data_dir} --force"
        ) from None
    missing = [s for s in SPLITS if s not in dd]
    if missing:
        raise CLIError(
            f"{raw} has no {'/'.join(missing)} split; rebuild it with: python load_dataset.py "
            f"--data-dir {data_dir} --force"
        )
    return dd


def read_source(data_dir: str | os.PathLike = Paths.data_dir) -> dict:
    """DATA/raw/source.json as a dict; a CLIError saying how to make it when missing or
    unreadable."""
    path = Path(data_dir) / "raw" / "source.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CLIError(
            f"no {path}; make the dataset first with: python load_dataset.py --data-dir {data_dir}"
        ) from None
    except (OSError, ValueError) as e:
        raise CLIError(
            f"{path} is not readable ({e}); rebuild with: python load_dataset.py --data-dir "
            f"{data_dir} --force"
        ) from None


# ----------------------------------------------------------------- DATA/*.bin + meta.json (Step 2)


def _fix(data_dir, force: bool = True) -> str:
    return f"python tokenization.py --data-dir {data_dir}" + (" --force" if force else "")


def read_meta(data_dir: str | os.PathLike = Paths.data_dir) -> dict:
    """DATA/meta.json, checked to describe uint16 GPT-2 tokens with EOT before each story; CLIError
    otherwise.
    """
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise CLIError(f"no {path}; tokenize the dataset first with: {_fix(data_dir, force=False)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CLIError(
            f"{path} is not readable JSON ({e}); rebuild it with: {_fix(data_dir)}"
        ) from None
    if not isinstance(meta, dict):
        raise CLIError(
            f"{path} is not a tokenization.py meta.json; rebuild it with: {_fix(data_dir)}"
        )
    expected = {
        "tokenizer": TOKENIZER_NAME,
        "vocab_size": VOCAB_SIZE,
        "dtype": DTYPE,
        "eot_id": EOT_ID,
        "eot_position": EOT_POSITION,
    }
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CLIError(
                f"{path} says {key} = {meta.get(key)!r}, but this pipeline uses {want!r} (GPT-2 "
                f"BPE, uint16, EOT {EOT_POSITION} each story); rebuild it with: {_fix(data_dir)}"
            )
    splits = meta.get("splits")
    for split in SPLITS:
        info = splits.get(split) if isinstance(splits, dict) else None
        if not (
            isinstance(info, dict)
            and all(isinstance(info.get(k), int) and info[k] >= 0 for k in ("stories", "tokens"))
        ):
            raise CLIError(
                f"{path} has no token count for the {split} split; rebuild it with: "
                f"{_fix(data_dir)}"
            )
    return meta


def bin_path(data_dir, split: str, meta: dict) -> Path:
    """DATA/<split>.bin, checked to hold exactly the tokens meta.json counts (a truncated file is
    refused).
    """
    path = Path(data_dir) / f"{split}.bin"
    tokens = meta["splits"][split]["tokens"]
    if not path.is_file():
        raise CLIError(f"no {path}; tokenize the dataset with: {_fix(data_dir)}")
    size = path.stat().st_size
    if size != tokens * 2:
        raise CLIError(
            f"{path} has {size:,} bytes but meta.json counts {tokens:,} uint16 tokens "
            f"({tokens * 2:,} bytes): truncated or from another run; rebuild it with: "
            f"{_fix(data_dir)}"
        )
    return path


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def used_ids(data_dir, meta: dict):
    """The token ids that occur in DATA/train.bin, sorted (a numpy int64 array): meta.json's
    splits.train.used_ids, or for a meta.json from before it recorded them, counted from
    train.bin."""
    import numpy as np

    ids = meta["splits"]["train"].get("used_ids")
    if ids is None:
        tokens = np.memmap(bin_path(data_dir, "train", meta), dtype=DTYPE, mode="r")
        return np.flatnonzero(np.bincount(tokens, minlength=VOCAB_SIZE))
    ids = np.asarray(ids, dtype=np.int64)
    if (
        ids.ndim != 1
        or ids.size == 0
        or ids[0] < 0
        or ids[-1] >= VOCAB_SIZE
        or (np.diff(ids) <= 0).any()
    ):
        raise CLIError(
            f"{Path(data_dir) / 'meta.json'} has a damaged used_ids list (not sorted ids below "
            f"{VOCAB_SIZE}); rebuild it with: {_fix(data_dir)}"
        )
    return ids
