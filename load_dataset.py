"""Step 1: get TinyStories onto disk, verified.

    python load_dataset.py                      # auto: the hub, else the bundled real sample
    python load_dataset.py --source local --data-files train=TinyStoriesV2-GPT4-train.txt \\
                                          validation=TinyStoriesV2-GPT4-valid.txt
    python load_dataset.py --source sample --num-stories 500   # the sample's first 500 stories

writes DATA/raw: a `datasets` DatasetDict with splits train and validation and one column `text`
(one story per row), and DATA/raw/source.json saying where the stories came from, how many there
are per split, the sha256 of each split's text and the versions of the tools that wrote it.

Sources
  hub     datasets.load_dataset("roneneldan/TinyStories"), with its own download progress and cache.
  local   files from the dataset page: the raw .txt format (TinyStories-train.txt,
          TinyStoriesV2-GPT4-train.txt, ...), .json / .jsonl with a `text` field, or .parquet (the
          hub's shards). Files are read as a stream, so a 2 GB file never sits in memory as Python
          strings. Without a validation file, a fixed fraction of train is held out (seeded).
  sample  the real TinyStories sample shipped with the project, xz-compressed in
          sample_data/tinystories (a few thousand stories; provenance and licence in its README.md).
          No network. Decompressed with the standard library and checked against the sha256
          recorded here; --num-stories N keeps the first N train stories and proportionally fewer
          validation stories.
  auto    local when --data-files is given; otherwise the hub, and when the hub cannot be reached,
          one line saying so and the bundled sample.

The sources themselves (the hub probe, the loaders, the sample's check) live in slm/sources.py.

The raw .txt format: stories separated by lines that hold only <|endoftext|>, UTF-8; each story
is kept exactly but for the whitespace around it (the full rule, and the reader, in
slm/storyfiles.py).

A rerun with the same inputs does nothing and says so; --force rebuilds. The new raw directory is
built beside the old one (DATA/raw.partial) and swapped in only when complete and verified: a
failure or Ctrl-C part-way leaves the previous dataset as it was. A full or read-only disk is one
error line that names DATA/raw and the space needed and free; local files are checked against the
free space first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from config import Paths
from slm import sources
from slm.cli import CLIError, UsageError, run_cli
from slm.datafiles import SPLITS
from slm.encoding import EOT_TEXT
from slm.files import check_free_space, dir_lock, replace_together, write_errors
from slm.progress import progress_bar, quiet_library_bars

FORMAT_VERSION = 1  # of DATA/raw + source.json; bump when the layout changes
SHA256_OF = (
    "each story's UTF-8 text followed by '\\n<|endoftext|>\\n', in split order "
    "(the raw .txt format)"
)


# ----------------------------------------------------------------------- checking the user's input


def parse_data_files(items: list[str] | None) -> dict[str, str]:
    """['train=a.txt', 'validation=b.txt'] -> {'train': 'a.txt', 'validation': 'b.txt'}, checked."""
    files: dict[str, str] = {}
    for item in items or []:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise UsageError(
                f"--data-files entry {item!r} is not SPLIT=PATH; write e.g. --data-files "
                "train=stories.txt"
            )
        if split not in SPLITS:
            hint = " (write validation=PATH)" if split in ("val", "valid", "dev", "test") else ""
            raise UsageError(
                f"unknown split {split!r} in --data-files; use train=PATH and optionally "
                f"validation=PATH{hint}"
            )
        if split in files:
            raise UsageError(f"--data-files names {split}= twice; give one file per split")
        files[split] = path
    return files


def _request(source: str, files: dict[str, Path], num_stories: int | None, seed: int) -> dict:
    """What decides the contents of raw/: a rerun with an equal request has nothing to do."""
    req: dict = {"format_version": FORMAT_VERSION, "source": source}
    if source == "sample":
        req.update(
            sha256={split: sha for split, (_, sha) in sources.SAMPLE_FILES.items()},
            num_stories=num_stories,
        )
    elif source == "local":
        req["data_files"] = {
            split: {"path": str(p), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for split, p in files.items()
        }
        if "validation" not in files:
            req.update(validation_fraction=sources.LOCAL_VALIDATION_FRACTION, seed=seed)
    elif source == "hub":
        req["dataset"] = sources.HUB_DATASET
    return req


# ------------------------------------------------------------------------ writing raw/, atomically


def _split_facts(ds, split: str) -> dict:
    """Story count, characters and sha256 of one split, read back from what was written."""
    h = hashlib.sha256()
    sep = f"\n{EOT_TEXT}\n".encode()
    chars = 0
    n = 0
    with progress_bar(
        total=len(ds),
        desc=f"verifying {split}",
        unit=" stories",
        mininterval=0.5,
        disable=len(ds) < 50_000,
    ) as bar:
        for batch in ds.iter(batch_size=10_000):
            for story in batch["text"]:
                if not isinstance(story, str) or not story.strip():
                    raise CLIError(
                        f"a {split} story is empty or missing (row {n}); clean the input file"
                    )
                h.update(story.encode("utf-8"))
                h.update(sep)
                chars += len(story)
                n += 1
            bar.update(len(batch["text"]))
    return {"stories": n, "chars": chars, "sha256": h.hexdigest()}


def _tool_versions() -> dict:
    import datasets
    import pyarrow

    return {
        "python": platform.python_version(),
        "datasets": datasets.__version__,
        "pyarrow": pyarrow.__version__,
        "load_dataset.py": FORMAT_VERSION,
    }


def _write_raw(splits: dict, out: Path, facts: dict) -> dict:
    """Save the DatasetDict into out, read it back, and write out/source.json; return its dict."""
    import datasets

    datasets.DatasetDict({s: splits[s] for s in SPLITS}).save_to_disk(str(out))
    written = datasets.load_from_disk(str(out))
    facts["splits"] = {s: _split_facts(written[s], s) for s in SPLITS}
    facts["sha256_of"] = SHA256_OF
    facts["tools"] = _tool_versions()
    facts["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "source.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return facts


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _swap_in(new: Path, raw: Path) -> None:
    """Put new at raw; the old raw is moved aside (raw.old) first, put back if the swap fails, and
    deleted only after it."""
    replace_together([(new, raw)])


def _recover(raw: Path) -> None:
    """Tidy what an interrupted earlier run left: a half-built raw.partial, or raw moved aside
    mid-swap."""
    old = raw.with_name(raw.name + ".old")
    if not raw.exists() and old.exists():
        os.replace(old, raw)
        print(f"restored {raw} from {old} (an earlier run stopped mid-swap)")
    elif old.exists():
        _remove(old)
    partial = raw.with_name(raw.name + ".partial")
    if partial.exists():
        _remove(partial)
        print(f"removed {partial}, left by an earlier run that did not finish")


def _up_to_date(raw: Path, request: dict) -> dict | None:
    """source.json's dict when raw/ holds exactly what request asks for and reads back whole;
    else None."""
    try:
        info = json.loads((raw / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("request") != request:
        return None
    try:
        import datasets

        dd = datasets.load_from_disk(str(raw))
        if any(len(dd[s]) != info["splits"][s]["stories"] for s in SPLITS):
            return None
    except Exception:
        return None
    return info


def _summary(info: dict) -> str:
    sp = info["splits"]
    mb = sum(sp[s]["chars"] for s in SPLITS) / 1e6
    what = {
        "sample": f"the TinyStories sample bundled in {sources.SAMPLE_REL}",
        "hub": sources.HUB_DATASET,
        "local": "local files",
    }[info["source"]]
    return (
        f"{sp['train']['stories']:,} train / {sp['validation']['stories']:,} validation stories, "
        f"{mb:.1f}M chars, from {what}"
    )


# ----------------------------------------------------------------------------- the step


def prepare(
    source: str = "auto",
    data_dir: str | os.PathLike = Paths.data_dir,
    data_files: dict[str, str] | None = None,
    force: bool = False,
    num_stories: int | None = None,
    seed: int = 0,
) -> Path:
    """Write DATA/raw (DatasetDict train/validation, column text) and raw/source.json; return
    DATA/raw.

    Every bad input is a CLIError (one line naming the problem and the fix), and then nothing is
    replaced."""
    requested = source
    source, files, raw = _checked_inputs(source, data_dir, data_files, num_stories)
    _recover(raw)
    fallback_reason = None
    if source == "auto":
        source, fallback_reason = _auto_source(raw, files, num_stories, seed, force)

    request = _request(source, files, num_stories, seed)
    if not force:
        info = _up_to_date(raw, request)
        if info is not None:
            print(f"{raw} is up to date: {_summary(info)}; nothing to do (--force rebuilds)")
            return raw

    facts = _facts(source, requested, fallback_reason, files, num_stories, seed)
    facts["request"] = request
    info = _build(source, files, num_stories, seed, raw, facts)
    print(f"wrote {raw}: {_summary(info)}")
    return raw


def _checked_inputs(
    source: str,
    data_dir: str | os.PathLike,
    data_files: dict[str, str] | None,
    num_stories: int | None,
) -> tuple[str, dict[str, Path], Path]:
    """(source, the local files resolved, DATA/raw), every input checked before any work is done."""
    data_files = dict(data_files or {})
    for split in data_files:
        if split not in SPLITS:
            raise UsageError(
                f"unknown split {split!r} in data files; use train=PATH and optionally "
                "validation=PATH"
            )
    source = sources.resolve_source(source, data_files)
    files = {split: sources.check_file(split, path) for split, path in data_files.items()}
    if num_stories is not None and num_stories < 1:
        raise UsageError(
            f"--num-stories {num_stories} is too few; use at least 1 (or leave it out for the "
            "whole sample)"
        )

    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise CLIError(
            f"--data-dir {data_dir} is a file, not a directory; pass a directory (it is created "
            "if missing)"
        )
    return source, files, data_dir / "raw"


def _auto_source(
    raw: Path, files: dict[str, Path], num_stories: int | None, seed: int, force: bool
) -> tuple[str, str | None]:
    """--source auto without local files: (the hub or the bundled sample, why not the hub, or
    None)."""
    hub_request = _request("hub", files, num_stories, seed)
    if not force and _up_to_date(raw, hub_request) is not None:
        # the full dataset is already here: no need to ask the hub, never replace it by the sample
        return "hub", None
    fallback_reason = sources.hub_offline_reason()
    if fallback_reason is None:
        return "hub", None
    print(
        f"the Hugging Face hub cannot be reached ({fallback_reason}): using the real TinyStories "
        f"sample bundled in {sources.SAMPLE_REL} instead, a few thousand stories rather than the "
        "whole dataset (--source hub forces the hub, --source local reads downloaded files)",
        file=sys.stderr,
    )
    return "sample", fallback_reason


def _facts(
    source: str,
    requested: str,
    fallback_reason: str | None,
    files: dict[str, Path],
    num_stories: int | None,
    seed: int,
) -> dict:
    """What source.json says about where the stories came from; _write_raw adds what the splits
    hold."""
    facts: dict = {"source": source, "requested": requested}
    if fallback_reason:
        facts["fallback_reason"] = fallback_reason
    if source == "sample":
        facts.update(
            demo=False,
            dataset=sources.HUB_DATASET,
            note=sources.SAMPLE_NOTE,
            num_stories=num_stories,
            sample_files={
                split: {"file": f"{sources.SAMPLE_REL}/{name}", "sha256": sha}
                for split, (name, sha) in sources.SAMPLE_FILES.items()
            },
        )
    elif source == "hub":
        facts.update(demo=False, dataset=sources.HUB_DATASET)
    else:
        facts.update(
            demo=False,
            data_files={s: str(p) for s, p in files.items()},
            validation=(
                "file"
                if "validation" in files
                else f"{sources.LOCAL_VALIDATION_FRACTION:.0%} of train held out, seed {seed}"
            ),
        )
    return facts


def _build(
    source: str, files: dict[str, Path], num_stories: int | None, seed: int, raw: Path, facts: dict
) -> dict:
    """Load the stories into DATA/raw.partial, write and verify them there, then swap them in for
    DATA/raw; returns source.json's dict. A full or read-only disk is one line naming DATA/raw."""
    partial = raw.with_name(raw.name + ".partial")
    needed = None
    if source == "local":
        # a cache of the stories under partial/, then the dataset itself: about twice the text
        needed = 2 * sum(p.stat().st_size for p in files.values())
        check_free_space(
            raw.parent,
            needed,
            f"the dataset from {' and '.join(p.name for p in files.values())}",
            "--data-dir",
        )
    # disk full or read-only: one line naming raw/
    with write_errors(raw, needed, "--data-dir") as target:
        try:
            partial.mkdir(parents=True)
            if source == "sample":
                splits = sources.load_sample(num_stories)
            elif source == "hub":
                splits = sources.load_hub()
            else:
                splits = sources.load_local(files, seed, partial / "cache")
            copies = 2 if source == "local" else 1
            target.needed = copies * sum(splits[s].data.nbytes for s in SPLITS)
            info = _write_raw(splits, partial / "raw", facts)
            del splits  # the datasets may memory-map files under partial/cache
            _swap_in(partial / "raw", raw)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Step 1: write TinyStories (the hub, local files or the bundled real sample) "
        "to DATA/raw as a datasets DatasetDict {train, validation} with one column 'text', "
        "plus DATA/raw/source.json.",
        epilog="Raw .txt files: stories are separated by lines holding only <|endoftext|>. "
        "Examples: python load_dataset.py --source local --data-files "
        "train=TinyStoriesV2-GPT4-train.txt validation=TinyStoriesV2-GPT4-valid.txt | python "
        "load_dataset.py --source sample --num-stories 500",
    )
    add = parser.add_argument
    add(
        "--source",
        choices=sources.SOURCES,
        default="auto",
        help="where the stories come from: auto (default) = local if --data-files is given, else "
        f"the hub ({sources.HUB_DATASET}), else the bundled sample when the hub cannot be "
        "reached; hub; local (--data-files); sample (the real TinyStories sample shipped in "
        f"{sources.SAMPLE_REL}: no network, a few thousand stories)",
    )
    add(
        "--data-files",
        nargs="+",
        metavar="SPLIT=PATH",
        help="local files: train=PATH [validation=PATH]; raw .txt, .json/.jsonl (field 'text') "
        f"or .parquet; without validation, {sources.LOCAL_VALIDATION_FRACTION:.0%}% of train "
        "is held out",
    )
    add(
        "--data-dir",
        default=Paths.data_dir,
        help="output directory; the dataset goes to DATA_DIR/raw (default: %(default)s)",
    )
    add(
        "--force",
        action="store_true",
        help="rebuild even when DATA_DIR/raw already holds these inputs",
    )
    add(
        "--num-stories",
        type=int,
        default=None,
        help="bundled sample only: keep its first N train stories and the same share of its "
        "validation stories, for quick tries (default: all)",
    )
    add(
        "--seed",
        type=int,
        default=0,
        help="local without a validation file: hold-out seed (default: 0)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_files = parse_data_files(args.data_files)
    if args.num_stories is not None and (args.source in ("hub", "local") or data_files):
        raise UsageError(
            "--num-stories only applies to the bundled sample; drop it or use --source sample"
        )
    print(
        f"load_dataset: source={args.source} data_dir={args.data_dir} force={args.force} "
        f"seed={args.seed}"
        + (f" data_files={data_files}" if data_files else "")
        + (f" num_stories={args.num_stories}" if args.num_stories is not None else "")
    )
    quiet_library_bars()
    # one run writes into DATA at a time (tokenization.py too)
    with dir_lock(args.data_dir, "--data-dir"):
        prepare(
            source=args.source,
            data_dir=args.data_dir,
            data_files=data_files,
            force=args.force,
            num_stories=args.num_stories,
            seed=args.seed,
        )


if __name__ == "__main__":
    run_cli(main)
