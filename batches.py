"""Step 3: random (x, y) training windows from DATA/train.bin and DATA/validation.bin.

    batches = Batches("data", block_size=128, device="cuda")
    x, y = batches.get_batch("train", batch_size=32, generator=torch.Generator().manual_seed(0))
    # x: int64 (32, 128) token windows; y: the same windows one token further on (the targets)

meta.json is checked once, when the object is made: GPT-2 uint16 tokens, each .bin exactly as
long as meta.json counts (sha256 too with verify_sha256=True), each split longer than block_size
tokens. Each .bin is opened once as a read-only np.memmap and kept: every batch is one
fancy-index gather out of it, so memory does not grow with the number of calls (nanoGPT re-opens
the memmap on every call to dodge a leak). On CUDA the batch goes through pinned memory with
non_blocking=True.

Run as a script, it prints one batch decoded, to show what the model is trained on:

    python batches.py --data-dir data --batch-size 2 --block-size 16 --seed 0
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from config import Paths
from slm.cli import ArgumentParser, CLIError, run_cli
from slm.datafiles import SPLITS, bin_path, file_sha256, read_meta

SHOWN_TARGETS = 8  # how many (context -> target) pairs of the first window main() spells out


class Batches:
    """The .bin files of one data directory, memory-mapped once, and random windows of block_size +
    1 tokens.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        block_size: int,
        device: str = "cpu",
        verify_sha256: bool = False,
    ):
        if block_size < 1:
            raise CLIError(f"block_size {block_size} must be at least 1")
        self.data_dir = Path(data_dir)
        self.block_size = block_size
        self.device = device
        self.meta = read_meta(data_dir)
        self._data: dict[str, np.memmap] = {}
        fix = f"python tokenization.py --data-dir {data_dir} --force"
        for split in SPLITS:
            path = bin_path(data_dir, split, self.meta)
            info = self.meta["splits"][split]
            if verify_sha256 and file_sha256(path) != info.get("sha256"):
                raise CLIError(
                    f"{path} does not match the sha256 in meta.json (changed since it was "
                    f"written); rebuild it with: {fix}"
                )
            if info["tokens"] < block_size + 1:
                raise CLIError(
                    f"the {split} split has {info['tokens']:,} tokens, too few for one window of "
                    f"block_size + 1 = {block_size + 1}; use a smaller block size, or more "
                    f"stories (python load_dataset.py --data-dir {data_dir} ... then {fix})"
                )
            self._data[split] = np.memmap(path, dtype=np.uint16, mode="r")
        self._offsets = np.arange(block_size + 1, dtype=np.int64)  # (T+1,)
        self._pin = str(device).startswith("cuda")

    def num_tokens(self, split: str) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> np.memmap:
        try:
            return self._data[split]
        except KeyError:
            raise CLIError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}") from None

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator | None = None):
        """x, y: int64 tensors (batch_size, block_size) on the device; y[:, t] is the token after
        x[:, t]. Window starts are uniform over the split, drawn from generator (the global torch
        RNG when None)."""
        data = self._split(split)
        end = len(data) - self.block_size  # a window starting below it has its last target too
        starts = torch.randint(end, (batch_size,), generator=generator).numpy()  # (B,)
        windows = data[starts[:, None] + self._offsets]  # (B, T+1) uint16, one gather
        x = torch.from_numpy(windows[:, :-1].astype(np.int64))  # (B, T)
        y = torch.from_numpy(windows[:, 1:].astype(np.int64))  # (B, T)
        if self._pin:
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        if self.device != "cpu":
            return x.to(self.device), y.to(self.device)
        return x, y


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(
        description="Print one random batch of (x, y) windows from DATA/train.bin or "
        "DATA/validation.bin, as token ids and decoded: y is x one token further on, the token "
        "the model must predict at each position."
    )
    p.add_argument(
        "--data-dir", default=Paths.data_dir, help="directory holding the .bin files and meta.json"
    )
    p.add_argument("--split", choices=SPLITS, default="train", help="which file (default: train)")
    p.add_argument("--batch-size", type=int, default=2, help="windows in the batch (default: 2)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per window (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window starts (default: 0)")
    args = p.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--block-size", args.block_size)):
        if value < 1:
            p.error(f"{flag} {value} must be at least 1")
    print(
        f"batches: data_dir={args.data_dir} split={args.split} batch_size={args.batch_size} "
        f"block_size={args.block_size} seed={args.seed}"
    )
    from slm.encoding import get_encoding

    enc = get_encoding()
    batches = Batches(args.data_dir, args.block_size)
    x, y = batches.get_batch(
        args.split, args.batch_size, generator=torch.Generator().manual_seed(args.seed)
    )
    print(
        f"{args.split}: {batches.num_tokens(args.split):,} tokens; x and y: int64 "
        f"{tuple(x.shape)}, y[b, t] is the token after x[b, t]"
    )
    for b in range(len(x)):
        print(f"window {b}")
        print(f"  x ids  {x[b].tolist()}")
        print(f"  y ids  {y[b].tolist()}")
        print(f"  x text {enc.decode(x[b].tolist())!r}")
        print(f"  y text {enc.decode(y[b].tolist())!r}")
    print("what window 0 teaches, position by position (context -> target):")
    for t in range(min(args.block_size, SHOWN_TARGETS)):
        print(f"  {enc.decode(x[0, : t + 1].tolist())!r} -> {enc.decode([int(y[0, t])])!r}")


if __name__ == "__main__":
    run_cli(main)
