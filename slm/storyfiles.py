"""Stories out of files: the raw TinyStories .txt format, read here line by line, and .json / .jsonl
/ .parquet files read through `datasets`, each as a Dataset with one column `text`.

The raw .txt format. A story separator is a line that holds only <|endoftext|> (surrounding
spaces and the line's \\r\\n or \\n allowed); the same characters anywhere inside a line are
story text. A story is the text between two separators (or the start / end of the file) with
leading and trailing whitespace removed, so the newline before a separator and blank lines around
it are not part of the story; every other byte, newlines inside the story included, is kept
exactly. Empty stories (two separators in a row) are skipped. Files are UTF-8; a .txt.xz file is
decompressed as it is read.

load_dataset.py reads local files and its bundled sample through here, and evaluate.py scores a
.txt file through the same reader, so a file scores like the same stories loaded by Step 1.
"""

from __future__ import annotations

import io
import json
import lzma
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from slm.cli import CLIError, first_line
from slm.encoding import EOT_TEXT
from slm.files import is_write_trouble

RAW_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".json", ".jsonl")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = RAW_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES  # every kind of file read here


# ----------------------------------------------------------------------------- the raw .txt format


def iter_raw_stories(lines: Iterable[str]) -> Iterator[str]:
    """Stories from the lines (each with its line ending) of a raw TinyStories .txt file."""
    buf: list[str] = []
    for line in lines:
        if line.strip() == EOT_TEXT:
            story = "".join(buf).strip()
            if story:
                yield story
            buf = []
        else:
            buf.append(line)
    story = "".join(buf).strip()
    if story:
        yield story


def parse_raw_text(text: str) -> list[str]:
    """The stories of a whole raw .txt text (small texts; files are streamed by _raw_file_rows)."""
    # split on \n only, as the file reader does
    return list(iter_raw_stories(io.StringIO(text, newline="\n")))


def iter_raw_file(path: str | os.PathLike, bar=None, digest=None) -> Iterator[str]:
    """The stories of a raw .txt file (or .txt.xz, decompressed as it is read), streamed line by
    line.

    bar: a tqdm advanced by the (decompressed) bytes read; digest: a hashlib object fed those
    bytes."""

    def lines(f):
        for lineno, raw in enumerate(f, 1):
            if bar is not None:
                bar.update(len(raw))
            if digest is not None:
                digest.update(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CLIError(
                    f"{path} line {lineno} is not UTF-8 text ({e.reason}); convert the file to "
                    "UTF-8"
                ) from None

    opener = lzma.open if str(path).endswith(".xz") else open
    with opener(path, "rb") as f:
        yield from iter_raw_stories(lines(f))


def _raw_file_rows(path: str, size: int, mtime_ns: int) -> Iterator[dict]:
    """Rows {"text": story} of a raw .txt file, read line by line with a byte progress bar.

    size and mtime_ns are unused here; they are part of the arguments so that the generator's
    fingerprint changes when the file does."""
    from slm.progress import progress_bar

    with progress_bar(
        total=size, unit="B", unit_scale=True, desc=f"reading {Path(path).name}"
    ) as bar:
        for story in iter_raw_file(path, bar):
            yield {"text": story}


# ------------------------------------------------------------------ a file of stories as a Dataset


def text_only(ds, what: str):
    """The dataset reduced to its one `text` column (TinyStories_all_data's `story` accepted),
    checked.
    """
    cols = ds.column_names
    if "text" not in cols:
        if "story" not in cols:
            raise CLIError(
                f"{what} has no 'text' field (its fields: {', '.join(cols) or 'none'}); pass a "
                "file with one story per record in a 'text' field"
            )
        ds = ds.rename_column("story", "text")
    ds = ds.select_columns(["text"])
    if ds.features["text"].dtype not in ("string", "large_string"):
        raise CLIError(
            f"{what}: the 'text' field holds {ds.features['text'].dtype}, not strings; pass a "
            "file of stories"
        )
    return ds


def _first_fields(path: Path) -> list[str] | None:
    """The field names of a .jsonl file's first record or a .parquet file's schema, read cheaply
    (None: unknown).

    Lets a file without a text field fail at once, before any progress bar; JSON arrays are
    checked after loading."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as e:
            raise CLIError(
                f"{path} is not a readable parquet file ({type(e).__name__}: {e}); re-download it"
            ) from None
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith(b"["):
                return None  # a JSON array: datasets reads it whole
            try:
                record = json.loads(line)
            except ValueError:
                return None  # one JSON object over many lines, or broken: datasets says which
            return list(record) if isinstance(record, dict) else None
    return None


def load_story_file(split: str, path: Path, cache_dir: Path):
    """The stories of one file (.txt streamed, .json/.jsonl/.parquet through datasets) as a Dataset
    with one `text` column, its cache under cache_dir; a CLIError naming the file when it cannot
    be read as stories."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    suffix = path.suffix.lower()
    what = f"{split} file {path}"
    if suffix not in RAW_SUFFIXES:
        fields = _first_fields(path)
        if fields is not None and "text" not in fields and "story" not in fields:
            raise CLIError(
                f"{what} has no 'text' field (its fields: {', '.join(fields) or 'none'}); pass a "
                "file with one story per record in a 'text' field"
            )
    try:
        if suffix in RAW_SUFFIXES:
            ds = _raw_file_dataset(path, cache_dir)
        else:
            kind = "parquet" if suffix in PARQUET_SUFFIXES else "json"
            ds = datasets.load_dataset(
                kind, data_files={"train": str(path)}, split="train", cache_dir=str(cache_dir)
            )
    except DatasetGenerationError as e:
        # the disk under cache_dir refused, not the input's fault: the caller says so
        if is_write_trouble(e):
            raise
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, CLIError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        inner = e.__cause__ or e
        raise CLIError(
            f"{what} could not be read as {suffix} ({first_line(inner)}); check that the file is "
            "complete"
        ) from None
    except CLIError:
        raise
    except Exception as e:
        if is_write_trouble(e):
            raise
        if "corresponds to no data" in str(e):  # datasets' word for a file that yielded no rows
            raise CLIError(f"{what} holds no stories; pass a file with stories in it") from None
        raise CLIError(
            f"{what} could not be read as {suffix} ({type(e).__name__}: {first_line(e)}); check "
            "the file"
        ) from None
    ds = text_only(ds, what)
    if len(ds) == 0:
        raise CLIError(f"{what} holds no stories; pass a file with stories in it")
    return ds


def _raw_file_dataset(path: Path, cache_dir: Path):
    """A raw .txt file streamed into a Dataset under cache_dir, with our byte bar, not datasets'."""
    import datasets

    st = path.stat()
    features = datasets.Features({"text": datasets.Value("string")})
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own byte bar says more
    try:
        return datasets.Dataset.from_generator(
            _raw_file_rows,
            features=features,
            cache_dir=str(cache_dir),
            gen_kwargs={"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        )
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
