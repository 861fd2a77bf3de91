"""Benchmark of Step 3: Batches.get_batch over 100,000 calls: memory before and after, and time per
call, beside nanoGPT's get_batch (a new np.memmap every call, one torch.from_numpy per row,
torch.stack).

    .venv/bin/python benchmarks/bench_batches.py
    .venv/bin/python benchmarks/bench_batches.py --calls 100000 --block-size 512 --batch-size 32

The data is random GPT-2 ids in a train.bin of --tokens tokens with the meta.json tokenization.py
would write. Memory is read from /proc/self/status (Linux): RssAnon is the heap, where a leak
would show; RssFile is the memory-mapped .bin's pages in the page cache (at most the file's size,
and reclaimable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batches import Batches  # noqa: E402
from config import EOT_ID, EOT_POSITION, VOCAB_SIZE, GPTConfig, TrainConfig  # noqa: E402


def memory() -> dict[str, int]:
    """RssAnon, RssFile, VmRSS of this process in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def write_data(data_dir: Path, tokens: int) -> None:
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", tokens), ("validation", tokens // 20)):
        data = rng.integers(0, VOCAB_SIZE, n, dtype=np.uint16).tobytes()
        (data_dir / f"{split}.bin").write_bytes(data)
        splits[split] = {
            "file": f"{split}.bin",
            "stories": 0,
            "tokens": n,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    meta = {
        "format": 1,
        "tokenizer": "gpt2",
        "vocab_size": VOCAB_SIZE,
        "dtype": "uint16",
        "eot_id": EOT_ID,
        "eot_position": EOT_POSITION,
        "eot_reason": "benchmark",
        "splits": splits,
        "source": {"source": "random"},
    }
    (data_dir / "meta.json").write_text(json.dumps(meta))


def nanogpt_get_batch(data_dir: Path, block_size: int, batch_size: int):
    """nanoGPT's train.py get_batch on CPU, for comparison."""
    data = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack(
        [torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix]
    )
    return x, y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100_000, help="get_batch calls measured for memory")
    p.add_argument(
        "--tokens", type=int, default=20_000_000, help="tokens in train.bin (2 bytes each)"
    )
    p.add_argument("--block-size", type=int, default=GPTConfig().block_size)
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    p.add_argument(
        "--compare-calls",
        type=int,
        default=5_000,
        help="calls timed for each get_batch in the comparison",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    print(
        f"loadavg at start {os.getloadavg()}; train.bin {args.tokens:,} tokens "
        f"({args.tokens * 2 / 2**20:.0f} MiB), batch {args.batch_size} x block {args.block_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_data(data_dir, args.tokens)
        batches = Batches(data_dir, args.block_size)
        gen = torch.Generator().manual_seed(0)
        # warm-up: allocator pools, and most of the file's pages touched once
        for _ in range(2_000):
            batches.get_batch("train", args.batch_size, generator=gen)
        start = memory()
        print(f"after 2,000 warm-up calls: {start} KiB")
        checkpoints = {args.calls * k // 4 for k in (1, 2, 3, 4)}
        t = time.perf_counter()
        for i in range(1, args.calls + 1):
            batches.get_batch("train", args.batch_size, generator=gen)
            if i in checkpoints:
                print(
                    f"after {i:>7,} more calls:     {memory()} KiB "
                    f"({(time.perf_counter() - t) / i * 1e6:.0f} us/call)"
                )
        end = memory()
        print(
            f"growth over {args.calls:,} calls: RssAnon {end['RssAnon'] - start['RssAnon']:+,d} "
            f"KiB, RssFile {end['RssFile'] - start['RssFile']:+,d} KiB, VmRSS "
            f"{end['VmRSS'] - start['VmRSS']:+,d} KiB"
        )

        timings = {}
        for name, fn in (
            (
                "Batches.get_batch",
                lambda: batches.get_batch("train", args.batch_size, generator=gen),
            ),
            (
                "nanoGPT get_batch",
                lambda: nanogpt_get_batch(data_dir, args.block_size, args.batch_size),
            ),
        ):
            t = time.perf_counter()
            for _ in range(args.compare_calls):
                fn()
            timings[name] = (time.perf_counter() - t) / args.compare_calls * 1e6
        for name, us in timings.items():
            print(f"{name:18s} {us:7.1f} us/call ({args.compare_calls:,} calls)")
        print(
            f"nanoGPT / Batches: {timings['nanoGPT get_batch'] / timings['Batches.get_batch']:.1f}x"
        )
    print(f"loadavg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
