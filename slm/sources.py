"""Where Step 1's stories come from: the Hugging Face hub (and a quick probe whether it answers),
local files (checked before any work), and the real TinyStories sample shipped with the project,
decompressed and checked against the sha256 recorded here. Each loader returns {split: Dataset}
with one column `text`; load_dataset.py writes them to DATA/raw.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import urllib.error
import urllib.request
from pathlib import Path

from slm.cli import CLIError, UsageError, first_line
from slm.datafiles import SPLITS
from slm.storyfiles import SUFFIXES, iter_raw_file, load_story_file, text_only

HUB_DATASET = "roneneldan/TinyStories"
SOURCES = ("auto", "hub", "local", "sample")
# held out of train when no validation file is given (TinyStories' own ~1%)
LOCAL_VALIDATION_FRACTION = 0.01
HUB_PROBE_TIMEOUT_S = 5.0  # auto mode: how long to wait for the hub before using the bundled sample

# The real TinyStories sample shipped with the project (see sample_data/tinystories/README.md):
# each split's xz file, and the sha256 that the raw .txt text it decompresses to must match exactly.
SAMPLE_REL = "sample_data/tinystories"  # in the repository
SAMPLE_DIR = Path(__file__).resolve().parent.parent / SAMPLE_REL
SAMPLE_FILES = {
    "train": ("train.txt.xz", "6f004d1bc0b4fac56874349ea3699aed129596e4c4961ea64b7de9bbb58b3b27"),
    "validation": (
        "validation.txt.xz",
        "290ca8c65919533f17e6cf82e89736eed6d11c603b5a7f231be84d902032fdce",
    ),
}
SAMPLE_NOTE = (
    "a small real sample of TinyStories (Eldan & Li 2023; licence CDLA-Sharing-1.0) bundled with "
    "the project in sample_data/tinystories, not the whole dataset; provenance in "
    "sample_data/tinystories/README.md"
)


# ----------------------------------------------------------------------- choosing and checking


def check_file(split: str, path: str) -> Path:
    """The local file for one split, resolved, once it exists and is a non-empty story file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(
            f"{split} file {path} does not exist; check the path in --data-files {split}=PATH"
        )
    if p.is_dir():
        found = sorted(q.name for q in p.iterdir() if q.suffix in SUFFIXES)
        hint = f", e.g. {p / found[0]}" if found else ""
        raise CLIError(f"{split} file {path} is a directory; pass one file inside it{hint}")
    if p.suffix.lower() not in SUFFIXES:
        raise CLIError(
            f"{split} file {path} has an unknown type {p.suffix!r}; use a raw .txt, .json, .jsonl "
            "or .parquet file"
        )
    if p.stat().st_size == 0:
        raise CLIError(f"{split} file {path} is empty; re-download it or pass another file")
    return p.resolve()


def resolve_source(source: str, data_files: dict[str, str]) -> str:
    """The source asked for, checked against the files given: auto with files means local."""
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if data_files and source in ("hub", "sample"):
        raise UsageError(
            "--data-files only applies to --source local (or auto); drop it or use --source local"
        )
    if data_files and "train" not in data_files:
        raise UsageError("--data-files has no train=PATH; a validation file alone is not enough")
    if source == "local" and not data_files:
        raise UsageError("--source local needs files: --data-files train=PATH [validation=PATH]")
    return "local" if data_files else source


# -------------------------------------------------------------- the three sources (and the sample)


def hub_offline_reason() -> str | None:
    """Why the hub cannot be reached right now (quickly), or None when it answers."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/datasets/{HUB_DATASET}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S
        ):
            return None
    except urllib.error.HTTPError as e:  # the hub answered; let datasets deal with what it said
        return None if e.code < 500 else f"{endpoint} answered HTTP {e.code}"
    except (OSError, ValueError) as e:  # DNS failure, refused, timeout, bad proxy, ...
        reason = getattr(e, "reason", e)
        return f"{endpoint} did not answer ({reason})"


def load_hub():
    """{split: Dataset} from the hub, through datasets' own download and cache."""
    import datasets

    try:
        dd = datasets.load_dataset(HUB_DATASET)
    except Exception as e:  # network errors come in many classes (requests, httpx, hub, datasets)
        raise CLIError(
            f"could not load {HUB_DATASET} from the Hugging Face hub ({type(e).__name__}: "
            f"{first_line(e)}); check the connection, or use --source local --data-files "
            "train=PATH, or --source sample (the bundled real sample)"
        ) from None
    missing = [s for s in SPLITS if s not in dd]
    if missing:
        raise CLIError(
            f"{HUB_DATASET} from the hub has no {'/'.join(missing)} split (it has {list(dd)}); "
            "download the files and use --source local"
        )
    return {s: text_only(dd[s], f"{HUB_DATASET} [{s}]") for s in SPLITS}


def load_local(files: dict[str, Path], seed: int, cache_dir: Path):
    """{split: Dataset} from local files; without a validation file, a seeded share of train."""
    splits = {split: load_story_file(split, path, cache_dir) for split, path in files.items()}
    if "validation" not in splits:
        train = splits["train"]
        if len(train) < 2:
            raise CLIError(
                f"train file {files['train']} holds 1 story, too few to hold out a validation "
                "split; add validation=PATH to --data-files"
            )
        parts = train.train_test_split(test_size=LOCAL_VALIDATION_FRACTION, seed=seed, shuffle=True)
        splits = {"train": parts["train"], "validation": parts["test"]}
        print(
            f"no validation file: held out {len(splits['validation']):,} of {len(train):,} train "
            f"stories ({LOCAL_VALIDATION_FRACTION:.0%}, seed {seed})"
        )
    return splits


def _read_sample_split(split: str) -> list[str]:
    """Every story of one split of the bundled sample, its decompressed text checked by sha256."""
    name, expected = SAMPLE_FILES[split]
    path = SAMPLE_DIR / name
    restore = f"restore it with: git checkout -- {SAMPLE_REL}/{name}"
    if not path.is_file():
        raise CLIError(f"the bundled sample file {path} is missing; {restore}")
    digest = hashlib.sha256()
    try:
        stories = list(iter_raw_file(path, digest=digest))
    except CLIError as e:  # not UTF-8
        raise CLIError(f"the bundled sample file {path} is damaged ({e}); {restore}") from None
    except (lzma.LZMAError, EOFError, OSError) as e:  # corrupt or truncated xz data
        raise CLIError(
            f"the bundled sample file {path} is damaged ({first_line(e)}); {restore}"
        ) from None
    if digest.hexdigest() != expected:
        raise CLIError(
            f"the bundled sample file {path} decompresses to text with sha256 "
            f"{digest.hexdigest()[:16]}..., not the recorded {expected[:16]}...; {restore}"
        )
    return stories


def sample_counts(num_stories: int | None, n_train: int, n_validation: int) -> tuple[int, int]:
    """(train, validation) stories kept from the sample: all, or the first num_stories train stories
    and the same share of validation (at least one)."""
    if num_stories is None or num_stories >= n_train:
        return n_train, n_validation
    return num_stories, min(n_validation, max(1, round(num_stories * n_validation / n_train)))


def load_sample(num_stories: int | None):
    """{split: Dataset} from the bundled sample: all of it, or its first num_stories train stories
    and the same share of validation."""
    import datasets

    stories = {split: _read_sample_split(split) for split in SPLITS}
    n_train, n_validation = sample_counts(
        num_stories, len(stories["train"]), len(stories["validation"])
    )
    if num_stories is not None:
        print(
            f"bundled sample: keeping the first {n_train:,} of {len(stories['train']):,} train "
            f"and {n_validation:,} of {len(stories['validation']):,} validation stories "
            f"(--num-stories {num_stories})"
        )
    features = datasets.Features({"text": datasets.Value("string")})
    kept = {"train": stories["train"][:n_train], "validation": stories["validation"][:n_validation]}
    return {
        split: datasets.Dataset.from_dict({"text": kept[split]}, features=features)
        for split in SPLITS
    }
