"""Step 1: every source on small inputs the tests make, the raw .txt format, the bundled real sample
(checked against its recorded hashes and the shared copy), reruns, atomic replacement, every bad
input (one line, exit 2 for a bad command line and 1 for a bad file, nothing replaced), and the
machine's faults: a full disk (blamed on the disk, never the input) and a second writer of the data
directory."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fake_free_space, no_space
from test_model_usage import call_cli

import load_dataset
from slm import sources
from slm.cli import CLIError, UsageError, run_cli
from slm.datafiles import SPLITS, load_raw, read_source
from slm.storyfiles import parse_raw_text

SCRIPT = Path(load_dataset.__file__).resolve()
EOT = "<|endoftext|>"

STORIES = [
    "Once upon a time, there was a cat.\nThe cat liked milk.",
    # the token inside a line is text
    'Tom wrote "<|endoftext|>" on the board. It is just text here.',
    "Mia saw a bird.\n\nThe bird sang a song.\nMia smiled.",  # a blank line inside a story is kept
    "Zoë went to the café — it was fun! 🐱",
    "The end <|endoftext|>",  # also text: the line holds more than the token
]


def write_raw(path: Path, stories: list[str]) -> Path:
    """The TinyStories raw .txt layout: each story followed by a line holding only <|endoftext|>."""
    path.write_text("".join(s + f"\n{EOT}\n" for s in stories), encoding="utf-8")
    return path


def sha256_of(stories: list[str]) -> str:
    return hashlib.sha256("".join(s + f"\n{EOT}\n" for s in stories).encode()).hexdigest()


def texts(data_dir: Path, split: str) -> list[str]:
    return list(load_raw(data_dir)[split]["text"])


def snapshot(raw: Path) -> dict[str, bytes]:
    return {str(p.relative_to(raw)): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the raw .txt format


def test_raw_text_separator_is_a_line_holding_only_the_token():
    text = (
        "First story line one.\nA cat said <|endoftext|> and left.\n<|endoftext|>\n"
        # blank lines around a separator are not story text
        "\n\nSecond story.\n\n  <|endoftext|>  \r\n"
        # two separators in a row: no empty story
        "<|endoftext|>\n"
        "Third, with\r\nCRLF inside.\r\n<|endoftext|>\r\n"
        "Fourth, no separator at the end of the file"
    )
    assert parse_raw_text(text) == [
        "First story line one.\nA cat said <|endoftext|> and left.",
        "Second story.",
        "Third, with\r\nCRLF inside.",
        "Fourth, no separator at the end of the file",
    ]


def test_raw_text_round_trips_stories_exactly():
    text = "".join(s + f"\n{EOT}\n" for s in STORIES)
    assert parse_raw_text(text) == STORIES
    assert parse_raw_text("") == []
    assert parse_raw_text(f"{EOT}\n\n{EOT}\n") == []


# ----------------------------------------------------------------------------- local files


def test_local_raw_txt_files_are_byte_identical(tmp_path):
    train = write_raw(tmp_path / "train.txt", STORIES)
    valid = write_raw(tmp_path / "valid.txt", STORIES[:2])
    raw = load_dataset.prepare(
        source="local",
        data_dir=tmp_path / "data",
        data_files={"train": str(train), "validation": str(valid)},
    )
    assert raw == tmp_path / "data" / "raw"
    assert texts(tmp_path / "data", "train") == STORIES
    assert texts(tmp_path / "data", "validation") == STORIES[:2]
    info = read_source(tmp_path / "data")
    assert info["source"] == "local" and info["demo"] is False
    assert info["data_files"] == {"train": str(train.resolve()), "validation": str(valid.resolve())}
    assert info["splits"]["train"] == {
        "stories": 5,
        "chars": sum(map(len, STORIES)),
        "sha256": sha256_of(STORIES),
    }
    assert info["splits"]["validation"]["sha256"] == sha256_of(STORIES[:2])
    assert {"python", "datasets", "pyarrow"} <= set(info["tools"])
    # the sha256 is that of the split written in the raw .txt format: here, the input file itself
    assert info["splits"]["train"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()


def test_local_jsonl_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(STORIES)),
        encoding="utf-8",
    )
    js = tmp_path / "valid.json"  # TinyStories_all_data style: a JSON list with a `story` field
    js.write_text(json.dumps([{"story": s, "summary": "x"} for s in STORIES[:3]]), encoding="utf-8")
    load_dataset.prepare(
        source="local",
        data_dir=tmp_path / "a",
        data_files={"train": str(jsonl), "validation": str(js)},
    )
    assert texts(tmp_path / "a", "train") == STORIES
    assert texts(tmp_path / "a", "validation") == STORIES[:3]
    assert load_raw(tmp_path / "a")["train"].column_names == ["text"]

    pq.write_table(pa.table({"text": STORIES, "n": list(range(5))}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": STORIES[3:]}), tmp_path / "valid.parquet")
    load_dataset.prepare(
        source="local",
        data_dir=tmp_path / "b",
        data_files={
            "train": str(tmp_path / "train.parquet"),
            "validation": str(tmp_path / "valid.parquet"),
        },
    )
    assert texts(tmp_path / "b", "train") == STORIES
    assert texts(tmp_path / "b", "validation") == STORIES[3:]


def test_local_without_validation_holds_out_a_fixed_fraction(tmp_path):
    stories = [f"Story number {i}. The dog ran." for i in range(300)]
    train = write_raw(tmp_path / "train.txt", stories)
    splits = []
    for name in ("a", "b"):
        load_dataset.prepare(
            source="auto", data_dir=tmp_path / name, data_files={"train": str(train)}, seed=3
        )
        splits.append((texts(tmp_path / name, "train"), texts(tmp_path / name, "validation")))
    (tr, va), (tr2, va2) = splits
    assert (tr, va) == (tr2, va2)  # deterministic
    assert len(va) == 3 and len(tr) == 297  # 1% of 300
    assert sorted(tr + va) == sorted(stories)
    info = read_source(tmp_path / "a")
    assert info["source"] == "local" and "held out" in info["validation"]


# ----------------------------------------------------------------------------- the bundled sample


def sample_text(split: str) -> bytes:
    """A bundled sample file decompressed, independently of load_dataset's reader."""
    return lzma.decompress((sources.SAMPLE_DIR / sources.SAMPLE_FILES[split][0]).read_bytes())


def sample_stories(split: str) -> list[str]:
    """The stories of a bundled sample file, split by a regex, not by the parser under test."""
    text = sample_text(split).decode("utf-8")
    return [s.strip() for s in re.split(rf"(?m)^{re.escape(EOT)}$", text) if s.strip()]


@pytest.mark.parametrize("split", SPLITS)
def test_bundled_sample_decompresses_to_the_recorded_text(split):
    name, recorded = sources.SAMPLE_FILES[split]
    assert hashlib.sha256(sample_text(split)).hexdigest() == recorded
    # the data note beside the files records the same hashes
    assert f"`{name}`" in (sources.SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    assert recorded in (sources.SAMPLE_DIR / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("split", SPLITS)
def test_bundled_sample_equals_the_shared_copy(shared_tinystories, split):
    assert sample_text(split) == (shared_tinystories / f"{split}.txt").read_bytes()


def test_sample_counts_keep_the_validation_share():
    assert sources.sample_counts(None, 4000, 250) == (4000, 250)
    assert sources.sample_counts(400, 4000, 250) == (400, 25)
    assert sources.sample_counts(1, 4000, 250) == (1, 1)  # never an empty validation split
    assert sources.sample_counts(10**6, 4000, 250) == (4000, 250)


def test_sample_source_writes_the_first_stories_of_the_real_sample(tmp_path):
    raw = load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=40)
    train, validation = texts(tmp_path, "train"), texts(tmp_path, "validation")
    all_train, all_validation = sample_stories("train"), sample_stories("validation")
    n_val = sources.sample_counts(40, len(all_train), len(all_validation))[1]
    assert train == all_train[:40]
    assert validation == all_validation[:n_val] and n_val >= 1
    info = json.loads((raw / "source.json").read_text())
    assert info["source"] == "sample" and info["demo"] is False and info["num_stories"] == 40
    assert "CDLA-Sharing-1.0" in info["note"] and info["dataset"] == "roneneldan/TinyStories"
    assert info["splits"]["train"]["sha256"] == sha256_of(train)
    assert info == read_source(tmp_path)


def test_whole_sample_hashes_like_the_files(tmp_path):
    """Without --num-stories every story is kept: each split's sha256 is that of the file's text."""
    load_dataset.prepare(source="sample", data_dir=tmp_path)
    info = read_source(tmp_path)
    for split in SPLITS:
        assert info["splits"][split]["sha256"] == sources.SAMPLE_FILES[split][1]
        assert info["splits"][split]["stories"] == len(sample_stories(split))


def damaged_copies(tmp_path) -> dict[str, Path]:
    """Copies of the sample directory, each with its train file damaged in one way."""
    good = (sources.SAMPLE_DIR / "train.txt.xz").read_bytes()
    damage = {
        "flipped byte": good[: len(good) // 2]
        + bytes([good[len(good) // 2] ^ 0xFF])
        + good[len(good) // 2 + 1 :],
        "truncated": good[: len(good) // 3],
        "not xz": f"A story.\n{EOT}\n".encode(),
        "other text": lzma.compress(f"A story.\n{EOT}\n".encode()),  # valid xz, wrong content
        "missing": None,
    }
    dirs = {}
    for case, data in damage.items():
        d = tmp_path / case.replace(" ", "_")
        shutil.copytree(sources.SAMPLE_DIR, d)
        if data is None:
            (d / "train.txt.xz").unlink()
        else:
            (d / "train.txt.xz").write_bytes(data)
        dirs[case] = d
    return dirs


def test_a_damaged_bundled_file_is_one_clean_error(tmp_path, monkeypatch, capsys):
    load_dataset.prepare(source="sample", data_dir=tmp_path / "data", num_stories=20)
    before = snapshot(tmp_path / "data" / "raw")
    capsys.readouterr()
    for case, d in damaged_copies(tmp_path).items():
        monkeypatch.setattr(sources, "SAMPLE_DIR", d)
        with pytest.raises(SystemExit) as e:
            run_cli(
                load_dataset.main,
                ["--source", "sample", "--num-stories", "30", "--data-dir", str(tmp_path / "data")],
            )
        err = capsys.readouterr().err
        assert e.value.code == 1, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the bundled sample file"), (
            case,
            err,
        )
        assert (
            "git checkout" in lines[0]
            and (
                "missing" if case == "missing" else "damaged" if case != "other text" else "sha256"
            )
            in lines[0]
        ), (case, err)
        assert snapshot(tmp_path / "data" / "raw") == before, case
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


# ----------------------------------------------------------------------------- hub and auto


@pytest.fixture
def hub_stand_in(tmp_path, monkeypatch):
    """datasets.load_dataset("roneneldan/TinyStories") answered by the real json loader on local
    files.
    """
    import datasets

    real = datasets.load_dataset
    files = {}
    for split, stories in (("train", STORIES), ("validation", STORIES[:2])):
        p = tmp_path / f"hub-{split}.jsonl"
        p.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories), encoding="utf-8")
        files[split] = str(p)
    calls = []

    def stand_in(name, *args, **kwargs):
        calls.append(name)
        assert name == "roneneldan/TinyStories" and not args
        return real("json", data_files=files, cache_dir=str(tmp_path / "hub-cache"))

    monkeypatch.setattr(datasets, "load_dataset", stand_in)
    return calls


def test_hub_source(tmp_path, hub_stand_in):
    load_dataset.prepare(source="hub", data_dir=tmp_path / "d")
    assert hub_stand_in == ["roneneldan/TinyStories"]
    assert texts(tmp_path / "d", "train") == STORIES
    assert texts(tmp_path / "d", "validation") == STORIES[:2]
    info = read_source(tmp_path / "d")
    assert (
        info["source"] == "hub"
        and info["dataset"] == "roneneldan/TinyStories"
        and info["demo"] is False
    )


def test_hub_failure_is_one_clear_error(tmp_path, monkeypatch):
    import datasets

    def offline(name, *args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CLIError, match="could not load roneneldan/TinyStories.*--source sample"):
        load_dataset.prepare(source="hub", data_dir=tmp_path)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.partial").exists()


def test_auto_uses_the_hub_when_it_answers(tmp_path, hub_stand_in, monkeypatch):
    monkeypatch.setattr(sources, "hub_offline_reason", lambda: None)
    load_dataset.prepare(source="auto", data_dir=tmp_path / "d")
    assert read_source(tmp_path / "d")["source"] == "hub"


def test_auto_falls_back_to_the_bundled_sample_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        sources, "hub_offline_reason", lambda: "huggingface.co did not answer (test)"
    )
    load_dataset.prepare(source="auto", data_dir=tmp_path, num_stories=40)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "hub cannot be reached" in line]
    assert len(notes) == 1 and "TinyStories sample bundled in sample_data/tinystories" in notes[0]
    assert "did not answer (test)" in notes[0]
    info = read_source(tmp_path)
    assert info["source"] == "sample" and info["requested"] == "auto" and info["demo"] is False
    assert info["fallback_reason"] == "huggingface.co did not answer (test)"
    assert texts(tmp_path, "train") == sample_stories("train")[:40]


def test_auto_offline_by_environment_uses_the_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_dataset.prepare(source="auto", data_dir=tmp_path, num_stories=10)
    assert "HF_HUB_OFFLINE" in read_source(tmp_path)["fallback_reason"]


def test_auto_keeps_a_hub_dataset_already_here_when_offline(
    tmp_path, hub_stand_in, monkeypatch, capsys
):
    load_dataset.prepare(source="hub", data_dir=tmp_path)
    before = snapshot(tmp_path / "raw")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        sources, "hub_offline_reason", lambda: pytest.fail("no need to ask the hub")
    )
    capsys.readouterr()
    load_dataset.prepare(source="auto", data_dir=tmp_path)
    out = capsys.readouterr()
    assert "up to date" in out.out and "sample" not in out.err
    assert snapshot(tmp_path / "raw") == before


def test_hub_probe_is_quick_when_nothing_answers(monkeypatch):
    import time

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("no_proxy", "*")  # straight to it, even where a proxy is configured
    t0 = time.perf_counter()
    reason = sources.hub_offline_reason()
    assert reason is not None and "127.0.0.1:9" in reason
    assert time.perf_counter() - t0 < sources.HUB_PROBE_TIMEOUT_S + 1


# ----------------------------------------------------------------------------- reruns and atomic
# replacement


def test_rerun_does_nothing_and_force_rebuilds(tmp_path, capsys):
    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=60)
    before = snapshot(tmp_path / "raw")
    capsys.readouterr()
    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=60)
    assert "up to date" in capsys.readouterr().out
    assert snapshot(tmp_path / "raw") == before

    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=60, force=True)
    out = capsys.readouterr().out
    assert "up to date" not in out and "wrote" in out
    # other inputs: rebuilt
    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=80)
    assert "wrote" in capsys.readouterr().out
    assert read_source(tmp_path)["num_stories"] == 80


def test_rerun_notices_a_changed_input_file(tmp_path, capsys):
    train = write_raw(tmp_path / "train.txt", STORIES)
    files = {"train": str(train), "validation": str(train)}
    load_dataset.prepare(source="local", data_dir=tmp_path / "d", data_files=files)
    write_raw(train, STORIES[:3])
    load_dataset.prepare(source="local", data_dir=tmp_path / "d", data_files=files)
    assert texts(tmp_path / "d", "train") == STORIES[:3]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_the_old_raw_untouched(tmp_path, monkeypatch, exc):
    import datasets

    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=40)
    before = snapshot(tmp_path / "raw")
    real_save = datasets.DatasetDict.save_to_disk

    def save_then_fail(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)  # the new dataset is half there (no source.json yet)
        raise exc

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_then_fail)
    with pytest.raises(type(exc)):
        load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=50)
    assert snapshot(tmp_path / "raw") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert len(load_raw(tmp_path)["train"]) == 40


def test_a_run_stopped_mid_swap_is_recovered(tmp_path, capsys):
    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=40)
    before = snapshot(tmp_path / "raw")
    (tmp_path / "raw").rename(tmp_path / "raw.old")  # as if killed between the two renames
    (tmp_path / "raw.partial").mkdir()
    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=40)
    out = capsys.readouterr().out
    assert "restored" in out and "up to date" in out
    assert snapshot(tmp_path / "raw") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# ----------------------------------------------------------------------------- the machine's faults


def full_disk_line(data_dir: Path) -> str:
    return (
        rf"error: no space left on device writing {re.escape(str(data_dir))}/raw "
        r"\((about|more than) [\d.]+ \w+ needed, "
        r"[\d.]+ \w+ free on .+\); free space or pass another --data-dir; the previous "
        r"raw/ is intact"
    )


def error_line(stderr: str) -> str:
    """The one error line, after the progress bars that came before it."""
    assert "Traceback" not in stderr and stderr.count("error:") == 1, stderr
    return stderr.splitlines()[-1]


@pytest.fixture
def local_dataset(tmp_path) -> tuple[Path, list[str]]:
    """DATA (tmp_path/data) made from two local .txt files, and the arguments that made it."""
    args = [
        "--data-files",
        f"train={write_raw(tmp_path / 'train.txt', STORIES)}",
        f"validation={write_raw(tmp_path / 'validation.txt', STORIES[:2])}",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    load_dataset.main(args)
    return tmp_path / "data", args


def test_a_full_disk_while_reading_is_blamed_on_the_disk_not_the_input(
    local_dataset, monkeypatch, capsys
):
    from datasets.arrow_writer import ArrowWriter

    data, args = local_dataset
    before = snapshot(data / "raw")
    # the cache under DATA/raw.partial
    monkeypatch.setattr(ArrowWriter, "write_examples_on_file", no_space)
    code, _, err = call_cli(load_dataset.main, [*args, "--force"], capsys)
    assert code == 1 and re.fullmatch(full_disk_line(data), error_line(err)), err
    assert snapshot(data / "raw") == before and sorted(p.name for p in data.iterdir()) == ["raw"]


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_old_raw(tmp_path, monkeypatch, capsys):
    import datasets

    load_dataset.prepare(source="sample", data_dir=tmp_path, num_stories=40)
    before = snapshot(tmp_path / "raw")
    real_save = datasets.DatasetDict.save_to_disk

    def save_then_disk_full(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)  # the new dataset is half there
        no_space()

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_then_disk_full)
    code, _, err = call_cli(
        load_dataset.main,
        ["--source", "sample", "--num-stories", "50", "--data-dir", str(tmp_path)],
        capsys,
    )
    assert code == 1 and re.fullmatch(full_disk_line(tmp_path), error_line(err)), err
    assert snapshot(tmp_path / "raw") == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "raw"
    ]


def test_local_files_too_big_for_the_disk_are_refused_before_reading(
    local_dataset, monkeypatch, capsys
):
    data, args = local_dataset
    before = snapshot(data / "raw")
    fake_free_space(monkeypatch, 100)
    code, _, err = call_cli(load_dataset.main, [*args, "--force"], capsys)
    assert code == 1
    assert err.startswith(
        f"error: not enough space in {data} for the dataset from train.txt and validation.txt: "
        "about "
    ), err
    assert snapshot(data / "raw") == before and sorted(p.name for p in data.iterdir()) == ["raw"]


def test_a_second_writer_of_the_data_dir_is_refused(tmp_path, lock_holder, capsys):
    holder = lock_holder(tmp_path)
    code, _, err = call_cli(
        load_dataset.main,
        ["--source", "sample", "--num-stories", "10", "--data-dir", str(tmp_path)],
        capsys,
    )
    assert code == 1
    assert (
        err.startswith(f"error: another run is writing into {tmp_path} (pid {holder.pid}: ")
        and err.count("\n") == 1
    )
    assert os.listdir(tmp_path) == [".lock"]


# ----------------------------------------------------------------------------- bad input


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def bad_inputs() -> dict[str, tuple[list[str], str]]:
    """Arguments and the words the one-line error must contain; the files are made by bad_dir."""
    return {
        "missing file": (["--data-files", "train=nope.txt"], "does not exist"),
        "empty file": (["--data-files", "train=empty.txt"], "is empty"),
        "no stories": (["--data-files", "train=only_separators.txt"], "no stories"),
        "JSON without text": (["--data-files", "train=notext.jsonl"], "no 'text' field"),
        "broken JSON": (["--data-files", "train=broken.json"], "could not be read"),
        "not UTF-8": (["--data-files", "train=latin1.txt"], "not UTF-8"),
        "unknown file type": (["--data-files", "train=stories.csv"], "unknown type"),
        "unknown split": (["--data-files", "train=ok.txt", "test=ok.txt"], "unknown split 'test'"),
        "not SPLIT=PATH": (["--data-files", "ok.txt"], "not SPLIT=PATH"),
        "directory": (["--data-files", "train=adir"], "is a directory"),
        "validation only": (["--data-files", "validation=ok.txt"], "no train=PATH"),
        "local without files": (["--source", "local"], "needs files"),
        "files with sample": (
            ["--source", "sample", "--data-files", "train=ok.txt"],
            "only applies",
        ),
        "stories from the hub": (
            ["--source", "hub", "--num-stories", "5"],
            "only applies to the bundled sample",
        ),
        "too few stories": (["--source", "sample", "--num-stories", "0"], "too few"),
        "one story, no validation": (["--data-files", "train=one.txt"], "too few"),
        "data dir is a file": (
            ["--source", "sample", "--num-stories", "10", "--data-dir", "ok.txt"],
            "is a file",
        ),
    }


# the bad inputs that are a wrong command line on any machine: exit 2
USAGE = {
    "not SPLIT=PATH",
    "unknown split",
    "validation only",
    "local without files",
    "files with sample",
    "stories from the hub",
    "too few stories",
}


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "one.txt").write_text("Just one story.\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "only_separators.txt").write_text(f"{EOT}\n\n{EOT}\n")
    (tmp / "notext.jsonl").write_text('{"title": "a"}\n{"title": "b"}\n')
    (tmp / "broken.json").write_text('{"text": "a story"')
    (tmp / "latin1.txt").write_bytes("Zoë went home.\n".encode("latin-1"))
    (tmp / "stories.csv").write_text("text\na story\n")
    (tmp / "adir").mkdir()
    (tmp / "ok.txt").write_text(f"A story.\n{EOT}\nAnother.\n")
    # an existing dataset that no bad run may touch
    load_dataset.prepare(source="sample", data_dir=tmp / "data", num_stories=30)
    return tmp


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "empty file",
        "no stories",
        "JSON without text",
        "broken JSON",
        "not UTF-8",
        "unknown file type",
        "unknown split",
        "not SPLIT=PATH",
        "directory",
        "validation only",
        "local without files",
        "files with sample",
        "stories from the hub",
        "too few stories",
        "one story, no validation",
        "data dir is a file",
    ],
)
def test_bad_input_is_one_line_and_nothing_replaced(bad_dir, case):
    """Exit 2 for a command line that is wrong anywhere (USAGE), 1 for a file or directory that is
    wrong here."""
    args, expected = bad_inputs()[case]
    before = snapshot(bad_dir / "data" / "raw")
    if case in (
        "missing file",
        "empty file",
        "unknown split",
        "directory",
        "JSON without text",
        "local without files",
    ):
        # a few as real subprocesses: exit code, stderr
        proc = run_script(*args, "--data-dir", "data", cwd=bad_dir)
        assert proc.returncode == (2 if case in USAGE else 1), proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr
    else:
        import os

        cwd = os.getcwd()
        os.chdir(bad_dir)
        try:
            with pytest.raises(CLIError, match=expected.replace("(", r"\(")) as e:
                load_dataset.main(args if "--data-dir" in args else [*args, "--data-dir", "data"])
        finally:
            os.chdir(cwd)
        assert "\n" not in str(e.value) and isinstance(e.value, UsageError) == (case in USAGE)
    assert snapshot(bad_dir / "data" / "raw") == before
    assert sorted(p.name for p in (bad_dir / "data").iterdir()) == ["raw"]


def test_help_explains_every_flag(tmp_path):
    proc = run_script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for flag in (
        "--source",
        "--data-files",
        "--data-dir",
        "--force",
        "--num-stories",
        "--seed",
        "<|endoftext|>",
    ):
        assert flag in proc.stdout


def test_load_raw_and_read_source_say_how_to_make_the_dataset(tmp_path):
    with pytest.raises(CLIError, match="python load_dataset.py"):
        load_raw(tmp_path)
    with pytest.raises(CLIError, match="python load_dataset.py"):
        read_source(tmp_path)


# ----------------------------------------------------------------------------- the real sample


def test_shared_tinystories_sample(shared_tinystories, tmp_path):
    train, valid = shared_tinystories / "train.txt", shared_tinystories / "validation.txt"
    load_dataset.prepare(
        source="local",
        data_dir=tmp_path,
        data_files={"train": str(train), "validation": str(valid)},
    )
    dd = load_raw(tmp_path)
    for split, path in (("train", train), ("validation", valid)):
        # independent of the parser: a regex over the whole text, a separator being a line holding
        # only <|endoftext|> (the file may start with one, or end with one and no newline after it)
        text = path.read_bytes().decode("utf-8")
        pieces = re.split(rf"(?m)^[ \t]*{re.escape(EOT)}[ \t]*\r?$", text)
        expected = [s.strip() for s in pieces if s.strip()]
        got = list(dd[split]["text"])
        assert len(got) == len(expected) > 0  # whatever the sample's size: no story lost or split
        if "\r\n" not in text:
            assert got == expected
        # every story byte-identical to the file
        assert all(s.encode("utf-8") in path.read_bytes() for s in got)
    # the bundled sample source reads the same stories as --source local on the shared files
    load_dataset.prepare(source="sample", data_dir=tmp_path / "bundled")
    for split in SPLITS:
        assert texts(tmp_path / "bundled", split) == list(dd[split]["text"])
