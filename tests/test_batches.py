"""batches.py: windows and dtypes on a hand-made array, seeded determinism, checks of meta.json and
the .bin files, no memory growth over many calls, and the script that prints a batch decoded."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import batches
from batches import Batches
from slm.cli import CLIError, run_cli

REPO = Path(__file__).resolve().parent.parent


def write_split_files(data_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """Hand-made .bin files plus the meta.json tokenization.py would write for them."""
    splits = {}
    for split, tokens in arrays.items():
        data = tokens.astype(np.uint16).tobytes()
        (data_dir / f"{split}.bin").write_bytes(data)
        splits[split] = {
            "file": f"{split}.bin",
            "stories": 1,
            "tokens": len(tokens),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    meta = {
        "format": 1,
        "tokenizer": "gpt2",
        "vocab_size": 50257,
        "dtype": "uint16",
        "eot_id": 50256,
        "eot_position": "before",
        "eot_reason": "test",
        "splits": splits,
        "source": {"source": "test"},
    }
    (data_dir / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def counting(tmp_path) -> Path:
    """train.bin = 0, 1, ..., 999 and validation.bin = 40000, ..., 40099: a window's values say
    where it starts.
    """
    write_split_files(tmp_path, {"train": np.arange(1000), "validation": np.arange(40000, 40100)})
    return tmp_path


def test_windows_and_dtypes(counting):
    b = Batches(counting, block_size=8)
    x, y = b.get_batch("train", 64, generator=torch.Generator().manual_seed(0))
    assert (
        x.dtype == y.dtype == torch.int64
        and x.shape == y.shape == (64, 8)
        and x.device.type == "cpu"
    )
    starts = x[:, :1]
    assert torch.equal(x, starts + torch.arange(8))  # each row is 8 consecutive tokens of train.bin
    assert torch.equal(y, x + 1)  # targets: the next token
    assert 0 <= starts.min() and starts.max() <= 1000 - 9  # the last window still has its target
    xv, yv = b.get_batch("validation", 4)
    assert (xv >= 40000).all() and torch.equal(yv[:, :-1], xv[:, 1:])
    assert b.num_tokens("train") == 1000 and b.num_tokens("validation") == 100
    assert b.meta["splits"]["train"]["tokens"] == 1000


def test_every_start_is_reachable(counting):
    b = Batches(counting, block_size=98)  # validation: 100 tokens -> starts 0 and 1 only
    x, _ = b.get_batch("validation", 200, generator=torch.Generator().manual_seed(1))
    assert set(x[:, 0].tolist()) == {40000, 40001}


def test_shortest_split_gives_its_one_window(tmp_path):
    write_split_files(tmp_path, {"train": np.arange(5), "validation": np.arange(10, 15)})
    x, y = Batches(tmp_path, block_size=4).get_batch("validation", 3)
    assert x.tolist() == [[10, 11, 12, 13]] * 3 and y.tolist() == [[11, 12, 13, 14]] * 3


def test_seeded_generator_repeats_batches(counting):
    b = Batches(counting, block_size=16)
    first = [b.get_batch("train", 4, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    again = Batches(counting, block_size=16).get_batch(
        "train", 4, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][0], again[0])
    other = b.get_batch("train", 4, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(first[0][0], other[0])


def test_real_tokenized_data(tiny_data_dir):
    b = Batches(tiny_data_dir, block_size=32)
    data = np.fromfile(tiny_data_dir / "train.bin", dtype=np.uint16)
    x, y = b.get_batch("train", 8, generator=torch.Generator().manual_seed(0))
    assert int(x.max()) < 50257
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        matches = np.flatnonzero(
            np.all(
                np.lib.stride_tricks.sliding_window_view(data, 33) == np.append(row_x, row_y[-1]),
                axis=1,
            )
        )
        assert len(matches) >= 1


def test_split_shorter_than_a_window_is_refused(counting):
    with pytest.raises(
        CLIError,
        match=r"validation split has 100 tokens, too few .* "
        r"block_size \+ 1 = 101.*"
        r"python tokenization.py",
    ):
        Batches(counting, block_size=100)


def test_missing_meta_is_refused(tmp_path):
    with pytest.raises(CLIError, match="python tokenization.py --data-dir"):
        Batches(tmp_path, block_size=8)


def test_missing_and_truncated_bins_are_refused(counting):
    data = (counting / "train.bin").read_bytes()
    (counting / "train.bin").write_bytes(data[:-1])
    with pytest.raises(
        CLIError,
        match="train.bin has 1,999 bytes but meta.json counts 1,000 .*python tokenization.py",
    ):
        Batches(counting, block_size=8)
    (counting / "train.bin").unlink()
    with pytest.raises(CLIError, match="no .*train.bin; .*python tokenization.py"):
        Batches(counting, block_size=8)


def test_wrong_vocab_is_refused(counting):
    meta = json.loads((counting / "meta.json").read_text())
    meta["vocab_size"] = 32000
    (counting / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CLIError, match="vocab_size = 32000"):
        Batches(counting, block_size=8)


def test_sha256_is_checked_only_when_asked(counting):
    data = bytearray((counting / "train.bin").read_bytes())
    data[10] ^= 1
    (counting / "train.bin").write_bytes(bytes(data))
    Batches(counting, block_size=8)  # same size: passes the cheap checks
    with pytest.raises(CLIError, match="sha256 .*python tokenization.py"):
        Batches(counting, block_size=8, verify_sha256=True)


def test_unknown_split_is_refused(counting):
    with pytest.raises(CLIError, match="unknown split 'test'"):
        Batches(counting, block_size=8).get_batch("test", 2)


def anon_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_does_not_grow_over_many_calls(tmp_path):
    write_split_files(
        tmp_path, {"train": np.arange(200_000) % 50257, "validation": np.arange(1000)}
    )
    b = Batches(tmp_path, block_size=64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):  # warm up allocator pools
        b.get_batch("train", 16, generator=gen)
    before = anon_rss_kib()
    for _ in range(10_000):
        b.get_batch("train", 16, generator=gen)
    assert anon_rss_kib() - before < 4 * 1024  # KiB; a per-call leak of even 1 KiB would show 10 MB


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_match_cpu_batches(counting):
    cpu = Batches(counting, block_size=8).get_batch(
        "train", 4, generator=torch.Generator().manual_seed(3)
    )
    gpu = Batches(counting, block_size=8, device="cuda").get_batch(
        "train", 4, generator=torch.Generator().manual_seed(3)
    )
    assert gpu[0].is_cuda and gpu[0].dtype == torch.int64
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


# ----------------------------------------------------------------------------- python batches.py


def test_python_batches_py_help_prints_its_usage():
    r = subprocess.run(
        [sys.executable, "batches.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("usage: batches.py"), r.stderr
    for flag in ("--data-dir", "--split", "--batch-size", "--block-size", "--seed"):
        assert flag in r.stdout


def test_python_batches_py_prints_the_seeded_batch_decoded(tiny_data_dir, capsys):
    from slm.encoding import get_encoding

    argv = ["--data-dir", str(tiny_data_dir), "--split", "validation", "--batch-size", "3"]
    batches.main([*argv, "--block-size", "12", "--seed", "5"])
    out = capsys.readouterr().out
    ids = {
        name: [json.loads(row) for row in re.findall(rf"^  {name} ids  (\[.*\])$", out, re.M)]
        for name in "xy"
    }
    x, y = Batches(tiny_data_dir, block_size=12).get_batch(
        "validation", 3, generator=torch.Generator().manual_seed(5)
    )
    assert ids == {"x": x.tolist(), "y": y.tolist()}  # the batch training would draw
    assert all(yr[:-1] == xr[1:] for xr, yr in zip(ids["x"], ids["y"], strict=True))
    enc = get_encoding()
    texts = re.findall(r"^  x text (.*)$", out, re.M)
    assert texts == [repr(enc.decode(row)) for row in ids["x"]]
    pairs = out.split("(context -> target):\n")[1].splitlines()
    assert len(pairs) == batches.SHOWN_TARGETS
    assert pairs[0] == f"  {enc.decode(ids['x'][0][:1])!r} -> {enc.decode(ids['y'][0][:1])!r}"


def test_python_batches_py_bad_flags_are_usage_errors(tiny_data_dir, capsys):
    for bad in (["--batch-size", "0"], ["--block-size", "-1"], ["--split", "test"]):
        with pytest.raises(SystemExit) as e:
            run_cli(batches.main, ["--data-dir", str(tiny_data_dir), *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
